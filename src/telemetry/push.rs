//! A scheduled run's metrics off AWS (a cron line, a Kubernetes CronJob, a systemd timer):
//! `unreserver run` pushes them to a Pushgateway (`PUSHGATEWAY_URL`, group `job="unreserver",
//! action="run"`) or writes them for node_exporter's textfile collector (`TEXTFILE_PATH`), in
//! [`Exposition::Batch`]. `unreserver reconcile` does the same in its own group
//! (`action="reconcile"`) or file (`-reconcile` before the file's extension), so that neither
//! replaces the other's.
//!
//! `unreserver_last_success_timestamp_seconds` survives a failed run: the push of a successful
//! run replaces the job's group (`PUT`), a failed run's only the metrics it carries (`POST`),
//! and a textfile keeps the last success of the file it replaces. A push or a write that fails
//! is logged and leaves the run's answer and exit code alone: the run's work is committed, and
//! the missing success is what the alert on `last_success` sees.

use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::{Method, Request, Uri};

use super::metrics::Observation;
use super::prometheus::{Exposition, Prometheus};
use crate::settings::{PUSHGATEWAY_URL, TEXTFILE_PATH};

/// The Pushgateway job of the runs' metrics.
pub const JOB: &str = "unreserver";
/// The longest a push may take.
pub const PUSH_TIMEOUT: Duration = Duration::from_secs(10);

/// Which action's metrics: each has its own group and file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    Run,
    Reconcile,
}

impl Action {
    fn name(self) -> &'static str {
        match self {
            Action::Run => "run",
            Action::Reconcile => "reconcile",
        }
    }

    /// The action's file: TEXTFILE_PATH for a run, `-reconcile` before its extension for a
    /// reconcile (`unreserver.prom` → `unreserver-reconcile.prom`).
    fn textfile(self, path: &str) -> std::path::PathBuf {
        let path = std::path::Path::new(path);
        match self {
            Action::Run => path.to_path_buf(),
            Action::Reconcile => {
                let stem = path.file_stem().unwrap_or_default().to_string_lossy();
                let name = match path.extension() {
                    Some(ext) => format!("{stem}-reconcile.{}", ext.to_string_lossy()),
                    None => format!("{stem}-reconcile"),
                };
                path.with_file_name(name)
            }
        }
    }
}

/// Pushes or writes one action's metrics where the settings (read through `lookup`) say;
/// nothing when neither is set, or for a dry run.
pub async fn report(
    action: Action,
    lookup: impl Fn(&str) -> Option<String>,
    obs: &Observation<'_>,
) {
    let url = PUSHGATEWAY_URL.get(&lookup);
    let path = TEXTFILE_PATH.get(&lookup);
    if obs.dry_run || (url.is_none() && path.is_none()) {
        return;
    }
    let metrics = Prometheus::new(Exposition::Batch);
    metrics.observe(obs);
    if let Some(url) = url {
        let method = if metrics.has_success() {
            Method::PUT
        } else {
            Method::POST
        };
        let pushed = push(&url, action, method, metrics.encode());
        match tokio::time::timeout(PUSH_TIMEOUT, pushed).await {
            Ok(Ok(())) => tracing::info!(url = %url, "metrics pushed"),
            Ok(Err(error)) => tracing::error!(url = %url, %error, "could not push the metrics"),
            Err(_) => tracing::error!(url = %url, "could not push the metrics: timed out"),
        }
    }
    if let Some(path) = path {
        match write_textfile(&action.textfile(&path), &metrics) {
            Ok(()) => tracing::info!(path = %path, "metrics written"),
            Err(error) => tracing::error!(path = %path, %error, "could not write the metrics"),
        }
    }
}

/// The group URL of the action under a Pushgateway's base URL.
fn group_uri(base: &str, action: Action) -> Result<Uri, String> {
    let base = base.trim_end_matches('/');
    let url = format!("{base}/metrics/job/{JOB}/action/{}", action.name());
    let uri: Uri = url.parse().map_err(|e| format!("PUSHGATEWAY_URL: {e}"))?;
    if uri.scheme_str() != Some("http") {
        return Err("PUSHGATEWAY_URL: only http:// is supported".into());
    }
    Ok(uri)
}

/// One request to the Pushgateway over a connection of its own.
async fn push(base: &str, action: Action, method: Method, body: String) -> Result<(), String> {
    let uri = group_uri(base, action)?;
    let host = uri.host().unwrap_or_default().to_string();
    let port = uri.port_u16().unwrap_or(80);
    let stream = tokio::net::TcpStream::connect((host.as_str(), port))
        .await
        .map_err(|e| format!("connect {host}:{port}: {e}"))?;
    let io = hyper_util::rt::TokioIo::new(stream);
    let (mut sender, connection) = hyper::client::conn::http1::handshake(io)
        .await
        .map_err(|e| e.to_string())?;
    let driver = tokio::spawn(connection);
    let authority = uri.authority().map(|a| a.to_string()).unwrap_or(host);
    let request = Request::builder()
        .method(method)
        .uri(uri.path())
        .header(hyper::header::HOST, authority)
        .header(hyper::header::CONTENT_TYPE, "text/plain; version=0.0.4")
        .body(Full::new(Bytes::from(body)))
        .map_err(|e| e.to_string())?;
    let response = sender
        .send_request(request)
        .await
        .map_err(|e| e.to_string())?;
    let status = response.status();
    let text = response
        .into_body()
        .collect()
        .await
        .map(|b| String::from_utf8_lossy(&b.to_bytes()).into_owned())
        .unwrap_or_default();
    driver.abort();
    if status.is_success() {
        Ok(())
    } else {
        Err(format!(
            "the Pushgateway answered {status}: {}",
            text.trim()
        ))
    }
}

/// The `unreserver_last_success_timestamp_seconds` value of a metrics text, if any.
fn last_success(text: &str) -> Option<f64> {
    text.lines()
        .find_map(|l| l.strip_prefix("unreserver_last_success_timestamp_seconds "))
        .and_then(|v| v.trim().parse().ok())
}

/// Writes the metrics to `path` whole (a file beside it, then renamed), keeping the last
/// success of the file it replaces.
fn write_textfile(path: &std::path::Path, metrics: &Prometheus) -> std::io::Result<()> {
    if let Some(at) = std::fs::read_to_string(path)
        .ok()
        .and_then(|t| last_success(&t))
    {
        metrics.carry_last_success(at);
    }
    let mut partial = path.as_os_str().to_owned();
    partial.push(format!(".{}.tmp", std::process::id()));
    std::fs::write(&partial, metrics.encode())?;
    std::fs::rename(&partial, path)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::run_report::RunReport;

    fn observation(report: &RunReport, failed: bool) -> Observation<'_> {
        Observation {
            reconcile: None,
            purge: None,
            run_id: "r",
            tenant: None,
            report: Some(report),
            failed,
            dry_run: false,
            cold_start: false,
            duration_ms: 10,
        }
    }

    /// A textfile keeps the last success across a failed run, and is replaced whole.
    #[tokio::test]
    async fn a_failed_run_keeps_the_textfiles_last_success() {
        let dir = std::env::temp_dir().join(format!("unreserver-textfile-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("dir");
        let path = dir.join("unreserver.prom");
        let lookup = |name: &str| (name == "TEXTFILE_PATH").then(|| path.display().to_string());
        let run = RunReport::new(false);
        report(Action::Run, lookup, &observation(&run, false)).await;
        let first = std::fs::read_to_string(&path).expect("written");
        let at = last_success(&first).expect("a success");
        assert!(
            first.contains("unreserver_last_run_outcome{outcome=\"drained\"} 1"),
            "{first}"
        );
        report(Action::Run, lookup, &observation(&run, true)).await;
        let second = std::fs::read_to_string(&path).expect("written");
        assert!(second.contains("unreserver_run_failed 1"), "{second}");
        assert_eq!(last_success(&second), Some(at), "{second}");
        assert_eq!(
            std::fs::read_dir(&dir).expect("dir").count(),
            1,
            "no partial file left"
        );
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn only_an_http_pushgateway_is_taken() {
        let uri = group_uri("http://gw:9091/", Action::Run).expect("uri");
        assert_eq!(
            uri.to_string(),
            "http://gw:9091/metrics/job/unreserver/action/run"
        );
        assert!(group_uri("https://gw", Action::Run).is_err());
        let file = Action::Reconcile.textfile("/var/lib/node/unreserver.prom");
        assert_eq!(
            file,
            std::path::Path::new("/var/lib/node/unreserver-reconcile.prom")
        );
    }
}

//! A scheduled run's metrics off AWS (a cron line, a Kubernetes CronJob, a systemd timer):
//! `unreserver run` pushes them to a Pushgateway (`PUSHGATEWAY_URL`) or writes them for
//! node_exporter's textfile collector (`TEXTFILE_PATH`), in [`Exposition::Batch`].
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

/// Pushes or writes one run's metrics where the settings (read through `lookup`) say; nothing
/// when neither is set, or for a dry run.
pub async fn report_run(lookup: impl Fn(&str) -> Option<String>, obs: &Observation<'_>) {
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
        match tokio::time::timeout(PUSH_TIMEOUT, push(&url, method, metrics.encode())).await {
            Ok(Ok(())) => tracing::info!(url = %url, "metrics pushed"),
            Ok(Err(error)) => tracing::error!(url = %url, %error, "could not push the metrics"),
            Err(_) => tracing::error!(url = %url, "could not push the metrics: timed out"),
        }
    }
    if let Some(path) = path {
        match write_textfile(std::path::Path::new(&path), &metrics) {
            Ok(()) => tracing::info!(path = %path, "metrics written"),
            Err(error) => tracing::error!(path = %path, %error, "could not write the metrics"),
        }
    }
}

/// The group URL of the job under a Pushgateway's base URL.
fn group_uri(base: &str) -> Result<Uri, String> {
    let url = format!("{}/metrics/job/{JOB}", base.trim_end_matches('/'));
    let uri: Uri = url.parse().map_err(|e| format!("PUSHGATEWAY_URL: {e}"))?;
    if uri.scheme_str() != Some("http") {
        return Err("PUSHGATEWAY_URL: only http:// is supported".into());
    }
    Ok(uri)
}

/// One request to the Pushgateway over a connection of its own.
async fn push(base: &str, method: Method, body: String) -> Result<(), String> {
    let uri = group_uri(base)?;
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
        let report = RunReport::new(false);
        report_run(lookup, &observation(&report, false)).await;
        let first = std::fs::read_to_string(&path).expect("written");
        let at = last_success(&first).expect("a success");
        assert!(
            first.contains("unreserver_last_run_outcome{outcome=\"drained\"} 1"),
            "{first}"
        );
        report_run(lookup, &observation(&report, true)).await;
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
        let uri = group_uri("http://gw:9091/").expect("uri");
        assert_eq!(uri.to_string(), "http://gw:9091/metrics/job/unreserver");
        assert!(group_uri("https://gw").is_err());
    }
}

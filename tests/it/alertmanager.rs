//! The alert path end to end, with Debian's real parts: a run that cannot reach its database
//! pushes its failure to a Pushgateway; a Prometheus scraping it evaluates the shipped rules
//! (`deploy/prometheus/unreserver-rules.yml`, unchanged) and fires `UnreserverRunFailed`; a
//! real Alertmanager, configured by the shipped sample (`deploy/prometheus/alertmanager.yml`),
//! routes it as a page to the chat webhook: a receiver in this test gets Slack's message.
//!
//! The test starts its own Pushgateway, Prometheus and Alertmanager (a shared Pushgateway
//! holds other tests' failures), stopped when it ends. What it changes in the sample, and
//! why: the webhook's URL and the SMTP relay (to this machine: nothing leaves it), and the
//! grouping waits (seconds, not the sample's 30 s and 5 min, so that it ends in seconds).
//! Prometheus scrapes and evaluates every second. Without the servers (`scripts/test.sh`
//! installs Debian's `prometheus`, `prometheus-alertmanager` and `prometheus-pushgateway`) it
//! says so and passes.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant, SystemTime};

use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::mpsc;

use crate::app::TestApp;
use crate::prometheus::{get, query};

/// How long each step may take.
const DEADLINE: Duration = Duration::from_secs(60);

/// The servers this test started, stopped (killed and reaped) when it ends, also on a panic.
struct Servers {
    dir: PathBuf,
    children: Vec<(String, Child)>,
}

impl Drop for Servers {
    fn drop(&mut self) {
        for (_, child) in &mut self.children {
            let _ = child.kill();
            let _ = child.wait();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A port free a moment ago on 127.0.0.1.
fn free_port() -> u16 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    listener.local_addr().unwrap().port()
}

impl Servers {
    /// Starts `program args` (its output in `name.log`); false (said on stderr) when the
    /// program is not installed.
    fn start(&mut self, name: &str, program: &str, args: &[String]) -> bool {
        let log = std::fs::File::create(self.dir.join(format!("{name}.log"))).unwrap();
        let spawned = Command::new(program)
            .args(args)
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn();
        match spawned {
            Ok(child) => {
                self.children.push((name.to_string(), child));
                true
            }
            Err(e) => {
                eprintln!("skipped: {program} cannot run ({e}): install Debian's package");
                false
            }
        }
    }

    /// Waits until `name` (started last on `port`) answers `/-/ready`, failing with its log if
    /// it ends or the deadline passes.
    async fn ready(&mut self, name: &str, port: u16) {
        let started = Instant::now();
        loop {
            let answer = tokio::net::TcpStream::connect(("127.0.0.1", port)).await;
            if answer.is_ok() && get(&format!("127.0.0.1:{port}"), "/-/ready").await.0 == 200 {
                return;
            }
            let (_, child) = self.children.last_mut().unwrap();
            let ended = child.try_wait().unwrap();
            if ended.is_some() || started.elapsed() > DEADLINE {
                let log = std::fs::read_to_string(self.dir.join(format!("{name}.log")));
                panic!(
                    "{name} is not ready ({ended:?}): {}",
                    log.unwrap_or_default()
                );
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

/// The shipped Alertmanager sample, sending to this machine and grouping in seconds: each
/// line replaced must be there (a change to the sample shows here).
fn alertmanager_config(webhook: &str) -> String {
    let sample = std::fs::read_to_string(deploy("alertmanager.yml")).unwrap();
    let replaced = [
        (
            "  slack_api_url_file: \"/etc/alertmanager/slack-webhook-url\"",
            format!("  slack_api_url: \"{webhook}\""),
        ),
        (
            "  smtp_smarthost: \"smtp.example.com:587\"",
            "  smtp_smarthost: \"127.0.0.1:1\"".to_string(),
        ),
        // No password file on this machine; the relay above refuses at once anyway.
        (
            "  smtp_auth_password_file: \"/etc/alertmanager/smtp-password\"",
            String::new(),
        ),
        ("  group_wait: 30s", "  group_wait: 1s".to_string()),
        ("  group_interval: 5m", "  group_interval: 1s".to_string()),
    ];
    let mut config = sample;
    for (line, with) in replaced {
        assert!(config.contains(line), "the sample lacks {line:?}");
        config = config.replace(line, &with);
    }
    config
}

fn deploy(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("deploy/prometheus")
        .join(name)
}

/// A webhook receiver on `listener`: each request's path and body, sent on the channel.
fn receiver(listener: tokio::net::TcpListener) -> mpsc::UnboundedReceiver<(String, String)> {
    let (sent, received) = mpsc::unbounded_channel();
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            let sent = sent.clone();
            tokio::spawn(async move {
                let mut request = Vec::new();
                let mut buffer = [0u8; 8192];
                // Until the head and the body its Content-Length announces are in.
                let (head, body) = loop {
                    let n = stream.read(&mut buffer).await.unwrap_or(0);
                    request.extend_from_slice(&buffer[..n]);
                    let text = String::from_utf8_lossy(&request).to_string();
                    if let Some((head, body)) = text.split_once("\r\n\r\n") {
                        let length = head
                            .lines()
                            .find_map(|l| {
                                let (name, value) = l.split_once(':')?;
                                name.eq_ignore_ascii_case("content-length")
                                    .then(|| value.trim().parse::<usize>().ok())?
                            })
                            .unwrap_or(0);
                        if body.len() >= length || n == 0 {
                            break (head.to_string(), body.to_string());
                        }
                    } else if n == 0 {
                        return;
                    }
                };
                let path = head.split_whitespace().nth(1).unwrap_or("").to_string();
                let _ = sent.send((path, body));
                let ok = "HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok";
                let _ = stream.write_all(ok.as_bytes()).await;
            });
        }
    });
    received
}

/// Prometheus's answer to `GET path` as JSON.
async fn api(authority: &str, path: &str) -> Value {
    let (code, body) = get(authority, path).await;
    assert_eq!(code, 200, "{path}: {body}");
    serde_json::from_str(&body).unwrap()
}

/// Until Prometheus has evaluated the shipped rules after `after`.
async fn evaluated_after(prometheus: &str, after: SystemTime) {
    let started = Instant::now();
    while started.elapsed() < DEADLINE {
        let rules = api(prometheus, "/api/v1/rules").await;
        let last = rules["data"]["groups"][0]["lastEvaluation"].as_str();
        if last
            .and_then(|t| humantime::parse_rfc3339(t).ok())
            .is_some_and(|t| t > after)
        {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("Prometheus never evaluated the rules");
}

#[tokio::test]
async fn a_run_that_cannot_reach_its_database_pages_through_alertmanager() {
    let dir = std::env::temp_dir().join(format!("unreserver-alerting-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let mut servers = Servers {
        dir: dir.clone(),
        children: Vec::new(),
    };
    let hook = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let webhook = format!("http://{}/slack", hook.local_addr().unwrap());
    let mut received = receiver(hook);

    let (gateway, alertmanager, prometheus) = (free_port(), free_port(), free_port());
    let am_config = dir.join("alertmanager.yml");
    std::fs::write(&am_config, alertmanager_config(&webhook)).unwrap();
    let prom_config = dir.join("prometheus.yml");
    std::fs::write(
        &prom_config,
        format!(
            "global:\n  scrape_interval: 1s\n  scrape_timeout: 900ms\n  evaluation_interval: 1s\n\
             rule_files: [\"{rules}\"]\n\
             alerting:\n  alertmanagers:\n    - static_configs:\n        - targets: [\"127.0.0.1:{alertmanager}\"]\n\
             scrape_configs:\n  - job_name: unreserver-pushgateway\n    honor_labels: true\n\
             \x20   static_configs:\n      - targets: [\"127.0.0.1:{gateway}\"]\n",
            rules = deploy("unreserver-rules.yml").display(),
        ),
    )
    .unwrap();
    let path = |p: &Path| p.display().to_string();
    let listen = |port: u16| format!("--web.listen-address=127.0.0.1:{port}");
    let gateway_args = [
        listen(gateway),
        format!("--persistence.file={}", path(&dir.join("pushgateway.data"))),
    ];
    if !servers.start("pushgateway", "prometheus-pushgateway", &gateway_args) {
        return;
    }
    servers.ready("pushgateway", gateway).await;
    let am_args = [
        format!("--config.file={}", path(&am_config)),
        format!("--storage.path={}", path(&dir.join("alertmanager"))),
        listen(alertmanager),
        // One Alertmanager, no cluster.
        "--cluster.listen-address=".to_string(),
    ];
    if !servers.start("alertmanager", "prometheus-alertmanager", &am_args) {
        return;
    }
    servers.ready("alertmanager", alertmanager).await;
    let prom_args = [
        format!("--config.file={}", path(&prom_config)),
        format!("--storage.tsdb.path={}", path(&dir.join("prometheus"))),
        listen(prometheus),
    ];
    if !servers.start("prometheus", "prometheus", &prom_args) {
        return;
    }
    servers.ready("prometheus", prometheus).await;
    let prometheus = format!("127.0.0.1:{prometheus}");
    let gateway_url = format!("http://127.0.0.1:{gateway}");

    // A run that succeeds: scraped, evaluated, no alert.
    let t = TestApp::spawn().await;
    let (_, _, _) = t.one_due_order(1).await;
    let out = t
        .with("PUSHGATEWAY_URL", gateway_url.as_str())
        .cli(&["run"])
        .await;
    assert_eq!(out.code, Some(0), "{}", out.stderr);
    let started = Instant::now();
    while query(&format!("http://{prometheus}"), "unreserver_run_failed").await != Some(0.0) {
        assert!(
            started.elapsed() < DEADLINE,
            "the success was never scraped"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    evaluated_after(&prometheus, SystemTime::now()).await;
    let alerts = api(&prometheus, "/api/v1/alerts").await;
    assert!(
        !alerts.to_string().contains("UnreserverRunFailed"),
        "{alerts}"
    );

    // A run whose database cannot be reached: it fails, pushes it, and the page arrives.
    let broken = t
        .with("PUSHGATEWAY_URL", gateway_url.as_str())
        .with(
            "DATABASE_URL",
            "postgres://nobody@127.0.0.1:1/none?sslmode=disable",
        )
        .cli(&["run"])
        .await;
    assert_eq!(broken.code, Some(1), "{}", broken.stderr);
    let page = tokio::time::timeout(DEADLINE, async {
        loop {
            let (path, body) = received.recv().await.expect("the receiver ended");
            let message: Value = serde_json::from_str(&body).unwrap();
            let title = message["attachments"][0]["title"].as_str().unwrap_or("");
            if title.starts_with("UnreserverRunFailed:") {
                return (path, message);
            }
        }
    })
    .await;
    let Ok((path, message)) = page else {
        let log = std::fs::read_to_string(dir.join("alertmanager.log")).unwrap_or_default();
        let alerts = api(&prometheus, "/api/v1/alerts").await;
        panic!("no page reached the webhook: Prometheus's alerts {alerts}; Alertmanager: {log}");
    };
    assert_eq!(path, "/slack");
    assert_eq!(message["channel"], "#shop-ops", "{message}");
    let attachment = &message["attachments"][0];
    let title = attachment["title"].as_str().unwrap();
    assert!(title.contains("An unreserver run failed"), "{title}");
    let text = attachment["text"].as_str().unwrap();
    assert!(
        text.contains("Runbook: docs/operations.md#runbook-when-an-alarm-fires")
            && text.contains("RunFailedAlarm"),
        "{text}"
    );
    // Alertmanager holds it as a page, routed to the page receiver.
    let alertmanager = format!("127.0.0.1:{alertmanager}");
    let held = api(
        &alertmanager,
        "/api/v2/alerts?filter=alertname%3D%22UnreserverRunFailed%22",
    )
    .await;
    assert_eq!(held[0]["labels"]["severity"], "page", "{held}");
    assert_eq!(held[0]["labels"]["job"], "unreserver", "{held}");
    assert_eq!(held[0]["receivers"][0]["name"], "shop-ops-page", "{held}");
    drop(servers);
}

//! Off AWS, with Debian's real Prometheus parts (`scripts/test.sh` starts them): a Prometheus
//! scrapes a running follower (`unreserver follow --listen`) and sees its release counted; the
//! follower's probes and status answer without opening a connection; a run's push lands in a
//! Pushgateway. A test whose server could not be installed says so and passes.

use std::time::Duration;

use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::app::TestApp;
use crate::common::{until_true, Res, TestDb};

/// The variable `scripts/test.sh` exported, or None (said on stderr) when its server could not
/// be installed.
fn server(name: &str) -> Option<String> {
    let value = std::env::var(name).ok().filter(|v| !v.is_empty());
    if value.is_none() {
        eprintln!("skipped: {name} is unset (scripts/test.sh could not install the server)");
    }
    value
}

/// `GET path` on `host:port` over HTTP/1.0: the status code and the body.
pub(crate) async fn get(authority: &str, path: &str) -> (u16, String) {
    let mut stream = tokio::net::TcpStream::connect(authority).await.unwrap();
    let request = format!("GET {path} HTTP/1.0\r\nHost: {authority}\r\n\r\n");
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).await.unwrap();
    let (head, body) = response.split_once("\r\n\r\n").unwrap_or((&response, ""));
    let code = head
        .split_whitespace()
        .nth(1)
        .unwrap_or("0")
        .parse()
        .unwrap();
    (code, body.to_string())
}

/// The value of `query` in Prometheus at `base` (an instant vector's first sample), if any.
pub(crate) async fn query(base: &str, query: &str) -> Option<f64> {
    let authority = base.trim_start_matches("http://");
    let encoded = percent_encoding::utf8_percent_encode(query, percent_encoding::NON_ALPHANUMERIC);
    let (code, body) = get(authority, &format!("/api/v1/query?query={encoded}")).await;
    assert_eq!(code, 200, "{body}");
    let answer: Value = serde_json::from_str(&body).unwrap();
    answer["data"]["result"][0]["value"][1]
        .as_str()
        .and_then(|v| v.parse().ok())
}

/// The follower's connections to `t`'s database.
async fn follower_connections(t: &TestDb) -> i64 {
    t.i64(
        "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() \
         AND application_name LIKE 'unreserver%'",
    )
    .await
}

#[tokio::test]
async fn a_real_prometheus_scrapes_a_follower_and_sees_the_release_counted() {
    let Some(prometheus) = server("UNRESERVER_TEST_PROMETHEUS_URL") else {
        return;
    };
    let port = crate::common::test_env("UNRESERVER_TEST_FOLLOWER_PORT");
    let listen = format!("127.0.0.1:{port}");
    let t = TestApp::spawn().await;
    let v = t.variant(3).await;
    for _ in 0..3 {
        let order = t.order("pending", "pending").await;
        t.reservation(Res::new(Some(order), v, 1, "-1 minute"))
            .await;
    }
    let child = t.front().start_cli(&["follow", "--listen", &listen]);
    assert!(
        until_true(
            &t,
            "NOT EXISTS (SELECT 1 FROM orders_inventoryreservation WHERE status = 'active')"
        )
        .await,
        "the follower released nothing"
    );

    // Prometheus scrapes it every second: the release is counted there.
    let mut counted = None;
    for _ in 0..300 {
        counted = query(&prometheus, "unreserver_reservations_released_total").await;
        if counted == Some(3.0) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(
        counted,
        Some(3.0),
        "Prometheus never saw the release counted"
    );
    let delays = query(&prometheus, "unreserver_release_delay_seconds_count").await;
    assert_eq!(delays, Some(3.0));
    let succeeded = query(
        &prometheus,
        "time() - unreserver_last_success_timestamp_seconds",
    )
    .await;
    assert!(succeeded.is_some_and(|age| age < 60.0), "{succeeded:?}");
    let drained = query(&prometheus, "unreserver_runs_total{outcome=\"drained\"}").await;
    assert!(drained.is_some_and(|n| n >= 1.0), "{drained:?}");

    // The probes and the status read what the loop recorded: no connection of their own.
    let before = follower_connections(&t).await;
    for path in ["/healthz", "/readyz", "/healthz", "/readyz"] {
        let (code, body) = get(&listen, path).await;
        assert_eq!((code, body.as_str()), (200, "ok\n"), "{path}");
    }
    let (code, body) = get(&listen, "/status").await;
    assert_eq!(code, 200, "{body}");
    let status: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(status["due_reservations"], 0, "{status}");
    assert_eq!(status["variants_out_of_sync_count"], 0, "{status}");
    assert_eq!(
        follower_connections(&t).await,
        before,
        "a probe opened a connection"
    );
    let (code, text) = get(&listen, "/metrics").await;
    assert_eq!(code, 200);
    assert!(
        text.contains("# TYPE unreserver_release_delay_seconds histogram"),
        "{text}"
    );
    assert_eq!(get(&listen, "/nothing").await.0, 404);

    // SIGTERM: the follower ends cleanly with its report.
    child.terminate();
    let out = child.wait().await;
    assert_eq!(out.code, Some(0), "{}", out.stderr);
    assert_eq!(out.json()["follow"]["ended"], "signal");
    assert_eq!(out.json()["reservations_released"], 3);
}

/// `--listen` on an address already taken fails at once, naming the flag (exit 2).
#[tokio::test]
async fn a_follower_that_cannot_listen_says_so() {
    let t = TestApp::spawn().await;
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap().to_string();
    // `--for`: a follower that took no notice of the address would end by itself.
    let out = t.cli(&["follow", "--for", "3", "--listen", &addr]).await;
    assert_eq!(out.code, Some(2), "{}", out.stderr);
    assert!(out.stderr.contains("--listen"), "{}", out.stderr);
}

/// The labels of the runs' group in the Pushgateway.
const RUN_GROUP: &str = "action=\"run\",instance=\"\",job=\"unreserver\"";

#[tokio::test]
async fn a_runs_push_lands_in_a_real_pushgateway() {
    let Some(gateway) = server("UNRESERVER_TEST_PUSHGATEWAY_URL") else {
        return;
    };
    let authority = gateway.trim_start_matches("http://").to_string();
    let t = TestApp::spawn().await;
    let (_, _, _) = t.one_due_order(2).await;
    let out = t
        .with("PUSHGATEWAY_URL", gateway.as_str())
        .cli(&["run"])
        .await;
    assert_eq!(out.code, Some(0), "{}", out.stderr);
    let (code, text) = get(&authority, "/metrics").await;
    assert_eq!(code, 200);
    let line = |name: &str| {
        text.lines()
            .find(|l| l.starts_with(name) && l.contains(RUN_GROUP))
            .map(str::to_string)
    };
    let released = line("unreserver_last_run_reservations_released{").expect(&text);
    assert!(released.ends_with(" 1"), "{released}");
    let units = line("unreserver_last_run_units_released{").expect(&text);
    assert!(units.ends_with(" 2"), "{units}");
    assert!(
        line("unreserver_last_success_timestamp_seconds{").is_some(),
        "{text}"
    );
    assert!(
        line("unreserver_run_failed{").is_some_and(|l| l.ends_with(" 0")),
        "{text}"
    );

    // A run that cannot connect pushes its failure and keeps the last success.
    let broken = t
        .with("PUSHGATEWAY_URL", gateway.as_str())
        .with(
            "DATABASE_URL",
            "postgres://nobody@127.0.0.1:1/none?sslmode=disable",
        )
        .cli(&["run"])
        .await;
    assert_eq!(broken.code, Some(1), "{}", broken.stderr);
    let (_, text) = get(&authority, "/metrics").await;
    let failed = text
        .lines()
        .find(|l| l.starts_with("unreserver_run_failed{") && l.contains(RUN_GROUP));
    assert!(failed.is_some_and(|l| l.ends_with(" 1")), "{text}");
    assert!(
        text.contains("unreserver_last_success_timestamp_seconds{"),
        "{text}"
    );
}

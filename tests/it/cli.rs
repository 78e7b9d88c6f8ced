//! The `unreserver` command line as other tools use it: JSON on stdout, exit codes, and a
//! one-line error naming the problem.

use std::process::{Command, Output};

use crate::common::{Res, TestDb};

fn unreserver(args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_unreserver"));
    cmd.args(args);
    for var in [
        "DATABASE_URL",
        "BATCH_SIZE",
        "MAX_BATCHES",
        "RUST_LOG",
        "LOG_FORMAT",
        "DB_CA_BUNDLE",
        "EVENT_BUS_NAME",
    ] {
        cmd.env_remove(var);
    }
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd.output().expect("cannot start unreserver")
}

fn stdout_json(out: &Output) -> serde_json::Value {
    let text = String::from_utf8_lossy(&out.stdout);
    serde_json::from_str(text.trim()).unwrap_or_else(|e| {
        panic!(
            "stdout is not one JSON object ({e}): {text}\nstderr: {}",
            String::from_utf8_lossy(&out.stderr)
        )
    })
}

#[tokio::test]
async fn run_and_status_print_their_json_contracts() {
    let t = TestDb::new().await;
    let v = t.variant(3).await;
    for _ in 0..3 {
        let order = t.order("pending", "pending").await;
        t.reservation(Res::new(Some(order), v, 1, "-1 minute"))
            .await;
    }
    let url = t.release_url();
    let env = [("DATABASE_URL", url.as_str())];
    let status = unreserver(&["status"], &env);
    assert!(status.status.success());
    let status = stdout_json(&status);
    for key in [
        "due_reservations",
        "oldest_due_age_seconds",
        "paid_orders_with_active_reservations",
        "variants_out_of_sync",
    ] {
        assert!(status.get(key).is_some(), "status lacks {key}");
    }
    assert_eq!(status["due_reservations"], 3);

    let dry = unreserver(&["run", "--dry-run", "--batch-size", "2"], &env);
    assert!(dry.status.success());
    let dry = stdout_json(&dry);
    assert_eq!(dry["dry_run"], true);
    assert_eq!(dry["reservations_released"], 3);
    assert_eq!(dry["units_by_variant"][v.to_string()], 3);
    assert_eq!(t.reserved(v).await, 3);

    let out = unreserver(&["run", "--batch-size", "2", "--max-batches", "1"], &env);
    assert!(out.status.success());
    let report = stdout_json(&out);
    for key in unreserver::CONTRACT_FIELDS {
        assert!(report.get(key).is_some(), "report lacks {key}");
    }
    assert_eq!(report["reservations_released"], 2);
    assert_eq!(report["stopped_reason"], "max_batches");
    assert_eq!(report["backlog_remaining"], 1);
    assert_eq!(t.reserved(v).await, 1);
}

#[test]
fn a_bad_setting_is_named_before_connecting() {
    for (env, args, named) in [
        (vec![("BATCH_SIZE", "lots")], vec!["run"], "BATCH_SIZE"),
        (vec![("MAX_BATCHES", "0")], vec!["run"], "MAX_BATCHES"),
        (vec![], vec!["run", "--batch-size", "0"], "--batch-size"),
        (
            vec![("LOCK_TIMEOUT_MS", "-1")],
            vec!["status"],
            "LOCK_TIMEOUT_MS",
        ),
    ] {
        let mut env = env;
        // A port nothing listens on: the error must come before any connection attempt.
        env.push(("DATABASE_URL", "postgres://u:hunter2@127.0.0.1:1/db"));
        let out = unreserver(&args, &env);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{named}: {stderr}");
        assert!(stderr.contains(named), "{named}: {stderr}");
        assert!(stderr.contains("InvalidSetting"), "{stderr}");
        assert!(out.stdout.is_empty());
    }
    let out = unreserver(&["run"], &[]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("DATABASE_URL"));
}

/// Settings each within range but wrong together are refused before connecting, naming both:
/// expiry warnings without a bus to publish them on (they used to do nothing, silently), and a
/// lock timeout that does not fit in half the shop's `deadlock_timeout` (found only after
/// connecting, before).
#[test]
fn settings_wrong_together_are_named_before_connecting() {
    for (env, named) in [
        (
            vec![("EXPIRY_WARNING_SECONDS", "60")],
            ["EXPIRY_WARNING_SECONDS", "EVENT_BUS_NAME"],
        ),
        (
            vec![
                ("LOCK_TIMEOUT_MS", "300"),
                ("SHOP_DEADLOCK_TIMEOUT_MS", "500"),
            ],
            ["LOCK_TIMEOUT_MS", "SHOP_DEADLOCK_TIMEOUT_MS"],
        ),
    ] {
        let mut env = env;
        env.push(("DATABASE_URL", "postgres://u:hunter2@127.0.0.1:1/db"));
        let out = unreserver(&["run"], &env);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{named:?}: {stderr}");
        assert!(stderr.contains("InvalidSetting"), "{stderr}");
        for name in named {
            assert!(stderr.contains(name), "{name}: {stderr}");
        }
    }
}

#[test]
fn an_unreachable_database_is_named_without_the_password() {
    let out = unreserver(
        &["run"],
        &[(
            "DATABASE_URL",
            "postgres://app:hunter2@127.0.0.1:1/shop?connect_timeout=2",
        )],
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("database unreachable (app@127.0.0.1:1/shop)"),
        "{stderr}"
    );
    assert!(!stderr.contains("hunter2"), "{stderr}");
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
}

#[tokio::test]
async fn a_missing_column_fails_the_command_naming_it() {
    let t = TestDb::new().await;
    t.exec("ALTER TABLE orders_inventoryreservation DROP COLUMN released_at")
        .await;
    let out = unreserver(&["run"], &[("DATABASE_URL", t.release_url().as_str())]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("orders_inventoryreservation.released_at"),
        "{stderr}"
    );
}

fn aws_env() -> Vec<(&'static str, String)> {
    vec![
        (
            "AWS_ENDPOINT_URL",
            crate::common::test_env("UNRESERVER_TEST_AWS_ENDPOINT"),
        ),
        ("AWS_REGION", "us-east-1".into()),
        ("AWS_ACCESS_KEY_ID", "test".into()),
        ("AWS_SECRET_ACCESS_KEY", "test".into()),
    ]
}

#[tokio::test]
async fn revive_answers_json_with_its_exit_codes() {
    let t = TestDb::new().await;
    let (v, order, _) = t.one_due_order(2).await;
    let url = t.release_url();
    let env = [("DATABASE_URL", url.as_str())];
    assert!(unreserver(&["run"], &env).status.success());
    assert_eq!(t.reserved(v).await, 0);

    let id = order.to_string();
    let out = unreserver(&["revive", &id], &env);
    assert_eq!(out.status.code(), Some(0));
    assert_eq!(
        stdout_json(&out),
        serde_json::json!({"order_id": order, "revived": true, "reason": "revived", "short": []})
    );
    assert_eq!(t.reserved(v).await, 2);
    assert_eq!(t.order_status(order).await, "pending");

    // A retry of a done revive gives the same answer.
    let again = unreserver(&["revive", &id], &env);
    assert_eq!(again.status.code(), Some(0));
    assert_eq!(stdout_json(&again)["reason"], "revived");
    assert_eq!(t.reserved(v).await, 2);
    let unknown = unreserver(&["revive", "2147483647"], &env);
    assert_eq!(unknown.status.code(), Some(3));
    assert_eq!(stdout_json(&unknown)["reason"], "unknown_order");
    let bad = unreserver(&["revive", "twelve"], &env);
    assert_eq!(bad.status.code(), Some(2));
    assert!(bad.stdout.is_empty());
}

#[tokio::test]
async fn events_replays_the_window_and_report_counts_the_day() {
    let t = TestDb::new().await;
    let v = t.variant(4).await;
    let orders = [
        t.order("pending", "pending").await,
        t.order("pending", "pending").await,
    ];
    t.reservation(Res::new(Some(orders[0]), v, 1, "-1 minute"))
        .await;
    t.reservation(Res::new(Some(orders[0]), v, 1, "-1 minute"))
        .await;
    t.reservation(Res::new(Some(orders[1]), v, 1, "-2 minutes"))
        .await;
    let hold = t.reservation(Res::new(None, v, 1, "-3 minutes")).await;
    let url = t.release_url();
    let env = [("DATABASE_URL", url.as_str())];
    let since = humantime::format_rfc3339(
        std::time::SystemTime::now() - std::time::Duration::from_secs(60),
    )
    .to_string();
    assert!(unreserver(&["run"], &env).status.success());

    let out = unreserver(&["events", "--since", &since], &env);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let lines: Vec<serde_json::Value> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let subjects: Vec<(String, i64)> = lines
        .iter()
        .map(|e| {
            let d = &e["detail"];
            let id = d
                .get("order_id")
                .unwrap_or(&d["reservation_id"])
                .as_i64()
                .unwrap();
            (e["detail-type"].as_str().unwrap().to_string(), id)
        })
        .collect();
    let mut expected = vec![
        ("Order Expired".to_string(), orders[0]),
        ("Order Expired".to_string(), orders[1]),
        ("Cart Hold Released".to_string(), hold),
    ];
    let mut got = subjects.clone();
    got.sort();
    expected.sort();
    assert_eq!(got, expected);
    assert!(lines
        .iter()
        .all(|e| e["source"] == "unreserver" && e["detail"]["run_id"].is_null()));

    let bad = unreserver(&["events", "--since", "yesterday-ish"], &env);
    assert_eq!(bad.status.code(), Some(2));
    let no_bus = unreserver(&["events", "--since", &since, "--publish"], &env);
    assert_eq!(no_bus.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&no_bus.stderr).contains("EVENT_BUS_NAME"));

    let report = unreserver(&["report", "--days", "2"], &env);
    assert!(report.status.success());
    let report = stdout_json(&report);
    let days = report["days"].as_array().unwrap();
    assert_eq!(days.len(), 2);
    let today = &days[0];
    assert_eq!(
        (
            &today["reservations_released"],
            &today["units_released"],
            &today["orders_cancelled"],
            &today["holds_released"]
        ),
        (
            &serde_json::json!(4),
            &serde_json::json!(4),
            &serde_json::json!(2),
            &serde_json::json!(1)
        )
    );
    let delay = &today["release_delay_seconds"];
    let (p50, p95, max) = (
        delay["p50"].as_f64().unwrap(),
        delay["p95"].as_f64().unwrap(),
        delay["max"].as_f64().unwrap(),
    );
    assert!(
        (55.0..200.0).contains(&p50) && p50 <= p95 && p95 <= max,
        "{delay}"
    );
    assert!((175.0..200.0).contains(&max), "{delay}");
    assert_eq!(days[1]["reservations_released"], 0);
    assert!(days[1]["release_delay_seconds"]["p95"].is_null());
    assert_eq!(
        unreserver(&["report", "--days", "0"], &env).status.code(),
        Some(2)
    );

    // A revived order is no longer among the window's events.
    let revived = unreserver(&["revive", &orders[0].to_string()], &env);
    assert_eq!(revived.status.code(), Some(0));
    let out = unreserver(&["events", "--since", &since], &env);
    let left: Vec<i64> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| {
            let e: serde_json::Value = serde_json::from_str(l).unwrap();
            let d = &e["detail"];
            d.get("order_id")
                .unwrap_or(&d["reservation_id"])
                .as_i64()
                .unwrap()
        })
        .collect();
    assert_eq!(left.len(), 2);
    assert!(!left.contains(&orders[0]), "{left:?}");
}

#[tokio::test]
async fn a_failed_publish_is_logged_by_order_id_and_the_run_still_succeeds() {
    let t = TestDb::new().await;
    let (_, order, r) = t.one_due_order(1).await;
    let url = t.release_url();
    let mut env: Vec<(&str, String)> = aws_env();
    env.push(("DATABASE_URL", url));
    env.push(("EVENT_BUS_NAME", "no-such-bus".into()));
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let out = unreserver(&["run"], &env);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    let report = stdout_json(&out);
    assert_eq!(
        (&report["events_published"], &report["events_failed"]),
        (&serde_json::json!(0), &serde_json::json!(1))
    );
    assert!(stderr.contains("expiry events not published"), "{stderr}");
    assert!(stderr.contains(&format!("[{order}]")), "{stderr}");
    assert_eq!(t.reservation_status(r).await, "expired");
}

/// Events still unpublished when the run's time is up (a bus that never answers) are counted
/// and named, by order id, in the log: the replay can send exactly those.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_unpublished_when_the_time_runs_out_are_named_by_order_id() {
    let t = TestDb::new().await;
    let mut orders = Vec::new();
    for _ in 0..3 {
        orders.push(t.one_due_order(1).await.1);
    }
    // An endpoint that accepts connections and never answers.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let silent = tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((socket, _)) = listener.accept().await {
            held.push(socket);
        }
    });
    let url = t.release_url();
    let endpoint = format!("http://127.0.0.1:{port}");
    let env = [
        ("DATABASE_URL", url.as_str()),
        ("EVENT_BUS_NAME", "slow-bus"),
        ("AWS_ENDPOINT_URL", endpoint.as_str()),
        ("AWS_REGION", "us-east-1"),
        ("AWS_ACCESS_KEY_ID", "test"),
        ("AWS_SECRET_ACCESS_KEY", "test"),
        ("TIME_BUDGET_SECONDS", "3"),
    ];
    let env: Vec<(String, String)> = env
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    let out = tokio::task::spawn_blocking(move || {
        let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
        unreserver(&["run"], &env)
    })
    .await
    .unwrap();
    silent.abort();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    let report = stdout_json(&out);
    assert_eq!(report["orders_cancelled"], 3, "{report}");
    assert_eq!(report["events_failed"], 3, "{report}");
    assert!(stderr.contains("still unpublished"), "{stderr}");
    for order in orders {
        assert!(
            stderr.contains(&order.to_string()),
            "order {order} not named: {stderr}"
        );
    }
}

#[tokio::test]
async fn release_answers_json_with_its_exit_codes() {
    let t = TestDb::new().await;
    let v = t.variant(2).await;
    let order = t.order("pending", "pending").await;
    t.reservation(Res::new(Some(order), v, 2, "10 minutes"))
        .await;
    let url = t.release_url();
    let env = [("DATABASE_URL", url.as_str())];
    let id = order.to_string();
    let out = unreserver(&["release", &id], &env);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        stdout_json(&out),
        serde_json::json!({"order_id": order, "released": true, "reason": "released",
            "reservations_released": 1, "units_released": 2,
            "events_published": 0, "events_failed": 0})
    );
    assert_eq!(t.reserved(v).await, 0);
    let again = unreserver(&["release", &id], &env);
    assert_eq!(again.status.code(), Some(3));
    assert_eq!(stdout_json(&again)["reason"], "nothing_active");
    let unknown = unreserver(&["release", "2147483647"], &env);
    assert_eq!(unknown.status.code(), Some(3));
    assert_eq!(stdout_json(&unknown)["reason"], "unknown_order");
    for bad in ["twelve", "0"] {
        let out = unreserver(&["release", bad], &env);
        assert_eq!(out.status.code(), Some(2), "{bad}");
        assert!(out.stdout.is_empty());
    }
}

/// `TIME_BUDGET_SECONDS` bounds a command that runs once, never a follower: `follow --for 3`
/// with a budget of 1 s follows its 3 s (it ended at the budget, after 1 s, when the budget
/// bounded it too; without `--for` it would stop after the default 240 s).
#[tokio::test]
async fn a_follower_runs_for_its_seconds_whatever_the_time_budget() {
    let t = TestDb::new().await;
    let url = t.release_url();
    let out = unreserver(
        &["follow", "--for", "3"],
        &[("DATABASE_URL", url.as_str()), ("TIME_BUDGET_SECONDS", "1")],
    );
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    let report = stdout_json(&out);
    assert_eq!(report["follow"]["ended"], "time", "{report}");
    let ms = report["duration_ms"].as_u64().unwrap_or(0);
    assert!(ms >= 3000, "followed {ms} ms of its 3 s: {report}");
}

//! The `unreserver` command line as other tools use it: JSON on stdout, exit codes, and a
//! one-line error naming the problem.

use crate::app::{Front, TestApp};
use crate::common::Res;

#[tokio::test]
async fn run_and_status_print_their_json_contracts() {
    let t = TestApp::spawn().await;
    let v = t.variant(3).await;
    for _ in 0..3 {
        let order = t.order("pending", "pending").await;
        t.reservation(Res::new(Some(order), v, 1, "-1 minute"))
            .await;
    }
    let status = t.cli(&["status"]).await;
    assert!(status.success());
    let status = status.json();
    for key in [
        "due_reservations",
        "oldest_due_age_seconds",
        "paid_orders_with_active_reservations",
        "variants_out_of_sync",
    ] {
        assert!(status.get(key).is_some(), "status lacks {key}");
    }
    assert_eq!(status["due_reservations"], 3);

    let dry = t.cli(&["run", "--dry-run", "--batch-size", "2"]).await;
    assert!(dry.success());
    let dry = dry.json();
    assert_eq!(dry["dry_run"], true);
    assert_eq!(dry["reservations_released"], 3);
    assert_eq!(dry["units_by_variant"][v.to_string()], 3);
    assert_eq!(t.reserved(v).await, 3);

    let out = t
        .cli(&["run", "--batch-size", "2", "--max-batches", "1"])
        .await;
    assert!(out.success());
    let report = out.json();
    for key in unreserver::CONTRACT_FIELDS {
        assert!(report.get(key).is_some(), "report lacks {key}");
    }
    assert_eq!(report["reservations_released"], 2);
    assert_eq!(report["stopped_reason"], "max_batches");
    assert_eq!(report["backlog_remaining"], 1);
    assert_eq!(t.reserved(v).await, 1);
}

#[tokio::test]
async fn a_bad_setting_is_named_before_connecting() {
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
        // A port nothing listens on: the error must come before any connection attempt.
        let mut front = Front::new().with("DATABASE_URL", "postgres://u:hunter2@127.0.0.1:1/db");
        for (name, value) in env {
            front = front.with(name, value);
        }
        let out = front.cli(&args).await;
        let stderr = &out.stderr;
        assert_eq!(out.code, Some(2), "{named}: {stderr}");
        assert!(stderr.contains(named), "{named}: {stderr}");
        assert!(stderr.contains("InvalidSetting"), "{stderr}");
        assert!(out.stdout.is_empty());
    }
    let out = Front::new().cli(&["run"]).await;
    assert_eq!(out.code, Some(2));
    assert!(out.stderr.contains("DATABASE_URL"));
}

/// Settings each within range but wrong together are refused before connecting, naming both:
/// expiry warnings without a bus to publish them on (they used to do nothing, silently), and a
/// lock timeout that does not fit in half the shop's `deadlock_timeout` (found only after
/// connecting, before).
#[tokio::test]
async fn settings_wrong_together_are_named_before_connecting() {
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
        let mut front = Front::new().with("DATABASE_URL", "postgres://u:hunter2@127.0.0.1:1/db");
        for (name, value) in env {
            front = front.with(name, value);
        }
        let out = front.cli(&["run"]).await;
        let stderr = &out.stderr;
        assert_eq!(out.code, Some(2), "{named:?}: {stderr}");
        assert!(stderr.contains("InvalidSetting"), "{stderr}");
        for name in named {
            assert!(stderr.contains(name), "{name}: {stderr}");
        }
    }
}

#[tokio::test]
async fn an_unreachable_database_is_named_without_the_password() {
    let out = Front::new()
        .with(
            "DATABASE_URL",
            "postgres://app:hunter2@127.0.0.1:1/shop?connect_timeout=2",
        )
        .cli(&["run"])
        .await;
    let stderr = &out.stderr;
    assert_eq!(out.code, Some(1), "{stderr}");
    assert!(
        stderr.contains("database unreachable (app@127.0.0.1:1/shop)"),
        "{stderr}"
    );
    assert!(!stderr.contains("hunter2"), "{stderr}");
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
}

#[tokio::test]
async fn a_missing_column_fails_the_command_naming_it() {
    let t = TestApp::spawn().await;
    t.exec("ALTER TABLE orders_inventoryreservation DROP COLUMN released_at")
        .await;
    let out = t.cli(&["run"]).await;
    let stderr = &out.stderr;
    assert_eq!(out.code, Some(1), "{stderr}");
    assert!(
        stderr.contains("orders_inventoryreservation.released_at"),
        "{stderr}"
    );
}

#[tokio::test]
async fn revive_answers_json_with_its_exit_codes() {
    let t = TestApp::spawn().await;
    let (v, order, _) = t.one_due_order(2).await;
    assert!(t.cli(&["run"]).await.success());
    assert_eq!(t.reserved(v).await, 0);

    let id = order.to_string();
    let out = t.cli(&["revive", &id]).await;
    assert_eq!(out.code, Some(0));
    assert_eq!(
        out.json(),
        &serde_json::json!({"order_id": order, "revived": true, "reason": "revived", "short": []})
    );
    assert_eq!(t.reserved(v).await, 2);
    assert_eq!(t.order_status(order).await, "pending");

    // A retry of a done revive is an answer, not an error: exit 0, `already_active`.
    let again = t.cli(&["revive", &id]).await;
    assert_eq!(again.code, Some(0));
    assert_eq!(again.json()["reason"], "already_active");
    assert_eq!(t.reserved(v).await, 2);
    let unknown = t.cli(&["revive", "2147483647"]).await;
    assert_eq!(unknown.code, Some(3));
    assert_eq!(unknown.json()["reason"], "unknown_order");
    let bad = t.cli(&["revive", "twelve"]).await;
    assert_eq!(bad.code, Some(2));
    assert!(bad.stdout.is_empty());
}

#[tokio::test]
async fn events_replays_the_window_and_report_counts_the_day() {
    let t = TestApp::spawn().await;
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
    let since = humantime::format_rfc3339(
        std::time::SystemTime::now() - std::time::Duration::from_secs(60),
    )
    .to_string();
    assert!(t.cli(&["run"]).await.success());

    let out = t.cli(&["events", "--since", &since]).await;
    assert!(out.success(), "{}", out.stderr);
    let lines: Vec<serde_json::Value> = out.json_lines();
    // One `Stock Released` for the variant: all four came back in one batch.
    let (stock, lines): (Vec<_>, Vec<_>) = lines
        .into_iter()
        .partition(|e| e["detail-type"] == "Stock Released");
    assert_eq!(stock.len(), 1, "{stock:#?}");
    assert_eq!(
        (
            &stock[0]["detail"]["product_variant_id"],
            &stock[0]["detail"]["units"]
        ),
        (&serde_json::json!(v), &serde_json::json!(4))
    );
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

    let bad = t.cli(&["events", "--since", "yesterday-ish"]).await;
    assert_eq!(bad.code, Some(2));
    let no_bus = t.cli(&["events", "--since", &since, "--publish"]).await;
    assert_eq!(no_bus.code, Some(2));
    assert!(no_bus.stderr.contains("EVENT_BUS_NAME"));

    let report = t.cli(&["report", "--days", "2"]).await;
    assert!(report.success());
    let report = report.json();
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
    assert_eq!(t.cli(&["report", "--days", "0"]).await.code, Some(2));

    // A revived order is no longer among the window's events.
    let revived = t.cli(&["revive", &orders[0].to_string()]).await;
    assert_eq!(revived.code, Some(0));
    let out = t.cli(&["events", "--since", &since]).await;
    let left: Vec<i64> = out
        .json_lines()
        .iter()
        .filter(|e| e["detail-type"] != "Stock Released")
        .map(|e| {
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
    let t = TestApp::spawn().await;
    let (_, order, r) = t.one_due_order(1).await;
    let out = t
        .with_aws()
        .with("EVENT_BUS_NAME", "no-such-bus")
        .cli(&["run"])
        .await;
    let stderr = &out.stderr;
    assert!(out.success(), "{stderr}");
    let report = out.json();
    assert_eq!(
        (&report["events_published"], &report["events_failed"]),
        (&serde_json::json!(0), &serde_json::json!(2))
    );
    assert!(stderr.contains("expiry events not published"), "{stderr}");
    assert!(stderr.contains(&format!("[{order}]")), "{stderr}");
    assert_eq!(t.reservation_status(r).await, "expired");
}

/// Events still unpublished when the run's time is up (a bus that never answers) are counted
/// and named, by order id, in the log: the replay can send exactly those.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_unpublished_when_the_time_runs_out_are_named_by_order_id() {
    let t = TestApp::spawn().await;
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
    let out = t
        .with_aws()
        .with("EVENT_BUS_NAME", "slow-bus")
        .with("AWS_ENDPOINT_URL", format!("http://127.0.0.1:{port}"))
        .with("TIME_BUDGET_SECONDS", "3")
        .cli(&["run"])
        .await;
    silent.abort();
    let stderr = &out.stderr;
    assert!(out.success(), "{stderr}");
    let report = out.json();
    assert_eq!(report["orders_cancelled"], 3, "{report}");
    // Each order's, and each of their variants' `Stock Released`.
    assert_eq!(report["events_failed"], 6, "{report}");
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
    let t = TestApp::spawn().await;
    let v = t.variant(2).await;
    let order = t.order("pending", "pending").await;
    t.reservation(Res::new(Some(order), v, 2, "10 minutes"))
        .await;
    let id = order.to_string();
    let out = t.cli(&["release", &id]).await;
    assert_eq!(out.code, Some(0), "{}", out.stderr);
    assert_eq!(
        out.json(),
        &serde_json::json!({"order_id": order, "released": true, "reason": "released",
            "reservations_released": 1, "units_released": 2,
            "events_published": 0, "events_failed": 0})
    );
    assert_eq!(t.reserved(v).await, 0);
    let again = t.cli(&["release", &id]).await;
    assert_eq!(again.code, Some(3));
    assert_eq!(again.json()["reason"], "nothing_active");
    let unknown = t.cli(&["release", "2147483647"]).await;
    assert_eq!(unknown.code, Some(3));
    assert_eq!(unknown.json()["reason"], "unknown_order");
    for bad in ["twelve", "0"] {
        let out = t.cli(&["release", bad]).await;
        assert_eq!(out.code, Some(2), "{bad}");
        assert!(out.stdout.is_empty());
    }
}

/// `TIME_BUDGET_SECONDS` bounds a command that runs once, never a follower: `follow --for 3`
/// with a budget of 1 s follows its 3 s (it ended at the budget, after 1 s, when the budget
/// bounded it too; without `--for` it would stop after the default 240 s).
#[tokio::test]
async fn a_follower_runs_for_its_seconds_whatever_the_time_budget() {
    let t = TestApp::spawn().await;
    let out = t
        .with("TIME_BUDGET_SECONDS", "1")
        .cli(&["follow", "--for", "3"])
        .await;
    assert_eq!(out.code, Some(0), "{out:?}");
    let report = out.json();
    assert_eq!(report["follow"]["ended"], "time", "{report}");
    let ms = report["duration_ms"].as_u64().unwrap_or(0);
    assert!(ms >= 3000, "followed {ms} ms of its 3 s: {report}");
}

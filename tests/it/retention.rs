//! What a purge removed is answered as such: `report` days, an `events --since` window and a
//! `revive` that reach before the retention horizon (recorded by the purge in
//! `unreserver_purge_horizon`, read by the release's role) say they were purged, not that
//! nothing happened or that the order never existed.

use std::time::{Duration, SystemTime};

use serde_json::Value;

use crate::app::TestApp;
use crate::purge::{cancelled_order, cli as purge_cli, days_ago, line};

/// The day `days` days before the database clock, `YYYY-MM-DD` (UTC).
async fn day(t: &TestApp, days: i32) -> String {
    t.text(&format!(
        "SELECT to_char((now() - interval '{days} days') AT TIME ZONE 'UTC', 'YYYY-MM-DD')"
    ))
    .await
}

fn report_day<'a>(report: &'a Value, day: &str) -> &'a Value {
    report["days"]
        .as_array()
        .and_then(|days| days.iter().find(|d| d["day"] == day))
        .unwrap_or_else(|| panic!("no day {day} in {report}"))
}

/// `report` over days a purge reached: those days say `purged` with null counts (their rows are
/// gone, not zero), the horizon's own day says `purged` with what is left, younger days are as
/// before; before any purge, no day is purged.
#[tokio::test]
async fn report_days_a_purge_reached_say_purged_not_zero() {
    let t = TestApp::spawn().await;
    let v = t.variant(1).await;
    let (old, young) = (days_ago(&t, 70).await, days_ago(&t, 30).await);
    line(&t, None, v, "expired", &old).await;
    line(&t, None, v, "expired", &young).await;
    let (old_day, between_day, young_day) =
        (day(&t, 70).await, day(&t, 65).await, day(&t, 30).await);

    let before = t.cli(&["report", "--days", "80"]).await;
    assert!(before.success(), "{}", before.stderr);
    assert_eq!(
        report_day(before.json(), &old_day)["reservations_released"],
        1
    );
    assert!(
        before.json()["purged_before"].is_null(),
        "{}",
        before.json()
    );

    let (purged, code) = purge_cli(&t, &["--apply"]).await;
    assert_eq!(
        (code, &purged["reservations"]["deleted"]),
        (0, &Value::from(1)),
        "{purged}"
    );

    let after = t.cli(&["report", "--days", "80"]).await;
    assert!(after.success(), "{}", after.stderr);
    let report = after.json();
    assert!(report["purged_before"].is_string(), "{report}");
    for gone in [&old_day, &between_day] {
        let d = report_day(report, gone);
        assert_eq!(d["purged"], true, "{d}");
        assert!(d["reservations_released"].is_null(), "{d}");
        assert!(d["units_released"].is_null(), "{d}");
    }
    let d = report_day(report, &young_day);
    assert_eq!(
        (&d["purged"], &d["reservations_released"]),
        (&Value::from(false), &Value::from(1)),
        "{d}"
    );
    let today = &report["days"][0];
    assert_eq!(
        (&today["purged"], &today["reservations_released"]),
        (&Value::from(false), &Value::from(0))
    );
}

/// `events --since` older than the horizon lists the events of the rows left, warns on stderr
/// that the range before the horizon was purged and exits 3; a window wholly after it exits 0.
#[tokio::test]
async fn events_since_before_the_horizon_say_the_range_is_purged() {
    let t = TestApp::spawn().await;
    let v = t.variant(1).await;
    let (old, young) = (days_ago(&t, 70).await, days_ago(&t, 30).await);
    line(&t, None, v, "expired", &old).await;
    let kept = line(&t, None, v, "expired", &young).await;
    let since = |days: u64| {
        humantime::format_rfc3339(SystemTime::now() - Duration::from_secs(days * 86_400))
            .to_string()
    };

    let before = t.cli(&["events", "--since", &since(75)]).await;
    assert_eq!(before.code, Some(0), "{}", before.stderr);
    let (_, code) = purge_cli(&t, &["--apply"]).await;
    assert_eq!(code, 0);

    let out = t.cli(&["events", "--since", &since(75)]).await;
    assert_eq!(out.code, Some(3), "{}", out.stderr);
    assert!(out.stderr.contains("purge"), "{}", out.stderr);
    assert!(out.stderr.contains("purged_before"), "{}", out.stderr);
    let holds: Vec<Value> = out
        .json_lines()
        .into_iter()
        .filter(|e| e["detail-type"] == "Cart Hold Released")
        .collect();
    assert_eq!(holds.len(), 1, "{holds:#?}");
    assert_eq!(holds[0]["detail"]["reservation_id"], kept);

    let recent = t.cli(&["events", "--since", &since(40)]).await;
    assert_eq!(recent.code, Some(0), "{}", recent.stderr);
    assert!(
        !recent.stderr.contains("purged_before"),
        "{}",
        recent.stderr
    );
}

/// `revive` of an order a purge deleted answers `purged`, not `unknown_order`; an id no purge
/// reached is still `unknown_order`.
#[tokio::test]
async fn revive_of_a_purged_order_says_purged() {
    let t = TestApp::spawn().await;
    let v = t.variant(1).await;
    let old = days_ago(&t, 70).await;
    let (order, _) = cancelled_order(&t, v, "pending", &old, &old, 2).await;
    let id = order.to_string();

    let (purged, code) = purge_cli(&t, &["--apply", "--orders"]).await;
    assert_eq!(
        (code, &purged["orders"]["deleted"]),
        (0, &Value::from(1)),
        "{purged}"
    );

    let out = t.cli(&["revive", &id]).await;
    assert_eq!(out.code, Some(3), "{}", out.stderr);
    assert_eq!(out.json()["reason"], "purged", "{}", out.json());
    let unknown = t.cli(&["revive", &(order + 1_000_000).to_string()]).await;
    assert_eq!(
        unknown.json()["reason"],
        "unknown_order",
        "{}",
        unknown.json()
    );
}

/// A dry run records nothing: before any purge deleted a row, nothing is answered as purged.
#[tokio::test]
async fn a_dry_run_purges_nothing_and_records_no_horizon() {
    let t = TestApp::spawn().await;
    let v = t.variant(1).await;
    let old = days_ago(&t, 70).await;
    line(&t, None, v, "expired", &old).await;
    let (dry, code) = purge_cli(&t, &["--orders"]).await;
    assert_eq!(code, 3, "{dry}");
    assert_eq!(
        t.i64("SELECT count(*) FROM unreserver_purge_horizon").await,
        0
    );
    let report = t.cli(&["report", "--days", "80"]).await;
    assert!(
        report.json()["purged_before"].is_null(),
        "{}",
        report.json()
    );
}

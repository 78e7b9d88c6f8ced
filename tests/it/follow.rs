//! Follow mode (`unreserver follow`, the Lambda's `follow` action): reservations falling due
//! one after another are released within seconds of their due time, a hold shortened while it
//! sleeps is not missed, rows that stay due on purpose (a paid order, a payment in grace) never
//! make it spin, and SIGTERM ends it after the batch in flight with the summed report. The
//! delays asserted here are correctness bounds; the figures are in BENCHMARKS.md.

use std::time::Duration;

use serde_json::{json, Value};

use crate::app::{RunningCli, TestApp};
use crate::common::Res;

/// Its exit code and the report it printed.
async fn report(child: RunningCli) -> (Option<i32>, Value) {
    let out = child.wait().await;
    (out.code, out.json().clone())
}

#[tokio::test]
async fn reservations_falling_due_one_after_another_are_released_within_seconds() {
    let t = TestApp::spawn().await;
    let v = t.variant(0).await;
    let mut orders = Vec::new();
    for k in 0..8 {
        let order = t.order("pending", "pending").await;
        let due = format!("{} milliseconds", 1000 + 500 * k);
        t.reservation(Res::new(Some(order), v, 1, Box::leak(due.into_boxed_str())))
            .await;
        orders.push(order);
    }
    // Due on purpose for the whole follow: a paid order's line, a payment in its grace.
    let paid = t.order("pending", "paid").await;
    t.reservation(Res::new(Some(paid), v, 1, "-1 minute")).await;
    let paying = t.order("pending", "processing").await;
    t.reservation(Res::new(Some(paying), v, 1, "-1 minute"))
        .await;
    // Due in an hour, then shortened by the shop while follow sleeps.
    let shortened = t.order("pending", "pending").await;
    let line = t
        .reservation(Res::new(Some(shortened), v, 1, "1 hour"))
        .await;
    t.exec(&format!(
        "UPDATE products_productvariant SET reserved_quantity = 11 WHERE id = {v}"
    ))
    .await;

    // Shortened after the last of the others fell due: follow sleeps towards the hour then.
    let child = t.start_cli(&["follow", "--for", "8"]);
    tokio::time::sleep(Duration::from_millis(5500)).await;
    t.exec(&format!(
        "UPDATE orders_inventoryreservation SET expires_at = now() + interval '1 second' \
         WHERE id = {line}"
    ))
    .await;
    let (code, report) = report(child).await;
    assert_eq!(code, Some(0), "{report}");
    assert_eq!(report["reservations_released"], 9, "{report}");
    assert_eq!(report["follow"]["ended"], "time");
    let delays = t
        .text(
            "SELECT string_agg(round(EXTRACT(EPOCH FROM released_at - expires_at)::numeric, 3)::text, ' ' \
             ORDER BY expires_at) FROM orders_inventoryreservation WHERE status = 'expired'",
        )
        .await;
    let (min, max) = (
        t.text(
            "SELECT min(EXTRACT(EPOCH FROM released_at - expires_at))::text \
             FROM orders_inventoryreservation WHERE status = 'expired'",
        )
        .await,
        t.text(
            "SELECT max(EXTRACT(EPOCH FROM released_at - expires_at))::text \
             FROM orders_inventoryreservation WHERE status = 'expired'",
        )
        .await,
    );
    let (min, max): (f64, f64) = (min.parse().unwrap(), max.parse().unwrap());
    assert!(min >= 0.0, "nothing released before it was due: {delays}");
    assert!(
        max < 2.0,
        "each released within 2 s of its due time: {delays}"
    );
    // The paid line and the line in grace stayed due throughout, and never made it spin: a
    // pass for each row falling due (and the first), not one per wake-up.
    assert_eq!(t.order_status(paid).await, "pending");
    assert_eq!(t.order_status(paying).await, "pending");
    let passes = report["follow"]["passes"].as_u64().unwrap();
    let wakeups = report["follow"]["wakeups"].as_u64().unwrap();
    assert!(
        passes <= 1 + 2 * 9,
        "{passes} passes: it spun on the rows due on purpose"
    );
    assert!(wakeups >= 7, "it looked at least once a second: {wakeups}");
    assert_eq!(report["paid_orders_with_due_reservations"], 1, "{report}");
    assert_eq!(t.drifted_counters().await, 0);
}

/// SIGTERM while a batch is in flight (each order update made to take 100 ms, 3 a batch): that batch
/// commits, no other starts, and the summed report says `stopped`.
#[tokio::test]
async fn sigterm_ends_follow_after_the_batch_in_flight() {
    let t = TestApp::spawn().await;
    let v = t.variant(40).await;
    for _ in 0..40 {
        let order = t.order("pending", "pending").await;
        t.reservation(Res::new(Some(order), v, 1, "-1 minute"))
            .await;
    }
    t.slow_updates("orders_order", 0.1).await;
    let child = t.with("BATCH_SIZE", "3").start_cli(&["follow"]);
    let watcher = t.connect().await;
    let mut seen = false;
    for _ in 0..2500 {
        seen = watcher
            .query_one(
                "SELECT EXISTS (SELECT 1 FROM pg_stat_activity WHERE wait_event = 'PgSleep' \
                 AND datname = current_database())",
                &[],
            )
            .await
            .unwrap()
            .get(0);
        if seen {
            break;
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    assert!(seen, "no batch was ever in flight");
    child.terminate();
    let (code, report) = report(child).await;
    assert_eq!(code, Some(0), "{report}");
    assert_eq!(report["stopped_reason"], "stopped", "{report}");
    assert_eq!(report["follow"]["ended"], "signal");
    let released = report["reservations_released"].as_u64().unwrap();
    assert_eq!(released % 3, 0, "whole batches only: {report}");
    assert!((3..39).contains(&released), "{report}");
    assert_eq!(
        t.i64("SELECT count(*) FROM orders_inventoryreservation WHERE status = 'expired'")
            .await as u64,
        released,
        "the report is what committed"
    );
    assert_eq!(json!(report["batches"]), json!(released / 3));
}

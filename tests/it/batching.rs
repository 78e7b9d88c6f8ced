//! How a run divides its work: batch counts, limits, the dry run, and paging past what it
//! cannot release.

use std::time::Instant;

use unreserver::StopReason;
use unreserver::{Database, RunOptions};

use crate::common::{run, settings, Res, TestDb};

async fn due_orders(t: &TestDb, variant: i64, n: usize) {
    for _ in 0..n {
        let order = t.order("pending", "pending").await;
        t.reservation(Res::new(Some(order), variant, 1, "-1 minute"))
            .await;
    }
}

#[tokio::test]
async fn batch_size_plus_one_due_orders_take_exactly_two_batches() {
    let t = TestDb::new().await;
    let v = t.variant(11).await;
    due_orders(&t, v, 11).await;
    let mut s = settings();
    s.batch_size = Some(10);
    let mut db = t.open_with(&s).await;
    let report = run(&mut db, &s, false).await;
    assert_eq!(report.batches, 2);
    assert_eq!(report.counts.reservations_released, 11);
    assert_eq!(report.counts.orders_cancelled, 11);
    assert_eq!(report.stopped_reason, StopReason::Drained);
    assert_eq!(t.reserved(v).await, 0);

    // Exactly batch size: one batch, which is not full-page-short, then an empty page.
    due_orders(&t, v, 10).await;
    t.exec(&format!(
        "UPDATE products_productvariant SET reserved_quantity = 10 WHERE id = {v}"
    ))
    .await;
    let report = run(&mut db, &s, false).await;
    assert_eq!(
        (report.batches, report.counts.reservations_released),
        (1, 10)
    );
}

#[tokio::test]
async fn max_batches_stops_the_run_and_reports_the_backlog() {
    let t = TestDb::new().await;
    let v = t.variant(25).await;
    due_orders(&t, v, 25).await;
    let mut s = settings();
    s.batch_size = Some(10);
    s.max_batches = 2;
    // One worker: two batches of ten (with two, the second would page one worker's share).
    s.workers = 1;
    let mut db = t.open_with(&s).await;
    let report = run(&mut db, &s, false).await;
    assert_eq!(report.stopped_reason, StopReason::MaxBatches);
    assert_eq!(
        (report.batches, report.counts.reservations_released),
        (2, 20)
    );
    assert_eq!(report.backlog_remaining, 5);
    assert!(report.oldest_due_age_seconds.unwrap() >= 59.0);
    let report = run(&mut db, &s, false).await;
    assert_eq!(report.counts.reservations_released, 5);
    assert_eq!(report.backlog_remaining, 0);
    assert_eq!(report.oldest_due_age_seconds, None);
}

/// The dry run runs the same statements, rolls every batch back, and reports exactly what the
/// real run then does — across several batches, with orders whose reservations straddle pages.
#[tokio::test]
async fn dry_run_reports_what_the_real_run_does_and_changes_nothing() {
    let t = TestDb::new().await;
    let hot = t.variant(0).await;
    let cold = t.variant(0).await;
    let d = t.drop_product(hot, 0).await;
    for i in 0..40 {
        let order = t
            .order("pending", if i % 5 == 0 { "processing" } else { "pending" })
            .await;
        let mut r = Res::new(
            Some(order),
            hot,
            1 + i % 3,
            if i % 4 == 0 {
                "-20 minutes"
            } else {
                "-2 minutes"
            },
        );
        if i % 2 == 0 {
            r.drop = Some(d);
        }
        t.reservation(r).await;
        // A second reservation far later in expiry order: the order shows up on two pages.
        t.reservation(Res::new(Some(order), cold, 2, "-1 second"))
            .await;
    }
    for _ in 0..5 {
        t.reservation(Res::new(None, cold, 1, "-3 minutes")).await;
    }
    t.exec(
        "UPDATE products_productvariant v SET reserved_quantity = (SELECT sum(quantity) \
           FROM orders_inventoryreservation r WHERE r.product_variant_id = v.id); \
         UPDATE drops_dropproduct d SET reserved_quantity = (SELECT sum(quantity) \
           FROM orders_inventoryreservation r WHERE r.drop_product_id = d.id)",
    )
    .await;
    let mut s = settings();
    s.batch_size = Some(7);
    let mut db = t.open_with(&s).await;
    let before = t.fingerprint().await;
    let counters_before = (
        t.reserved(hot).await,
        t.reserved(cold).await,
        t.drop_reserved(d).await,
    );

    let dry = run(&mut db, &s, true).await;
    assert_eq!(t.fingerprint().await, before, "the dry run changed data");
    assert!(dry.dry_run && dry.batches > 3);

    let real = run(&mut db, &s, false).await;
    assert!(!real.dry_run);
    assert_eq!(
        dry.counts.reservations_released,
        real.counts.reservations_released
    );
    assert_eq!(dry.counts.units_released, real.counts.units_released);
    assert_eq!(dry.counts.orders_cancelled, real.counts.orders_cancelled);
    assert_eq!(dry.counts.holds_released, real.counts.holds_released);
    assert_eq!(dry.counts.clamped_variants, real.counts.clamped_variants);
    assert_eq!(dry.backlog_remaining, real.backlog_remaining);
    let units = dry.units_by_variant.unwrap();
    assert_eq!(
        i64::from(counters_before.0 - t.reserved(hot).await),
        units.get(&hot).copied().unwrap_or(0)
    );
    assert_eq!(
        i64::from(counters_before.1 - t.reserved(cold).await),
        units.get(&cold).copied().unwrap_or(0)
    );
    assert_eq!(
        i64::from(counters_before.2 - t.drop_reserved(d).await),
        dry.units_by_drop.unwrap().get(&d).copied().unwrap_or(0)
    );
    // 6 orders in payment grace keep both their reservations (2 more are past it).
    assert_eq!(real.counts.reservations_released, 40 * 2 - 6 * 2 + 5);
    assert_eq!(t.drifted_counters().await, 0);
}

/// Rows a run cannot release (a paid order's) are paged past once per run, not rescanned by
/// every batch: 30 of them and one due order behind them take four pages.
#[tokio::test]
async fn paid_anomalies_are_paged_past_not_rescanned() {
    let t = TestDb::new().await;
    let v = t.variant(31).await;
    for _ in 0..30 {
        let order = t.order("confirmed", "paid").await;
        t.reservation(Res::new(Some(order), v, 1, "-1 hour")).await;
    }
    let order = t.order("pending", "pending").await;
    t.reservation(Res::new(Some(order), v, 1, "-1 minute"))
        .await;
    let mut s = settings();
    s.batch_size = Some(10);
    let mut db = t.open_with(&s).await;
    let report = run(&mut db, &s, false).await;
    assert_eq!(report.counts.reservations_released, 1);
    assert_eq!(report.batches, 4);
    assert_eq!(report.paid_orders_with_due_reservations, 30);
    assert_eq!(report.backlog_remaining, 0, "paid orders are not backlog");
    assert_eq!(t.reserved(v).await, 30);
}

#[tokio::test]
async fn a_spent_time_budget_stops_before_any_batch() {
    let t = TestDb::new().await;
    let v = t.variant(3).await;
    due_orders(&t, v, 3).await;
    let s = settings();
    let mut db = t.open_with(&s).await;
    let options = RunOptions {
        dry_run: false,
        deadline: Some(Instant::now()),
        ..RunOptions::default()
    };
    let report = unreserver::run(&mut db, &s, &options).await.unwrap();
    assert_eq!(report.stopped_reason, StopReason::TimeBudget);
    assert_eq!(
        (report.batches, report.counts.reservations_released),
        (0, 0)
    );
    assert_eq!(report.backlog_remaining, 3);
}

#[tokio::test]
async fn nothing_due_is_one_empty_page() {
    let (_t, mut db) = one_reservation_not_yet_due().await;
    let report = run(&mut db, &settings(), false).await;
    assert_eq!(report.batches, 0);
    assert_eq!(report.counts.reservations_released, 0);
    assert_eq!(report.stopped_reason, StopReason::Drained);
    assert_eq!(report.backlog_remaining, 0);
}

/// The release's statements are all prepared when the connection opens, so no batch ever
/// prepares one while it holds rows a shopper may be waiting for: the server's own list of the
/// session's prepared statements is the same after a run with nothing due and after one that
/// released an order.
#[tokio::test]
async fn the_statements_are_prepared_at_open_and_no_batch_prepares_again() {
    let (t, mut db) = one_reservation_not_yet_due().await;
    let opened = on_server(&db).await;
    assert_eq!(opened, 11 + 1, "the eleven, and the count's own statement");
    let report = run(&mut db, &settings(), false).await;
    assert_eq!(report.counts.reservations_released, 0);
    assert_eq!(on_server(&db).await, opened, "an empty run prepared again");

    let (due_order, _, _) = t.one_due_order(2).await;
    let report = run(&mut db, &settings(), false).await;
    assert_eq!(report.counts.reservations_released, 1);
    assert_eq!(t.order_status(due_order).await, "cancelled");
    assert_eq!(on_server(&db).await, opened, "a batch prepared again");
}

/// The statements the server has prepared on `db`'s session (protocol-level, not `PREPARE`).
async fn on_server(db: &Database) -> i64 {
    let sql = "SELECT count(*)::int8 FROM pg_prepared_statements WHERE NOT from_sql";
    db.client.query_one(sql, &[]).await.unwrap().get(0)
}

/// A database with one pending order's reservation due in 10 minutes, and a session on it.
async fn one_reservation_not_yet_due() -> (TestDb, Database) {
    let t = TestDb::new().await;
    let v = t.variant(1).await;
    let order = t.order("pending", "pending").await;
    t.reservation(Res::new(Some(order), v, 1, "10 minutes"))
        .await;
    let db = t.open().await;
    (t, db)
}

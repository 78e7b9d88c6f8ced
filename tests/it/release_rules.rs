//! The rules of release, one by one, including their boundaries, on the database clock.

use crate::common::{run, settings, Res, TestDb};

/// The demo's sample data holds one case of every rule; each ends as the rules say.
#[tokio::test]
async fn sample_data_ends_as_the_rules_say() {
    let t = TestDb::new().await;
    t.exec(include_str!("../../infra/sample-data.sql")).await;
    let mut db = t.open().await;
    let report = run(&mut db, &settings(), false).await;

    let outcome = |number: &'static str| {
        let t = &t;
        async move {
            let row = t
                .client
                .query_one(
                    "SELECT o.status, string_agg(r.status, ',' ORDER BY r.id), \
                            bool_and(r.released_at IS NOT NULL) = bool_and(r.status = 'expired') \
                       FROM orders_order o JOIN orders_inventoryreservation r ON r.order_id = o.id \
                      WHERE o.order_number = $1 GROUP BY o.status",
                    &[&number],
                )
                .await
                .unwrap();
            assert!(
                row.get::<_, bool>(2),
                "{number}: released_at and status disagree"
            );
            (row.get::<_, String>(0), row.get::<_, String>(1))
        }
    };
    let expect = [
        ("EXPIRED-PENDING", "cancelled", "expired"),
        ("PARTLY-EXPIRED-PENDING", "cancelled", "expired,expired"),
        ("NOT-YET-EXPIRED", "pending", "active"),
        ("PAID-ANOMALY", "confirmed", "active"),
        ("PROCESSING-IN-GRACE", "pending", "active"),
        ("PROCESSING-GRACE-OVER", "cancelled", "expired"),
        ("CONFIRMED-UNPAID", "confirmed", "active"),
        ("CANCELLED-STILL-HOLDING", "cancelled", "expired"),
        ("PAYMENT-FAILED", "cancelled", "expired"),
        ("DROP-EXPIRED", "cancelled", "expired"),
        ("CONVERTED-PAID", "confirmed", "converted"),
        ("LEGACY-EXPIRED", "cancelled", "expired"),
        ("LEGACY-FRESH", "pending", "active"),
        ("DRIFTED-COUNTER", "cancelled", "expired"),
        ("REFUNDED", "pending", "active"),
    ];
    for (number, order_status, reservations) in expect {
        assert_eq!(
            outcome(number).await,
            (order_status.to_string(), reservations.to_string()),
            "{number}"
        );
    }
    // The cancelled order keeps the time it was cancelled; the others get the run's clock.
    assert_eq!(
        t.i64(
            "SELECT count(*) FROM orders_order WHERE order_number = 'CANCELLED-STILL-HOLDING' \
               AND cancelled_at < now() - interval '80 minutes'"
        )
        .await,
        1
    );
    assert_eq!(
        t.i64(
            "SELECT count(*) FROM orders_order WHERE status = 'cancelled' AND cancelled_at IS NULL"
        )
        .await,
        0
    );
    // Cart holds: the expired one released, the live one kept.
    assert_eq!(
        t.text("SELECT string_agg(status, ',' ORDER BY id) FROM orders_inventoryreservation WHERE order_id IS NULL")
            .await,
        "expired,active"
    );
    assert_eq!(report.counts.reservations_released, 10);
    assert_eq!(report.counts.holds_released, 1);
    assert_eq!(report.counts.units_released, 18);
    assert_eq!(
        report.counts.orders_cancelled, 7,
        "the already-cancelled order is not counted"
    );
    assert_eq!(report.counts.clamped_variants, 1, "CAP-RED had drifted");
    assert_eq!(report.counts.clamped_drops, 0);
    assert_eq!(report.paid_orders_with_due_reservations, 1);
    assert_eq!(report.backlog_remaining, 0);
    // Every counter but the drifted one equals its active reservations again.
    assert_eq!(t.drifted_counters().await, 1);
    assert_eq!(t.drop_reserved(1).await, 0);
}

/// Due means `expires_at <= now()` on the batch's database clock: a row one second past
/// expiry is released, a row one second short of it is not (unless the clock passed it first).
#[tokio::test]
async fn expiry_boundary_is_on_the_database_clock() {
    let t = TestDb::new().await;
    let v = t.variant(3).await;
    let before = t.order("pending", "pending").await;
    let after = t.order("pending", "pending").await;
    let later = t.order("pending", "pending").await;
    let r_before = t
        .reservation(Res::new(Some(before), v, 1, "-1 second"))
        .await;
    let r_after = t.reservation(Res::new(Some(after), v, 1, "1 second")).await;
    let r_later = t.reservation(Res::new(Some(later), v, 1, "1 minute")).await;
    let mut db = t.open().await;
    run(&mut db, &settings(), false).await;

    assert_eq!(t.reservation_status(r_before).await, "expired");
    assert_eq!(t.order_status(before).await, "cancelled");
    assert_eq!(t.reservation_status(r_later).await, "active");
    // The +1 s row is released exactly when the batch's clock had reached its expiry.
    let clock_passed = t
        .i64(&format!(
            "SELECT count(*) FROM orders_inventoryreservation a, orders_inventoryreservation b \
              WHERE a.id = {r_before} AND b.id = {r_after} AND a.released_at >= b.expires_at"
        ))
        .await
        == 1;
    let expected = if clock_passed { "expired" } else { "active" };
    assert_eq!(t.reservation_status(r_after).await, expected);
    // Nothing was released before it was due.
    assert_eq!(
        t.i64("SELECT count(*) FROM orders_inventoryreservation WHERE status = 'expired' AND released_at < expires_at")
            .await,
        0
    );
    assert_eq!(t.drifted_counters().await, 0);
}

/// A legacy row (NULL `expires_at`) is due `RESERVATION_TIMEOUT_MINUTES` after `created_at`.
#[tokio::test]
async fn legacy_rows_are_due_after_the_timeout() {
    let t = TestDb::new().await;
    let v = t.variant(4).await;
    let mut ids = Vec::new();
    for created in [
        "-15 minutes -1 second",
        "-14 minutes -59 seconds",
        "-14 minutes",
        "-6 minutes",
    ] {
        let order = t.order("pending", "pending").await;
        let mut r = Res::new(Some(order), v, 1, "0");
        r.expires = None;
        r.created = created;
        ids.push(t.reservation(r).await);
    }
    let mut db = t.open().await;
    let report = run(&mut db, &settings(), false).await;
    assert_eq!(t.reservation_status(ids[0]).await, "expired");
    assert_eq!(t.reservation_status(ids[2]).await, "active");
    assert_eq!(t.reservation_status(ids[3]).await, "active");
    let second = t.reservation_status(ids[1]).await;
    assert_eq!(
        report.counts.reservations_released,
        if second == "expired" { 2 } else { 1 }
    );

    // A shorter timeout makes the 6-minute-old row due.
    let mut short = settings();
    short.reservation_timeout_minutes = 5;
    let report = run(&mut db, &short, false).await;
    assert!(report.counts.reservations_released >= 2);
    assert_eq!(t.reservation_status(ids[3]).await, "expired");
    assert_eq!(t.drifted_counters().await, 0);
}

/// An order mid-payment (`processing`) gets the grace on top of its expiry; with no grace it is
/// due at expiry like any other.
#[tokio::test]
async fn processing_orders_get_the_grace() {
    let t = TestDb::new().await;
    let v = t.variant(3).await;
    let in_grace = t.order("pending", "processing").await;
    let grace_over = t.order("pending", "processing").await;
    let pending = t.order("pending", "pending").await;
    // A minute inside its grace: still in it however long a loaded machine takes to start
    // the run.
    t.reservation(Res::new(Some(in_grace), v, 1, "-14 minutes"))
        .await;
    t.reservation(Res::new(Some(grace_over), v, 1, "-15 minutes -1 second"))
        .await;
    t.reservation(Res::new(Some(pending), v, 1, "-1 second"))
        .await;
    let mut db = t.open().await;
    let report = run(&mut db, &settings(), false).await;
    assert_eq!(t.order_status(in_grace).await, "pending");
    assert_eq!(t.order_status(grace_over).await, "cancelled");
    assert_eq!(t.order_status(pending).await, "cancelled");
    assert_eq!(report.counts.reservations_released, 2);

    let mut no_grace = settings();
    no_grace.payment_processing_grace_minutes = 0;
    let report = run(&mut db, &no_grace, false).await;
    assert_eq!(report.counts.reservations_released, 1);
    assert_eq!(t.order_status(in_grace).await, "cancelled");
    assert_eq!(t.drifted_counters().await, 0);
}

/// Paid orders, refunded ones, orders in any status but pending/cancelled, and reservations
/// not active are never touched; a failed payment and a cancelled order are released.
#[tokio::test]
async fn only_unpaid_pending_or_cancelled_orders_are_touched() {
    let t = TestDb::new().await;
    let v = t.variant(0).await;
    let mut untouched = Vec::new();
    for (status, payment) in [
        ("pending", "paid"),
        ("confirmed", "paid"),
        ("cancelled", "paid"),
        ("pending", "refunded"),
        ("confirmed", "pending"),
        ("shipped", "pending"),
        ("pending", "some-new-status"),
    ] {
        let order = t.order(status, payment).await;
        untouched.push(t.reservation(Res::new(Some(order), v, 1, "-1 hour")).await);
    }
    for status in ["converted", "released", "expired"] {
        let order = t.order("pending", "pending").await;
        let mut r = Res::new(Some(order), v, 1, "-1 hour");
        r.status = status;
        untouched.push(t.reservation(r).await);
    }
    let failed = t.order("pending", "failed").await;
    let cancelled = t.order("cancelled", "pending").await;
    let r_failed = t.reservation(Res::new(Some(failed), v, 2, "-1 hour")).await;
    let r_cancelled = t
        .reservation(Res::new(Some(cancelled), v, 3, "-1 hour"))
        .await;
    t.exec(&format!(
        "UPDATE products_productvariant SET reserved_quantity = 12 WHERE id = {v}"
    ))
    .await;
    let before = t
        .text("SELECT string_agg(row(r.*)::text || row(o.*)::text, ';' ORDER BY r.id) \
               FROM orders_inventoryreservation r JOIN orders_order o ON o.id = r.order_id \
               WHERE r.id NOT IN (SELECT id FROM orders_inventoryreservation ORDER BY id DESC LIMIT 2)")
        .await;
    let mut db = t.open().await;
    let report = run(&mut db, &settings(), false).await;
    let after = t
        .text("SELECT string_agg(row(r.*)::text || row(o.*)::text, ';' ORDER BY r.id) \
               FROM orders_inventoryreservation r JOIN orders_order o ON o.id = r.order_id \
               WHERE r.id NOT IN (SELECT id FROM orders_inventoryreservation ORDER BY id DESC LIMIT 2)")
        .await;
    assert_eq!(
        before, after,
        "an order that must not be touched was changed"
    );
    assert_eq!(untouched.len(), 10);
    assert_eq!(t.reservation_status(r_failed).await, "expired");
    assert_eq!(t.reservation_status(r_cancelled).await, "expired");
    assert_eq!(report.counts.reservations_released, 2);
    assert_eq!(report.counts.orders_cancelled, 1);
    assert_eq!(report.paid_orders_with_due_reservations, 3);
    assert_eq!(t.reserved(v).await, 7);
}

/// All active reservations of an order go together, even those not yet due; the variant and
/// drop counters get the units back summed per row.
#[tokio::test]
async fn an_order_is_released_whole_with_its_drop_units() {
    let t = TestDb::new().await;
    let v1 = t.variant(5).await;
    let v2 = t.variant(2).await;
    let d = t.drop_product(v2, 2).await;
    let order = t.order("pending", "pending").await;
    t.reservation(Res::new(Some(order), v1, 2, "-1 minute"))
        .await;
    t.reservation(Res::new(Some(order), v1, 3, "10 minutes"))
        .await;
    let mut r = Res::new(Some(order), v2, 2, "14 minutes");
    r.drop = Some(d);
    t.reservation(r).await;
    let mut db = t.open().await;
    let report = run(&mut db, &settings(), false).await;
    assert_eq!(report.counts.reservations_released, 3);
    assert_eq!(report.counts.units_released, 7);
    assert_eq!(report.counts.orders_cancelled, 1);
    assert_eq!((t.reserved(v1).await, t.reserved(v2).await), (0, 0));
    assert_eq!(t.drop_reserved(d).await, 0);
    assert_eq!(
        report.counts.clamped_variants + report.counts.clamped_drops,
        0
    );
}

/// A counter that had drifted below what its reservations hold stops at zero, and each clamp
/// is counted.
#[tokio::test]
async fn counters_never_go_below_zero_and_clamps_are_counted() {
    let t = TestDb::new().await;
    let v = t.variant(1).await;
    let d = t.drop_product(v, 0).await;
    let order = t.order("pending", "pending").await;
    let mut r = Res::new(Some(order), v, 3, "-1 minute");
    r.drop = Some(d);
    t.reservation(r).await;
    let mut db = t.open().await;
    let report = run(&mut db, &settings(), false).await;
    assert_eq!(report.counts.reservations_released, 1);
    assert_eq!((t.reserved(v).await, t.drop_reserved(d).await), (0, 0));
    assert_eq!(
        (report.counts.clamped_variants, report.counts.clamped_drops),
        (1, 1)
    );
}

/// A shop whose ids are `integer` (older Django `AutoField`s) and whose columns allow NULL gets
/// the same results: every value the release reads is cast in SQL, never decoded by guesswork.
/// Orders without an order number are cancelled and counted all the same.
#[tokio::test]
async fn integer_ids_and_nullable_columns_work_the_same() {
    let t = TestDb::from_template("template0").await;
    let schema = include_str!("../../infra/schema.sql")
        .replace("bigint", "integer")
        .replace(" NOT NULL DEFAULT 'pending'", " DEFAULT 'pending'")
        .replace(" NOT NULL DEFAULT 'active'", " DEFAULT 'active'")
        .replace(
            "order_number varchar(32) NOT NULL UNIQUE",
            "order_number varchar(32) UNIQUE",
        );
    t.exec(&schema).await;
    t.exec(include_str!("../../infra/sample-data.sql")).await;
    t.exec("UPDATE orders_order SET order_number = NULL").await;
    let tls = unreserver::tls_connector(None, &unreserver::RdsCaRegions::All).unwrap();
    let mut db = unreserver::Database::open(&t.config(), &tls, 100)
        .await
        .unwrap();
    let report = run(&mut db, &settings(), true).await;
    assert_eq!(report.counts.reservations_released, 10);
    let report = run(&mut db, &settings(), false).await;
    assert_eq!(report.counts.reservations_released, 10);
    assert_eq!(report.counts.orders_cancelled, 7);
    assert_eq!(report.counts.clamped_variants, 1);
    let status = unreserver::status(&db, &settings()).await.unwrap();
    assert_eq!(status.due_reservations, 0);
    assert_eq!(status.missing_indexes.len(), 2);
}

/// The release delay counts only the lines that were due: a line released with its order an
/// hour before its own expiry was not late (and must not pull the figures below zero).
#[tokio::test]
async fn the_release_delay_counts_only_lines_that_were_due() {
    let t = TestDb::new().await;
    let v = t.variant(2).await;
    let order = t.order("pending", "pending").await;
    t.reservation(Res::new(Some(order), v, 1, "-30 seconds"))
        .await;
    t.reservation(Res::new(Some(order), v, 1, "+1 hour")).await;
    let mut db = t.open().await;
    let report = run(&mut db, &settings(), false).await;
    assert_eq!(report.counts.reservations_released, 2);
    assert!(
        report.release_delay_p95_seconds.unwrap() >= 29.0,
        "{report:?}"
    );
    let days = unreserver::release_delay_report(&db, &settings(), 1)
        .await
        .unwrap();
    let delay = &days.days[0].release_delay_seconds;
    assert_eq!(days.days[0].reservations_released, Some(2));
    for figure in [delay.p50, delay.p95, delay.max] {
        let figure = figure.unwrap();
        assert!((29.0..300.0).contains(&figure), "{delay:?}");
    }
}

/// The report's days are UTC days, split at midnight UTC: a reservation released one second
/// after today's midnight counts today, one released one second before it counts yesterday,
/// and one released a second before yesterday's midnight is outside `--days 2`; each day's
/// delay is its own line's.
#[tokio::test]
async fn the_report_splits_its_days_at_midnight_utc() {
    let t = TestDb::new().await;
    let v = t.variant(0).await;
    for (name, released, delay) in [
        (
            "TODAY",
            "date_trunc('day', now(), 'UTC') + interval '1 second'",
            10,
        ),
        (
            "YESTERDAY",
            "date_trunc('day', now(), 'UTC') - interval '1 second'",
            20,
        ),
        (
            "BEFORE",
            "date_trunc('day', now(), 'UTC') - interval '1 day 1 second'",
            40,
        ),
    ] {
        t.exec(&format!(
            "WITH o AS (INSERT INTO orders_order (order_number, status, payment_status, cancelled_at) \
               VALUES ('{name}', 'cancelled', 'pending', {released}) RETURNING id, cancelled_at) \
             INSERT INTO orders_inventoryreservation (order_id, product_variant_id, quantity, status, \
               created_at, expires_at, released_at) \
             SELECT id, {v}, 1, 'expired', cancelled_at - interval '20 minutes', \
               cancelled_at - interval '{delay} seconds', cancelled_at FROM o"
        ))
        .await;
    }
    let db = t.open().await;
    let report = unreserver::release_delay_report(&db, &settings(), 2)
        .await
        .unwrap();
    let figures: Vec<(Option<i64>, Option<f64>)> = report
        .days
        .iter()
        .map(|d| (d.reservations_released, d.release_delay_seconds.max))
        .collect();
    assert_eq!(
        figures,
        [(Some(1), Some(10.0)), (Some(1), Some(20.0))],
        "{report:?}"
    );
    let today: String = t
        .client
        .query_one(
            "SELECT to_char(now() AT TIME ZONE 'UTC', 'YYYY-MM-DD')",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(report.days[0].day, today);
}

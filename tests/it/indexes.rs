//! The release on the indexes a shop really has: the recommended ones, an equivalent under
//! another name, only a plain partial index on `expires_at`, or only Django's foreign-key
//! indexes. Without an index that serves the keyset page, a run reads the due rows in passes
//! (one scan each) — and releases exactly the same.

use crate::common::{run, settings, Res, TestDb};

const RECOMMENDED: &str =
    "DROP INDEX unreserver_active_expiry_idx; DROP INDEX unreserver_active_legacy_idx";

/// A test database without the recommended indexes but with `indexes` (SQL, may be empty),
/// seeded ([`seed`]): the database, the seeded variant, and what the preflight found.
async fn seeded_with(indexes: &str) -> (TestDb, i64, unreserver::Database) {
    let t = TestDb::new().await;
    t.exec(RECOMMENDED).await;
    if !indexes.is_empty() {
        t.exec(indexes).await;
    }
    let v = seed(&t).await;
    let db = t.open().await;
    (t, v, db)
}

/// 120 due orders (1 or 2 reservations), 10 legacy due rows, 30 not yet due, on one variant.
async fn seed(t: &TestDb) -> i64 {
    let v = t.variant(0).await;
    let mut reserved = 0;
    for i in 0..120 {
        let order = t.order("pending", "pending").await;
        t.reservation(Res::new(Some(order), v, 1, "-2 minutes"))
            .await;
        reserved += 1;
        if i % 3 == 0 {
            t.reservation(Res::new(Some(order), v, 1, "-1 minute"))
                .await;
            reserved += 1;
        }
    }
    for _ in 0..10 {
        let order = t.order("pending", "pending").await;
        let mut r = Res::new(Some(order), v, 1, "-1 minute");
        r.expires = None;
        r.created = "-1 hour";
        t.reservation(r).await;
        reserved += 1;
    }
    for _ in 0..30 {
        let order = t.order("pending", "pending").await;
        t.reservation(Res::new(Some(order), v, 1, "10 minutes"))
            .await;
        reserved += 1;
    }
    t.exec(&format!(
        "UPDATE products_productvariant SET reserved_quantity = {reserved} WHERE id = {v}"
    ))
    .await;
    v
}

/// The defaults with batches of 20 and passes of at most 100 rows, so a small seed takes several
/// of each; one worker, so that the scans can be counted (each worker scans its own share).
fn small_passes() -> unreserver::ReleaseSettings {
    let mut s = settings();
    s.batch_size = Some(20);
    s.pass_size = 100;
    s.workers = 1;
    s
}

async fn drain_and_check(t: &TestDb, v: i64, expect_passes: bool) {
    let s = small_passes();
    let mut db = t.open_with(&s).await;
    let report = run(&mut db, &s, false).await;
    assert_eq!(
        report.counts.reservations_released,
        120 + 40 + 10,
        "{report:?}"
    );
    assert_eq!(report.counts.orders_cancelled, 130);
    assert_eq!(report.backlog_remaining, 0);
    assert_eq!(
        t.reserved(v).await,
        30,
        "the not-yet-due units stay reserved"
    );
    assert_eq!(t.drifted_counters().await, 0);
    if expect_passes {
        // 170 due rows, at most 100 a pass: exactly two scans (100 rows, then 70, fewer than a
        // pass: nothing more is due). A scan per batch of 20 would make it nine or more.
        assert_eq!(report.pass_scans, 2, "{report:?}");
    } else {
        assert_eq!(report.pass_scans, 0, "{report:?}");
    }
}

#[tokio::test]
async fn without_the_recommended_indexes_a_run_reads_in_passes_and_releases_the_same() {
    let (t, v, db) = seeded_with("").await;
    assert_eq!(db.preflight.missing_indexes.len(), 2);
    assert!(!db.preflight.expiry_index);
    drain_and_check(&t, v, true).await;
}

#[tokio::test]
async fn an_equivalent_index_under_another_name_serves() {
    let (t, v, db) = seeded_with(
        "CREATE INDEX shop_reservations_due ON orders_inventoryreservation (expires_at, id) \
           WHERE status = 'active'; \
         CREATE INDEX shop_reservations_legacy ON orders_inventoryreservation (created_at, id, quantity) \
           WHERE status = 'active' AND expires_at IS NULL",
    )
    .await;
    assert!(
        db.preflight.missing_indexes.is_empty(),
        "{:?}",
        db.preflight.missing_indexes
    );
    drain_and_check(&t, v, false).await;
}

#[tokio::test]
async fn only_a_plain_partial_index_on_expires_at_means_passes() {
    let (t, v, db) = seeded_with(
        "CREATE INDEX shop_expiry ON orders_inventoryreservation (expires_at) WHERE status = 'active'",
    )
    .await;
    assert_eq!(
        db.preflight.missing_indexes,
        [
            "unreserver_active_expiry_idx",
            "unreserver_active_legacy_idx"
        ]
    );
    drain_and_check(&t, v, true).await;
}

/// Indexes on the right columns that no scan returns in the page's order — NULLs first, `INCLUDE`
/// rather than key columns, a BRIN — are not taken for the keyset page's index (the planner
/// would sort every remaining due row for each page): reported missing, and the run reads in
/// passes.
#[tokio::test]
async fn an_index_that_cannot_give_the_due_order_is_not_taken_for_one() {
    let (t, v, db) = seeded_with(
        "CREATE INDEX shop_nulls_first ON orders_inventoryreservation (expires_at NULLS FIRST, id) \
           WHERE status = 'active'; \
         CREATE INDEX shop_included ON orders_inventoryreservation (expires_at) INCLUDE (id) \
           WHERE status = 'active'; \
         CREATE INDEX shop_brin ON orders_inventoryreservation USING brin (expires_at, id); \
         CREATE INDEX shop_legacy_desc ON orders_inventoryreservation (created_at DESC, id) \
           WHERE status = 'active' AND expires_at IS NULL",
    )
    .await;
    assert_eq!(
        db.preflight.missing_indexes,
        [
            "unreserver_active_expiry_idx",
            "unreserver_active_legacy_idx"
        ]
    );
    assert!(!db.preflight.expiry_index);
    drain_and_check(&t, v, true).await;
}

/// An index the planner scans backward for the page (both keys `DESC NULLS FIRST`, as `DESC`
/// gives by default) serves.
#[tokio::test]
async fn a_descending_index_serves_the_page() {
    let (t, v, db) = seeded_with(
        "CREATE INDEX shop_due_desc ON orders_inventoryreservation (expires_at DESC, id DESC) \
           WHERE status = 'active'",
    )
    .await;
    assert_eq!(
        db.preflight.missing_indexes,
        ["unreserver_active_legacy_idx"]
    );
    assert!(db.preflight.expiry_index);
    drain_and_check(&t, v, false).await;
}

/// The optional indexes of `infra/indexes.sql` (the BRIN on `released_at`, `cancelled_at`) are
/// never reported missing.
#[tokio::test]
async fn the_optional_indexes_are_never_reported_missing() {
    let t = crate::common::TestDb::new().await;
    t.exec("DROP INDEX unreserver_released_at_brin; DROP INDEX unreserver_cancelled_at_idx")
        .await;
    let mut db = t.open().await;
    let status = unreserver::status(&db, &crate::common::settings())
        .await
        .unwrap();
    assert!(
        status.missing_indexes.is_empty(),
        "{:?}",
        status.missing_indexes
    );
    let report = crate::common::run(&mut db, &crate::common::settings(), false).await;
    assert!(report.missing_indexes.is_empty());
}

/// In passes, an order's rows far apart in due order cost one batch: the rows of the orders a
/// batch released are dropped from the pass, not claimed again by a later batch that would
/// find nothing.
#[tokio::test]
async fn a_pass_drops_the_rows_of_orders_already_released() {
    let t = TestDb::new().await;
    t.exec(RECOMMENDED).await;
    let v = t.variant(0).await;
    for _ in 0..20 {
        let order = t.order("pending", "pending").await;
        t.reservation(Res::new(Some(order), v, 1, "-20 minutes"))
            .await;
        t.reservation(Res::new(Some(order), v, 1, "-1 minute"))
            .await;
    }
    t.exec(&format!(
        "UPDATE products_productvariant SET reserved_quantity = 40 WHERE id = {v}"
    ))
    .await;
    let s = small_passes();
    let mut db = t.open_with(&s).await;
    assert!(!db.preflight.expiry_index);
    let report = run(&mut db, &s, false).await;
    assert_eq!(report.counts.reservations_released, 40, "{report:?}");
    assert_eq!(report.counts.orders_cancelled, 20);
    // The first 20 rows are one of each order; the batch takes the other 20 along.
    assert_eq!(report.batches, 1, "{report:?}");
    assert_eq!(report.counts.no_longer_due, 0, "{report:?}");
    assert_eq!(t.reserved(v).await, 0);
}

/// Two workers reading in passes share the backlog: the rest of the first pass, which the run
/// reads alone before it spreads, is given back and each worker scans its own share, so
/// neither releases more than two thirds (about half; a trigger notes the backend that
/// released each row), every due row once, legacy rows (no `expires_at`) included. Kept by the
/// first worker while the second scanned on after it, the rest of that pass (here every due
/// row) left the second nothing to do (and with passes of 500 rows, 50 of 600).
#[tokio::test]
async fn two_workers_reading_in_passes_share_the_backlog() {
    let t = TestDb::new().await;
    t.exec(RECOMMENDED).await;
    let v = t.variant(660).await;
    t.exec(&format!(
        "INSERT INTO orders_order (order_number, status, payment_status) \
           SELECT 'W-' || g, 'pending', 'pending' FROM generate_series(1, 600) g; \
         INSERT INTO orders_inventoryreservation \
             (order_id, product_variant_id, quantity, status, created_at, expires_at) \
           SELECT o.id, {v}, 1, 'active', now() - interval '30 minutes', \
                  now() - interval '20 minutes' + (o.id % 60) * interval '1 second' \
             FROM orders_order o WHERE o.order_number LIKE 'W-%'; \
         INSERT INTO orders_order (order_number, status, payment_status) \
           SELECT 'L-' || g, 'pending', 'pending' FROM generate_series(1, 60) g; \
         INSERT INTO orders_inventoryreservation \
             (order_id, product_variant_id, quantity, status, created_at, expires_at) \
           SELECT o.id, {v}, 1, 'active', now() - interval '1 hour' + o.id * interval '1 ms', NULL \
             FROM orders_order o WHERE o.order_number LIKE 'L-%'; \
         CREATE TABLE released_by (pid int); \
         CREATE FUNCTION note_release() RETURNS trigger LANGUAGE plpgsql SECURITY DEFINER AS $$ \
           BEGIN INSERT INTO released_by VALUES (pg_backend_pid()); RETURN NEW; END $$; \
         CREATE TRIGGER note_release AFTER UPDATE ON orders_inventoryreservation FOR EACH ROW \
           WHEN (OLD.status = 'active' AND NEW.status = 'expired') EXECUTE FUNCTION note_release()"
    ))
    .await;
    let mut s = settings();
    s.batch_size = Some(50);
    // The first pass takes every due row, legacy ones last: both cursors go back.
    s.pass_size = 700;
    s.workers = 2;
    // Batches of 2 s at most (the shop's deadlock_timeout taken as 4 s), so that a loaded
    // machine cuts none: a cut batch goes on in a new session, another backend.
    s.shop_deadlock_timeout_ms = Some(4000);
    let mut db = t.open_with(&s).await;
    let report = run(&mut db, &s, false).await;
    assert_eq!(report.counts.reservations_released, 660, "{report:?}");
    assert_eq!(report.controller.workers, 2, "{report:?}");
    assert_eq!(t.reserved(v).await, 0);
    assert_eq!(t.drifted_counters().await, 0);
    let c = t.connect().await;
    let shares: Vec<i64> = c
        .query(
            "SELECT count(*) FROM released_by GROUP BY pid ORDER BY 1",
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|row| row.get(0))
        .collect();
    assert_eq!(shares.iter().sum::<i64>(), 660, "{shares:?}");
    // No backend released more than two thirds (a session that replaced a cut one counts
    // apart, and only makes the shares smaller).
    assert!(
        shares.len() >= 2 && shares.iter().all(|&n| n <= 440),
        "the rows released by each worker: {shares:?}"
    );
}

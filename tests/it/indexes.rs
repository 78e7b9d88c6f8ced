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

/// The rows of `orders_inventoryreservation` a plan's scans read (returned or filtered out),
/// from `EXPLAIN (ANALYZE, FORMAT JSON)`.
fn reservation_rows_read(node: &serde_json::Value) -> f64 {
    let own = match node["Relation Name"].as_str() {
        Some("orders_inventoryreservation") => {
            node["Actual Rows"].as_f64().unwrap_or(0.0)
                + node["Rows Removed by Filter"].as_f64().unwrap_or(0.0)
        }
        _ => 0.0,
    };
    let children = node["Plans"].as_array().map_or(0.0, |plans| {
        plans.iter().map(reservation_rows_read).sum::<f64>()
    });
    own + children
}

/// A page walks the keyset index in order and stops at its `LIMIT`, for one worker's share and
/// for one of two: among 20,000 analyzed due rows a page of 200 reads at most 800. With the
/// share filter as a bare equality the planner took it for one row in 200, read every due
/// row after the cursor (a bitmap scan, then a sort) and failed this with 20,000.
#[tokio::test]
async fn a_page_walks_the_keyset_index_and_stops_at_its_limit() {
    let t = TestDb::new().await;
    let v = t.variant(0).await;
    t.exec(&format!(
        "INSERT INTO orders_order (order_number, status, payment_status) \
           SELECT 'P-' || g, 'pending', 'pending' FROM generate_series(1, 20000) g; \
         INSERT INTO orders_inventoryreservation \
             (order_id, product_variant_id, quantity, status, created_at, expires_at) \
           SELECT o.id, {v}, 1, 'active', now() - interval '30 minutes', \
                  now() - interval '20 minutes' + (o.id % 600) * interval '1 second' \
             FROM orders_order o WHERE o.order_number LIKE 'P-%'; \
         ANALYZE"
    ))
    .await;
    let c = t.connect().await;
    c.batch_execute("SET max_parallel_workers_per_gather = 0")
        .await
        .unwrap();
    c.batch_execute(&format!("PREPARE page AS {}", unreserver::db::sql::PAGE))
        .await
        .unwrap();
    for (of, index) in [(1, 0), (2, 1)] {
        let explain = format!(
            "EXPLAIN (ANALYZE, FORMAT JSON) \
             EXECUTE page('-infinity', 0, '-infinity', 0, 200, 15, {of}, {index})"
        );
        let rows = c.simple_query(&explain).await.unwrap();
        let text = rows
            .iter()
            .find_map(|m| match m {
                tokio_postgres::SimpleQueryMessage::Row(row) => row.get(0).map(str::to_owned),
                _ => None,
            })
            .expect("EXPLAIN returned no plan");
        let plan: serde_json::Value = serde_json::from_str(&text).unwrap();
        let read = reservation_rows_read(&plan[0]["Plan"]);
        assert!(
            read <= 800.0,
            "a page of 200 ({index} of {of} shares) read {read} rows: {plan:#}"
        );
    }
}

/// The release step updates the rows it locked by primary key, however stale the statistics:
/// with the first 10,000 of 20,000 due rows expired since the last `ANALYZE`, releasing 2,000
/// orders reads at most 6,000 reservation rows in the update (each row is read by the
/// update's lookup, then updated). Joined to the locked rows instead, the planner walked the primary key from
/// its start, through every row expired so far.
#[tokio::test]
async fn the_release_step_updates_its_locked_rows_by_key_when_the_statistics_lag() {
    let t = TestDb::new().await;
    let v = t.variant(0).await;
    t.exec(&format!(
        "INSERT INTO orders_order (order_number, status, payment_status) \
           SELECT 'P-' || g, 'pending', 'pending' FROM generate_series(1, 20000) g; \
         INSERT INTO orders_inventoryreservation \
             (order_id, product_variant_id, quantity, status, created_at, expires_at) \
           SELECT o.id, {v}, 1, 'active', now() - interval '30 minutes', \
                  now() - interval '20 minutes' FROM orders_order o ORDER BY o.id; \
         ANALYZE; \
         UPDATE orders_inventoryreservation SET status = 'expired', released_at = now() \
          WHERE id IN (SELECT id FROM orders_inventoryreservation ORDER BY id LIMIT 10000)"
    ))
    .await;
    let c = t.connect().await;
    c.batch_execute(&format!(
        "SET max_parallel_workers_per_gather = 0; BEGIN; PREPARE release AS {}",
        unreserver::db::sql::RELEASE_RESERVATIONS
    ))
    .await
    .unwrap();
    let orders: String = c
        .query_one(
            "SELECT array_agg(order_id)::text FROM (SELECT order_id \
               FROM orders_inventoryreservation WHERE status = 'active' ORDER BY id LIMIT 2000) s",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    let explain = format!(
        "EXPLAIN (ANALYZE, FORMAT JSON) \
         EXECUTE release('{orders}', '{{}}', 15, 15, '{{}}', NULL, NULL, NULL, '{{}}')"
    );
    let rows = c.simple_query(&explain).await;
    c.batch_execute("ROLLBACK").await.unwrap();
    let rows = rows.unwrap();
    let text = rows
        .iter()
        .find_map(|m| match m {
            tokio_postgres::SimpleQueryMessage::Row(row) => row.get(0).map(str::to_owned),
            _ => None,
        })
        .expect("EXPLAIN returned no plan");
    let plan: serde_json::Value = serde_json::from_str(&text).unwrap();
    let released = find_subplan(&plan[0]["Plan"], "CTE released").expect("no CTE released");
    let read = reservation_rows_read(released);
    assert!(
        read <= 6000.0,
        "releasing 2,000 orders read {read} rows in the update: {plan:#}"
    );
}

/// The node of `node`'s tree named `name` (`CTE released`, ...).
fn find_subplan<'p>(node: &'p serde_json::Value, name: &str) -> Option<&'p serde_json::Value> {
    if node["Subplan Name"].as_str() == Some(name) {
        return Some(node);
    }
    node["Plans"]
        .as_array()?
        .iter()
        .find_map(|child| find_subplan(child, name))
}

/// Two workers reading in passes share the backlog: the rest of the first pass, which the run
/// reads alone before it spreads, is given back and each worker scans its own share, so each
/// releases about half (a trigger notes the backend that released each row), every due row
/// once, legacy rows (no `expires_at`) included. Kept by the first worker while the second
/// scanned on after it, the rest of that pass (here every due row) left the second nothing to
/// do (and with passes of 500 rows, 50 of 600).
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
    assert!(
        shares.len() == 2 && shares[0] >= 220,
        "the rows released by each worker: {shares:?}"
    );
}

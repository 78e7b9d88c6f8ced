//! The plans PostgreSQL makes for the release's statements on a large backlog, read from
//! `EXPLAIN (ANALYZE, FORMAT JSON)`: a page reads what its `LIMIT` needs, not every due row
//! after the cursor, and the release step finds the rows it locked by key however stale the
//! statistics — each a cost that grew with the backlog, once per batch.

use tokio_postgres::{Client, SimpleQueryMessage};
use unreserver::db::sql::{PAGE, RELEASE_RESERVATIONS};

use crate::common::TestDb;

/// `n` pending orders of one line each on a new variant, all due (spread over ten minutes of
/// expiry when `spread`), then `ANALYZE`: the planner's statistics as a drain's first batch
/// sees them. Returns a session that plans as the release's does (no parallel workers).
async fn due_orders(t: &TestDb, n: i64, spread: bool) -> Client {
    let v = t.variant(0).await;
    let expires = match spread {
        true => "now() - interval '20 minutes' + (o.id % 600) * interval '1 second'",
        false => "now() - interval '20 minutes'",
    };
    t.exec(&format!(
        "INSERT INTO orders_order (order_number, status, payment_status) \
           SELECT 'P-' || g, 'pending', 'pending' FROM generate_series(1, {n}) g; \
         INSERT INTO orders_inventoryreservation \
             (order_id, product_variant_id, quantity, status, created_at, expires_at) \
           SELECT o.id, {v}, 1, 'active', now() - interval '30 minutes', {expires} \
             FROM orders_order o ORDER BY o.id; \
         ANALYZE"
    ))
    .await;
    let c = t.connect().await;
    c.batch_execute("SET max_parallel_workers_per_gather = 0")
        .await
        .unwrap();
    c
}

/// The plan of `explain` (an `EXPLAIN (ANALYZE, FORMAT JSON) ...` sent as a simple query).
async fn plan_of(c: &Client, explain: &str) -> serde_json::Value {
    let rows = c.simple_query(explain).await.unwrap();
    let text = rows
        .iter()
        .find_map(|m| match m {
            SimpleQueryMessage::Row(row) => row.get(0).map(str::to_owned),
            _ => None,
        })
        .expect("EXPLAIN returned no plan");
    serde_json::from_str(&text).unwrap()
}

/// The rows of `table` a plan's scans read (returned or filtered out).
fn rows_read(node: &serde_json::Value, table: &str) -> f64 {
    let own = match node["Relation Name"].as_str() {
        Some(name) if name == table => {
            node["Actual Rows"].as_f64().unwrap_or(0.0)
                + node["Rows Removed by Filter"].as_f64().unwrap_or(0.0)
        }
        _ => 0.0,
    };
    let children = node["Plans"].as_array().map_or(0.0, |plans| {
        plans
            .iter()
            .map(|child| rows_read(child, table))
            .sum::<f64>()
    });
    own + children
}

/// The rows of `orders_inventoryreservation` a plan's scans read.
fn reservation_rows_read(node: &serde_json::Value) -> f64 {
    rows_read(node, "orders_inventoryreservation")
}

/// The plan of [`RELEASE_RESERVATIONS`] for `orders` (an array literal), the claimed orders
/// found cancelled being `cancelled`, rolled back.
async fn release_plan(c: &Client, orders: &str, cancelled: &str) -> serde_json::Value {
    c.batch_execute(&format!("BEGIN; PREPARE release AS {RELEASE_RESERVATIONS}"))
        .await
        .unwrap();
    let plan = plan_of(
        c,
        &format!(
            "EXPLAIN (ANALYZE, FORMAT JSON) EXECUTE release('{orders}', '{{}}', 15, 15, '{{}}', \
             NULL, NULL, NULL, '{cancelled}')"
        ),
    )
    .await;
    c.batch_execute("ROLLBACK; DEALLOCATE release")
        .await
        .unwrap();
    plan
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

/// A page walks the keyset index in order and stops at its `LIMIT`, for one worker's share and
/// for one of two: among 20,000 analyzed due rows a page of 200 reads at most 800. With the
/// share filter as a bare equality the planner took it for one row in 200, read every due
/// row after the cursor (a bitmap scan, then a sort) and failed this with 20,000.
#[tokio::test]
async fn a_page_walks_the_keyset_index_and_stops_at_its_limit() {
    let t = TestDb::new().await;
    let c = due_orders(&t, 20_000, true).await;
    c.batch_execute(&format!("PREPARE page AS {PAGE}"))
        .await
        .unwrap();
    for (of, index) in [(1, 0), (2, 1)] {
        let plan = plan_of(
            &c,
            &format!(
                "EXPLAIN (ANALYZE, FORMAT JSON) \
                 EXECUTE page('-infinity', 0, '-infinity', 0, 200, 15, {of}, {index})"
            ),
        )
        .await;
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
/// update's lookup, then updated). Joined to the locked rows instead, the planner walked the
/// primary key from its start, through every row expired so far, and failed this.
#[tokio::test]
async fn the_release_step_updates_its_locked_rows_by_key_when_the_statistics_lag() {
    let t = TestDb::new().await;
    let c = due_orders(&t, 20_000, false).await;
    t.exec(
        "UPDATE orders_inventoryreservation SET status = 'expired', released_at = now() \
          WHERE id IN (SELECT id FROM orders_inventoryreservation ORDER BY id LIMIT 10000)",
    )
    .await;
    let orders = t
        .text(
            "SELECT array_agg(order_id)::text FROM (SELECT order_id \
               FROM orders_inventoryreservation WHERE status = 'active' ORDER BY id LIMIT 2000) s",
        )
        .await;
    let plan = release_plan(&c, &orders, "{}").await;
    let released = find_subplan(&plan[0]["Plan"], "CTE released").expect("no CTE released");
    let read = reservation_rows_read(released);
    assert!(
        read <= 6000.0,
        "releasing 2,000 orders read {read} rows in the update: {plan:#}"
    );
}

/// Whether a scan of `table` is in the plan at all.
fn scans(node: &serde_json::Value, table: &str) -> bool {
    node["Relation Name"].as_str() == Some(table)
        || node["Plans"]
            .as_array()
            .is_some_and(|plans| plans.iter().any(|child| scans(child, table)))
}

/// When no claimed order is cancelled already, the release step plans no read of an order for
/// the instant that cancelled it, whatever the statistics say; when one is, it reads that one,
/// with 10,000 orders cancelled since the last `ANALYZE`. Without `cardinality($9) > 0` the
/// empty list was planned as a scan — in the shoppers' bench, of all of
/// `unreserver_cancelled_at_idx`, 25 ms in every batch — and this fails.
#[tokio::test]
async fn the_release_step_reads_no_order_when_none_claimed_is_cancelled() {
    let t = TestDb::new().await;
    let c = due_orders(&t, 20_000, false).await;
    t.exec(
        "UPDATE orders_order SET status = 'cancelled', cancelled_at = now() \
          WHERE id IN (SELECT id FROM orders_order ORDER BY id LIMIT 10000)",
    )
    .await;
    let first = |status: &str, n: u32| {
        format!(
            "SELECT array_agg(id)::text FROM (SELECT id FROM orders_order \
               WHERE status = '{status}' ORDER BY id LIMIT {n}) s"
        )
    };
    let orders = t.text(&first("pending", 100)).await;
    let one_cancelled = t.text(&first("cancelled", 1)).await;
    let plan = release_plan(&c, &orders, "{}").await;
    let finishing = find_subplan(&plan[0]["Plan"], "CTE finishing").expect("no CTE finishing");
    assert!(
        !scans(finishing, "orders_order"),
        "with none found cancelled the release planned a read of orders: {plan:#}"
    );
    let plan = release_plan(&c, &orders, &one_cancelled).await;
    let finishing = find_subplan(&plan[0]["Plan"], "CTE finishing").expect("no CTE finishing");
    let read = rows_read(finishing, "orders_order");
    assert!(
        read <= 1.0,
        "one found cancelled, {read} orders read: {plan:#}"
    );
}

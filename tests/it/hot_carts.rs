//! Orders across several hot rows (`../shared/shop-shapes.md`: "a cart on a drop usually spans
//! sizes"): each order has one line on each of two or three drop variants, and each of those
//! rows has its own queue of checkouts back to back, so none is ever free for more than an
//! instant. A queue batch waits in one row's queue while it holds nothing else and releases the
//! lines on that row, cancelling the order; the queue batches of the other rows release the
//! rest with the same instant. Such orders come back within two runs while the shoppers go
//! on, none failing, each line released with the instant that cancelled its order.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::common::{backend_pid, run, settings, Res, TestDb};

/// How the queue's shoppers take their row (and, in carts, the others).
#[derive(Debug, Clone, Copy)]
enum Shape {
    /// Each shopper buys one hot variant with its drop: variant, then drop.
    VariantThenDrop,
    /// Each shopper buys its hot variant together with the next one, in descending id order
    /// (code that never sorted its cart): a lock order against the release's.
    CartDescending,
}

/// The statements of one checkout by a shopper of the queue on `rows[queue]`.
fn checkout_sql(rows: &[(i64, i64)], queue: usize, shape: Shape) -> String {
    let variant = |v: i64| {
        format!("UPDATE products_productvariant SET reserved_quantity = reserved_quantity + 1 WHERE id = {v};")
    };
    let drop = |d: i64| {
        format!("UPDATE drops_dropproduct SET reserved_quantity = reserved_quantity + 1 WHERE id = {d};")
    };
    let (v, d) = rows[queue];
    match shape {
        Shape::VariantThenDrop => variant(v) + &drop(d),
        Shape::CartDescending => {
            let (other, _) = rows[(queue + 1) % rows.len()];
            let (high, low) = if v > other { (v, other) } else { (other, v) };
            variant(high) + &variant(low)
        }
    }
}

/// Shoppers checking out back to back on every row of `rows` (`per_row` each, each checkout
/// holding its rows `hold`), until `stop`; their pids, and each one's checkout latencies.
async fn queues(
    t: &TestDb,
    rows: &[(i64, i64)],
    per_row: usize,
    shape: Shape,
    hold: Duration,
    stop: Arc<AtomicBool>,
) -> (Vec<i32>, tokio::task::JoinSet<Vec<Duration>>) {
    let mut pids = Vec::new();
    let mut set = tokio::task::JoinSet::new();
    for queue in 0..rows.len() {
        for _ in 0..per_row {
            let mut shopper = t.connect().await;
            pids.push(backend_pid(&shopper).await);
            let sql = format!(
                "SET LOCAL lock_timeout = '5s'; {}",
                checkout_sql(rows, queue, shape)
            );
            let stop = stop.clone();
            set.spawn(async move {
                let mut latencies = Vec::new();
                while !stop.load(Ordering::Relaxed) {
                    let started = Instant::now();
                    let tx = shopper.transaction().await.unwrap();
                    tx.batch_execute(&sql).await.expect("a checkout failed");
                    tokio::time::sleep(hold).await;
                    tx.commit().await.expect("a checkout failed to commit");
                    latencies.push(started.elapsed());
                }
                latencies
            });
        }
    }
    (pids, set)
}

/// `orders` due orders, each with one unit on every row of `rows` (a variant and its drop),
/// and `rows.len()` queues of `per_row` shoppers in `shape`: every order comes back within two
/// runs, no checkout fails, and every counter is exact.
async fn orders_across_hot_rows(hot: usize, per_row: usize, shape: Shape) {
    const ORDERS: i32 = 30;
    let t = TestDb::new().await;
    let mut rows = Vec::new();
    for _ in 0..hot {
        let v = t.variant(ORDERS).await;
        rows.push((v, t.drop_product(v, ORDERS).await));
    }
    let mut orders = Vec::new();
    for _ in 0..ORDERS {
        let order = t.order("pending", "pending").await;
        for &(v, d) in &rows {
            let mut r = Res::new(Some(order), v, 1, "-1 minute");
            r.drop = Some(d);
            t.reservation(r).await;
        }
        orders.push(order);
    }
    let stop = Arc::new(AtomicBool::new(false));
    let hold = Duration::from_millis(5);
    let (pids, mut shoppers) = queues(&t, &rows, per_row, shape, hold, stop.clone()).await;
    // The scenario: shoppers wait in the rows' lock queues (seen in pg_locks).
    let watcher = t.connect().await;
    let mut queued = false;
    for _ in 0..5000 {
        queued = watcher
            .query_one(
                "SELECT count(*) > 0 FROM pg_locks WHERE NOT granted AND pid = ANY($1)",
                &[&pids],
            )
            .await
            .unwrap()
            .get(0);
        if queued {
            break;
        }
    }
    assert!(queued, "the shoppers never queued on the hot rows");
    let s = settings();
    let mut db = t.open_with(&s).await;
    let mut reports = Vec::new();
    for _ in 0..2 {
        reports.push(run(&mut db, &s, false).await);
        let left = t
            .i64("SELECT count(*) FROM orders_inventoryreservation WHERE status = 'active'")
            .await;
        if left == 0 {
            break;
        }
    }
    stop.store(true, Ordering::Relaxed);
    let mut latencies = Vec::new();
    while let Some(done) = shoppers.join_next().await {
        latencies.extend(done.expect("a shopper failed"));
    }
    let cancelled: u64 = reports.iter().map(|r| r.counts.orders_cancelled).sum();
    assert_eq!(
        cancelled, ORDERS as u64,
        "{hot} hot rows, {per_row} shoppers each, {shape:?}: orders left reserved after {} runs: {reports:#?}",
        reports.len()
    );
    for order in orders {
        assert_eq!(t.order_status(order).await, "cancelled");
        let apart = t.lines_apart_from_cancellation(order).await;
        assert_eq!(
            apart, 0,
            "order {order}: a line not released with its cancellation"
        );
    }
    // Every unit the orders held came back exactly once: what is reserved now is what the
    // shoppers took (their checkouts add one unit per statement).
    let reserved_total = t
        .i64("SELECT coalesce(sum(reserved_quantity), 0) FROM products_productvariant")
        .await
        + t.i64("SELECT coalesce(sum(reserved_quantity), 0) FROM drops_dropproduct")
            .await;
    // Each checkout of either shape takes one unit on each of two rows.
    assert_eq!(
        reserved_total,
        (latencies.len() * 2) as i64,
        "a counter is off"
    );
    latencies.sort();
    let p99 = latencies[(latencies.len() * 99 / 100).min(latencies.len() - 1)];
    eprintln!(
        "{hot} hot rows × {per_row} shoppers ({shape:?}): {} runs, {} checkouts, p99 {p99:?}, max {:?}, queue waits {}",
        reports.len(),
        latencies.len(),
        latencies.last().copied().unwrap_or_default(),
        reports.iter().map(|r| r.counts.queue_waits).sum::<u64>()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn orders_across_two_hot_rows_with_two_shoppers_each_come_back() {
    orders_across_hot_rows(2, 2, Shape::VariantThenDrop).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn orders_across_two_hot_rows_with_four_shoppers_each_come_back() {
    orders_across_hot_rows(2, 4, Shape::VariantThenDrop).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn orders_across_three_hot_rows_with_carts_locked_descending_come_back() {
    orders_across_hot_rows(3, 2, Shape::CartDescending).await;
}

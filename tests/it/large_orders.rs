//! Very large orders (a B2B restock of thousands of lines) among ordinary ones: such an order is
//! worked in a batch of its own whose budget runs from its first hot-row lock, and every other
//! due order is released in the same run.

use unreserver::{RunReport, StopReason};

use crate::common::{run, settings, TestDb};

/// One due pending order of `lines` one-unit lines, each on a variant of its own (with a drop
/// row), due two minutes ago; returns its id.
async fn giant_order(t: &TestDb, lines: i64) -> i64 {
    let order = t.order("pending", "pending").await;
    t.exec(&format!(
        "WITH v AS (INSERT INTO products_productvariant (product_id, sku, stock_quantity, reserved_quantity) \
         SELECT 1, 'GIANT-{order}-' || g, 1000, 1 FROM generate_series(1, {lines}) g RETURNING id), \
         d AS (INSERT INTO drops_dropproduct (drop_id, product_variant_id, drop_quantity, reserved_quantity) \
         SELECT 1, id, 100, 1 FROM v RETURNING id, product_variant_id) \
         INSERT INTO orders_inventoryreservation (order_id, product_variant_id, drop_product_id, quantity, status, created_at, expires_at) \
         SELECT {order}, product_variant_id, id, 1, 'active', now() - interval '20 minutes', now() - interval '2 minutes' FROM d"
    ))
    .await;
    order
}

/// A due order of `lines` lines before 300 one-line orders, released by one run with the
/// shop's `deadlock_timeout` at `deadlock_ms`: the run's report, after checking that every
/// one-line order was released in that run, whatever became of the large one, and that the
/// run did not fail. With `hot_ms`, giving its units back to its first variant takes that long
/// (a row trigger on that one row): a large order whose hot phase outlives its budget however
/// fast the machine, where the other orders' rows are as fast as ever.
async fn giant_among_others(
    lines: i64,
    deadlock_ms: u32,
    hot_ms: Option<u32>,
) -> (TestDb, i64, RunReport) {
    let t = TestDb::new().await;
    let giant = giant_order(&t, lines).await;
    if let Some(ms) = hot_ms {
        t.exec(&format!(
            "CREATE FUNCTION slow_giant() RETURNS trigger LANGUAGE plpgsql AS $$ \
               BEGIN PERFORM pg_sleep({ms} / 1000.0); RETURN NEW; END $$; \
             CREATE TRIGGER slow_giant BEFORE UPDATE ON products_productvariant FOR EACH ROW \
               WHEN (NEW.sku = 'GIANT-{giant}-1') EXECUTE FUNCTION slow_giant()"
        ))
        .await;
    }
    let mut small = Vec::new();
    for _ in 0..300 {
        small.push(t.one_due_order(1).await);
    }
    let mut s = settings();
    s.shop_deadlock_timeout_ms = Some(deadlock_ms);
    let mut db = t.open_with(&s).await;
    let report = run(&mut db, &s, false).await;
    assert_eq!(report.stopped_reason, StopReason::Drained, "{report:?}");
    for (v, order, _) in small {
        assert_eq!(
            (t.reserved(v).await, t.order_status(order).await.as_str()),
            (0, "cancelled")
        );
    }
    assert_eq!(t.drifted_counters().await, 0);
    (t, giant, report)
}

/// A 1,000-line order (twice a page) due before 300 one-line orders (each line on a variant
/// and drop of its own: 2,000 counter rows to update) with the default `deadlock_timeout` of
/// 1 s: the large order is released in a batch of its own (the budget of 500 ms runs from its
/// first hot-row lock) and the 300 others in the same run; counters exact. The size leaves
/// room for a loaded 2-core CI: 3,000 lines took 0.44 s quiet but 0.99 s there.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_giant_order_is_worked_alone_and_released_with_the_others() {
    let (t, giant, report) = giant_among_others(1000, 1000, None).await;
    assert_eq!(
        (report.counts.large_orders, report.large_orders_left),
        (1, 0),
        "{report:?}"
    );
    assert_eq!(report.counts.orders_cancelled, 301, "{report:?}");
    assert_eq!(report.backlog_remaining, 0, "{report:?}");
    assert_eq!(t.order_status(giant).await, "cancelled");
    assert_eq!(
        t.i64("SELECT count(*) FROM products_productvariant WHERE sku LIKE 'GIANT-%' AND reserved_quantity <> 0")
            .await,
        0
    );
}

/// A 10,000-line order with a shop whose `deadlock_timeout` is 200 ms (a budget of 100 ms from
/// its first hot row, too short for its 20,000 counter rows even alone — and, whatever the
/// machine, for the 300 ms its first variant's update takes: a warm, fast server once gave its
/// counters back within the budget on the second run): the run does not fail — the large order is
/// left untouched with its own count (`large_orders_left`, the `LargeOrdersLeft` metric), not
/// `TooSlow` and no hint at indexes — and the 300 others are released in the same run; the
/// next run does the same.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_giant_order_too_large_even_alone_is_left_and_never_stops_the_others() {
    let (t, giant, report) = giant_among_others(10_000, 200, Some(300)).await;
    assert_eq!(
        (report.counts.large_orders, report.large_orders_left),
        (0, 1),
        "{report:?}"
    );
    assert_eq!(report.counts.orders_cancelled, 300, "{report:?}");
    assert_eq!(report.backlog_remaining, 10_000, "{report:?}");
    assert_eq!(t.order_status(giant).await, "pending");
    assert_eq!(
        t.i64("SELECT count(*) FROM products_productvariant WHERE sku LIKE 'GIANT-%' AND reserved_quantity <> 1")
            .await,
        0,
        "the large order was half-released"
    );
    let mut s = settings();
    s.shop_deadlock_timeout_ms = Some(200);
    let mut db = t.open_with(&s).await;
    let again = run(&mut db, &s, false).await;
    assert_eq!(
        (again.stopped_reason, again.large_orders_left),
        (StopReason::Drained, 1),
        "{again:?}"
    );
}

/// The batch that meets the large order first releases ordinary orders due before it, taking
/// hot rows: the large order's own batch must still get its whole budget from its own first
/// hot row, not from the batch before (whose hot phase, left over, made its timer fire at once
/// and cancel its statements: the order was left, `large_orders_left` 1). Expiring the large
/// order's first line takes 600 ms (a row trigger on that line), longer than the 500 ms budget:
/// a timer running before its own hot phase cuts it whatever the machine's speed; its 300
/// lines (three first pages) keep its own hot phase short on a loaded machine.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_large_order_after_a_batch_that_took_hot_rows_gets_its_own_budget() {
    let t = TestDb::new().await;
    let mut small = Vec::new();
    for _ in 0..20 {
        let (v, order, r) = t.one_due_order(1).await;
        t.exec(&format!(
            "UPDATE orders_inventoryreservation SET expires_at = now() - interval '3 minutes' \
             WHERE id = {r}"
        ))
        .await;
        small.push((v, order));
    }
    let giant = giant_order(&t, 300).await;
    let first = t
        .i64(&format!(
            "SELECT min(id) FROM orders_inventoryreservation WHERE order_id = {giant}"
        ))
        .await;
    t.exec(&format!(
        "CREATE FUNCTION slow_line() RETURNS trigger LANGUAGE plpgsql AS $$ \
           BEGIN PERFORM pg_sleep(0.6); RETURN NEW; END $$; \
         CREATE TRIGGER slow_line BEFORE UPDATE ON orders_inventoryreservation FOR EACH ROW \
           WHEN (OLD.id = {first}) \
           EXECUTE FUNCTION slow_line()"
    ))
    .await;
    let s = settings();
    let mut db = t.open_with(&s).await;
    let report = run(&mut db, &s, false).await;
    assert!(report.batches >= 2, "{report:?}");
    assert_eq!(
        (
            report.counts.large_orders,
            report.large_orders_left,
            report.batch_retries
        ),
        (1, 0, 0),
        "{report:?}"
    );
    assert_eq!(t.order_status(giant).await, "cancelled");
    for (v, order) in small {
        assert_eq!(
            (t.reserved(v).await, t.order_status(order).await.as_str()),
            (0, "cancelled")
        );
    }
    assert_eq!(t.drifted_counters().await, 0);
}

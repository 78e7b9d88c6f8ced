//! Locks and overlapping runs: what a shopper holds is skipped or briefly waited on, never
//! made to fail, and two runs at once never release anything twice.

use std::sync::{Arc, Condvar, Mutex};
use std::time::Duration;

use unreserver::{OnCommit, RunOptions, StopReason};

use crate::common::{backend_pid, run, settings, until_seen, Res, TestDb};

/// An order a payment holds (`FOR UPDATE`) and a cart hold a checkout holds are skipped
/// without waiting, and reported as backlog; the rest is released.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn locked_rows_are_skipped_and_left_as_backlog() {
    let t = TestDb::new().await;
    let v = t.variant(4).await;
    let held = t.order("pending", "pending").await;
    let free = t.order("pending", "pending").await;
    let r_held = t
        .reservation(Res::new(Some(held), v, 1, "-5 minutes"))
        .await;
    let r_free = t
        .reservation(Res::new(Some(free), v, 1, "-5 minutes"))
        .await;
    let hold_held = t.reservation(Res::new(None, v, 1, "-5 minutes")).await;
    let hold_free = t.reservation(Res::new(None, v, 1, "-5 minutes")).await;

    let mut shopper = t.connect().await;
    let tx = shopper.transaction().await.unwrap();
    tx.execute(
        "SELECT 1 FROM orders_order WHERE id = $1 FOR UPDATE",
        &[&held],
    )
    .await
    .unwrap();
    tx.execute(
        "SELECT 1 FROM orders_inventoryreservation WHERE id = $1 FOR UPDATE",
        &[&hold_held],
    )
    .await
    .unwrap();

    let mut db = t.open().await;
    // Were the run to wait on the held rows, it would never finish while they are held.
    let report = tokio::time::timeout(Duration::from_secs(30), run(&mut db, &settings(), false))
        .await
        .expect("the run waited on rows a shopper holds");
    assert_eq!(report.counts.reservations_released, 2);
    assert_eq!(report.counts.skipped_locked, 2);
    assert_eq!(report.backlog_remaining, 2);
    assert_eq!(report.stopped_reason, StopReason::Drained);
    assert_eq!(t.reservation_status(r_free).await, "expired");
    assert_eq!(t.reservation_status(hold_free).await, "expired");
    assert_eq!(t.reservation_status(r_held).await, "active");
    assert_eq!(t.reservation_status(hold_held).await, "active");
    // The shopper's transaction goes on unharmed; the next run takes what it held.
    tx.execute(
        "UPDATE orders_order SET updated_at = now() WHERE id = $1",
        &[&held],
    )
    .await
    .unwrap();
    tx.commit().await.unwrap();
    let report = run(&mut db, &settings(), false).await;
    assert_eq!(report.counts.reservations_released, 2);
    assert_eq!(t.reserved(v).await, 0);
}

/// Two runs at once over one backlog share it: every reservation is released exactly once
/// and every counter ends equal to its active reservations. The runs are made to overlap, not
/// left to timing: after each committed batch, a run waits (between batches, holding nothing)
/// until the other has committed one, so neither can drain the backlog alone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_runs_at_once_release_each_reservation_exactly_once() {
    let t = TestDb::new().await;
    let variants = [t.variant(0).await, t.variant(0).await, t.variant(0).await];
    let d = t.drop_product(variants[0], 0).await;
    t.client
        .execute(
            "WITH o AS (INSERT INTO orders_order (order_number) \
                 SELECT 'BULK-' || g FROM generate_series(1, 600) g RETURNING id) \
             INSERT INTO orders_inventoryreservation \
                 (order_id, product_variant_id, drop_product_id, quantity, expires_at) \
             SELECT o.id, ($1::int8[])[1 + o.id % 3], CASE WHEN o.id % 3 = 0 THEN $2::int8 END, \
                    1 + o.id % 2, now() - interval '1 minute' * (o.id % 7 + 1) \
               FROM o, generate_series(1, 1 + (o.id % 2)::int)",
            &[&variants.to_vec(), &d],
        )
        .await
        .unwrap();
    t.exec(
        "UPDATE products_productvariant v SET reserved_quantity = COALESCE((SELECT sum(quantity) \
           FROM orders_inventoryreservation r WHERE r.product_variant_id = v.id), 0); \
         UPDATE drops_dropproduct d SET reserved_quantity = (SELECT sum(quantity) \
           FROM orders_inventoryreservation r WHERE r.drop_product_id = d.id)",
    )
    .await;
    let total = t
        .i64("SELECT count(*) FROM orders_inventoryreservation")
        .await as u64;
    let mut s = settings();
    s.batch_size = Some(25);
    let rendezvous = Rendezvous::default();
    let mut runs = Vec::new();
    for me in 0..2 {
        let mut db = t.open_with(&s).await;
        let (s, rendezvous) = (s.clone(), rendezvous.clone());
        let options = RunOptions {
            deadline: None,
            on_commit: Some(OnCommit::new(move |_| rendezvous.committed(me))),
            ..RunOptions::default()
        };
        runs.push(tokio::spawn(async move {
            unreserver::run(&mut db, &s, &options)
                .await
                .unwrap_or_else(|f| panic!("run failed: {}", f.error.chain()))
        }));
    }
    let mut reports = Vec::new();
    for r in runs {
        reports.push(r.await.unwrap());
    }
    let (ra, rb) = (&reports[0], &reports[1]);
    // Each took a share of the 24 or more batches.
    assert!(
        ra.counts.reservations_released > 0 && rb.counts.reservations_released > 0,
        "one run did all the work: {ra:?} {rb:?}"
    );
    assert_eq!(
        ra.counts.reservations_released + rb.counts.reservations_released,
        total
    );
    assert_eq!(ra.counts.orders_cancelled + rb.counts.orders_cancelled, 600);
    assert_eq!(
        ra.counts.clamped_variants
            + rb.counts.clamped_variants
            + ra.counts.clamped_drops
            + rb.counts.clamped_drops,
        0
    );
    assert_eq!(
        t.i64("SELECT count(*) FROM orders_inventoryreservation WHERE status <> 'expired'")
            .await,
        0
    );
    assert_eq!(t.drifted_counters().await, 0);
    for v in variants {
        assert_eq!(t.reserved(v).await, 0);
    }
}

/// Where two runs meet: each committed batch marks its run and waits, for up to a minute,
/// until the other run has committed one too (with the thread given up to the runtime, so the
/// other run goes on meanwhile).
#[derive(Clone, Default)]
struct Rendezvous(Arc<(Mutex<[bool; 2]>, Condvar)>);

impl Rendezvous {
    fn committed(&self, me: usize) {
        tokio::task::block_in_place(|| {
            let (marks, changed) = &*self.0;
            let mut marks = marks.lock().unwrap();
            marks[me] = true;
            changed.notify_all();
            let (marks, waited) = changed
                .wait_timeout_while(marks, Duration::from_secs(60), |marks| !marks[1 - me])
                .unwrap();
            assert!(
                !waited.timed_out(),
                "run {} never committed a batch: {marks:?}",
                1 - me
            );
        });
    }
}

/// A checkout holding a hot variant row for a few milliseconds: the batch waits for it (up to
/// `lock_timeout`) rather than leaving the order out, so hot rows are released promptly, not
/// starved; the checkout commits untouched, and its unit is kept.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_variant_held_briefly_by_a_checkout_is_waited_for() {
    let t = TestDb::new().await;
    let (v, _, _) = t.one_due_order(2).await;

    let mut shopper = t.connect().await;
    let tx = shopper.transaction().await.unwrap();
    tx.execute(
        "UPDATE products_productvariant SET reserved_quantity = reserved_quantity + 1 WHERE id = $1",
        &[&v],
    )
    .await
    .unwrap();
    let mut s = settings();
    s.lock_timeout_ms = 400;
    let mut db = t.open_with(&s).await;
    let release_pid = backend_pid(&db.client).await;
    let watcher = t.connect().await;
    let release = async { run(&mut db, &s, false).await };
    let checkout = async {
        // The batch met the held row and is polling for it: only then does the checkout end.
        let polling = until_polling(&watcher, release_pid).await;
        (polling, tx.commit().await)
    };
    let (report, (polling, committed)) = tokio::join!(release, checkout);
    assert!(
        polling,
        "the batch never polled for the held row: {report:?}"
    );
    committed.expect("the checkout failed");
    assert!(report.counts.held_wait_ms > 0.0, "{report:?}");
    assert_eq!(report.counts.reservations_released, 1, "{report:?}");
    assert_eq!(
        (report.deferred, report.batch_retries),
        (0, 0),
        "{report:?}"
    );
    assert_eq!(t.reserved(v).await, 1, "the checkout's unit was lost");
}

/// A payment that updates an order's reservation before it locks the order (a shop's code may
/// do that) holds the row the batch needs: the batch finds it held at once, without joining the
/// row's lock queue (where it would make the payment's next lock request wait behind it, or
/// close a lock cycle), then polls and releases the order once the payment is gone. Every lock
/// the release asks for meanwhile is granted at once: nothing of it ever waits.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_held_reservation_is_never_waited_on_in_a_lock_queue() {
    let t = TestDb::new().await;
    let (v, order, _) = t.one_due_order(1).await;
    let mut payment = t.connect().await;
    let tx = payment.transaction().await.unwrap();
    tx.execute(
        "UPDATE orders_inventoryreservation SET quantity = quantity WHERE order_id = $1",
        &[&order],
    )
    .await
    .unwrap();
    let watcher = t.connect().await;
    let mut s = settings();
    s.lock_timeout_ms = 400;
    let mut db = t.open_with(&s).await;
    let release_pid = backend_pid(&db.client).await;
    let release = async { run(&mut db, &s, false).await };
    let watch = async {
        // Lock requests of the release's own session that are not granted.
        let mut waits = 0_i64;
        for _ in 0..60 {
            waits += watcher
                .query_one(
                    "SELECT count(*) FROM pg_locks WHERE NOT granted AND pid = $1",
                    &[&release_pid],
                )
                .await
                .unwrap()
                .get::<_, i64>(0);
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        tx.commit().await.unwrap();
        waits
    };
    let (report, waits) = tokio::join!(release, watch);
    assert_eq!(waits, 0, "the release waited in a lock queue");
    let report = if report.counts.reservations_released == 1 {
        report
    } else {
        run(&mut db, &s, false).await
    };
    assert_eq!(report.counts.reservations_released, 1, "{report:?}");
    assert_eq!(t.order_status(order).await, "cancelled");
    assert_eq!(t.reserved(v).await, 0);
}

/// A checkout holds a hot variant and is about to take its drop row (the shop's lock order:
/// variant, then drop) while a batch that needs both gives units back: the batch takes no drop
/// row before it has every variant it needs, so the checkout gets its drop at once (it would
/// fail here after 100 ms of waiting, its own `lock_timeout`) and commits; the batch then gets
/// the variant and releases the order. Were the drop kept while the batch polls for the
/// variant (a failed try not rolled back), the checkout would wait on it until the batch gave
/// up polling. (Taking the drops first no longer fails it: each failed try gives back what it
/// took, so the drop is held only for the few milliseconds of a try.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_checkout_holding_a_variant_never_waits_on_its_drop_row() {
    let t = TestDb::new().await;
    let v = t.variant(1).await;
    let d = t.drop_product(v, 1).await;
    let order = t.order("pending", "pending").await;
    let mut r = Res::new(Some(order), v, 1, "-1 minute");
    r.drop = Some(d);
    t.reservation(r).await;
    let mut checkout = t.connect().await;
    let tx = checkout.transaction().await.unwrap();
    tx.batch_execute(&format!(
        "SET LOCAL lock_timeout = '100ms'; \
         UPDATE products_productvariant SET reserved_quantity = reserved_quantity + 1 WHERE id = {v}"
    ))
    .await
    .unwrap();
    let watcher = t.connect().await;
    let mut s = settings();
    s.lock_timeout_ms = 400;
    let mut db = t.open_with(&s).await;
    let release_pid = backend_pid(&db.client).await;
    let release = async { run(&mut db, &s, false).await };
    let shop = async {
        // Once the batch has tried the rows, found the variant held, rolled back to its
        // savepoint and is pausing before it looks again, the checkout goes on.
        let mut pausing = false;
        for _ in 0..400 {
            let tried: i64 = watcher
                .query_one(
                    "SELECT count(*) FROM pg_stat_activity WHERE pid = $1 \
                     AND state = 'idle in transaction' \
                     AND query LIKE 'ROLLBACK TO SAVEPOINT%'",
                    &[&release_pid],
                )
                .await
                .unwrap()
                .get(0);
            if tried > 0 {
                pausing = true;
                break;
            }
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        assert!(pausing, "the batch was never seen polling for the variant");
        tx.batch_execute(&format!(
            "UPDATE drops_dropproduct SET reserved_quantity = reserved_quantity + 1 WHERE id = {d}"
        ))
        .await
        .expect("the checkout waited on the drop row the release took");
        tx.commit().await.unwrap();
    };
    let (report, ()) = tokio::join!(release, shop);
    assert_eq!(
        (report.counts.reservations_released, report.deferred),
        (1, 0),
        "{report:?}"
    );
    assert_eq!((t.reserved(v).await, t.drop_reserved(d).await), (1, 1));
    assert_eq!(t.order_status(order).await, "cancelled");
}

/// Waits (up to 5 s) until the release's session `pid` is between two tries for a held counter
/// row — idle in its transaction right after rolling back to the counters' savepoint — and
/// says whether it was seen so.
async fn until_polling(watcher: &tokio_postgres::Client, pid: i32) -> bool {
    until_seen(
        watcher,
        pid,
        "state = 'idle in transaction' AND query LIKE 'ROLLBACK TO SAVEPOINT unreserver_counters%'",
    )
    .await
}

/// Which row another session holds for a whole run.
#[derive(Debug, Clone, Copy)]
enum Held {
    Variant,
    Drop,
    Reservation,
}

/// A variant, a drop or a reservation row held by another session for the whole run (an
/// admin's open transaction, a slow import): only the order that needs it is left out
/// (`deferred`); everything else is released; the held order is untouched and released by the
/// next run once the lock is gone; counters exact.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_row_held_for_the_whole_run_costs_only_the_orders_that_need_it() {
    for held in [Held::Variant, Held::Drop, Held::Reservation] {
        let t = TestDb::new().await;
        let hot = t.variant(1).await;
        let hot_drop = t.drop_product(hot, 1).await;
        let stuck = t.order("pending", "pending").await;
        // Due first: it shares its batch with four of the free orders.
        let mut r = Res::new(Some(stuck), hot, 1, "-150 seconds");
        r.drop = Some(hot_drop);
        let stuck_res = t.reservation(r).await;
        let other = t.variant(20).await;
        for _ in 0..20 {
            let order = t.order("pending", "pending").await;
            t.reservation(Res::new(Some(order), other, 1, "-2 minute"))
                .await;
        }
        let holder = t.connect().await;
        let lock = match held {
            Held::Variant => {
                format!("SELECT 1 FROM products_productvariant WHERE id = {hot} FOR UPDATE")
            }
            Held::Drop => {
                format!("SELECT 1 FROM drops_dropproduct WHERE id = {hot_drop} FOR UPDATE")
            }
            Held::Reservation => {
                format!(
                    "SELECT 1 FROM orders_inventoryreservation WHERE id = {stuck_res} FOR UPDATE"
                )
            }
        };
        holder
            .batch_execute(&format!("BEGIN; {lock}"))
            .await
            .unwrap();
        let before = t.order_snapshot(stuck).await;
        let mut s = settings();
        s.lock_timeout_ms = 30;
        s.batch_size = Some(5);
        let mut db = t.open_with(&s).await;
        let report = run(&mut db, &s, false).await;
        assert_eq!(
            report.stopped_reason,
            StopReason::Drained,
            "{held:?}: {report:?}"
        );
        assert_eq!(
            report.counts.reservations_released, 20,
            "{held:?}: {report:?}"
        );
        assert_eq!(report.deferred, 1, "{held:?}");
        assert_eq!(report.backlog_remaining, 1, "{held:?}");
        let age = report.oldest_deferred_age_seconds.unwrap();
        assert!((145.0..210.0).contains(&age), "{held:?}: {age}");
        assert_eq!(t.order_snapshot(stuck).await, before, "{held:?}");
        assert_eq!(t.reserved(other).await, 0, "{held:?}");

        holder.batch_execute("COMMIT").await.unwrap();
        let report = run(&mut db, &s, false).await;
        assert_eq!(
            (report.counts.reservations_released, report.deferred),
            (1, 0),
            "{held:?}"
        );
        assert_eq!(t.order_status(stuck).await, "cancelled", "{held:?}");
        assert_eq!(
            (t.reserved(hot).await, t.drop_reserved(hot_drop).await),
            (0, 0),
            "{held:?}"
        );
        assert_eq!(t.drifted_counters().await, 0, "{held:?}");
    }
}

/// A hot variant held for the whole run (an admin's open transaction) that the due orders of
/// many batches need: the first batch polls for it for `LOCK_TIMEOUT_MS` and leaves its orders
/// out; the later batches try it once and leave its orders out at once, instead of polling again
/// in every batch while holding the other hot rows they have updated (shoppers would queue
/// behind each of those waits). The run's last try of the deferred orders polls once more.
/// Everything else is released; counters exact.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_row_held_for_long_is_polled_for_once_not_in_every_batch() {
    let t = TestDb::new().await;
    let held = t.variant(30).await;
    let other = t.variant(30).await;
    for i in 0..60 {
        let order = t.order("pending", "pending").await;
        let variant = if i % 2 == 0 { held } else { other };
        let expires: &'static str = Box::leak(format!("-{} minute", 100 - i).into_boxed_str());
        t.reservation(Res::new(Some(order), variant, 1, expires))
            .await;
    }
    let holder = t.connect().await;
    holder
        .batch_execute(&format!(
            "BEGIN; SELECT 1 FROM products_productvariant WHERE id = {held} FOR UPDATE"
        ))
        .await
        .unwrap();
    let mut s = settings();
    s.lock_timeout_ms = 50;
    s.batch_size = Some(6);
    let mut db = t.open_with(&s).await;
    let report = run(&mut db, &s, false).await;
    assert_eq!(report.counts.reservations_released, 30, "{report:?}");
    assert_eq!(report.deferred, 30, "{report:?}");
    assert!(report.batches >= 10, "{report:?}");
    // Polled for once in the pages and once in the last try (each less than 50 ms: the
    // window starts before the release statement); every one of the ten or more batches
    // polling again would make it 500 ms or more. The bound leaves room for a loaded 2-core CI.
    assert!(
        (1.0..350.0).contains(&report.counts.held_wait_ms),
        "{}",
        report.counts.held_wait_ms
    );
    assert_eq!((t.reserved(held).await, t.reserved(other).await), (30, 0));
    holder.batch_execute("COMMIT").await.unwrap();
    let report = run(&mut db, &s, false).await;
    assert_eq!(
        (report.counts.reservations_released, report.deferred),
        (30, 0),
        "{report:?}"
    );
    assert_eq!(report.counts.held_wait_ms, 0.0);
    assert_eq!(t.drifted_counters().await, 0);
}

/// The shape of a lock cycle: a checkout holds v2 and then asks for v1, while the batch needs
/// both. The batch never holds v1 while it polls for v2 (each try takes the counters all or
/// nothing and gives them back), so no cycle forms: the checkout's request for v1, made while
/// the batch is seen polling, is granted at once (its `lock_timeout` is 100 ms; a batch that
/// kept v1 would hold it for its whole 300 ms window), the checkout commits, and the same
/// run then releases the order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn in_a_lock_cycle_the_batch_gives_up_not_the_checkout() {
    let t = TestDb::new().await;
    let v1 = t.variant(1).await;
    let v2 = t.variant(1).await;
    let order = t.order("pending", "pending").await;
    t.reservation(Res::new(Some(order), v1, 1, "-1 minute"))
        .await;
    t.reservation(Res::new(Some(order), v2, 1, "-1 minute"))
        .await;

    let mut shopper = t.connect().await;
    let tx = shopper.transaction().await.unwrap();
    // The checkout takes v2 first...
    tx.batch_execute(&format!(
        "SET LOCAL lock_timeout = '100ms'; \
         UPDATE products_productvariant SET reserved_quantity = reserved_quantity + 1 WHERE id = {v2}"
    ))
    .await
    .unwrap();
    let mut s = settings();
    s.lock_timeout_ms = 300;
    let mut db = t.open_with(&s).await;
    let release_pid = backend_pid(&db.client).await;
    let watcher = t.connect().await;
    let release = async { run(&mut db, &s, false).await };
    let checkout = async {
        // ...then, once the batch is polling for v2, asks for v1.
        let polling = until_polling(&watcher, release_pid).await;
        let asked = tx
            .execute(
                "UPDATE products_productvariant SET reserved_quantity = reserved_quantity + 1 WHERE id = $1",
                &[&v1],
            )
            .await;
        (polling, asked, tx.commit().await)
    };
    let (report, (polling, asked, committed)) = tokio::join!(release, checkout);
    assert!(polling, "the batch never polled for v2: {report:?}");
    asked.expect("the checkout waited for v1: the batch kept it while polling");
    committed.expect("the checkout failed to commit");
    assert_eq!(
        (report.counts.reservations_released, report.deferred),
        (2, 0),
        "{report:?}"
    );
    assert_eq!((t.reserved(v1).await, t.reserved(v2).await), (1, 1));
}

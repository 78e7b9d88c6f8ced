//! Releasing one order on request (`unreserver release`, the Lambda's `release` action), as
//! the least-privilege role: an order not yet due is released at once, with its counters and
//! its cancellation, by the release's rules otherwise (a paid order never, an order the rules
//! refuse never); a held row is polled for without keeping any other row from a shopper, then
//! given up retryably.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use serde_json::{json, Value};

use crate::app::{front_door_session, Front, LambdaError, TestApp};
use crate::common::{run, settings, shopper_taking_turns, Res, TestDb};

/// The Lambda's `release` action on `order`: its answer, or its error.
async fn release(front: &Front, order: i64) -> Result<Value, LambdaError> {
    front
        .lambda(json!({"action": "release", "order_id": order}))
        .await
}

/// Whether it was released, and why (or why not).
fn released_and_reason(outcome: &Value) -> (Value, Value) {
    (outcome["released"].clone(), outcome["reason"].clone())
}

/// A pending order with a drop line of 3 due in ten minutes and a plain line of 2 due in an
/// hour: (order, variant, drop, second variant).
async fn order_not_yet_due(t: &TestDb, payment: &str) -> (i64, i64, i64, i64) {
    let (v, v2) = (t.variant(3).await, t.variant(2).await);
    let d = t.drop_product(v, 3).await;
    let order = t.order("pending", payment).await;
    t.reservation(Res {
        drop: Some(d),
        ..Res::new(Some(order), v, 3, "10 minutes")
    })
    .await;
    t.reservation(Res::new(Some(order), v2, 2, "1 hour")).await;
    (order, v, d, v2)
}

#[tokio::test]
async fn an_order_not_yet_due_is_released_now_with_its_counters_and_cancellation() {
    let t = TestApp::spawn().await;
    let (order, v, d, v2) = order_not_yet_due(&t, "failed").await;
    // Another order on the same rows, not asked for, stays.
    let other = t.order("pending", "pending").await;
    t.exec(&format!(
        "UPDATE products_productvariant SET reserved_quantity = reserved_quantity + 1 WHERE id = {v}"
    ))
    .await;
    let kept = t
        .reservation(Res::new(Some(other), v, 1, "10 minutes"))
        .await;
    let mut db = t.open().await;
    // A run releases nothing: nothing is due.
    assert_eq!(
        run(&mut db, &settings(), false)
            .await
            .counts
            .reservations_released,
        0
    );

    let outcome = release(t.front(), order).await.unwrap();
    assert_eq!(
        outcome,
        json!({
            "order_id": order,
            "released": true,
            "reason": "released",
            "reservations_released": 2,
            "units_released": 5,
            "events_published": 0,
            "events_failed": 0,
        })
    );
    assert_eq!(
        (
            t.reserved(v).await,
            t.drop_reserved(d).await,
            t.reserved(v2).await
        ),
        (1, 0, 0)
    );
    assert_eq!(t.order_status(order).await, "cancelled");
    assert_eq!(
        t.i64(&format!(
            "SELECT count(*) FROM orders_inventoryreservation r JOIN orders_order o \
             ON o.id = r.order_id WHERE o.id = {order} AND r.status = 'expired' \
             AND r.released_at = o.cancelled_at"
        ))
        .await,
        2,
        "cancelled_at is the released_at of its lines, as for an expired order"
    );
    assert_eq!(t.reservation_status(kept).await, "active");
    assert_eq!(t.drifted_counters().await, 0);

    // Asked again (a webhook delivered twice): nothing active, nothing changes.
    let again = release(t.front(), order).await.unwrap();
    assert_eq!(
        released_and_reason(&again),
        (json!(false), json!("nothing_active"))
    );
    assert_eq!(t.reserved(v).await, 1);
}

#[tokio::test]
async fn a_paid_order_or_one_the_rules_refuse_is_never_touched() {
    let t = TestApp::spawn().await;
    let (paid, ..) = order_not_yet_due(&t, "paid").await;
    let (refunded, ..) = order_not_yet_due(&t, "refunded").await;
    let (confirmed, ..) = order_not_yet_due(&t, "pending").await;
    t.exec(&format!(
        "UPDATE orders_order SET status = 'confirmed' WHERE id = {confirmed}"
    ))
    .await;
    let empty = t.order("pending", "pending").await;
    let before = t.fingerprint().await;
    for (order, reason) in [
        (paid, "paid"),
        (refunded, "not_releasable"),
        (confirmed, "not_releasable"),
        (empty, "nothing_active"),
        (i64::from(i32::MAX), "unknown_order"),
    ] {
        let outcome = release(t.front(), order).await.unwrap();
        assert_eq!(
            released_and_reason(&outcome),
            (json!(false), json!(reason)),
            "order {order}"
        );
        assert_eq!(outcome["reservations_released"], 0);
    }
    assert_eq!(t.fingerprint().await, before, "nothing changed");
}

/// A shopper paying holds the order row: the release polls for it (`NOWAIT`, never in its lock
/// queue) and releases it once the shopper commits, within `LOCK_TIMEOUT_MS`; held for longer
/// than every try, it gives up with a retryable `LockBusy` and nothing changed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_held_order_is_polled_for_then_given_up_retryably() {
    let t = TestApp::spawn().await;
    let (order, v, ..) = order_not_yet_due(&t, "pending").await;
    let mut holder = t.connect().await;
    let pid = crate::common::backend_pid(&holder).await;
    let held = crate::common::hold_row(&mut holder, "orders_order", order).await;
    let started = Instant::now();
    let err = release(t.front(), order).await.unwrap_err();
    assert_eq!(err.error_type(), "LockBusy", "{err:?}");
    assert!(err.retryable);
    assert!(
        started.elapsed() >= Duration::from_millis(100),
        "it polled for LOCK_TIMEOUT_MS at least: {:?}",
        started.elapsed()
    );
    assert_eq!(t.order_status(order).await, "pending");
    assert_eq!(t.reserved(v).await, 3);

    // Held briefly: the polling wins once the holder commits. It polls for 2 s here, so that
    // the watcher sees it polling on a loaded machine (within the default 100 ms it could miss
    // it, and the release then gave up before the commit).
    t.allow_long_polls().await;
    let (front, since) = (t.with("LOCK_TIMEOUT_MS", "2000"), SystemTime::now());
    let releasing = tokio::spawn(async move { release(&front, order).await });
    let watcher = t.connect().await;
    let polling = "query LIKE '%FOR UPDATE OF o NOWAIT%'";
    assert!(
        front_door_session(&watcher, &t.name, since, polling)
            .await
            .is_some(),
        "the release never tried the held order"
    );
    assert!(crate::common::until_seen(&watcher, pid, "state = 'idle in transaction'").await);
    held.commit().await.unwrap();
    let outcome = releasing.await.unwrap().unwrap();
    assert_eq!(outcome["reason"], "released");
    assert_eq!(t.order_status(order).await, "cancelled");
}

/// While the release polls for a drop row a holder keeps (for 2 s: `LOCK_TIMEOUT_MS`, which
/// this database's `deadlock_timeout` allows), a shopper checks out on the order's two
/// variants, which the release takes before the drop in each try: each of the shopper's
/// updates is granted within 1 s (its own `lock_timeout`), so the release never keeps them
/// while it waits for the drop — a loaded machine's slow statements stay far from the bound.
/// The scenario is asserted first: the release did try (it gave up `LockBusy`) and the
/// shopper's updates ran during those tries.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_release_polling_for_a_held_row_keeps_no_other_row_from_a_shopper() {
    let t = TestApp::spawn().await;
    t.allow_long_polls().await;
    let (order, v, d, v2) = order_not_yet_due(&t, "pending").await;
    let mut holder = t.connect().await;
    let held = crate::common::hold_row(&mut holder, "drops_dropproduct", d).await;
    let releasing = Arc::new(AtomicBool::new(true));
    let patience = Duration::from_secs(1);
    let shopper = shopper_taking_turns(t.connect().await, [v, v2], releasing.clone(), patience);
    let polling_long = t
        .with("LOCK_TIMEOUT_MS", "2000")
        .with("BATCH_MAX_ATTEMPTS", "1");
    let err = release(&polling_long, order).await.unwrap_err();
    releasing.store(false, Ordering::Relaxed);
    assert_eq!(err.error_type(), "LockBusy", "{err:?}");
    let granted = shopper.await.unwrap().unwrap();
    assert!(
        granted > 10,
        "the shopper hardly ran during the release: {granted}"
    );
    held.commit().await.unwrap();
    assert_eq!(t.order_status(order).await, "pending");
    assert_eq!(t.reserved(v).await, 3);
}

/// A shopper holds a variant of the order (a checkout of their own) while the order is released
/// on request; meanwhile a second shopper adds an item to that order, locking the order row
/// with a 1 s `lock_timeout` of their own, as the shop does. Between its tries the release
/// keeps no row (each try rolls back, or commits nothing, before it pauses), so the second
/// shopper is granted the order at once. Once the variant is free the release, judging the
/// order on the rows it locked in its last try, releases the added item too. A release that
/// polled inside its transaction kept the order row (`LOCK_TIMEOUT_MS`, 2 s here) and the
/// shopper failed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_release_polling_for_a_held_variant_keeps_no_order_row_from_a_shopper() {
    let t = TestApp::spawn().await;
    let (order, v, d, v2) = order_not_yet_due(&t, "pending").await;
    let mut holder = t.connect().await;
    let held = crate::common::hold_row(&mut holder, "products_productvariant", v).await;
    t.allow_long_polls().await;
    let front = t.with("LOCK_TIMEOUT_MS", "2000");
    let (watcher, mut shopper) = (t.connect().await, t.connect().await);
    let since = SystemTime::now();
    let releasing = tokio::spawn(async move { release(&front, order).await });
    // Polling for the variant: between two tries (the last one committed nothing), or, as a
    // release that polls inside its transaction, rolled back to the counters' savepoint.
    let polling = "(state = 'idle' AND query = 'COMMIT') OR (state = 'idle in transaction' \
                   AND query LIKE 'ROLLBACK TO SAVEPOINT unreserver_counters%')";
    assert!(
        front_door_session(&watcher, &t.name, since, polling)
            .await
            .is_some(),
        "the release never polled for the held variant"
    );
    let (adding, locked) = crate::common::lock_order_as_the_shop(&mut shopper, order, "1s").await;
    assert!(
        locked.is_ok(),
        "the shopper waited on the release for the order row: {locked:?}"
    );
    adding
        .batch_execute(&format!(
            "UPDATE products_productvariant SET reserved_quantity = reserved_quantity + 1 \
              WHERE id = {v2}; \
             INSERT INTO orders_inventoryreservation \
              (order_id, product_variant_id, quantity, expires_at) \
              VALUES ({order}, {v2}, 1, now() + interval '1 hour'); \
             UPDATE orders_order SET updated_at = now() WHERE id = {order}"
        ))
        .await
        .unwrap();
    adding.commit().await.unwrap();
    held.commit().await.unwrap();
    let outcome = releasing.await.unwrap().unwrap();
    assert_eq!(
        (
            outcome["reason"].clone(),
            outcome["reservations_released"].clone(),
            outcome["units_released"].clone()
        ),
        (json!("released"), json!(3), json!(6)),
        "the item added while it polled is released too"
    );
    assert_eq!(t.order_status(order).await, "cancelled");
    assert_eq!(
        (
            t.reserved(v).await,
            t.drop_reserved(d).await,
            t.reserved(v2).await
        ),
        (0, 0, 0)
    );
    assert_eq!(t.drifted_counters().await, 0);
}

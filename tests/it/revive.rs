//! Reviving an order whose payment came late (`unreserver::revive`, as the CLI and the Lambda's
//! `revive` action call it), as the least-privilege role: revived exactly when the release
//! cancelled it and the stock is there; otherwise nothing changes; a held row makes it give up,
//! retryably; and racing the release and checkouts never drives a counter wrong or oversells.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use unreserver::{revive, Error, ReviveReason};

use crate::common::{run, settings, shopper_taking_turns, Res, TestDb};

const HOLD_MINUTES: u32 = 15;

/// A pending order with a drop reservation of 3 and a plain reservation of 2, both due; the
/// release has run: (order, variant, drop, second variant).
async fn released_order(t: &TestDb) -> (i64, i64, i64, i64) {
    let (v, v2) = (t.variant(3).await, t.variant(2).await);
    let d = t.drop_product(v, 3).await;
    let order = t.order("pending", "pending").await;
    t.reservation(Res {
        drop: Some(d),
        ..Res::new(Some(order), v, 3, "-1 minute")
    })
    .await;
    t.reservation(Res::new(Some(order), v2, 2, "-1 minute"))
        .await;
    let mut db = t.open().await;
    assert_eq!(
        run(&mut db, &settings(), false)
            .await
            .counts
            .orders_cancelled,
        1
    );
    (order, v, d, v2)
}

#[tokio::test]
async fn revives_an_order_the_release_cancelled_when_the_stock_is_there() {
    let t = TestDb::new().await;
    let (order, v, d, v2) = released_order(&t).await;
    t.exec(&format!(
        "UPDATE orders_order SET payment_status = 'paid' WHERE id = {order}"
    ))
    .await;
    let mut db = t.open().await;
    let status = unreserver::status(&db, &settings()).await.unwrap();
    assert_eq!(
        (status.paid_after_release, status.paid_after_release_total),
        (1, 1)
    );
    assert_eq!(run(&mut db, &settings(), false).await.paid_after_release, 1);
    // Cancelled more than 24 hours ago: only in the total.
    t.exec(&format!(
        "UPDATE orders_order SET cancelled_at = cancelled_at - interval '25 hours' WHERE id = {order}; \
         UPDATE orders_inventoryreservation SET released_at = released_at - interval '25 hours' \
         WHERE order_id = {order}"
    ))
    .await;
    let status = unreserver::status(&db, &settings()).await.unwrap();
    assert_eq!(
        (status.paid_after_release, status.paid_after_release_total),
        (0, 1)
    );

    let outcome = revive(&mut db, &settings(), HOLD_MINUTES, order)
        .await
        .unwrap();
    assert!(outcome.revived, "{outcome:?}");
    assert_eq!(outcome.reason, ReviveReason::Revived);
    assert!(outcome.short.is_empty());
    assert_eq!(
        (
            t.reserved(v).await,
            t.drop_reserved(d).await,
            t.reserved(v2).await
        ),
        (3, 3, 2)
    );
    assert_eq!(t.order_status(order).await, "pending");
    let active_for_15_min = t
        .i64(&format!(
            "SELECT count(*) FROM orders_inventoryreservation WHERE order_id = {order} \
             AND status = 'active' \
             AND expires_at BETWEEN now() + interval '14 minutes 59 seconds' \
                                AND now() + interval '15 minutes 1 second'"
        ))
        .await;
    assert_eq!(active_for_15_min, 2);
    let cleared = t
        .i64(&format!(
            "SELECT count(*) FROM orders_order WHERE id = {order} AND cancelled_at IS NULL"
        ))
        .await;
    assert_eq!(cleared, 1);
    assert_eq!(t.drifted_counters().await, 0);
    let status = unreserver::status(&db, &settings()).await.unwrap();
    assert_eq!(status.paid_after_release_total, 0);

    // A second revive (a retry) answers `already_active` and changes nothing.
    let before = t.fingerprint().await;
    let again = revive(&mut db, &settings(), HOLD_MINUTES, order)
        .await
        .unwrap();
    assert_eq!(
        (again.revived, again.reason),
        (false, ReviveReason::AlreadyActive)
    );
    assert_eq!(t.fingerprint().await, before);
}

/// Revives `order`, expecting `stock_short` and nothing changed: the `short` list as JSON.
async fn refused_short(t: &TestDb, order: i64) -> serde_json::Value {
    let before = t.fingerprint().await;
    let mut db = t.open().await;
    let outcome = revive(&mut db, &settings(), HOLD_MINUTES, order)
        .await
        .unwrap();
    assert_eq!(
        (outcome.revived, outcome.reason),
        (false, ReviveReason::StockShort)
    );
    assert_eq!(t.fingerprint().await, before);
    serde_json::to_value(&outcome.short).unwrap()
}

#[tokio::test]
async fn refuses_with_nothing_changed_when_one_item_is_short() {
    let t = TestDb::new().await;
    let (order, _, _, v2) = released_order(&t).await;
    // A shopper took all but one unit of the second variant.
    t.exec(&format!(
        "UPDATE products_productvariant SET reserved_quantity = stock_quantity - 1 WHERE id = {v2}"
    ))
    .await;
    assert_eq!(
        refused_short(&t, order).await,
        serde_json::json!([{"product_variant_id": v2, "drop_product_id": null,
                            "wanted": 2, "available": 1}])
    );
}

#[tokio::test]
async fn refuses_when_the_drop_is_sold_out() {
    let t = TestDb::new().await;
    let (order, v, d, _) = released_order(&t).await;
    t.exec(&format!(
        "UPDATE drops_dropproduct SET sold_quantity = drop_quantity - 2 WHERE id = {d}"
    ))
    .await;
    assert_eq!(
        refused_short(&t, order).await,
        serde_json::json!([{"product_variant_id": v, "drop_product_id": d,
                            "wanted": 3, "available": 2}])
    );
}

#[tokio::test]
async fn refuses_an_order_the_shop_cancelled_and_an_unknown_one() {
    let t = TestDb::new().await;
    let v = t.variant(0).await;
    // The shop cancelled it an hour ago and expired its reservation itself, later.
    let order = t.order("cancelled", "paid").await;
    t.exec(&format!(
        "UPDATE orders_order SET cancelled_at = now() - interval '1 hour' WHERE id = {order}"
    ))
    .await;
    let r = t
        .reservation(Res {
            status: "expired",
            ..Res::new(Some(order), v, 1, "-2 hours")
        })
        .await;
    t.exec(&format!(
        "UPDATE orders_inventoryreservation SET released_at = now() WHERE id = {r}"
    ))
    .await;
    let pending = t.order("pending", "pending").await;
    let before = t.fingerprint().await;
    let mut db = t.open().await;
    for (id, reason) in [
        (order, ReviveReason::NotCancelledByRelease),
        (pending, ReviveReason::NotCancelledByRelease),
        (i64::from(i32::MAX), ReviveReason::UnknownOrder),
    ] {
        let outcome = revive(&mut db, &settings(), HOLD_MINUTES, id)
            .await
            .unwrap();
        assert_eq!(
            (outcome.revived, outcome.reason),
            (false, reason),
            "order {id}"
        );
    }
    assert_eq!(t.fingerprint().await, before);
    let status = unreserver::status(&db, &settings()).await.unwrap();
    assert_eq!(
        status.paid_after_release_total, 0,
        "the shop cancelled it, not the release"
    );
}

#[tokio::test]
async fn gives_up_retryably_on_a_held_row_and_never_makes_the_holder_wait() {
    let t = TestDb::new().await;
    let (order, v, _, _) = released_order(&t).await;
    let mut shopper = t.connect().await;
    let tx = shopper.transaction().await.unwrap();
    tx.execute(
        "SELECT 1 FROM products_productvariant WHERE id = $1 FOR UPDATE",
        &[&v],
    )
    .await
    .unwrap();
    let mut db = t.open().await;
    let started = Instant::now();
    let err = revive(&mut db, &settings(), HOLD_MINUTES, order)
        .await
        .unwrap_err();
    let took = started.elapsed();
    assert!(matches!(err, Error::Busy { .. }), "{}", err.chain());
    assert!(err.is_retryable());
    assert_eq!(err.kind(), "LockBusy");
    // LOCK_TIMEOUT_MS per try, BATCH_MAX_ATTEMPTS tries, backoffs between: bounded.
    assert!(took < Duration::from_secs(10), "{took:?}");
    // The shopper was never blocked: it can still update the row at once and commit.
    tx.execute(
        "UPDATE products_productvariant SET reserved_quantity = reserved_quantity WHERE id = $1",
        &[&v],
    )
    .await
    .unwrap();
    tx.commit().await.unwrap();
    assert_eq!(t.order_status(order).await, "cancelled");
    let outcome = revive(&mut db, &settings(), HOLD_MINUTES, order)
        .await
        .unwrap();
    assert!(outcome.revived);
}

/// While revive tries again and again for a drop row a holder keeps (for 2 s:
/// `LOCK_TIMEOUT_MS`, which this database's `deadlock_timeout` allows), a shopper checks out on
/// the order's two variants, which revive locks before the drop in each try: each of the
/// shopper's updates is granted within 1 s (its own `lock_timeout`), so revive never keeps
/// them while it waits for the drop — a loaded machine's slow statements stay far from the
/// bound. The scenario is asserted first: revive did try (it gave up `LockBusy`) and the
/// shopper's updates ran during those tries. A revive that kept the variants locked between
/// its tries (the whole poll) fails it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_revive_polling_for_a_held_row_keeps_no_other_row_from_a_shopper() {
    let t = TestDb::new().await;
    t.allow_long_polls().await;
    let (order, v, d, v2) = released_order(&t).await;
    let mut holder = t.connect().await;
    let held = crate::common::hold_row(&mut holder, "drops_dropproduct", d).await;
    let reviving = Arc::new(AtomicBool::new(true));
    let patience = Duration::from_secs(1);
    let shopper = shopper_taking_turns(t.connect().await, [v, v2], reviving.clone(), patience);
    let mut s = settings();
    s.lock_timeout_ms = 2000;
    s.batch_max_attempts = 1;
    let mut db = t.open_with(&s).await;
    let err = revive(&mut db, &s, HOLD_MINUTES, order).await.unwrap_err();
    reviving.store(false, Ordering::Relaxed);
    assert_eq!(err.kind(), "LockBusy", "{}", err.chain());
    let granted = shopper.await.unwrap().unwrap();
    assert!(
        granted > 10,
        "the shopper hardly ran during revive: {granted}"
    );
    held.commit().await.unwrap();
    assert_eq!(t.order_status(order).await, "cancelled");
}

/// Shoppers check out on four hot variants (lock the variant and drop rows, check the room,
/// reserve, insert a reservation due in 300 ms), the release runs in a loop, and revivers try
/// random released orders, for three seconds, with so little stock (15 a drop) that it runs
/// out. No checkout fails; every counter equals its active reservations and nothing is
/// oversold. The race is asserted to have happened: checkouts, stock running out, revives.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn revive_racing_the_release_and_checkouts_never_oversells() {
    let t = Arc::new(TestDb::new().await);
    let mut variants = Vec::new();
    for _ in 0..4 {
        let v = t.variant(0).await;
        t.exec(&format!(
            "UPDATE products_productvariant SET stock_quantity = 20 WHERE id = {v}"
        ))
        .await;
        let d = t.drop_product(v, 0).await;
        t.exec(&format!(
            "UPDATE drops_dropproduct SET drop_quantity = 15 WHERE id = {d}"
        ))
        .await;
        variants.push((v, d));
    }
    // Ten orders the release cancelled before the race: revivable while stock is free.
    for i in 0..10 {
        let (v, d) = variants[i % variants.len()];
        t.exec(&format!(
            "UPDATE products_productvariant SET reserved_quantity = reserved_quantity + 1 WHERE id = {v}; \
             UPDATE drops_dropproduct SET reserved_quantity = reserved_quantity + 1 WHERE id = {d}"
        ))
        .await;
        let order = t.order("pending", "pending").await;
        t.reservation(Res {
            drop: Some(d),
            ..Res::new(Some(order), v, 1, "-1 minute")
        })
        .await;
    }
    run(&mut t.open().await, &settings(), false).await;
    let variants = Arc::new(variants);
    let stop = Arc::new(AtomicBool::new(false));
    let revived = Arc::new(AtomicU64::new(0));
    let sold_out = Arc::new(AtomicU64::new(0));
    let mut tasks = Vec::new();
    let mut shoppers = Vec::new();
    for _ in 0..3 {
        let (t, variants, stop) = (t.clone(), variants.clone(), stop.clone());
        let sold_out = sold_out.clone();
        shoppers.push(tokio::spawn(async move {
            let mut c = t.connect().await;
            let mut reserved = 0_u64;
            while !stop.load(Ordering::Relaxed) {
                match checkout(&mut c, &variants).await {
                    Ok(true) => reserved += 1,
                    Ok(false) => {
                        sold_out.fetch_add(1, Ordering::Relaxed);
                    }
                    Err(e) => return Err(format!("a checkout failed: {e}")),
                }
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            Ok(reserved)
        }));
    }
    {
        let (t, stop) = (t.clone(), stop.clone());
        tasks.push(tokio::spawn(async move {
            let mut db = t.open().await;
            while !stop.load(Ordering::Relaxed) {
                run(&mut db, &settings(), false).await;
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }));
    }
    for _ in 0..2 {
        let (t, stop, revived) = (t.clone(), stop.clone(), revived.clone());
        tasks.push(tokio::spawn(async move {
            let mut db = t.open().await;
            while !stop.load(Ordering::Relaxed) {
                let order = t
                    .i64(
                        "SELECT COALESCE((SELECT id FROM orders_order WHERE status = 'cancelled' \
                          ORDER BY random() LIMIT 1), 0)",
                    )
                    .await;
                match revive(&mut db, &settings(), HOLD_MINUTES, order).await {
                    Ok(o) if o.revived => {
                        revived.fetch_add(1, Ordering::Relaxed);
                    }
                    Ok(_) | Err(Error::Busy { .. }) => {}
                    Err(e) => panic!("revive failed: {}", e.chain()),
                }
            }
        }));
    }
    // Until the race has happened (the stock ran out under the checkouts, orders were
    // revived), three seconds at least; a loaded machine takes longer to get there.
    let started = std::time::Instant::now();
    while started.elapsed() < Duration::from_secs(3)
        || (sold_out.load(Ordering::Relaxed) == 0 || revived.load(Ordering::Relaxed) == 0)
            && started.elapsed() < Duration::from_secs(60)
    {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    stop.store(true, Ordering::Relaxed);
    for task in tasks {
        task.await.unwrap();
    }
    let mut reserved = 0;
    for shopper in shoppers {
        reserved += shopper.await.unwrap().unwrap();
    }
    // The race happened: checkouts reserved, the stock ran out under them (so the oversell
    // check below checks something), and orders were revived.
    assert!(reserved > 10, "too few checkouts: {reserved}");
    assert!(
        sold_out.load(Ordering::Relaxed) > 0,
        "the stock never ran out: the race did not reach the limit"
    );
    assert!(
        revived.load(Ordering::Relaxed) > 0,
        "no order was revived: the race did not happen"
    );
    assert_eq!(t.drifted_counters().await, 0);
    let oversold = t
        .i64("SELECT (SELECT count(*) FROM products_productvariant WHERE reserved_quantity > stock_quantity) \
              + (SELECT count(*) FROM drops_dropproduct \
                 WHERE reserved_quantity + sold_quantity > drop_quantity)")
        .await;
    assert_eq!(oversold, 0);
}

/// A checkout as a shop writes it: lock the variant and its drop row, check the room, reserve,
/// insert the order and its reservation (due in 300 ms). True when it reserved, false when
/// the stock was out; any error is the shopper's failure.
async fn checkout(
    c: &mut tokio_postgres::Client,
    variants: &[(i64, i64)],
) -> Result<bool, tokio_postgres::Error> {
    let (v, d) = variants[fastrand::usize(..variants.len())];
    let qty = 1 + fastrand::i32(0..2);
    let tx = c.transaction().await?;
    let room = tx
        .query_one(
            "SELECT (SELECT stock_quantity - reserved_quantity FROM products_productvariant \
                     WHERE id = $1 FOR UPDATE), \
                    (SELECT drop_quantity - reserved_quantity - sold_quantity FROM drops_dropproduct \
                     WHERE id = $2 FOR UPDATE)",
            &[&v, &d],
        )
        .await?;
    let (vr, dr): (i32, i32) = (room.get(0), room.get(1));
    if vr < qty || dr < qty {
        tx.rollback().await?;
        tokio::time::sleep(Duration::from_millis(5)).await;
        return Ok(false);
    }
    tx.batch_execute(&format!(
            "UPDATE products_productvariant SET reserved_quantity = reserved_quantity + {qty} WHERE id = {v}; \
             UPDATE drops_dropproduct SET reserved_quantity = reserved_quantity + {qty} WHERE id = {d}; \
             WITH o AS (INSERT INTO orders_order (order_number) VALUES ('R-' || left(md5(random()::text), 24)) RETURNING id) \
             INSERT INTO orders_inventoryreservation (order_id, product_variant_id, drop_product_id, quantity, expires_at) \
             SELECT o.id, {v}, {d}, {qty}, now() + interval '300 milliseconds' FROM o"
    ))
    .await?;
    tx.commit().await?;
    Ok(true)
}

/// A revive retried after it was done (a payment webhook delivered twice, a timeout on the
/// caller's side): the retry answers `revived` again and changes nothing — the counters are
/// not reserved twice, the hold is not extended; a later release of the revived order, once it
/// falls due again, overwrites the mark as usual.
#[tokio::test]
async fn a_retried_revive_answers_already_active_and_changes_nothing() {
    let t = TestDb::new().await;
    let (order, v, d, v2) = released_order(&t).await;
    let mut db = t.open().await;
    let first = revive(&mut db, &settings(), HOLD_MINUTES, order)
        .await
        .unwrap();
    assert_eq!((first.revived, first.reason), (true, ReviveReason::Revived));
    // The revived lines are active and never released, to the shop's code: no `released_at`.
    let marked = t
        .i64(&format!(
            "SELECT count(*) FROM orders_inventoryreservation \
             WHERE order_id = {order} AND (status <> 'active' OR released_at IS NOT NULL)"
        ))
        .await;
    assert_eq!(marked, 0, "a revived line still reads as released");
    let snapshot = t.fingerprint().await;
    let counters = (
        t.reserved(v).await,
        t.drop_reserved(d).await,
        t.reserved(v2).await,
    );
    assert_eq!(counters, (3, 3, 2));
    let again = revive(&mut db, &settings(), HOLD_MINUTES, order)
        .await
        .unwrap();
    assert_eq!(
        (again.revived, again.reason),
        (false, ReviveReason::AlreadyActive),
        "a retry answered otherwise"
    );
    assert_eq!(t.fingerprint().await, snapshot, "a retry changed something");
    // Due again: released and cancelled as any order; then a revive of it works again.
    t.exec(&format!(
        "UPDATE orders_inventoryreservation SET expires_at = now() - interval '1 minute' WHERE order_id = {order}"
    ))
    .await;
    let report = run(&mut db, &settings(), false).await;
    assert_eq!(report.counts.orders_cancelled, 1, "{report:?}");
    assert_eq!((t.reserved(v).await, t.reserved(v2).await), (0, 0));
    assert_eq!(t.order_status(order).await, "cancelled");
}

/// A shopper holds a variant of the order while revive tries it; meanwhile the shop updates the
/// order row (locking it with a 1 s `lock_timeout` of its own; revive polls 2 s). Between its tries revive
/// keeps no row (each try rolls back before it pauses), so the shop is granted the order at
/// once; once the variant is free, revive revives the order, judged on the rows it locked in
/// its last try.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_revive_polling_for_a_held_variant_keeps_no_order_row_from_the_shop() {
    let t = TestDb::new().await;
    let (order, v, d, v2) = released_order(&t).await;
    let mut holder = t.connect().await;
    let held = crate::common::hold_row(&mut holder, "products_productvariant", v).await;
    t.allow_long_polls().await;
    let mut s = settings();
    s.lock_timeout_ms = 2000;
    let mut db = t.open_with(&s).await;
    let reviver = crate::common::backend_pid(&db.client).await;
    db.client.batch_execute("SELECT 'ready'").await.unwrap();
    let (watcher, mut shop) = (t.connect().await, t.connect().await);
    let reviving = tokio::spawn(async move { revive(&mut db, &s, HOLD_MINUTES, order).await });
    // Polling for the variant: between two tries, the last one rolled back.
    assert!(
        crate::common::until_seen(&watcher, reviver, "state = 'idle' AND query = 'ROLLBACK'").await,
        "revive never polled for the held variant"
    );
    let (updating, locked) = crate::common::lock_order_as_the_shop(&mut shop, order, "1s").await;
    assert!(
        locked.is_ok(),
        "the shop waited on revive for the order row: {locked:?}"
    );
    updating
        .execute(
            "UPDATE orders_order SET updated_at = now() WHERE id = $1",
            &[&order],
        )
        .await
        .unwrap();
    updating.commit().await.unwrap();
    held.commit().await.unwrap();
    let outcome = reviving.await.unwrap().unwrap();
    assert_eq!(
        (outcome.revived, outcome.reason),
        (true, ReviveReason::Revived)
    );
    assert_eq!(t.order_status(order).await, "pending");
    assert_eq!(
        (
            t.reserved(v).await,
            t.drop_reserved(d).await,
            t.reserved(v2).await
        ),
        (3, 3, 2)
    );
}

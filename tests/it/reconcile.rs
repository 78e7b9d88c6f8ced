//! `reconcile`: drifted stock counters found and set right, as the least-privilege role, exactly
//! under live traffic, never waiting behind a shopper.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use serde_json::{json, Value};
use unreserver::{reconcile, ReconcileReport, ReconcileScope};

use crate::app::TestApp;
use crate::common::{settings, Res, TestDb};

/// What `unreserver reconcile ARGS` printed, and its exit code.
async fn cli(t: &TestApp, args: &[&str]) -> (Value, i32) {
    let out = t.cli(&[&["reconcile"], args].concat()).await;
    (out.json().clone(), out.code.unwrap_or(-1))
}

async fn apply(t: &TestDb, scope: ReconcileScope) -> ReconcileReport {
    let mut db = t.open().await;
    reconcile(&mut db, &settings(), &scope)
        .await
        .unwrap_or_else(|e| panic!("reconcile failed: {}", e.chain()))
}

fn all(apply: bool) -> ReconcileScope {
    ReconcileScope {
        apply,
        ..ReconcileScope::default()
    }
}

/// The drift real shops have, on variants and drops: a counter bumped without a reservation, a
/// reservation deleted without the counter, a counter given back twice. A dry run lists each
/// (exit 3) and changes nothing; `--apply` sets each right (exit 0); then nothing is left.
#[tokio::test]
async fn each_kind_of_drift_is_listed_then_repaired() {
    let t = TestApp::spawn().await;
    let bumped = t.variant(5).await; // 5 counted, none reserved
    let deleted = t.variant(3).await; // 3 counted, 2 reserved: one reservation deleted
    let twice = t.variant(1).await; // 1 counted, 3 reserved: 2 units given back twice
    let fine = t.variant(2).await;
    let drop = t.drop_product(twice, 0).await; // 0 counted, 3 reserved
    let order = t.order("pending", "pending").await;
    for (variant, qty) in [(deleted, 2), (fine, 2)] {
        t.reservation(Res::new(Some(order), variant, qty, "+10 minutes"))
            .await;
    }
    t.reservation(Res {
        drop: Some(drop),
        ..Res::new(Some(order), twice, 3, "+10 minutes")
    })
    .await;
    let before = t.fingerprint().await;

    let (dry, code) = cli(&t, &[]).await;
    assert_eq!(code, 3, "{dry}");
    assert_eq!(t.fingerprint().await, before, "a dry run changes nothing");
    assert_eq!(
        (dry["drifted"].clone(), dry["repaired"].clone()),
        (json!(4), json!(0)),
        "{dry}"
    );
    assert!(dry["checked"].as_u64().unwrap() >= 5, "{dry}");
    let rows = dry["rows"].as_array().unwrap();
    let delta = |kind: &str, id: i64| {
        rows.iter()
            .find(|r| r["kind"] == kind && r["id"] == id)
            .map(|r| r["delta"].as_i64().unwrap())
    };
    assert_eq!(delta("variant", bumped), Some(5));
    assert_eq!(delta("variant", deleted), Some(1));
    assert_eq!(delta("variant", twice), Some(-2));
    assert_eq!(delta("drop", drop), Some(-3));
    assert_eq!(delta("variant", fine), None);

    let (applied, code) = cli(&t, &["--apply"]).await;
    assert_eq!(code, 0, "{applied}");
    assert_eq!(applied["repaired"], 4, "{applied}");
    assert_eq!(t.drifted_counters().await, 0);
    assert_eq!((t.reserved(bumped).await, t.reserved(twice).await), (0, 3));
    assert_eq!(t.drop_reserved(drop).await, 3);
    let (again, code) = cli(&t, &[]).await;
    assert_eq!((code, again["drifted"].clone()), (0, json!(0)), "{again}");

    // Named rows only; an unknown id is bad input.
    t.exec(&format!(
        "UPDATE products_productvariant SET reserved_quantity = 9 WHERE id IN ({bumped}, {fine})"
    ))
    .await;
    let (named, code) = cli(&t, &["--apply", "--variant", &bumped.to_string()]).await;
    assert_eq!(
        (code, named["checked"].clone(), named["repaired"].clone()),
        (0, json!(1), json!(1)),
        "{named}"
    );
    assert_eq!(t.reserved(fine).await, 9, "a row not named is left alone");
    let out = t.cli(&["reconcile", "--variant", "999999"]).await;
    assert_eq!(out.code, Some(2), "{}", out.stderr);
    assert!(out.stderr.contains("999999"));
}

/// Without the reference schema's `CHECK (reserved_quantity >= 0)`, a counter can go negative:
/// found and set right like any other.
#[tokio::test]
async fn a_negative_counter_is_repaired_where_the_schema_allows_one() {
    let t = TestDb::new().await;
    let v = t.variant(0).await;
    let constraint = t
        .text(
            "SELECT conname::text FROM pg_constraint WHERE contype = 'c' AND conrelid = 'products_productvariant'::regclass \
             AND pg_get_constraintdef(oid) LIKE '%reserved_quantity%'",
        )
        .await;
    t.exec(&format!(
        "ALTER TABLE products_productvariant DROP CONSTRAINT {constraint}"
    ))
    .await;
    t.exec(&format!(
        "UPDATE products_productvariant SET reserved_quantity = -3 WHERE id = {v}"
    ))
    .await;
    let report = apply(&t, all(true)).await;
    assert_eq!(report.rows[0].delta, -3, "{report:?}");
    assert_eq!((report.repaired, t.reserved(v).await), (1, 0));
}

/// A counter row a shopper holds is skipped (never waited on), reported, and taken by the next
/// call; paid orders and orders the shop cancelled itself that still hold stock are listed,
/// never touched.
#[tokio::test]
async fn a_held_row_is_skipped_and_untouched_orders_are_listed() {
    let t = TestDb::new().await;
    let v = t.variant(4).await;
    let paid = t.order("confirmed", "paid").await;
    let cancelled = t.order("cancelled", "pending").await;
    for order in [paid, cancelled] {
        t.reservation(Res::new(Some(order), v, 1, "+10 minutes"))
            .await;
    }
    let holder = t.connect().await;
    holder
        .batch_execute(&format!(
            "BEGIN; SELECT 1 FROM products_productvariant WHERE id = {v} FOR UPDATE"
        ))
        .await
        .unwrap();
    let started = std::time::Instant::now();
    let report = apply(&t, all(true)).await;
    // Waiting in the row's lock queue would last until the holder commits, after this call:
    // it answered, so it never queued (the bound only catches a wait for its own lock timeout).
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "it waited: {:?}",
        started.elapsed()
    );
    assert_eq!(
        (report.skipped_locked, report.repaired, report.drifted),
        (1, 0, 1),
        "{report:?}"
    );
    assert!(report.rows[0].skipped_locked && report.drift_remains());
    assert_eq!(report.paid_orders_with_active_reservations, [paid]);
    assert_eq!(
        report.cancelled_orders_with_active_reservations,
        [cancelled]
    );
    holder.batch_execute("COMMIT").await.unwrap();
    let report = apply(&t, all(true)).await;
    assert_eq!((report.repaired, t.reserved(v).await), (1, 2), "{report:?}");
    assert_eq!(t.order_status(paid).await, "confirmed", "never touched");
}

/// A counter row a checkout holds for a moment is polled for (`LOCK_TIMEOUT_MS`, without
/// waiting on it) and repaired in the same call once the checkout commits, not reported as
/// skipped. A reconcile that tried a held row only once more, at once, skipped it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_row_held_for_a_moment_is_polled_for_and_repaired() {
    let t = TestDb::new().await;
    let v = t.variant(4).await;
    let mut holder = t.connect().await;
    let held = crate::common::hold_row(&mut holder, "products_productvariant", v).await;
    // It polls for 2 s, so that the watcher sees it polling and the holder commits within
    // the one window on a loaded machine.
    t.allow_long_polls().await;
    let mut s = settings();
    s.lock_timeout_ms = 2000;
    let mut db = t.open_with(&s).await;
    let reconciler = crate::common::backend_pid(&db.client).await;
    db.client.batch_execute("SELECT 'ready'").await.unwrap();
    let scope = ReconcileScope {
        variants: vec![v],
        ..all(true)
    };
    let watcher = t.connect().await;
    let reconciling = tokio::spawn(async move { reconcile(&mut db, &s, &scope).await });
    // Polling for the row: between two tries, the last one rolled back.
    assert!(
        crate::common::until_seen(
            &watcher,
            reconciler,
            "state = 'idle' AND query = 'ROLLBACK'"
        )
        .await,
        "reconcile never polled for the held row"
    );
    held.commit().await.unwrap();
    let report = reconciling.await.unwrap().unwrap();
    assert_eq!(
        (report.skipped_locked, report.repaired, report.drifted),
        (0, 1, 1),
        "{report:?}"
    );
    assert_eq!(t.reserved(v).await, 0);
}

const VARIANTS: i64 = 6;

/// A checkout of one or two items, in one of the shop's lock orders: every variant first (the
/// counter bumped, then the reservations), or item by item with the reservation inserted
/// before its counter is bumped (the lock taken late). Expires within a second.
async fn checkout(c: &mut tokio_postgres::Client, n: u64) -> Result<(), tokio_postgres::Error> {
    let tx = c.transaction().await?;
    tx.batch_execute("SET LOCAL lock_timeout = '2s'").await?;
    let order: i64 = tx
        .query_one(
            "INSERT INTO orders_order (order_number) VALUES ($1) RETURNING id",
            &[&format!("R-{n}-{}", fastrand::u32(..))],
        )
        .await?
        .get(0);
    let mut items: Vec<i64> = (0..1 + fastrand::usize(..2))
        .map(|_| 1 + fastrand::i64(0..VARIANTS))
        .collect();
    items.sort_unstable();
    let ms = fastrand::i32(0..1000);
    let insert = "INSERT INTO orders_inventoryreservation (order_id, product_variant_id, drop_product_id, quantity, expires_at) \
                  VALUES ($1, $2, $2, 1, now() + $3::int4 * interval '1 millisecond')";
    let bump_variant = "UPDATE products_productvariant SET reserved_quantity = reserved_quantity + 1 WHERE id = $1";
    let bump_drop =
        "UPDATE drops_dropproduct SET reserved_quantity = reserved_quantity + 1 WHERE id = $1";
    if n % 2 == 0 {
        for v in &items {
            tx.execute(bump_variant, &[v]).await?;
        }
        for v in &items {
            tx.execute(bump_drop, &[v]).await?;
            tx.execute(insert, &[&order, v, &ms]).await?;
        }
    } else {
        for v in &items {
            tx.execute(insert, &[&order, v, &ms]).await?;
            tx.execute(bump_variant, &[v]).await?;
            tx.execute(bump_drop, &[v]).await?;
        }
    }
    tx.commit().await
}

/// A payment converts a recent pending order, or the shopper cancels it: its active
/// reservations leave, and their units leave the counters, in one transaction.
async fn settle(c: &mut tokio_postgres::Client, pay: bool) -> Result<(), tokio_postgres::Error> {
    let tx = c.transaction().await?;
    tx.batch_execute("SET LOCAL lock_timeout = '2s'").await?;
    let Some(row) = tx
        .query_opt(
            "SELECT id FROM orders_order WHERE id = (SELECT max(id) FROM orders_order) - $1 \
             AND status = 'pending' FOR UPDATE",
            &[&fastrand::i64(0..20)],
        )
        .await?
    else {
        return tx.rollback().await;
    };
    let order: i64 = row.get(0);
    let (status, order_status) = if pay {
        ("converted", "confirmed")
    } else {
        ("released", "cancelled")
    };
    let rows = tx
        .query(
            "UPDATE orders_inventoryreservation SET status = $2 WHERE order_id = $1 AND status = 'active' \
             RETURNING product_variant_id",
            &[&order, &status],
        )
        .await?;
    let mut variants: Vec<i64> = rows.iter().map(|r| r.get(0)).collect();
    variants.sort_unstable();
    for v in variants {
        tx.execute("UPDATE products_productvariant SET reserved_quantity = reserved_quantity - 1 WHERE id = $1", &[&v]).await?;
        tx.execute(
            "UPDATE drops_dropproduct SET reserved_quantity = reserved_quantity - 1 WHERE id = $1",
            &[&v],
        )
        .await?;
    }
    tx.execute(
        "UPDATE orders_order SET status = $2 WHERE id = $1",
        &[&order, &order_status],
    )
    .await?;
    tx.commit().await
}

/// The race: checkouts in both lock orders, payments, cancellations, release runs and
/// `reconcile --apply` loops on the same six variants and drops for four seconds, counters
/// drifted on purpose at the start. The scenario must happen (repairs during the traffic, the
/// shop and the release busy); then, with the traffic stopped, a dry run finds no drift at all
/// — a repair racing a checkout would have lost or doubled its units — and no shopper
/// transaction failed.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn reconcile_racing_the_shop_and_the_release_is_exact() {
    let t = Arc::new(TestDb::new().await);
    for _ in 0..VARIANTS {
        let v = t.variant(0).await;
        t.drop_product(v, 0).await;
    }
    // Drift on purpose: bumped without reservations, on variants and drops.
    t.exec("UPDATE products_productvariant SET reserved_quantity = reserved_quantity + 3 WHERE id % 2 = 0").await;
    t.exec(
        "UPDATE drops_dropproduct SET reserved_quantity = reserved_quantity + 2 WHERE id % 3 = 0",
    )
    .await;
    let drifted_at_start = t.drifted_counters().await;
    assert!(drifted_at_start >= 4);

    let stop = Arc::new(AtomicBool::new(false));
    let (shop_ops, shop_failures) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
    let mut tasks = Vec::new();
    for worker in 0..3u64 {
        let (t, stop, ops, failures) = (
            t.clone(),
            stop.clone(),
            shop_ops.clone(),
            shop_failures.clone(),
        );
        tasks.push(tokio::spawn(async move {
            let mut c = t.connect().await;
            let mut n = worker * 1_000_000;
            while !stop.load(Ordering::Relaxed) {
                n += 1;
                let result = match n % 4 {
                    0 => settle(&mut c, true).await,
                    1 => settle(&mut c, false).await,
                    _ => checkout(&mut c, n).await,
                };
                match result {
                    Ok(()) => ops.fetch_add(1, Ordering::Relaxed),
                    Err(e) => {
                        eprintln!("shop transaction failed: {e}");
                        failures.fetch_add(1, Ordering::Relaxed)
                    }
                };
            }
        }));
    }
    let released = Arc::new(AtomicU64::new(0));
    {
        let (t, stop, released) = (t.clone(), stop.clone(), released.clone());
        tasks.push(tokio::spawn(async move {
            let mut db = t.open().await;
            while !stop.load(Ordering::Relaxed) {
                let report = crate::common::run(&mut db, &settings(), false).await;
                released.fetch_add(report.counts.reservations_released, Ordering::Relaxed);
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }));
    }
    let (repaired, passes) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
    let (stop_repairs, injected) = (
        Arc::new(AtomicBool::new(false)),
        Arc::new(AtomicU64::new(0)),
    );
    // Passes are numbered as they start; `clean` is the number of the last that found every
    // counter right under its lock (nothing drifted, nothing skipped).
    let (started, clean) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
    let repairs = {
        let (t, stop, repaired, passes) = (
            t.clone(),
            stop_repairs.clone(),
            repaired.clone(),
            passes.clone(),
        );
        let (started, clean) = (started.clone(), clean.clone());
        tokio::spawn(async move {
            let mut db = t.open().await;
            while !stop.load(Ordering::Relaxed) {
                let number = started.fetch_add(1, Ordering::Relaxed) + 1;
                let report = reconcile(&mut db, &settings(), &all(true))
                    .await
                    .unwrap_or_else(|e| panic!("reconcile failed: {}", e.chain()));
                repaired.fetch_add(report.repaired, Ordering::Relaxed);
                passes.fetch_add(1, Ordering::Relaxed);
                if report.drifted == 0 && report.skipped_locked == 0 {
                    clean.store(number, Ordering::Relaxed);
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        })
    };
    // More drift while it runs: a counter bumped by hand every 300 ms, for 2.4 s.
    {
        let (t, injected) = (t.clone(), injected.clone());
        let c = t.connect().await;
        for _ in 0..8 {
            tokio::time::sleep(Duration::from_millis(300)).await;
            let v = 1 + fastrand::i64(0..VARIANTS);
            c.execute("UPDATE products_productvariant SET reserved_quantity = reserved_quantity + 1 WHERE id = $1", &[&v])
                .await
                .unwrap();
            injected.fetch_add(1, Ordering::Relaxed);
        }
    }
    // The repairs stop once a pass that started after the last drift was injected found every
    // counter right; the shop and the release go on for one more second, so that a counter a
    // repair set wrong stays wrong (the shop only adds and subtracts) for the check.
    let first = started.load(Ordering::Relaxed) + 1;
    for _ in 0..600 {
        if clean.load(Ordering::Relaxed) >= first {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(
        clean.load(Ordering::Relaxed) >= first,
        "no pass found the counters right after the last injected drift"
    );
    stop_repairs.store(true, Ordering::Relaxed);
    repairs.await.unwrap();
    tokio::time::sleep(Duration::from_secs(1)).await;
    stop.store(true, Ordering::Relaxed);
    for task in tasks {
        task.await.unwrap();
    }
    // The race happened: repairs ran among the shop's transactions and the release's.
    let (ops, repaired, passes) = (
        shop_ops.load(Ordering::Relaxed),
        repaired.load(Ordering::Relaxed),
        passes.load(Ordering::Relaxed),
    );
    assert!(ops >= 100, "only {ops} shop transactions");
    assert!(passes >= 3, "only {passes} reconcile passes");
    assert!(
        repaired >= drifted_at_start as u64,
        "repaired {repaired} of {drifted_at_start}"
    );
    assert!(
        released.load(Ordering::Relaxed) > 0,
        "the release released nothing"
    );
    assert_eq!(
        shop_failures.load(Ordering::Relaxed),
        0,
        "a shopper's transaction failed"
    );
    // Exact: nothing a repair did during the traffic left a counter wrong (nothing repaired
    // after the last second of traffic).
    let dry = apply(&t, all(false)).await;
    assert_eq!((dry.drifted, t.drifted_counters().await), (0, 0), "{dry:?}");
    let last = apply(&t, all(true)).await;
    assert!(!last.drift_remains(), "{last:?}");
}

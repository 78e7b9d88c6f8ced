//! Adaptive batches and a run's workers: a quiet backlog is drained by several connections that
//! never take each other for shoppers, the first shopper on the backlog's rows drops the batch
//! to its floor and the run to one batch at a time, and a run opens no more connections than
//! the server (or its role) can spare.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use unreserver::{Database, OnCommit, ReleaseSettings, RunOptions, StopReason};

use crate::common::{run, settings, TestDb};

/// `orders` due orders of one or two lines on the four `variants` (the first two also in a
/// drop each), every counter equal to its active reservations: (variants, drops, reservations).
pub(crate) async fn backlog(t: &TestDb, orders: i64) -> (Vec<i64>, Vec<i64>, u64) {
    let mut variants = Vec::new();
    for _ in 0..4 {
        variants.push(t.variant(0).await);
    }
    let drops = vec![
        t.drop_product(variants[0], 0).await,
        t.drop_product(variants[1], 0).await,
    ];
    t.client
        .execute(
            "WITH o AS (INSERT INTO orders_order (order_number) \
                 SELECT 'A-' || g FROM generate_series(1, $3::int8) g RETURNING id) \
             INSERT INTO orders_inventoryreservation \
                 (order_id, product_variant_id, drop_product_id, quantity, expires_at) \
             SELECT o.id, ($1::int8[])[1 + (o.id + g) % 4], \
                    CASE (o.id + g) % 4 WHEN 0 THEN ($2::int8[])[1] WHEN 1 THEN ($2::int8[])[2] END, \
                    1, now() - interval '1 minute' \
               FROM o, generate_series(1, 1 + (o.id % 2)::int) g",
            &[&variants, &drops, &orders],
        )
        .await
        .unwrap();
    t.exec(
        "UPDATE products_productvariant v SET reserved_quantity = COALESCE((SELECT sum(quantity) \
           FROM orders_inventoryreservation r WHERE r.product_variant_id = v.id), 0); \
         UPDATE drops_dropproduct d SET reserved_quantity = COALESCE((SELECT sum(quantity) \
           FROM orders_inventoryreservation r WHERE r.drop_product_id = d.id), 0)",
    )
    .await;
    let total = t
        .i64("SELECT count(*) FROM orders_inventoryreservation")
        .await as u64;
    (variants, drops, total)
}

/// The worker that owns an id is one rule (`owned_by_share!`): every id is in one share,
/// negative and zero included. Orders with ids from 0 down to -1,999 and cart holds with
/// negative ids, drained by two workers: every one is released (with the rule as `mod`
/// alone, odd negative ids were in no worker's share and the run still said `drained`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_workers_share_every_id_negative_and_zero_included() {
    let t = TestDb::new().await;
    let variant = t.variant(0).await;
    t.client
        .execute(
            "WITH o AS (INSERT INTO orders_order (id, order_number)                  SELECT -g, 'N-' || g FROM generate_series(0, 1999) g RETURNING id)              INSERT INTO orders_inventoryreservation                  (order_id, product_variant_id, quantity, expires_at)              SELECT o.id, $1, 1, now() - interval '1 minute' FROM o",
            &[&variant],
        )
        .await
        .unwrap();
    t.client
        .execute(
            "INSERT INTO orders_inventoryreservation                  (id, product_variant_id, quantity, expires_at)              SELECT -g, $1, 1, now() - interval '1 minute' FROM generate_series(1, 101) g",
            &[&variant],
        )
        .await
        .unwrap();
    t.exec(
        "UPDATE products_productvariant v SET reserved_quantity = (SELECT sum(quantity)            FROM orders_inventoryreservation r WHERE r.product_variant_id = v.id)",
    )
    .await;
    let s = adaptive();
    let mut db = t.open_with(&s).await;
    let r = run(&mut db, &s, false).await;
    assert_eq!(r.controller.workers, 2, "{r:?}");
    assert_eq!(r.stopped_reason, StopReason::Drained);
    assert_eq!(
        (r.counts.orders_cancelled, r.counts.holds_released),
        (2000, 101),
        "{r:?}"
    );
    assert_eq!(r.backlog_remaining, 0, "{r:?}");
    assert_eq!(t.reserved(variant).await, 0);
    assert_eq!(
        t.i64("SELECT count(*) FROM orders_inventoryreservation WHERE status = 'active'")
            .await,
        0
    );
}

/// A quiet backlog the first batch can take goes in that one batch: with the shipped defaults
/// the first batch pages 450 rows (what `BATCH_TARGET_MS` allows at the slowest rate measured),
/// and 400 due reservations are released by it, where growing from the floor (100, then the
/// workers' pages) took four batches or more.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_small_backlog_goes_in_one_batch_not_grown_from_the_floor() {
    let t = TestDb::new().await;
    // 267 orders of one or two lines: 400 reservations (one more when the ids start odd).
    let (variants, drops, total) = backlog(&t, 267).await;
    assert!((400..=401).contains(&total), "{total}");
    // The defaults but the budget (see `adaptive`): a first batch cut on a loaded machine
    // would be followed by more.
    let s = ReleaseSettings {
        shop_deadlock_timeout_ms: Some(4000),
        ..settings()
    };
    let mut db = t.open_with(&s).await;
    let r = run(&mut db, &s, false).await;
    assert_eq!(r.stopped_reason, StopReason::Drained);
    assert_eq!(r.counts.reservations_released, total);
    all_released_once(&t, &variants, &drops, total).await;
    assert_eq!(r.batches, 1, "{:?}", r.controller);
    assert_eq!(r.controller.batch_rows_max, 450, "{:?}", r.controller);
}

/// The defaults, with a floor small enough for a test backlog to take many batches.
/// With a 2 s batch budget (the shop's `deadlock_timeout` taken as 4 s): the target, and so
/// every size, is the same as with the default 500 ms, but a batch slowed by a loaded machine
/// is not cut, which would count as a sign of shoppers and change the batches and workers
/// these tests count.
fn adaptive() -> ReleaseSettings {
    ReleaseSettings {
        batch_size_min: 50,
        shop_deadlock_timeout_ms: Some(4000),
        ..settings()
    }
}

/// Every counter back to zero, every reservation released once, every order cancelled once.
async fn all_released_once(t: &TestDb, variants: &[i64], drops: &[i64], total: u64) {
    for &v in variants {
        assert_eq!(t.reserved(v).await, 0, "variant {v}");
    }
    for &d in drops {
        assert_eq!(t.drop_reserved(d).await, 0, "drop {d}");
    }
    assert_eq!(
        t.i64("SELECT count(*) FROM orders_inventoryreservation WHERE status = 'expired'")
            .await as u64,
        total
    );
    assert_eq!(t.drifted_counters().await, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_quiet_backlog_drains_with_two_workers_that_never_take_each_other_for_shoppers() {
    let t = TestDb::new().await;
    let (variants, drops, total) = backlog(&t, 3000).await;
    let s = adaptive();
    let mut db = t.open_with(&s).await;
    let r = run(&mut db, &s, false).await;
    assert_eq!(r.stopped_reason, StopReason::Drained);
    assert_eq!(r.counts.reservations_released, total);
    assert_eq!(r.counts.orders_cancelled, 3000);
    all_released_once(&t, &variants, &drops, total).await;
    let c = &r.controller;
    assert_eq!((c.mode, c.workers), ("adaptive", 2), "{c:?}");
    // Both workers updated the same four variant and two drop rows, batch after batch: had
    // one ever found the other's rows held, it would have polled or left orders out.
    assert_eq!(
        (
            r.counts.skipped_locked,
            r.counts.held_wait_ms,
            r.counts.counters_written_by_others,
            r.deferred,
            c.contended_batches,
            c.shrinks_for_shoppers
        ),
        (0, 0.0, 0, 0, 0, 0),
        "{r:?}"
    );
    // It started at what the time target allows (450 rows), not at its floor.
    assert!(c.batch_rows_max >= 450, "{c:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_shopper_on_the_backlogs_rows_drops_the_batch_to_its_floor_and_the_run_to_one_worker() {
    let t = TestDb::new().await;
    let (variants, drops, total) = backlog(&t, 3000).await;
    let s = adaptive();
    let running = Arc::new(AtomicBool::new(true));
    // A checkout queueing on the hottest variant again and again: it holds the row 5 ms and
    // comes back 2 ms later, so the batches meet it holding the row or waiting for it.
    let shopper = {
        let mut c = t.connect().await;
        let running = running.clone();
        let v = variants[0];
        tokio::spawn(async move {
            let mut checkouts = 0_u32;
            while running.load(Ordering::Relaxed) {
                let tx = c.transaction().await.unwrap();
                tx.execute(
                    "UPDATE products_productvariant SET reserved_quantity = reserved_quantity \
                     WHERE id = $1",
                    &[&v],
                )
                .await
                .unwrap();
                tokio::time::sleep(Duration::from_millis(5)).await;
                tx.commit().await.unwrap();
                checkouts += 1;
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
            checkouts
        })
    };
    tokio::time::sleep(Duration::from_millis(50)).await;
    let mut db = t.open_with(&s).await;
    let r = run(&mut db, &s, false).await;
    running.store(false, Ordering::Relaxed);
    assert!(shopper.await.unwrap() > 0);
    let c = &r.controller;
    assert!(c.contended_batches > 0, "the shopper went unseen: {r:?}");
    // The shopper never left: once it was seen, the batches stayed near their floor.
    let grown = c.timeline.iter().filter(|(_, size, _)| *size > 100).count();
    assert!(
        grown * 4 < c.timeline.len(),
        "the batch kept growing while the shopper checked out: {:?}",
        c.timeline
    );
    // The other orders did not wait for it: everything not on the shopper's row was released.
    let left = t
        .i64("SELECT count(*) FROM orders_inventoryreservation WHERE status = 'active'")
        .await as u64;
    assert_eq!(r.counts.reservations_released + left, total);
    let mut s2 = s.clone();
    s2.workers = 1;
    let r2 = run(&mut db, &s2, false).await;
    assert_eq!(
        r.counts.reservations_released + r2.counts.reservations_released,
        total
    );
    all_released_once(&t, &variants, &drops, total).await;
}

/// A role of its own, allowed `limit` connections, that may release.
async fn role_with_limit(t: &TestDb, limit: i32) -> tokio_postgres::Config {
    let role = t.role("limited").await;
    t.exec(&format!("ALTER ROLE {role} CONNECTION LIMIT {limit}"))
        .await;
    let mut config = t.config();
    config.user(&role).password("limited");
    unreserver::apply_defaults(&mut config);
    config
}

async fn open_as(config: &tokio_postgres::Config, s: &ReleaseSettings) -> Database {
    let tls = unreserver::tls_connector(None, &unreserver::RdsCaRegions::All).unwrap();
    Database::open(config, &tls, s.lock_timeout_ms)
        .await
        .unwrap_or_else(|e| panic!("cannot open: {}", e.chain()))
}

#[tokio::test]
async fn a_run_opens_no_worker_the_database_cannot_spare() {
    // Ten connections stay free for the shop: a role allowed eleven, one of them the run's
    // own, has none to spare; a role allowed twelve has one.
    for (limit, workers) in [(11, 1), (12, 2)] {
        let t = TestDb::new().await;
        let (variants, drops, total) = backlog(&t, 2000).await;
        let s = adaptive();
        let config = role_with_limit(&t, limit).await;
        let mut db = open_as(&config, &s).await;
        let r = run(&mut db, &s, false).await;
        assert_eq!(r.controller.workers, workers, "limit {limit}: {r:?}");
        assert_eq!(r.counts.reservations_released, total);
        all_released_once(&t, &variants, &drops, total).await;
    }
}

/// The database's own `CONNECTION LIMIT` counts too (the old count read the server's and the
/// role's only, and a run beside a database limited to four connections opened a second
/// worker while the shop's were refused): ten connections stay free under the database's limit.
#[tokio::test]
async fn a_run_opens_no_worker_the_databases_connection_limit_cannot_spare() {
    for (spare, workers) in [(10, 1), (11, 2)] {
        let t = TestDb::new().await;
        let (variants, drops, total) = backlog(&t, 2000).await;
        let s = adaptive();
        // A role of its own, without a limit of its own: only the database's binds it.
        let role = t.role("unlimited").await;
        let mut config = t.config();
        config.user(&role).password("unlimited");
        unreserver::apply_defaults(&mut config);
        let mut db = open_as(&config, &s).await;
        let open = t
            .i64(&format!(
                "SELECT count(*) FROM pg_stat_activity WHERE datname = '{}'",
                t.name
            ))
            .await;
        t.exec(&format!(
            "ALTER DATABASE {} CONNECTION LIMIT {}",
            t.name,
            open + spare
        ))
        .await;
        let r = run(&mut db, &s, false).await;
        assert_eq!(r.controller.workers, workers, "{spare} spare: {r:?}");
        assert_eq!(r.counts.reservations_released, total);
        all_released_once(&t, &variants, &drops, total).await;
    }
}

#[tokio::test]
async fn a_pinned_batch_size_is_kept_and_named() {
    let t = TestDb::new().await;
    let (_, _, total) = backlog(&t, 600).await;
    let mut s = adaptive();
    s.batch_size = Some(70);
    s.workers = 1;
    let mut db = t.open_with(&s).await;
    let r = run(&mut db, &s, false).await;
    assert_eq!(r.counts.reservations_released, total);
    let c = &r.controller;
    assert_eq!(
        (c.mode, c.batch_rows_min, c.batch_rows_max, c.workers),
        ("pinned", 70, 70, 1)
    );
}

/// A checkout that updates a hot counter strictly between two batches — after one commits,
/// before the next begins, so it never holds a row a batch takes nor waits behind one — still
/// tells the controller that shoppers compete: the row's last writer is not the run's own last
/// write of it. The batches stay at the floor as long as it checks out.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_checkout_between_two_batches_is_seen_on_the_counter_it_wrote() {
    let t = TestDb::new().await;
    let (variants, drops, total) = backlog(&t, 2000).await;
    // The checkout runs on a thread of its own; each commit hook waits for it to finish.
    let (go, gone) = std::sync::mpsc::channel::<()>();
    let (done, finished) = std::sync::mpsc::channel::<()>();
    let url = t.url.clone();
    let v = variants[2];
    let checkout = std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async move {
            let c = crate::common::connect_url(&url).await;
            let mut checkouts = 0_u32;
            while gone.recv().is_ok() {
                c.execute(
                    "UPDATE products_productvariant SET reserved_quantity = reserved_quantity \
                     WHERE id = $1",
                    &[&v],
                )
                .await
                .unwrap();
                checkouts += 1;
                done.send(()).unwrap();
            }
            checkouts
        })
    });
    let hook = std::sync::Mutex::new((go, finished));
    let options = RunOptions {
        deadline: None,
        on_commit: Some(OnCommit::new(move |_| {
            let pair = hook.lock().unwrap();
            pair.0.send(()).unwrap();
            pair.1.recv().unwrap();
        })),
        ..RunOptions::default()
    };
    let mut s = adaptive();
    s.workers = 1;
    let mut db = t.open_with(&s).await;
    let r = tokio::task::block_in_place(|| {
        tokio::runtime::Handle::current().block_on(unreserver::run(&mut db, &s, &options))
    })
    .unwrap_or_else(|f| panic!("{}", f.error.chain()));
    drop(options);
    assert!(checkout.join().unwrap() >= 2);
    assert!(r.counts.counters_written_by_others > 0, "{r:?}");
    let c = &r.controller;
    // The first batch wrote the row first; every later one found the checkout's write.
    assert!(c.contended_batches + 2 >= r.batches, "{c:?}");
    // The first batch is sized before anything is known; once the checkout was seen, no
    // batch grew past the floor's neighbourhood.
    assert!(
        c.timeline.iter().skip(1).all(|(_, rows, _)| *rows <= 100),
        "grew while the shopper checked out: {c:?}"
    );
    assert_eq!(r.counts.reservations_released, total);
    all_released_once(&t, &variants, &drops, total).await;
}

/// `MAX_BATCHES` counts the batches of every worker: two workers stop at the limit together.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn max_batches_counts_every_workers_batches() {
    let t = TestDb::new().await;
    let (_, _, total) = backlog(&t, 3000).await;
    let mut s = adaptive();
    s.max_batches = 4;
    let mut db = t.open_with(&s).await;
    let r = run(&mut db, &s, false).await;
    assert_eq!(r.stopped_reason, StopReason::MaxBatches, "{r:?}");
    assert_eq!((r.batches, r.controller.workers), (4, 2), "{r:?}");
    let left = t
        .i64("SELECT count(*) FROM orders_inventoryreservation WHERE status = 'active'")
        .await as u64;
    assert_eq!(r.counts.reservations_released + left, total);
}

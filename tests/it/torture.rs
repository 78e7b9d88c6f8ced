//! The torture test: release runs looping at once while simulated shop traffic runs against the
//! same rows — checkouts reserving stock (some as legacy rows without `expires_at`), items added
//! to pending orders, checkouts resumed (reservations extended, the order row untouched), cart
//! holds converted into orders, payments moving orders to `processing` (with a grace) or
//! converting them, cancellations, and a stock import holding a hot variant for a second at a
//! time — then a final run and the invariants the shop is promised.
//!
//! Bounded in CI (`UNRESERVER_TORTURE_SECONDS`, 8 by default); set it higher for a long run.
//! The figures are printed (`cargo test torture -- --nocapture`).

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio_postgres::error::SqlState;
use tokio_postgres::Client;
use unreserver::events::run::release_on_request;
use unreserver::ReleaseSettings;
use unreserver::RunOptions;

use crate::common::{backend_pid, settings, TestDb};

const VARIANTS: i64 = 24;
const HOT: i64 = 4; // the first HOT variants are a limited drop
const MAX_EXPIRY_MS: i64 = 1500;
/// The payment-processing grace of the runs, in minutes: longer than the test, so an order in
/// `processing` is never released while its grace runs.
const GRACE_MINUTES: u32 = 1;
/// The reservation timeout of the runs (legacy rows are due `created_at` plus this).
const TIMEOUT_MINUTES: u32 = 1;
/// The shop's own lock timeout: its transactions wait behind the stock import's one-second
/// hold and the checkouts queued with it. 2 s was tried: with other tests loading the 2 cores,
/// shop transactions ran out of it (not attributed to the release), so it stays at 5 s.
const SHOP_LOCK_TIMEOUT: &str = "SET LOCAL lock_timeout = '5s'";

#[derive(Default)]
struct ShopStats {
    checkouts: AtomicU64,
    payments: AtomicU64,
    conversions: AtomicU64,
    cancellations: AtomicU64,
    items_added: AtomicU64,
    resumed: AtomicU64,
    holds_converted: AtomicU64,
    import_holds: AtomicU64,
    /// Transactions that failed with a deadlock or lock timeout: the promise is zero.
    lock_failures: AtomicU64,
    /// Any other database error in a shop transaction.
    other_failures: AtomicU64,
    /// Deadlocks between two shop transactions, the release not among them.
    shop_deadlocks: AtomicU64,
    /// Backend pids of the release's connections.
    release_pids: std::sync::Mutex<std::collections::HashSet<i32>>,
}

fn classify(stats: &ShopStats, err: &tokio_postgres::Error) {
    let db = err.as_db_error();
    let text = db.map_or(err.to_string(), |e| {
        format!(
            "{} ({}): {}",
            e.message(),
            e.code().code(),
            e.detail().unwrap_or("")
        )
    });
    match err.code() {
        Some(c) if *c == SqlState::T_R_DEADLOCK_DETECTED && !involves_release(stats, err) => {
            // Two shop transactions that lock in opposite orders (an item added to an order
            // while it is being paid): the shop's own deadlock, not one the release took part in.
            eprintln!("shop-vs-shop deadlock: {text}");
            stats.shop_deadlocks.fetch_add(1, Ordering::Relaxed);
        }
        Some(c) if *c == SqlState::T_R_DEADLOCK_DETECTED || *c == SqlState::LOCK_NOT_AVAILABLE => {
            eprintln!(
                "shop transaction failed: {text} (release backends: {:?})",
                stats.release_pids.lock().unwrap()
            );
            stats.lock_failures.fetch_add(1, Ordering::Relaxed);
        }
        _ => {
            eprintln!("shop transaction error: {text}");
            stats.other_failures.fetch_add(1, Ordering::Relaxed);
        }
    }
}

/// Whether a deadlock's detail ("Process N waits for ...; blocked by process M.") names a
/// backend of the release.
fn involves_release(stats: &ShopStats, err: &tokio_postgres::Error) -> bool {
    let detail = err.as_db_error().and_then(|e| e.detail()).unwrap_or("");
    let release = stats.release_pids.lock().unwrap();
    detail
        .split(|c: char| !c.is_ascii_digit())
        .filter_map(|n| n.parse::<i32>().ok())
        .any(|pid| release.contains(&pid))
}

/// The shop's lock order for counter rows: descending variant id.
fn descending_by_variant(mut rows: Vec<tokio_postgres::Row>) -> Vec<tokio_postgres::Row> {
    rows.sort_by_key(|r| std::cmp::Reverse(r.get::<_, i64>(0)));
    rows
}

fn drop_of(variant: i64) -> Option<i64> {
    (variant <= HOT).then_some(variant)
}

/// A checkout: an order (or a cart hold) with 1-3 items, each reserved under the variant's row
/// lock, then the drop's. The shop locks in its own order — descending ids, the opposite of the
/// release's — consistently across its own transactions, so that every lock cycle in this test
/// involves the release.
async fn checkout(c: &mut Client, n: u64) -> Result<(), tokio_postgres::Error> {
    let tx = c.transaction().await?;
    tx.batch_execute(SHOP_LOCK_TIMEOUT).await?;
    let hold = n % 10 == 0;
    let order: Option<i64> = if hold {
        None
    } else {
        Some(
            tx.query_one(
                "INSERT INTO orders_order (order_number) VALUES ($1) RETURNING id",
                &[&format!("T-{n}-{}", fastrand::u32(..))],
            )
            .await?
            .get(0),
        )
    };
    let count = if hold { 1 } else { 1 + fastrand::usize(..3) };
    // Two thirds of the traffic goes to the hot drop variants.
    let mut items: Vec<i64> = (0..count)
        .map(|_| {
            if fastrand::u8(..3) < 2 {
                1 + fastrand::i64(0..HOT)
            } else {
                1 + fastrand::i64(0..VARIANTS)
            }
        })
        .collect();
    items.sort_unstable_by(|a, b| b.cmp(a));
    for variant in items {
        let qty = 1 + fastrand::i32(0..2);
        tx.execute(
            "UPDATE products_productvariant SET reserved_quantity = reserved_quantity + $2, \
             updated_at = now() WHERE id = $1",
            &[&variant, &qty],
        )
        .await?;
        let drop_id = drop_of(variant);
        if let Some(d) = drop_id {
            tx.execute(
                "UPDATE drops_dropproduct SET reserved_quantity = reserved_quantity + $2 WHERE id = $1",
                &[&d, &qty],
            )
            .await?;
        }
        reserve(&tx, order, variant, drop_id, qty, n % 7 == 0).await?;
    }
    tx.commit().await
}

/// Inserts a reservation due within `MAX_EXPIRY_MS`: by `expires_at`, or for a `legacy` row
/// (NULL `expires_at`) by `created_at` plus the reservation timeout.
async fn reserve(
    tx: &tokio_postgres::Transaction<'_>,
    order: Option<i64>,
    variant: i64,
    drop_id: Option<i64>,
    qty: i32,
    legacy: bool,
) -> Result<u64, tokio_postgres::Error> {
    let ms = fastrand::i64(0..MAX_EXPIRY_MS) as i32;
    if legacy {
        let timeout = TIMEOUT_MINUTES as i32;
        tx.execute(
            "INSERT INTO orders_inventoryreservation \
               (order_id, product_variant_id, drop_product_id, quantity, created_at, expires_at) \
             VALUES ($1, $2, $3, $4, now() - $6::int4 * interval '1 minute' \
               + $5::int4 * interval '1 millisecond', NULL)",
            &[&order, &variant, &drop_id, &qty, &ms, &timeout],
        )
        .await
    } else {
        tx.execute(
            "INSERT INTO orders_inventoryreservation \
               (order_id, product_variant_id, drop_product_id, quantity, expires_at) \
             VALUES ($1, $2, $3, $4, now() + $5::int4 * interval '1 millisecond')",
            &[&order, &variant, &drop_id, &qty, &ms],
        )
        .await
    }
}

/// The shopper adds an item to a recent pending order: the variant's row is locked first (the
/// counter bumped), then the order's — the opposite of the release's order. An order the
/// release cancelled meanwhile is a lost sale: rolled back, not an error.
async fn add_item(c: &mut Client, stats: &ShopStats) -> Result<(), tokio_postgres::Error> {
    let tx = c.transaction().await?;
    tx.batch_execute(SHOP_LOCK_TIMEOUT).await?;
    let variant = 1 + fastrand::i64(0..VARIANTS);
    tx.execute(
        "UPDATE products_productvariant SET reserved_quantity = reserved_quantity + 1 WHERE id = $1",
        &[&variant],
    )
    .await?;
    let order: Option<i64> = tx
        .query_opt(
            "SELECT id FROM orders_order WHERE id = (SELECT max(id) FROM orders_order) - $1 \
               AND status = 'pending' AND payment_status = 'pending' FOR UPDATE",
            &[&fastrand::i64(0..30)],
        )
        .await?
        .map(|r| r.get(0));
    let Some(order) = order else {
        return tx.rollback().await;
    };
    let drop_id = drop_of(variant);
    if let Some(d) = drop_id {
        tx.execute(
            "UPDATE drops_dropproduct SET reserved_quantity = reserved_quantity + 1 WHERE id = $1",
            &[&d],
        )
        .await?;
    }
    reserve(&tx, Some(order), variant, drop_id, 1, false).await?;
    stats.items_added.fetch_add(1, Ordering::Relaxed);
    tx.commit().await
}

/// The shopper comes back to the checkout: the active reservations of a recent pending order
/// get a new `expires_at`; the order row is not touched.
async fn resume(c: &mut Client, stats: &ShopStats) -> Result<(), tokio_postgres::Error> {
    let tx = c.transaction().await?;
    tx.batch_execute(SHOP_LOCK_TIMEOUT).await?;
    let extended = tx
        .execute(
            "UPDATE orders_inventoryreservation \
                SET expires_at = now() + $2::int4 * interval '1 millisecond' \
              WHERE order_id = (SELECT max(id) FROM orders_order) - $1 \
                AND status = 'active' AND expires_at IS NOT NULL",
            &[
                &fastrand::i64(0..30),
                &(fastrand::i64(0..MAX_EXPIRY_MS) as i32),
            ],
        )
        .await?;
    if extended > 0 {
        stats.resumed.fetch_add(1, Ordering::Relaxed);
    }
    tx.commit().await
}

/// A cart hold becomes an order: the hold's row is locked, an order made, the hold moved to it.
async fn convert_hold(
    c: &mut Client,
    stats: &ShopStats,
    n: u64,
) -> Result<(), tokio_postgres::Error> {
    let tx = c.transaction().await?;
    tx.batch_execute(SHOP_LOCK_TIMEOUT).await?;
    let hold: Option<i64> = tx
        .query_opt(
            "SELECT id FROM orders_inventoryreservation WHERE order_id IS NULL AND status = 'active' \
              ORDER BY id DESC LIMIT 1 FOR UPDATE",
            &[],
        )
        .await?
        .map(|r| r.get(0));
    let Some(hold) = hold else {
        return tx.rollback().await;
    };
    tx.execute(
        "WITH o AS (INSERT INTO orders_order (order_number) VALUES ($2) RETURNING id) \
         UPDATE orders_inventoryreservation SET order_id = (SELECT id FROM o) WHERE id = $1",
        &[&hold, &format!("H-{n}-{}", fastrand::u32(..))],
    )
    .await?;
    stats.holds_converted.fetch_add(1, Ordering::Relaxed);
    tx.commit().await
}

/// A stock import that holds the hottest variant's row for a second at a time; each window it
/// held the row is recorded on the database clock.
async fn import_stock(c: &mut Client, stats: &ShopStats) -> Result<(), tokio_postgres::Error> {
    let tx = c.transaction().await?;
    tx.batch_execute(SHOP_LOCK_TIMEOUT).await?;
    tx.execute(
        "UPDATE products_productvariant SET stock_quantity = stock_quantity + 1 WHERE id = 1",
        &[],
    )
    .await?;
    // Reservations of other variants released so far, as committed when the hold begins and
    // when it ends (each statement of this READ COMMITTED transaction sees what was committed
    // before it started).
    tx.execute(
        "INSERT INTO import_windows (started, released_before) VALUES (clock_timestamp(), \
           (SELECT count(*) FROM orders_inventoryreservation WHERE status = 'expired' \
              AND product_variant_id <> 1))",
        &[],
    )
    .await?;
    tokio::time::sleep(Duration::from_millis(1000)).await;
    tx.execute(
        "UPDATE import_windows SET ended = clock_timestamp(), released_after = \
           (SELECT count(*) FROM orders_inventoryreservation WHERE status = 'expired' \
              AND product_variant_id <> 1) WHERE ended IS NULL",
        &[],
    )
    .await?;
    stats.import_holds.fetch_add(1, Ordering::Relaxed);
    tx.commit().await?;
    tokio::time::sleep(Duration::from_millis(300)).await;
    Ok(())
}

/// A payment on a recent order: lock it; if still pending, either move it to `processing` or
/// convert its reservations (lowering reserved and stock, raising the drop's sold count) and
/// mark it paid. An order the release cancelled first is a lost sale, not an error.
async fn pay(c: &mut Client, stats: &ShopStats) -> Result<(), tokio_postgres::Error> {
    let tx = c.transaction().await?;
    tx.batch_execute(SHOP_LOCK_TIMEOUT).await?;
    let Some(row) = tx
        .query_opt(
            "SELECT id, payment_status FROM orders_order \
              WHERE id = (SELECT max(id) FROM orders_order) - $1 AND status = 'pending' FOR UPDATE",
            &[&fastrand::i64(0..30)],
        )
        .await?
    else {
        return tx.rollback().await;
    };
    let order: i64 = row.get(0);
    let payment: String = row.get(1);
    if payment == "pending" && fastrand::bool() {
        tx.execute(
            "UPDATE orders_order SET payment_status = 'processing', updated_at = now() WHERE id = $1",
            &[&order],
        )
        .await?;
        stats.payments.fetch_add(1, Ordering::Relaxed);
        return tx.commit().await;
    }
    let reservations = tx
        .query(
            "UPDATE orders_inventoryreservation SET status = 'converted' \
              WHERE order_id = $1 AND status = 'active' \
              RETURNING product_variant_id, drop_product_id, quantity",
            &[&order],
        )
        .await?;
    if reservations.is_empty() {
        return tx.rollback().await;
    }
    for r in descending_by_variant(reservations) {
        let (variant, drop_id, qty): (i64, Option<i64>, i32) = (r.get(0), r.get(1), r.get(2));
        tx.execute(
            "UPDATE products_productvariant SET reserved_quantity = reserved_quantity - $2, \
             stock_quantity = stock_quantity - $2, updated_at = now() WHERE id = $1",
            &[&variant, &qty],
        )
        .await?;
        if let Some(d) = drop_id {
            tx.execute(
                "UPDATE drops_dropproduct SET reserved_quantity = reserved_quantity - $2, \
                 sold_quantity = sold_quantity + $2 WHERE id = $1",
                &[&d, &qty],
            )
            .await?;
        }
    }
    tx.execute(
        "UPDATE orders_order SET status = 'confirmed', payment_status = 'paid', updated_at = now() \
          WHERE id = $1",
        &[&order],
    )
    .await?;
    stats.conversions.fetch_add(1, Ordering::Relaxed);
    tx.commit().await
}

/// A shopper cancels a recent pending order: its reservations are released by the shop.
async fn cancel(c: &mut Client, stats: &ShopStats) -> Result<(), tokio_postgres::Error> {
    let tx = c.transaction().await?;
    tx.batch_execute(SHOP_LOCK_TIMEOUT).await?;
    let Some(row) = tx
        .query_opt(
            "SELECT id FROM orders_order WHERE id = (SELECT max(id) FROM orders_order) - $1 \
               AND status = 'pending' AND payment_status = 'pending' FOR UPDATE",
            &[&fastrand::i64(0..40)],
        )
        .await?
    else {
        return tx.rollback().await;
    };
    let order: i64 = row.get(0);
    let released = tx
        .query(
            "UPDATE orders_inventoryreservation SET status = 'released', released_at = now() \
              WHERE order_id = $1 AND status = 'active' \
              RETURNING product_variant_id, drop_product_id, quantity",
            &[&order],
        )
        .await?;
    for r in descending_by_variant(released) {
        let (variant, drop_id, qty): (i64, Option<i64>, i32) = (r.get(0), r.get(1), r.get(2));
        tx.execute(
            "UPDATE products_productvariant SET reserved_quantity = reserved_quantity - $2 WHERE id = $1",
            &[&variant, &qty],
        )
        .await?;
        if let Some(d) = drop_id {
            tx.execute(
                "UPDATE drops_dropproduct SET reserved_quantity = reserved_quantity - $2 WHERE id = $1",
                &[&d, &qty],
            )
            .await?;
        }
    }
    tx.execute(
        "UPDATE orders_order SET status = 'cancelled', cancelled_at = now() WHERE id = $1",
        &[&order],
    )
    .await?;
    stats.cancellations.fetch_add(1, Ordering::Relaxed);
    tx.commit().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn torture_under_live_shop_traffic() {
    let seconds: u64 = std::env::var("UNRESERVER_TORTURE_SECONDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(8);
    let t = TestDb::new().await;
    t.exec(&format!(
        "INSERT INTO products_productvariant (id, product_id, sku, stock_quantity) \
           SELECT g, g, 'TORTURE-' || g, 1000000 FROM generate_series(1, {VARIANTS}) g; \
         INSERT INTO drops_dropproduct (id, drop_id, product_variant_id, drop_quantity) \
           SELECT g, 1, g, 1000000 FROM generate_series(1, {HOT}) g"
    ))
    .await;
    t.exec(
        "CREATE TABLE import_windows (started timestamptz NOT NULL, ended timestamptz, \
           released_before int8 NOT NULL, released_after int8)",
    )
    .await;
    let stop = Arc::new(AtomicBool::new(false));
    let stats = Arc::new(ShopStats::default());
    let mut shop = Vec::new();
    for worker in 0..10u64 {
        let mut c = t.connect().await;
        let (stop, stats) = (stop.clone(), stats.clone());
        shop.push(tokio::spawn(async move {
            let mut n = worker * 1_000_000;
            while !stop.load(Ordering::Relaxed) {
                n += 1;
                let result = match worker {
                    0..=2 => checkout(&mut c, n).await.map(|_| {
                        stats.checkouts.fetch_add(1, Ordering::Relaxed);
                    }),
                    3 | 4 => pay(&mut c, &stats).await,
                    5 => cancel(&mut c, &stats).await,
                    6 => add_item(&mut c, &stats).await,
                    7 => resume(&mut c, &stats).await,
                    8 => convert_hold(&mut c, &stats, n).await,
                    _ => import_stock(&mut c, &stats).await,
                };
                if let Err(e) = result {
                    classify(&stats, &e);
                }
            }
        }));
    }

    let s = ReleaseSettings {
        batch_size: Some(25),
        payment_processing_grace_minutes: GRACE_MINUTES,
        reservation_timeout_minutes: TIMEOUT_MINUTES,
        ..settings()
    };
    let released = Arc::new(AtomicU64::new(0));
    let runs = Arc::new(AtomicU64::new(0));
    let retries = Arc::new(AtomicU64::new(0));
    let skipped = Arc::new(AtomicU64::new(0));
    let deferred = Arc::new(AtomicU64::new(0));
    let clamped = Arc::new(AtomicU64::new(0));
    let extended = Arc::new(AtomicU64::new(0));
    let mut releasers = Vec::new();
    for _ in 0..3 {
        let mut db = t.open_with(&s).await;
        let pid = backend_pid(&db.client).await;
        stats.release_pids.lock().unwrap().insert(pid);
        let (stop, released, runs, s) = (stop.clone(), released.clone(), runs.clone(), s.clone());
        let (retries, skipped, deferred) = (retries.clone(), skipped.clone(), deferred.clone());
        let (clamped, extended) = (clamped.clone(), extended.clone());
        releasers.push(tokio::spawn(async move {
            while !stop.load(Ordering::Relaxed) {
                let report = unreserver::run(&mut db, &s, &RunOptions::default())
                    .await
                    .unwrap_or_else(|f| panic!("a release run failed: {}", f.error.chain()));
                released.fetch_add(report.counts.reservations_released, Ordering::Relaxed);
                runs.fetch_add(1, Ordering::Relaxed);
                retries.fetch_add(u64::from(report.batch_retries), Ordering::Relaxed);
                skipped.fetch_add(report.counts.skipped_locked, Ordering::Relaxed);
                if report.batch_ms_max > 400.0 {
                    eprintln!("slow batch: {report:?}");
                }
                deferred.fetch_add(report.deferred, Ordering::Relaxed);
                extended.fetch_add(report.counts.no_longer_due, Ordering::Relaxed);
                clamped.fetch_add(
                    report.counts.clamped_variants + report.counts.clamped_drops,
                    Ordering::Relaxed,
                );
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }));
    }

    // The shop's abandon webhook: random pending orders released on request, due or not.
    let requested = Arc::new(std::sync::Mutex::new(Vec::<i64>::new()));
    let gave_up = Arc::new(AtomicU64::new(0));
    {
        let mut db = t.open_with(&s).await;
        let pid = backend_pid(&db.client).await;
        stats.release_pids.lock().unwrap().insert(pid);
        let picker = t.connect().await;
        // Two tries, not five, before LockBusy: the import and the checkouts hold the hot rows
        // most of the time, and a request given up after five takes two seconds.
        let s = ReleaseSettings {
            batch_max_attempts: 2,
            ..s.clone()
        };
        let (stop, released, requested) = (stop.clone(), released.clone(), requested.clone());
        let gave_up = gave_up.clone();
        releasers.push(tokio::spawn(async move {
            while !stop.load(Ordering::Relaxed) {
                let row = picker
                    .query_opt(
                        "SELECT id FROM orders_order WHERE status = 'pending' \
                         ORDER BY random() LIMIT 1",
                        &[],
                    )
                    .await
                    .unwrap();
                if let Some(row) = row {
                    let order: i64 = row.get(0);
                    let wait = (None, Duration::from_secs(1));
                    match release_on_request(&mut db, &s, order, None, "torture", wait).await {
                        Ok(outcome) => {
                            released.fetch_add(outcome.reservations_released, Ordering::Relaxed);
                            if outcome.released {
                                requested.lock().unwrap().push(order);
                            }
                        }
                        // A row held through every try: the order stays as it was (checked
                        // below: counters, nothing half-done); the webhook tries again later.
                        Err(e) if e.kind() == "LockBusy" => {
                            eprintln!("torture: release on request of {order}: {}", e.chain());
                            gave_up.fetch_add(1, Ordering::Relaxed);
                        }
                        Err(e) => panic!("a release on request failed: {}", e.chain()),
                    }
                }
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        }));
    }

    let watcher = tokio::spawn(crate::common::longest_wait_on_the_release(
        t.connect().await,
        stop.clone(),
    ));

    let started = Instant::now();
    tokio::time::sleep(Duration::from_secs(seconds)).await;
    stop.store(true, Ordering::Relaxed);
    for task in shop.into_iter().chain(releasers) {
        task.await.expect("a worker panicked");
    }
    let (longest_wait, waits_seen) = watcher.await.expect("the watcher panicked");
    eprintln!(
        "torture: shop sessions seen waiting on the release {waits_seen} times, the longest \
         {:.0} ms",
        longest_wait * 1000.0
    );
    let requested: Vec<i64> = requested.lock().unwrap().clone();
    eprintln!(
        "torture: {} orders released on request, {} requests given up (LockBusy)",
        requested.len(),
        gave_up.load(Ordering::Relaxed)
    );
    // The scenario happened: orders released on request beside the runs.
    assert!(
        requested.len() >= 3,
        "too few orders released on request: {}",
        requested.len()
    );
    // Everything reserved is due by now; a final run takes the rest.
    tokio::time::sleep(Duration::from_millis(MAX_EXPIRY_MS as u64 + 100)).await;
    let mut db = t.open_with(&s).await;
    let last = unreserver::run(&mut db, &s, &RunOptions::default())
        .await
        .unwrap();
    released.fetch_add(last.counts.reservations_released, Ordering::Relaxed);
    clamped.fetch_add(
        last.counts.clamped_variants + last.counts.clamped_drops,
        Ordering::Relaxed,
    );
    runs.fetch_add(1, Ordering::Relaxed);

    let released = released.load(Ordering::Relaxed);
    let expired = t
        .i64("SELECT count(*) FROM orders_inventoryreservation WHERE status = 'expired'")
        .await as u64;
    let total = t
        .i64("SELECT count(*) FROM orders_inventoryreservation")
        .await;
    eprintln!(
        "torture: {:.1} s, {} release runs, {released} reservations released of {total} made, \
         {} batch retries after lock conflicts, {} claims skipped because another transaction (a shopper or another run) held the row, \
         {} orders left deferred at the end of a run, {} claimed orders found extended on the rows locked (left out); \
         shop: {} checkouts, {} payments to processing, {} conversions, {} cancellations, \
         {} items added to pending orders, {} checkouts resumed, {} cart holds converted, {} one-second import holds; \
         shop transactions failed by deadlock or lock timeout: {} (and {} deadlocks between two shop transactions)",
        started.elapsed().as_secs_f64(),
        runs.load(Ordering::Relaxed),
        retries.load(Ordering::Relaxed),
        skipped.load(Ordering::Relaxed),
        deferred.load(Ordering::Relaxed),
        extended.load(Ordering::Relaxed),
        stats.checkouts.load(Ordering::Relaxed),
        stats.payments.load(Ordering::Relaxed),
        stats.conversions.load(Ordering::Relaxed),
        stats.cancellations.load(Ordering::Relaxed),
        stats.items_added.load(Ordering::Relaxed),
        stats.resumed.load(Ordering::Relaxed),
        stats.holds_converted.load(Ordering::Relaxed),
        stats.import_holds.load(Ordering::Relaxed),
        stats.lock_failures.load(Ordering::Relaxed),
        stats.shop_deadlocks.load(Ordering::Relaxed),
    );

    // The work was real: many releases under traffic, and every kind of shop transaction.
    assert!(stats.checkouts.load(Ordering::Relaxed) > 100);
    assert!(
        stats.conversions.load(Ordering::Relaxed) > 5
            && stats.cancellations.load(Ordering::Relaxed) > 5
    );
    assert!(released > 100);
    for (what, n) in [
        ("items added", &stats.items_added),
        ("checkouts resumed", &stats.resumed),
        ("holds converted", &stats.holds_converted),
        ("import holds", &stats.import_holds),
        ("payments to processing", &stats.payments),
    ] {
        assert!(n.load(Ordering::Relaxed) > 2, "too few {what}");
    }
    assert!(
        t.i64("SELECT count(*) FROM orders_inventoryreservation WHERE expires_at IS NULL AND status = 'expired'")
            .await
            > 0,
        "no legacy row was released"
    );
    // The release kept releasing while the import held the hot variant's row: releases were
    // committed between the start and the end of a hold (a release blocked on that row would
    // commit nothing until the hold ended).
    assert!(
        t.i64("SELECT count(*) FROM import_windows WHERE released_after > released_before")
            .await
            > 0,
        "no release was committed while the import held its row"
    );
    // No shopper transaction failed with a deadlock or lock timeout, nor anything else; and
    // none was seen waiting on the release longer than its batch budget (half the server's 1 s
    // `deadlock_timeout`), plus room for the cancel to land on this loaded machine (450 ms, as
    // in drop_day's cut batch: 829 ms were seen there against 800): the shop's
    // own 5 s `lock_timeout` could not tell.
    // The watcher saw shoppers waiting on the release alone (queue batches, hot rows held to
    // the commit); that it sees such a wait at all is shown in
    // `drop_day::a_slow_batch_is_cut_at_its_budget_and_the_shopper_commits`. (Counted from
    // the whole wait, a shopper queued behind the import and a queue batch looked like one
    // that waited 993 ms on the release.)
    assert!(
        waits_seen > 0,
        "the watcher never saw a shopper waiting on the release"
    );
    assert!(
        longest_wait < 0.95,
        "a shop session waited {:.0} ms on the release",
        longest_wait * 1000.0
    );
    assert_eq!(stats.lock_failures.load(Ordering::Relaxed), 0);
    assert_eq!(stats.other_failures.load(Ordering::Relaxed), 0);
    // The extension race (a checkout resumed between a batch's claim and its release
    // statement) is counted in the summary above: 0 to 5 a run here, too rare under load to
    // require; `drop_day::an_extension_committed_after_the_claim_is_respected` makes it happen.
    // Nothing counted twice: the reports add up to the rows marked expired.
    assert_eq!(released, expired);
    // Every counter equals the sum of its active reservations, and nothing had to be clamped
    // (an over-subtraction on a counter left with no active reservation would end at zero,
    // hidden by the clamp, but counted here).
    assert_eq!(t.drifted_counters().await, 0);
    assert_eq!(clamped.load(Ordering::Relaxed), 0, "counters were clamped");
    // No paid order cancelled; every converted reservation belongs to a paid order.
    assert_eq!(
        t.i64("SELECT count(*) FROM orders_order WHERE payment_status = 'paid' AND status <> 'confirmed'").await,
        0
    );
    assert_eq!(
        t.i64("SELECT count(*) FROM orders_inventoryreservation r JOIN orders_order o ON o.id = r.order_id \
               WHERE r.status = 'converted' AND o.payment_status <> 'paid'").await,
        0
    );
    // Nothing released that was not due, unless released on request: each expired
    // reservation's order (or the hold itself) had a reservation due when it was released —
    // legacy rows by `created_at` plus the timeout, orders in `processing` only after their
    // grace — or the shop asked for that order; its order is cancelled.
    let requested = format!("{requested:?}").replace('[', "{").replace(']', "}");
    assert_eq!(
        t.i64(&format!(
            "SELECT count(*) FROM orders_inventoryreservation r LEFT JOIN orders_order o ON o.id = r.order_id \
             WHERE r.status = 'expired' AND (r.order_id IS NULL OR r.order_id <> ALL ('{requested}'::int8[])) \
             AND NOT EXISTS \
               (SELECT 1 FROM orders_inventoryreservation s WHERE (s.order_id = r.order_id OR s.id = r.id) \
                 AND COALESCE(s.expires_at, s.created_at + interval '{TIMEOUT_MINUTES} minutes') \
                   + CASE WHEN o.payment_status = 'processing' THEN interval '{GRACE_MINUTES} minutes' \
                     ELSE interval '0' END <= r.released_at)"
        ))
        .await,
        0
    );
    assert_eq!(
        t.i64("SELECT count(*) FROM orders_inventoryreservation r JOIN orders_order o ON o.id = r.order_id \
               WHERE r.status = 'expired' AND o.status <> 'cancelled'").await,
        0
    );
    // Every due reservation of an unpaid order was released (grace included).
    assert_eq!(
        t.i64(&format!(
            "SELECT count(*) FROM orders_inventoryreservation r LEFT JOIN orders_order o ON o.id = r.order_id \
             WHERE r.status = 'active' \
               AND COALESCE(r.expires_at, r.created_at + interval '{TIMEOUT_MINUTES} minutes') \
                 + CASE WHEN o.payment_status = 'processing' THEN interval '{GRACE_MINUTES} minutes' \
                   ELSE interval '0' END <= now() \
               AND (o.id IS NULL OR (o.status IN ('pending', 'cancelled') AND o.payment_status <> 'paid'))"
        ))
        .await,
        0
    );
    assert_eq!(last.backlog_remaining, 0);
}

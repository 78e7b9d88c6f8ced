//! The hottest rows with a queue of checkouts: twelve shoppers check out back to back on one,
//! two or three drop variants (shared out among them), each holding its row 10 ms, so no such
//! row is ever free for more than an instant; 100 orders with a line on each of those rows
//! (an order across two or three hot rows: a cart spanning sizes) and 200 on cold variants fall
//! due at one instant, and runs of the release follow one another until every one is released
//! (at most four). Per trial: how many
//! runs the hot orders needed, the release delay of hot and cold orders (on the database
//! clock), the queue batches' waits, and the shoppers' latency before and during the runs.

use std::fmt::Write as _;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio_postgres::Client;
use unreserver::{ReleaseSettings, RunOptions, RunReport};

use crate::{
    connect, default_batch_size, ms, open_db, url_for, Bench, HOT_VARIANTS, SYNC_COUNTERS,
};

/// Shoppers queued on the hot row.
const QUEUE: usize = 12;
/// How long each checkout holds the hot row (the shop's own work inside its transaction).
const HOLD: Duration = Duration::from_millis(10);
/// Due orders on the hot variant and on cold variants (one line each).
const HOT_ORDERS: i64 = 100;
const COLD_ORDERS: i64 = 200;
/// Runs of the release per trial, at most.
const RUNS: usize = 4;
/// The first hot variant (drop variants of the seed: 1, 2, 3).
const HOT: i64 = 1;

/// One checkout's start (since the trial began) and latency (ms), or its failure.
type Outcome = (Duration, Result<f64, String>);

/// One shopper on the hot row: lock the variant, then its drop row, make an order with one
/// reservation, hold `HOLD`, commit; back to back until `stop`.
async fn queued_shopper(
    url: String,
    stop: Arc<AtomicBool>,
    t0: Instant,
    n: usize,
    row: i64,
) -> Vec<Outcome> {
    let mut c = connect(&url).await;
    let mut out = Vec::new();
    let mut k = 0;
    while !stop.load(Ordering::Relaxed) {
        k += 1;
        let started = Instant::now();
        let result = hot_checkout(&mut c, &format!("Q-{n}-{k}"), row).await;
        out.push((
            started - t0,
            result
                .map(|()| ms(started.elapsed()))
                .map_err(|e| e.to_string()),
        ));
    }
    out
}

/// One checkout on the hot row, held `HOLD` before it commits.
async fn hot_checkout(c: &mut Client, number: &str, row: i64) -> Result<(), tokio_postgres::Error> {
    let tx = c.transaction().await?;
    tx.execute(
        "UPDATE products_productvariant SET reserved_quantity = reserved_quantity + 1 WHERE id = $1",
        &[&row],
    )
    .await?;
    tx.execute(
        "UPDATE drops_dropproduct SET reserved_quantity = reserved_quantity + 1 WHERE id = $1",
        &[&row],
    )
    .await?;
    tx.execute(
        "WITH o AS (INSERT INTO orders_order (order_number) VALUES ($1) RETURNING id)
         INSERT INTO orders_inventoryreservation (order_id, product_variant_id, drop_product_id, quantity, expires_at)
         SELECT id, $2, $2, 1, now() + interval '15 minutes' FROM o",
        &[&number, &row],
    )
    .await?;
    tokio::time::sleep(HOLD).await;
    tx.commit().await
}

/// The orders of a trial, not yet due: `HOT_ORDERS` with a line on each of the `rows` hot
/// variants, `COLD_ORDERS` on cold variants with one line each, counters consistent.
async fn seed_orders(c: &Client, rows: i64) {
    c.batch_execute(&format!(
        "WITH o AS (INSERT INTO orders_order (order_number, status, payment_status)
                    SELECT 'HOT-' || g, 'pending', 'pending' FROM generate_series(1, {HOT_ORDERS}) g RETURNING id)
         INSERT INTO orders_inventoryreservation (order_id, product_variant_id, drop_product_id, quantity, status, created_at, expires_at)
         SELECT id, v, v, 1, 'active', now() - interval '15 minutes', now() + interval '1 day'
           FROM o, generate_series({HOT}, {HOT} + {rows} - 1) v;
         WITH o AS (INSERT INTO orders_order (order_number, status, payment_status)
                    SELECT 'COLD-' || g, 'pending', 'pending' FROM generate_series(1, {COLD_ORDERS}) g RETURNING id, order_number)
         INSERT INTO orders_inventoryreservation (order_id, product_variant_id, quantity, status, created_at, expires_at)
         SELECT id, {HOT_VARIANTS} + substr(order_number, 6)::int8, 1, 'active', now() - interval '15 minutes', now() + interval '1 day' FROM o;
         {SYNC_COUNTERS}"
    ))
    .await
    .unwrap();
    // VACUUM cannot share the (multi-statement, so implicit) transaction above.
    c.batch_execute("VACUUM ANALYZE orders_inventoryreservation")
        .await
        .unwrap();
}

/// Every seeded order falls due now (in one statement, while the shoppers go on).
async fn fall_due(c: &Client) {
    c.batch_execute(
        "UPDATE orders_inventoryreservation r SET expires_at = now()
           FROM orders_order o WHERE o.id = r.order_id AND o.order_number ~ '^(HOT|COLD)-'",
    )
    .await
    .unwrap();
}

/// The release delays (ms, `released_at - expires_at`) of the seeded hot or cold orders'
/// reservations, ascending, and how many of them are still active.
async fn delays(c: &Client, prefix: &str) -> (Vec<f64>, i64) {
    let rows = c
        .query(
            "SELECT extract(epoch FROM r.released_at - r.expires_at)::float8 * 1000
               FROM orders_inventoryreservation r JOIN orders_order o ON o.id = r.order_id
              WHERE o.order_number LIKE $1 || '-%' AND r.released_at IS NOT NULL ORDER BY 1",
            &[&prefix],
        )
        .await
        .unwrap();
    let active: i64 = c
        .query_one(
            "SELECT count(*) FROM orders_inventoryreservation r JOIN orders_order o ON o.id = r.order_id
              WHERE o.order_number LIKE $1 || '-%' AND r.status = 'active'",
            &[&prefix],
        )
        .await
        .unwrap()
        .get(0);
    (rows.iter().map(|r| r.get(0)).collect(), active)
}

/// What one trial measured.
struct Trial {
    reports: Vec<RunReport>,
    /// Runs after which no hot order was left (None: some were left after `RUNS`).
    hot_runs: Option<usize>,
    hot: Vec<f64>,
    cold: Vec<f64>,
    quiet: Vec<f64>,
    during: Vec<f64>,
    failed: Vec<String>,
}

/// The p50, p99 or max of ascending `v`.
fn at(v: &[f64], q: f64) -> f64 {
    if v.is_empty() {
        return f64::NAN;
    }
    v[((q * v.len() as f64).ceil() as usize).clamp(1, v.len()) - 1]
}

impl Bench {
    /// One trial on a fresh database `name`, the hot orders across `rows` hot rows.
    async fn hot_row_trial(&self, name: &str, rows: i64) -> Trial {
        self.seed(name, 0, 0).await;
        let url = url_for(&self.admin_url, name);
        let c = connect(&url).await;
        seed_orders(&c, rows).await;
        let stop = Arc::new(AtomicBool::new(false));
        let t0 = Instant::now();
        let shoppers: Vec<_> = (0..QUEUE)
            .map(|n| {
                let row = HOT + n as i64 % rows;
                tokio::spawn(queued_shopper(url.clone(), stop.clone(), t0, n, row))
            })
            .collect();
        tokio::time::sleep(Duration::from_millis(500)).await;
        let quiet_from = t0.elapsed();
        tokio::time::sleep(Duration::from_secs(2)).await;
        let settings = ReleaseSettings {
            batch_size: default_batch_size(),
            ..ReleaseSettings::default()
        };
        let mut db = open_db(&url, &settings).await;
        let due_at = t0.elapsed();
        fall_due(&c).await;
        let mut reports = Vec::new();
        let mut hot_runs = None;
        for run in 1..=RUNS {
            let report = unreserver::run(&mut db, &settings, &RunOptions::default())
                .await
                .unwrap_or_else(|f| panic!("{}", f.error.chain()));
            reports.push(report);
            if delays(&c, "HOT").await.1 == 0 {
                hot_runs = Some(run);
                break;
            }
        }
        let done_at = t0.elapsed();
        stop.store(true, Ordering::Relaxed);
        let (mut quiet, mut during, mut failed) = (Vec::new(), Vec::new(), Vec::new());
        for s in shoppers {
            for (started, outcome) in s.await.unwrap() {
                match outcome {
                    Ok(l) if started >= quiet_from && started < due_at => quiet.push(l),
                    Ok(l) if started >= due_at && started < done_at => during.push(l),
                    Ok(_) => {}
                    Err(e) => failed.push(e),
                }
            }
        }
        quiet.sort_by(f64::total_cmp);
        during.sort_by(f64::total_cmp);
        Trial {
            reports,
            hot_runs,
            hot: delays(&c, "HOT").await.0,
            cold: delays(&c, "COLD").await.0,
            quiet,
            during,
            failed,
        }
    }

    /// The hot-row section: `trials` trials, one table row each.
    pub async fn hot_row(&self, trials: usize) -> String {
        let mut md = String::new();
        let _ = writeln!(
            md,
            "\n### The hottest rows with queues of checkouts, orders across one, two or three\n\n\
             {QUEUE} shoppers check out back to back on one, two or three drop variants (shared \
             out among them; each checkout: lock its variant, then its drop row, make an order \
             and its reservation, hold {} ms, commit), so no such row is ever free for more than \
             an instant. {HOT_ORDERS} orders with one line on each of those variants (a cart \
             spanning sizes) and {COLD_ORDERS} one-line orders on cold variants fall due at one \
             instant; runs of the \
             release (defaults; the shop's `deadlock_timeout` 1 s, so a queue batch waits at most \
             250 ms) follow one another until every order is released, at most {RUNS}. Release \
             delay: `released_at - expires_at` on the database clock. Shoppers' latency: \
             checkouts started in the 2 s before the orders fell due (quiet) and while the runs \
             went on (during). {trials} trials on fresh databases.\n",
            HOLD.as_millis()
        );
        let _ = writeln!(
            md,
            "| hot rows per order | trial | runs for the hot orders | hot lines released | hot delay p50 / max (ms) | cold released | cold delay p50 / max (ms) | queue batches (timed out) | queue wait (ms) | shoppers quiet p99 / max (ms) | during p99 / max (ms) | checkouts during | failed |"
        );
        let _ = writeln!(md, "|---|---|---|---|---|---|---|---|---|---|---|---|---|");
        for (rows, trial) in (1..=3).flat_map(|rows| (1..=trials).map(move |t| (rows, t))) {
            eprintln!("hot rows: {rows} per order, trial {trial} ...");
            let t = self.hot_row_trial("bench_hot_row", rows).await;
            let sum = |f: fn(&RunReport) -> f64| t.reports.iter().map(f).sum::<f64>();
            let _ = writeln!(
                md,
                "| {rows} | {trial} | {} | {} / {} | {:.0} / {:.0} | {} / {COLD_ORDERS} | {:.0} / {:.0} | {:.0} ({:.0}) | {:.0} | {:.1} / {:.1} | {:.1} / {:.1} | {} | {} |",
                t.hot_runs.map_or_else(|| format!("> {RUNS}"), |r| r.to_string()),
                t.hot.len(),
                HOT_ORDERS * rows,
                at(&t.hot, 0.5),
                at(&t.hot, 1.0),
                t.cold.len(),
                at(&t.cold, 0.5),
                at(&t.cold, 1.0),
                sum(|r| r.counts.queue_waits as f64),
                sum(|r| r.counts.queue_timeouts as f64),
                sum(|r| r.counts.queue_wait_ms),
                at(&t.quiet, 0.99),
                at(&t.quiet, 1.0),
                at(&t.during, 0.99),
                at(&t.during, 1.0),
                t.during.len(),
                t.failed.len(),
            );
            if let Some(e) = t.failed.first() {
                let _ = writeln!(md, "\nfirst failed checkout of trial {trial}: {e}\n");
            }
        }
        md
    }
}

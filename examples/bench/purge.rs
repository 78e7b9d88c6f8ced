//! The purge against the shoppers (`scripts/bench.sh --purge`, its own section): checkouts on
//! the hot drop variants (two-item carts, in both lock orders) while nothing runs and while
//! `unreserver purge --apply --orders` deletes old rows of the very tables they insert into,
//! measured in one run (quiet phase, then purge phase, per cart shape), and the purge's rows a
//! second with and without shoppers. The machine is shared: the ratios within one run are the
//! figures, not the absolute times.

use std::fmt::Write as _;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::shoppers::{phase, Cart, Latency, SHOPPERS};
use crate::{connect, url_for, Bench, HOT_VARIANTS, VARIANTS};

/// Old rows a trial purges: cart holds released long ago, and orders the release cancelled
/// long ago, each with `LINES` lines.
const OLD_HOLDS: i64 = 60_000;
const OLD_ORDERS: i64 = 10_000;
const LINES: i64 = 2;
/// How long the quiet phase records checkouts.
const QUIET: Duration = Duration::from_secs(8);
/// The purge's time budget (`TIME_BUDGET_SECONDS`) beside the shoppers, and alone: it stops at
/// it (`stopped: time_budget`) and the next purge resumes.
const BUDGET_WITH_SHOPPERS: u64 = 20;
const BUDGET_ALONE: u64 = 60;

/// The horizon's table, as `infra/purge-role.sql` creates it (the bench runs the purge as the
/// owner, so the role's grants are not needed).
pub fn horizon_table() -> &'static str {
    let sql = include_str!("../../infra/purge-role.sql");
    let start = sql
        .find("CREATE TABLE IF NOT EXISTS unreserver_purge_horizon")
        .expect("infra/purge-role.sql creates the horizon's table");
    let end = start + sql[start..].find(");").expect("its end") + 2;
    &sql[start..end]
}

/// Inserts one trial's old rows (released 70 days ago, on the database clock).
async fn old_rows(c: &tokio_postgres::Client, trial: usize) {
    c.batch_execute(&format!(
        "INSERT INTO orders_inventoryreservation
             (order_id, product_variant_id, quantity, status, created_at, expires_at, released_at)
           SELECT NULL, 1 + (g * 7919) % {VARIANTS}, 1, 'expired', now() - interval '71 days',
                  now() - interval '70 days 12 hours', now() - interval '70 days'
             FROM generate_series(1, {OLD_HOLDS}) g;
         CREATE TEMP TABLE old_orders AS
           WITH o AS (
             INSERT INTO orders_order (order_number, status, payment_status, cancelled_at)
               SELECT 'P{trial}-' || g, 'cancelled', 'pending', now() - interval '70 days'
                 FROM generate_series(1, {OLD_ORDERS}) g RETURNING id)
           SELECT id FROM o;
         INSERT INTO orders_inventoryreservation
             (order_id, product_variant_id, quantity, status, created_at, expires_at, released_at)
           SELECT o.id, 1 + (o.id * 31 + l) % {VARIANTS}, 1, 'expired', now() - interval '71 days',
                  now() - interval '70 days 12 hours', now() - interval '70 days'
             FROM old_orders o, generate_series(1, {LINES}) l;
         DROP TABLE old_orders;
         ANALYZE orders_inventoryreservation; ANALYZE orders_order;"
    ))
    .await
    .unwrap();
}

/// What one purge did: its answer and wall time (the process, connecting included).
struct Purged {
    answer: Value,
    took: Duration,
}

impl Purged {
    /// Rows deleted: reservations, order lines and orders.
    fn rows(&self) -> u64 {
        let n = |v: &Value| v.as_u64().unwrap_or(0);
        n(&self.answer["reservations"]["deleted"])
            + n(&self.answer["orders"]["lines_deleted"])
            + n(&self.answer["orders"]["deleted"])
    }

    fn rate(&self) -> f64 {
        self.rows() as f64 / self.took.as_secs_f64()
    }
}

/// `unreserver purge --apply --orders` on `url` (defaults: 60 days, adaptive chunks) within
/// `budget` seconds.
fn purge(binary: &str, url: &str, budget: u64) -> Purged {
    let started = Instant::now();
    let out = Command::new(binary)
        .args(["purge", "--apply", "--orders"])
        .env("DATABASE_URL", url)
        .env("TIME_BUDGET_SECONDS", budget.to_string())
        .env_remove("EVENT_BUS_NAME")
        .stderr(Stdio::null())
        .output()
        .unwrap();
    Purged {
        answer: serde_json::from_slice(&out.stdout).unwrap_or(Value::Null),
        took: started.elapsed(),
    }
}

/// The purge's `PURGE_REST_RATIO`: the environment's (the bench passes its environment on to
/// the purge), else the default.
fn rest_ratio() -> String {
    std::env::var("PURGE_REST_RATIO").unwrap_or_else(|_| {
        unreserver::settings::PURGE_REST_RATIO
            .default_number()
            .to_string()
    })
}

fn cell(l: &Latency) -> String {
    format!("{:.1} / {:.1} / {:.1}", l.p50, l.p99, l.max)
}

impl Bench {
    /// The purge section.
    pub async fn purge_section(&self, binary: &str) -> String {
        let name = "bench_purge";
        self.seed(name, 0, 20_000).await;
        let url = url_for(&self.admin_url, name);
        let c = connect(&url).await;
        c.batch_execute(horizon_table()).await.unwrap();
        let mut md = String::new();
        let _ = writeln!(
            md,
            "Each trial adds {OLD_HOLDS} cart holds and {OLD_ORDERS} orders the release cancelled \
             ({LINES} lines each), all released 70 days ago, to the bench's seed (20000 active \
             reservations; {VARIANTS} variants, {HOT_VARIANTS} of them hot drop variants). \
             {SHOPPERS} shoppers check out back to back on the hot drop variants (each checkout \
             locks and bumps its variants' and drop rows' counters, inserts an order and its \
             reservations into the tables the purge deletes from, commits): first for {} s with \
             nothing else running (quiet), then while `unreserver purge --apply --orders` \
             (release build, defaults: 60 days, adaptive chunks, `PURGE_REST_RATIO={}`, as \
             the tables' owner; `TIME_BUDGET_SECONDS={BUDGET_WITH_SHOPPERS}`) deletes old rows. Rows a purge left \
             (stopped at its budget) stay for the next trial's. Latencies in ms; the ratio and \
             the difference are of the same trial's quiet phase.\n",
            QUIET.as_secs(),
            rest_ratio(),
        );
        let _ = writeln!(
            md,
            "| shoppers' carts | quiet p50 / p99 / max | during the purge p50 / p99 / max | p99 ratio | max − quiet max | checkouts quiet / during | failed | purge: rows deleted, s, rows/s, chunks, s rested |\n|---|---|---|---|---|---|---|---|"
        );
        let mut trial = 0;
        for cart in [Cart::TwoVariantsFirst, Cart::TwoItemByItem] {
            trial += 1;
            old_rows(&c, trial).await;
            eprintln!("purge: {} quiet ...", cart.describe());
            let (quiet, ()) = phase(&url, cart, 1, tokio::time::sleep(QUIET)).await;
            eprintln!("purge: {} during a purge ...", cart.describe());
            let (bin, purge_url) = (binary.to_string(), url.clone());
            let (during, purged) = phase(&url, cart, 2, async move {
                tokio::task::spawn_blocking(move || purge(&bin, &purge_url, BUDGET_WITH_SHOPPERS))
                    .await
                    .unwrap()
            })
            .await;
            let _ = writeln!(
                md,
                "| {} | {} | {} | {:.2}× | {:+.1} | {} / {} | {} | {}, {:.1} s, {:.0}, {}, {:.1} s (stopped `{}`) |",
                cart.describe(),
                cell(&quiet),
                cell(&during),
                during.p99 / quiet.p99,
                during.max - quiet.max,
                quiet.n,
                during.n,
                quiet.failed + during.failed,
                purged.rows(),
                purged.took.as_secs_f64(),
                purged.rate(),
                purged.answer["chunks"],
                purged.answer["rested_ms"].as_f64().unwrap_or(0.0) / 1000.0,
                purged.answer["stopped"].as_str().unwrap_or("?"),
            );
        }
        trial += 1;
        old_rows(&c, trial).await;
        eprintln!("purge: alone ...");
        let alone = purge(binary, &url, BUDGET_ALONE);
        let _ = writeln!(
            md,
            "\nThen with no shopper about (`TIME_BUDGET_SECONDS={BUDGET_ALONE}`, after one more \
             trial's rows): {} rows in {:.1} s, {:.0} rows/s, {} chunks (the controller's \
             largest chunk {} rows), stopped `{}`; `replicas.note`: {}.",
            alone.rows(),
            alone.took.as_secs_f64(),
            alone.rate(),
            alone.answer["chunks"],
            alone.answer["controller"]["batch_rows_max"],
            alone.answer["stopped"].as_str().unwrap_or("?"),
            alone.answer["replicas"]["note"],
        );
        md
    }
}

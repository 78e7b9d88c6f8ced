//! The benchmark (run it with `scripts/bench.sh`, not as a test): how close the release is to
//! the database's own limit, measured in one run on copies of one seeded database.
//!
//! 1. this project: draining N due reservations with the shipped defaults and other batch sizes;
//! 2. the lower bound: one set-based statement, no batching, no row locks held per batch;
//! 3. the per-row baseline: the old system's one small transaction per reservation;
//! 4. scaling: 1, 2 and 4 runs at once over one backlog;
//! 5. idle cost: a run when nothing is due among 1,000,000 active reservations, with plans;
//! 6. memory: peak RSS of the `unreserver` process draining 10,000 and 100,000;
//! 7. the shoppers' side: checkout latency on the hot drop variants while nothing drains, while
//!    this project drains a backlog on the same rows, and while the one set-based statement
//!    does (and, to tell CPU contention from lock waits, checkouts on cold rows during a drain);
//! 8. around the release: a drain publishing its expiry events (moto's EventBridge) against one
//!    that does not, and the release-delay report and a window's events with and without the
//!    BRIN index on `released_at` (`--events-only` runs just this);
//! 9. follow mode (`--follow`, its own section): release delays while `unreserver follow`
//!    runs, wake-ups, the cost of an idle wake-up.
//! 10. hot rows and carts (`--hot-rows`, its own section): the hottest row with a queue of
//!     checkouts, and carts of several items in both lock orders against a drain.
//! 11. end to end (`--e2e`, `scripts/bench-e2e.sh`): a new `unreserver run` process per run,
//!     as a schedule runs it; everything above is measured in the bench's own process.
//! 12. the purge (`--purge`, its own section): checkouts while `unreserver purge` deletes old
//!     rows of their tables, against the quiet phase of the same trial; the purge's rows/s;
//!     the purge against one `DELETE` and pt-archiver's fixed chunks on a quiet database
//!     (`--purge-rows N`, default 5,000,000, as issue 38 asks; 0 leaves it out), WAL bytes per row; and (`--purge-replica`, which
//!     `scripts/bench.sh --purge` runs once it started a standby) beside a lagging replica.
//!
//! Writes the results, the command and the machine into BENCHMARKS.md.

use std::fmt::Write as _;
use std::time::{Duration, Instant};

use tokio_postgres::{Client, NoTls};

use shoppers::{Cart, Latency, PHASE, SHOPPERS};
use unreserver::Database;
use unreserver::ReleaseSettings;
use unreserver::RunOptions;
use unreserver::RunReport;

mod adaptive;
mod carts;
mod e2e;
mod follow;
mod hot_row;
mod purge;
mod purge_quiet;
mod purge_replica;
mod shoppers;

/// `--batch-size N`: a pinned batch size the bench treats as the default (to weigh it against
/// the shipped adaptive batches); unset: the shipped defaults (adaptive).
static BATCH_SIZE: std::sync::OnceLock<u32> = std::sync::OnceLock::new();

fn default_batch_size() -> Option<u32> {
    BATCH_SIZE.get().copied()
}

/// A batch size as the tables show it.
fn size_label(size: Option<u32>) -> String {
    size.map_or_else(|| "adaptive".to_string(), |n| n.to_string())
}

const VARIANTS: i64 = 2_000;
const HOT_VARIANTS: i64 = 20;
const FUTURE_RESERVATIONS: i64 = 200_000;

/// The lower bound: one statement that makes the same changes as a drain, without batches,
/// claims or retries; returns the reservations it released.
const LOWER_BOUND: &str = "WITH due AS (
                   SELECT DISTINCT r.order_id FROM orders_inventoryreservation r
                     JOIN orders_order o ON o.id = r.order_id
                    WHERE r.status = 'active' AND r.expires_at <= now()
                      AND o.status IN ('pending', 'cancelled')
                      AND o.payment_status IN ('pending', 'failed')),
                 released AS (
                   UPDATE orders_inventoryreservation r SET status = 'expired', released_at = now()
                    WHERE r.status = 'active' AND r.order_id IN (SELECT order_id FROM due)
                   RETURNING r.product_variant_id, r.drop_product_id, r.quantity),
                 cancelled AS (
                   UPDATE orders_order o SET status = 'cancelled', cancelled_at = now(), updated_at = now()
                    WHERE o.id IN (SELECT order_id FROM due) AND o.status = 'pending' RETURNING 1),
                 v AS (
                   UPDATE products_productvariant v
                      SET reserved_quantity = GREATEST(v.reserved_quantity - s.q, 0), updated_at = now()
                     FROM (SELECT product_variant_id id, sum(quantity) q FROM released GROUP BY 1) s
                    WHERE v.id = s.id RETURNING 1),
                 d AS (
                   UPDATE drops_dropproduct d
                      SET reserved_quantity = GREATEST(d.reserved_quantity - s.q, 0), updated_at = now()
                     FROM (SELECT drop_product_id id, sum(quantity) q FROM released
                            WHERE drop_product_id IS NOT NULL GROUP BY 1) s
                    WHERE d.id = s.id RETURNING 1)
                 SELECT (SELECT count(*) FROM released) + 0 * (SELECT count(*) FROM cancelled)
                        + 0 * (SELECT count(*) FROM v) + 0 * (SELECT count(*) FROM d)";

/// Sets every variant's and drop's `reserved_quantity` to the units of its reservations (the
/// seeds insert reservations first and derive the counters).
const SYNC_COUNTERS: &str = "UPDATE products_productvariant v SET reserved_quantity = s.q
       FROM (SELECT product_variant_id id, sum(quantity) q FROM orders_inventoryreservation GROUP BY 1) s
      WHERE v.id = s.id;
     UPDATE drops_dropproduct d SET reserved_quantity = s.q
       FROM (SELECT drop_product_id id, sum(quantity) q FROM orders_inventoryreservation
              WHERE drop_product_id IS NOT NULL GROUP BY 1) s
      WHERE d.id = s.id";

struct Bench {
    admin_url: String,
    out: String,
    /// WAL bytes the last contender wrote (`project` or `lower_bound`).
    last_wal: std::cell::Cell<i64>,
    /// SQL run on every copy before a contender: the index set under test ("" keeps the
    /// recommended indexes of the seed).
    index_set: std::cell::Cell<&'static str>,
}

/// The index sets a shop may have, as SQL applied to a copy of the seed (which has the
/// recommended indexes and Django's foreign-key indexes).
const INDEX_SETS: &[(&str, &str)] = &[
    ("recommended (infra/indexes.sql, all four)", ""),
    (
        "the two required of infra/indexes.sql, not the two optional",
        "DROP INDEX unreserver_released_at_brin; DROP INDEX unreserver_cancelled_at_idx",
    ),
    (
        "only (expires_at) WHERE status = 'active'",
        "DROP INDEX unreserver_active_expiry_idx; DROP INDEX unreserver_active_legacy_idx; \
         DROP INDEX unreserver_released_at_brin; DROP INDEX unreserver_cancelled_at_idx; \
         CREATE INDEX plain_expiry ON orders_inventoryreservation (expires_at) WHERE status = 'active'; \
         ANALYZE orders_inventoryreservation",
    ),
    (
        "only Django's foreign-key indexes",
        "DROP INDEX unreserver_active_expiry_idx; DROP INDEX unreserver_active_legacy_idx; \
         DROP INDEX unreserver_released_at_brin; DROP INDEX unreserver_cancelled_at_idx",
    ),
];

/// The server's current WAL insert position, in bytes.
async fn wal_position(c: &Client) -> i64 {
    c.query_one(
        "SELECT pg_wal_lsn_diff(pg_current_wal_insert_lsn(), '0/0')::int8",
        &[],
    )
    .await
    .unwrap()
    .get(0)
}

fn url_for(admin_url: &str, db: &str) -> String {
    admin_url.replacen("/postgres?", &format!("/{db}?"), 1)
}

async fn connect(url: &str) -> Client {
    let (client, conn) = tokio_postgres::connect(url, NoTls).await.expect("connect");
    tokio::spawn(conn);
    client
}

impl Bench {
    async fn admin(&self) -> Client {
        connect(&self.admin_url).await
    }

    /// A database with the schema and indexes, seeded: `due` due reservations of pending
    /// orders (1-3 per order, mostly on a few hot drop variants), `future` active reservations
    /// not yet due (which must stay untouched), counters consistent. Vacuumed and analyzed.
    async fn seed(&self, name: &str, due: i64, future: i64) {
        let admin = self.admin().await;
        for sql in [
            format!("DROP DATABASE IF EXISTS {name}"),
            format!("CREATE DATABASE {name}"),
        ] {
            admin.batch_execute(&sql).await.unwrap();
        }
        let c = connect(&url_for(&self.admin_url, name)).await;
        c.batch_execute(include_str!("../../infra/schema.sql"))
            .await
            .unwrap();
        // CREATE INDEX CONCURRENTLY runs outside a transaction: one statement at a time.
        let indexes: String = include_str!("../../infra/indexes.sql")
            .lines()
            .filter(|l| !l.trim_start().starts_with("--"))
            .collect::<Vec<_>>()
            .join("\n");
        for statement in indexes.split(';').filter(|s| !s.trim().is_empty()) {
            c.batch_execute(statement).await.unwrap();
        }
        c.batch_execute(&format!(
            "INSERT INTO products_productvariant (id, product_id, sku, stock_quantity)
               SELECT g, g / 4, 'SKU-' || g, 100000 FROM generate_series(1, {VARIANTS}) g;
             INSERT INTO drops_dropproduct (id, drop_id, product_variant_id, drop_quantity)
               SELECT g, 1, g, 100000 FROM generate_series(1, {HOT_VARIANTS}) g;
             -- Reservations first, orders derived: reservation k belongs to order k / 2, so
             -- orders hold 1-3 reservations; 60 % of the units are on the hot drop variants.
             -- The rows not due expire a day ahead: a run reuses a seed for many minutes.
             CREATE TEMP TABLE plan AS
               SELECT k, (k * 7 + (k % 3)) / 14 AS ord,
                      CASE WHEN k % 10 < 6 THEN 1 + (k % {HOT_VARIANTS})
                           ELSE 1 + (k * 7919) % {VARIANTS} END AS variant,
                      1 + (k % 3) AS qty,
                      k <= {due} AS is_due
                 FROM generate_series(1::int8, {total}::int8) k;
             INSERT INTO orders_order (id, order_number, status, payment_status, created_at)
               SELECT ord, 'B-' || ord, 'pending', 'pending', now() - interval '1 hour'
                 FROM plan GROUP BY ord;
             INSERT INTO orders_inventoryreservation
                 (order_id, product_variant_id, drop_product_id, quantity, status, created_at, expires_at)
               SELECT ord, variant, CASE WHEN variant <= {HOT_VARIANTS} THEN variant END, qty, 'active',
                      now() - interval '30 minutes',
                      CASE WHEN is_due THEN now() - interval '20 minutes' + (k % 600) * interval '1 second'
                           ELSE now() + interval '1 day' END
                 FROM plan ORDER BY k;
             {SYNC_COUNTERS};
             SELECT setval('orders_order_id_seq', (SELECT max(id) FROM orders_order));",
            total = due + future
        ))
        .await
        .unwrap();
        // A due order must not share a reservation-plan order with future rows: make every
        // order holding a future row hold only future rows, by moving future rows to new orders.
        c.batch_execute(
            "WITH mixed AS (SELECT order_id FROM orders_inventoryreservation GROUP BY order_id
                             HAVING bool_or(expires_at <= now()) AND bool_or(expires_at > now()))
             UPDATE orders_inventoryreservation SET expires_at = now() - interval '1 minute'
              WHERE order_id IN (SELECT order_id FROM mixed)",
        )
        .await
        .unwrap();
        drop(c);
        let c = connect(&url_for(&self.admin_url, name)).await;
        c.batch_execute("VACUUM ANALYZE").await.unwrap();
    }

    async fn copy(&self, seed: &str, name: &str) -> String {
        let admin = self.admin().await;
        for sql in [
            format!("DROP DATABASE IF EXISTS {name}"),
            format!("CREATE DATABASE {name} TEMPLATE {seed}"),
        ] {
            admin.batch_execute(&sql).await.unwrap();
        }
        let url = url_for(&self.admin_url, name);
        let c = connect(&url).await;
        if !self.index_set.get().is_empty() {
            c.batch_execute(self.index_set.get()).await.unwrap();
        }
        // Warm the cache the same way for every contender.
        c.batch_execute(
            "SELECT count(*) FROM orders_inventoryreservation; SELECT count(*) FROM orders_order",
        )
        .await
        .unwrap();
        url
    }

    async fn due_count(url: &str) -> i64 {
        connect(url)
            .await
            .query_one(
                "SELECT count(*) FROM orders_inventoryreservation WHERE status = 'active' AND expires_at <= now()",
                &[],
            )
            .await
            .unwrap()
            .get(0)
    }

    async fn project(
        &self,
        seed: &str,
        batch_size: Option<u32>,
        runs: usize,
    ) -> (Duration, Vec<RunReport>) {
        let url = self.copy(seed, "bench_run").await;
        let settings = ReleaseSettings {
            batch_size,
            max_batches: 1_000_000,
            time_budget: None,
            ..ReleaseSettings::default()
        };
        let mut dbs = Vec::new();
        for _ in 0..runs {
            dbs.push(open_db(&url, &settings).await);
        }
        let admin = self.admin().await;
        let wal_before = wal_position(&admin).await;
        let started = Instant::now();
        let tasks: Vec<_> = dbs
            .into_iter()
            .map(|mut db| {
                let settings = settings.clone();
                tokio::spawn(async move {
                    unreserver::run(&mut db, &settings, &RunOptions::default())
                        .await
                        .unwrap_or_else(|f| panic!("{}", f.error.chain()))
                })
            })
            .collect();
        let mut reports = Vec::new();
        for t in tasks {
            reports.push(t.await.unwrap());
        }
        let took = started.elapsed();
        self.last_wal.set(wal_position(&admin).await - wal_before);
        assert_eq!(
            Self::due_count(&url).await,
            0,
            "the run left due reservations"
        );
        (took, reports)
    }

    /// One statement that makes the same changes: no batches, no claim, no retries.
    async fn lower_bound(&self, seed: &str) -> (Duration, i64) {
        let url = self.copy(seed, "bench_lower").await;
        let c = connect(&url).await;
        let wal_before = wal_position(&c).await;
        let started = Instant::now();
        let row = c.query_one(LOWER_BOUND, &[]).await.unwrap();
        let took = started.elapsed();
        self.last_wal.set(wal_position(&c).await - wal_before);
        (took, row.get(0))
    }

    /// Where a drain's database time goes, statement by statement (pg_stat_statements, which
    /// `scripts/bench.sh --profile` preloads), beside the lower bound's one statement: one
    /// drain of each on copies of `seed`.
    async fn profile(&self, seed: &str, index_set: &str) -> String {
        let mut md = format!(
            "## Where the database time goes (N = 100,000, defaults; pg_stat_statements)\n\n\
             Index set: {index_set}. \
             `scripts/bench.sh --profile`: one drain with the shipped defaults and one run of the \
             lower bound's statement, on copies of one seeded database, each statement's execution \
             time inside the server; the rest of the wall time is round trips, commits and the \
             client. The ten costliest statements of each.\n\n\
             | contender | statement | calls | total (ms) | mean (ms) | rows |\n|---|---|---|---|---|---|\n",
        );
        for (name, lower) in [("this project", false), ("lower bound", true)] {
            let url = self.copy(seed, "bench_profile").await;
            let c = connect(&url).await;
            c.batch_execute(
                "CREATE EXTENSION IF NOT EXISTS pg_stat_statements; SELECT pg_stat_statements_reset()",
            )
            .await
            .expect("pg_stat_statements (run scripts/bench.sh --profile, which preloads it)");
            let took = if lower {
                lower_bound_statement(url.clone()).await
            } else {
                drain_with_defaults(url.clone()).await.0
            };
            let rows = c
                .query(
                    "SELECT calls::int8, total_exec_time, mean_exec_time, rows::int8,
                            left(regexp_replace(query, '\\s+', ' ', 'g'), 70) AS q
                       FROM pg_stat_statements s JOIN pg_database d ON d.oid = s.dbid
                      WHERE d.datname = current_database() AND query !~* 'pg_stat_statements'
                      ORDER BY total_exec_time DESC LIMIT 10",
                    &[],
                )
                .await
                .unwrap();
            let mut total = 0.0;
            for row in &rows {
                let (calls, sum, mean, n, q): (i64, f64, f64, i64, String) =
                    (row.get(0), row.get(1), row.get(2), row.get(3), row.get(4));
                total += sum;
                let q = q.replace('|', "\\|");
                let _ = writeln!(
                    md,
                    "| {name} | `{q}` | {calls} | {sum:.0} | {mean:.2} | {n} |"
                );
            }
            let _ = writeln!(
                md,
                "| {name} | **these statements / wall time** | | **{total:.0} / {:.0}** | | |",
                ms(took)
            );
        }
        md
    }

    /// The old system: select the due reservations, then one transaction per reservation.
    async fn per_row(&self, seed: &str) -> (Duration, i64) {
        let url = self.copy(seed, "bench_perrow").await;
        let mut c = connect(&url).await;
        let started = Instant::now();
        let rows = c
            .query(
                "SELECT r.id FROM orders_inventoryreservation r JOIN orders_order o ON o.id = r.order_id
                  WHERE r.status = 'active' AND r.expires_at <= now() AND o.payment_status <> 'paid'
                  ORDER BY r.expires_at",
                &[],
            )
            .await
            .unwrap();
        let mut released = 0;
        for row in rows {
            let id: i64 = row.get(0);
            let tx = c.transaction().await.unwrap();
            let r = tx
                .query_opt(
                    "UPDATE orders_inventoryreservation SET status = 'expired', released_at = now()
                      WHERE id = $1 AND status = 'active'
                      RETURNING order_id, product_variant_id, drop_product_id, quantity",
                    &[&id],
                )
                .await
                .unwrap();
            if let Some(r) = r {
                let (order, variant, drop_id, qty): (i64, i64, Option<i64>, i32) =
                    (r.get(0), r.get(1), r.get(2), r.get(3));
                tx.execute(
                    "UPDATE products_productvariant SET reserved_quantity = GREATEST(reserved_quantity - $2, 0) WHERE id = $1",
                    &[&variant, &qty],
                )
                .await
                .unwrap();
                if let Some(d) = drop_id {
                    tx.execute(
                        "UPDATE drops_dropproduct SET reserved_quantity = GREATEST(reserved_quantity - $2, 0) WHERE id = $1",
                        &[&d, &qty],
                    )
                    .await
                    .unwrap();
                }
                tx.execute(
                    "UPDATE orders_order SET status = 'cancelled', cancelled_at = now() WHERE id = $1 AND status = 'pending'",
                    &[&order],
                )
                .await
                .unwrap();
                released += 1;
            }
            tx.commit().await.unwrap();
        }
        (started.elapsed(), released)
    }

    /// Peak RSS (KiB) of the `unreserver` binary draining a copy of `seed`, as GNU time reports
    /// it for its own child. Not `wait4` on a child of this process: a child spawned from a
    /// large process (this bench holds whole seeds' reports) inherits that process's peak in
    /// `ru_maxrss` across `exec`, so every run would show this bench's size.
    async fn peak_rss(&self, seed: &str, binary: &str) -> (i64, String) {
        let url = self.copy(seed, "bench_rss").await;
        let report = std::env::temp_dir().join(format!("unreserver-rss-{}", std::process::id()));
        let out = std::process::Command::new("/usr/bin/time")
            .args(["-f", "%M", "-o"])
            .arg(&report)
            .args([binary, "run"])
            .env("DATABASE_URL", &url)
            .env("MAX_BATCHES", "1000000")
            .env("TIME_BUDGET_SECONDS", "0")
            .env("RUST_LOG", "warn")
            .stderr(std::process::Stdio::null())
            .output()
            .expect("cannot start /usr/bin/time (GNU time: Debian's 'time' package)");
        assert!(out.status.success(), "unreserver run failed");
        let kib = std::fs::read_to_string(&report)
            .expect("GNU time's report")
            .trim()
            .parse()
            .expect("GNU time's %M: KiB");
        let _ = std::fs::remove_file(&report);
        (kib, String::from_utf8_lossy(&out.stdout).into_owned())
    }

    async fn explain(url: &str, sql: &str) -> (f64, String) {
        let c = connect(url).await;
        let rows = c
            .query(
                &format!("EXPLAIN (ANALYZE, BUFFERS, FORMAT TEXT) {sql}"),
                &[],
            )
            .await
            .unwrap();
        let plan: Vec<String> = rows.iter().map(|r| r.get::<_, String>(0)).collect();
        let exec_ms = plan
            .iter()
            .find_map(|l| l.strip_prefix("Execution Time: "))
            .and_then(|l| l.trim_end_matches(" ms").parse().ok())
            .unwrap_or(f64::NAN);
        (exec_ms, plan.join("\n"))
    }
}

impl Bench {
    /// Makes the seed's not-yet-due rows due (between phases, shoppers paused), vacuumed.
    async fn make_future_due(url: &str) {
        let c = connect(url).await;
        c.batch_execute(
            "UPDATE orders_inventoryreservation SET expires_at = now() - interval '20 minutes'
              WHERE status = 'active' AND expires_at > now() AND order_id IN
                (SELECT id FROM orders_order WHERE order_number LIKE 'B-%')",
        )
        .await
        .unwrap();
        // VACUUM cannot share a (multi-statement, so implicit) transaction.
        c.batch_execute("VACUUM ANALYZE").await.unwrap();
    }

    /// What the batch size costs the shoppers: for the default and two larger sizes, on a
    /// fresh copy of `seed` each, a quiet phase then a drain with that size, hot rows.
    async fn shopper_batch_sizes(&self, seed: &str) -> String {
        let mut md = String::from(
            "\n### The batch size against the shoppers (the same phases, one fresh copy per size)\n\n\
             | batch size | drain (ms) | batches | batch p99 (ms) | quiet p99 (ms) | drain p99 (ms) | p99 ratio (≤ 1.5) | max over quiet (≤ +50 ms) | deferred (< 1 %) |\n\
             |---|---|---|---|---|---|---|---|---|\n",
        );
        let mut sizes = vec![default_batch_size(), Some(500), Some(1000), Some(2000)];
        sizes.dedup();
        for bs in sizes {
            let label = size_label(bs);
            eprintln!("shoppers, batch size {label} ...");
            let url = self.copy(seed, "bench_shoppers_bs").await;
            let (quiet, ()) = shoppers::phase(&url, Cart::OneHot, 1, async {}).await;
            let (drain, (took, r)) = shoppers::phase(
                &url,
                Cart::OneHot,
                2,
                drain_with_batch_size(url.clone(), bs),
            )
            .await;
            let _ = writeln!(
                md,
                "| {label} | {:.0} | {} | {:.1} | {:.1} | {:.1} | {:.2} | {:+.1} | {:.2} % |",
                ms(took),
                r.batches,
                r.batch_ms_p99,
                quiet.p99,
                drain.p99,
                drain.p99 / quiet.p99.max(f64::EPSILON),
                drain.max - quiet.max,
                deferred_pct(&r),
            );
        }
        md
    }

    /// The shopper phases on one copy of `seed` (N due now, N more made due before the third
    /// phase): quiet; this project draining; the lower bound draining. Then, on a fresh copy,
    /// this project draining while the shoppers use cold rows.
    async fn shopper_phases(&self, seed: &str) -> String {
        let url = self.copy(seed, "bench_shoppers").await;
        let (quiet, ()) = shoppers::phase(&url, Cart::OneHot, 1, async {}).await;
        let (drain, (drain_took, report)) =
            shoppers::phase(&url, Cart::OneHot, 2, drain_with_defaults(url.clone())).await;
        Bench::make_future_due(&url).await;
        let (lower, lower_took) =
            shoppers::phase(&url, Cart::OneHot, 3, lower_bound_statement(url.clone())).await;
        let cold_url = self.copy(seed, "bench_shoppers_cold").await;
        let (cold, _) = shoppers::phase(
            &cold_url,
            Cart::OneCold,
            4,
            drain_with_defaults(cold_url.clone()),
        )
        .await;
        shopper_table(
            &[
                ("quiet (nothing drains), hot rows", quiet),
                ("this project drains, hot rows", drain),
                ("the one set-based statement drains, hot rows", lower),
                ("this project drains, shoppers on cold rows", cold),
            ],
            drain_took,
            &report,
            lower_took,
        )
    }
}

/// A checked connection for the release on `url`.
async fn open_db(url: &str, settings: &ReleaseSettings) -> Database {
    let tls = unreserver::tls_connector(None, &unreserver::RdsCaRegions::All).unwrap();
    let config: tokio_postgres::Config = url.parse().unwrap();
    Database::open(&config, &tls, settings.lock_timeout_ms)
        .await
        .unwrap()
}

/// The shipped defaults, without the limits of a scheduled run.
fn drain_settings() -> ReleaseSettings {
    ReleaseSettings {
        batch_size: default_batch_size(),
        max_batches: 1_000_000,
        time_budget: None,
        ..ReleaseSettings::default()
    }
}

/// This project's drain of `url` with the shipped defaults.
async fn drain_with_defaults(url: String) -> (Duration, RunReport) {
    drain_with_batch_size(url, default_batch_size()).await
}

/// This project's drain of `url` with the shipped defaults but `batch_size`.
async fn drain_with_batch_size(url: String, batch_size: Option<u32>) -> (Duration, RunReport) {
    let settings = ReleaseSettings {
        batch_size,
        ..drain_settings()
    };
    let mut db = open_db(&url, &settings).await;
    let started = Instant::now();
    let report = unreserver::run(&mut db, &settings, &RunOptions::default())
        .await
        .unwrap_or_else(|f| panic!("{}", f.error.chain()));
    (started.elapsed(), report)
}

/// The lower bound's statement on `url`.
async fn lower_bound_statement(url: String) -> Duration {
    let c = connect(&url).await;
    let started = Instant::now();
    c.batch_execute(LOWER_BOUND).await.unwrap();
    started.elapsed()
}

fn shopper_table(
    phases: &[(&str, Latency)],
    drain_took: Duration,
    report: &RunReport,
    lower_took: Duration,
) -> String {
    let mut md = String::new();
    let _ = writeln!(
        md,
        "\n## The shoppers' side: checkout latency during a drain (N = 100,000, defaults)\n"
    );
    let _ = writeln!(
        md,
        "{SHOPPERS} shoppers run checkout transactions back to back on the {HOT_VARIANTS} hot drop \
         variants the backlog is concentrated on (each: lock and bump the variant's and the \
         drop's counters, make an order, insert its reservation, commit), in phases on one \
         database, each recorded for {} s or as long as its drain: quiet; while this project drains 100,000 due reservations; while the one \
         set-based statement drains 100,000 more. The last row repeats the drain with the \
         shoppers on cold variants, to separate CPU contention (2 cores) from lock waits.\n",
        PHASE.as_secs()
    );
    let _ = writeln!(md, "| phase | checkouts | p50 (ms) | p99 (ms) | max (ms) |");
    let _ = writeln!(md, "|---|---|---|---|---|");
    for (name, l) in phases {
        let _ = writeln!(
            md,
            "| {name} | {} | {:.1} | {:.1} | {:.1} |",
            l.n, l.p50, l.p99, l.max
        );
    }
    let quiet = &phases[0].1;
    let drain = &phases[1].1;
    let deferred_pct = deferred_pct(report);
    let _ = writeln!(
        md,
        "\nDuring this project's drain: p99 **{:.2}×** the quiet p99 (target ≤ 1.5), max **{:+.1} ms** \
         over the quiet max (target ≤ +50 ms). The drain took {:.0} ms (the lower bound's statement \
         {:.0} ms), released {} reservations in {} batches (batch p99 {:.1} ms, max {:.1} ms), \
         skipped {} orders a shopper held, and left **{} deferred ({deferred_pct:.2} % of those \
         released**, target < 1 %).",
        drain.p99 / quiet.p99.max(f64::EPSILON),
        drain.max - quiet.max,
        ms(drain_took),
        ms(lower_took),
        report.counts.reservations_released,
        report.batches,
        report.batch_ms_p99,
        report.batch_ms_max,
        report.counts.skipped_locked,
        report.deferred,
    );
    md
}

/// `--reps N`.
fn reps_arg(args: &[String]) -> Option<usize> {
    let i = args.iter().position(|a| a == "--reps")?;
    args.get(i + 1)?.parse().ok()
}

/// The drain at N = 100,000 with each index set: the lower bound and the shipped defaults on
/// copies of the same database with the same indexes, interleaved, `reps` times.
async fn index_sets(b: &Bench, reps: usize) -> String {
    let seed = "bench_seed_100000";
    let due = Bench::due_count(&url_for(&b.admin_url, seed)).await;
    let mut md = String::new();
    let _ = writeln!(
        md,
        "\n## The index sets a shop may have (N = 100,000, defaults)\n"
    );
    let _ = writeln!(md, "Without an index that serves the keyset page the project reads the due rows in passes of one scan each (`PASS_SIZE` 50,000). Medians of {reps} interleaved repetitions, each pair on copies of one database with the same indexes.\n");
    let _ = writeln!(md, "| index set | lower bound (ms) | this project (ms) | ratio (median) | ratios per repetition | WAL ratio |");
    let _ = writeln!(md, "|---|---|---|---|---|---|");
    for (name, sql) in INDEX_SETS {
        eprintln!("index set {name} ...");
        b.index_set.set(sql);
        let mut pairs = Vec::new();
        let mut wal = (0, 0);
        for _ in 0..reps {
            let (lower, n) = b.lower_bound(seed).await;
            assert_eq!(n, due);
            let lower_wal = b.last_wal.get();
            let (took, reports) = b.project(seed, default_batch_size(), 1).await;
            assert_eq!(released(&reports), due);
            wal = (b.last_wal.get(), lower_wal);
            pairs.push((lower, took));
        }
        let mut ratios: Vec<f64> = pairs
            .iter()
            .map(|(l, p)| p.as_secs_f64() / l.as_secs_f64())
            .collect();
        let listed: Vec<String> = ratios.iter().map(|r| format!("{r:.2}")).collect();
        ratios.sort_by(f64::total_cmp);
        let mut lowers: Vec<Duration> = pairs.iter().map(|p| p.0).collect();
        let mut projects: Vec<Duration> = pairs.iter().map(|p| p.1).collect();
        lowers.sort();
        projects.sort();
        let _ = writeln!(
            md,
            "| {name} | {:.0} | {:.0} | **{:.2}** | {} | {:.2} |",
            ms(lowers[reps / 2]),
            ms(projects[reps / 2]),
            ratios[reps / 2],
            listed.join(", "),
            wal.0 as f64 / wal.1.max(1) as f64
        );
    }
    b.index_set.set("");
    md
}

fn rate(n: i64, d: Duration) -> f64 {
    n as f64 / d.as_secs_f64()
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

/// The orders and holds a run left deferred, in percent of the reservations it released.
fn deferred_pct(report: &RunReport) -> f64 {
    100.0 * report.deferred as f64 / report.counts.reservations_released.max(1) as f64
}

fn released(reports: &[RunReport]) -> i64 {
    reports
        .iter()
        .map(|r| r.counts.reservations_released as i64)
        .sum()
}

#[tokio::main]
async fn main() {
    let args: Vec<String> = std::env::args().collect();
    let million = args.iter().any(|a| a == "--million");
    let binary = args
        .iter()
        .position(|a| a == "--binary")
        .map(|i| args[i + 1].clone())
        .expect("--binary PATH of the release unreserver binary");
    if let Some(n) = args
        .iter()
        .position(|a| a == "--batch-size")
        .and_then(|i| args.get(i + 1)?.parse::<u32>().ok())
    {
        let _ = BATCH_SIZE.set(n);
    }
    let admin_url =
        std::env::var("BENCH_ADMIN_URL").expect("BENCH_ADMIN_URL (scripts/bench.sh sets it)");
    let mut b = Bench {
        admin_url,
        out: String::new(),
        last_wal: std::cell::Cell::new(0),
        index_set: std::cell::Cell::new(""),
    };
    if args.iter().any(|a| a == "--e2e") {
        let reps = reps_arg(&args).unwrap_or(3);
        println!(
            "{}",
            e2e::e2e(&b, &binary, reps, "scripts/bench-e2e.sh").await
        );
        return;
    }
    if args.iter().any(|a| a == "--events-only") {
        let seed = "bench_seed_10000";
        b.seed(seed, 10_000, FUTURE_RESERVATIONS).await;
        println!(
            "{}",
            around_the_release(&b, seed, 10_000, reps_arg(&args).unwrap_or(3)).await
        );
        return;
    }
    if args.iter().any(|a| a == "--index-sets-only") {
        b.seed("bench_seed_100000", 100_000, FUTURE_RESERVATIONS)
            .await;
        println!("{}", index_sets(&b, reps_arg(&args).unwrap_or(3)).await);
        return;
    }
    if args.iter().any(|a| a == "--profile") {
        let seed = "bench_seed_100000";
        b.seed(seed, 100_000, FUTURE_RESERVATIONS).await;
        // `--index-set K`: profile with the K-th of INDEX_SETS (0, the recommended, by default).
        let set = args
            .iter()
            .position(|a| a == "--index-set")
            .and_then(|i| args.get(i + 1)?.parse::<usize>().ok())
            .map_or(&INDEX_SETS[0], |k| &INDEX_SETS[k.min(INDEX_SETS.len() - 1)]);
        b.index_set.set(set.1);
        println!("{}", b.profile(seed, set.0).await);
        return;
    }
    if args.iter().any(|a| a == "--hot-queues") {
        // The queues subsection alone (orders across one, two and three hot rows), printed.
        println!("{}", b.hot_row(3).await);
        return;
    }
    if args
        .iter()
        .any(|a| a == "--hot-rows" || a == "--carts-only")
    {
        let trials = if args.iter().any(|a| a == "--carts-only") {
            0
        } else {
            6
        };
        let hot_row = b.hot_row(trials).await;
        let seed = "bench_seed_shoppers";
        b.seed(seed, 100_000, 100_000).await;
        let carts = b.carts(seed, reps_arg(&args).unwrap_or(2)).await;
        println!(
            "## Hot rows and carts (`scripts/bench.sh --hot-rows`, {})\n\n{}\n{carts}",
            std::env::var("BENCH_STARTED").unwrap_or_default(),
            hot_row.trim_start(),
        );
        return;
    }
    if args.iter().any(|a| a == "--adaptive") {
        let seed = "bench_seed_100000";
        b.seed(seed, 100_000, FUTURE_RESERVATIONS).await;
        let million = if million {
            b.seed("bench_seed_1000000", 1_000_000, FUTURE_RESERVATIONS)
                .await;
            Some("bench_seed_1000000")
        } else {
            None
        };
        println!(
            "## Adaptive batches and workers (`scripts/bench.sh --adaptive{}`, {})
{}",
            if million.is_some() { " --million" } else { "" },
            std::env::var("BENCH_STARTED").unwrap_or_default(),
            b.adaptive(
                seed,
                reps_arg(&args).unwrap_or(3),
                million,
                args.iter().any(|a| a == "--busy-only"),
                &binary,
            )
            .await
        );
        return;
    }
    if args.iter().any(|a| a == "--follow") {
        println!(
            "## Follow mode (`scripts/bench.sh --follow`, {})\n{}",
            std::env::var("BENCH_STARTED").unwrap_or_default(),
            b.follow(&binary)
                .await
                .trim_start_matches("\n## Follow mode\n")
        );
        return;
    }
    if args.iter().any(|a| a == "--purge-replica") {
        let standby = std::env::var("BENCH_STANDBY_URL").expect("BENCH_STANDBY_URL");
        println!("{}", b.purge_replica(&binary, &standby).await);
        return;
    }
    if args.iter().any(|a| a == "--purge") {
        let rows = args
            .iter()
            .position(|a| a == "--purge-rows")
            .and_then(|i| args.get(i + 1)?.parse::<i64>().ok())
            .unwrap_or(5_000_000);
        let during = b.purge_section(&binary).await;
        let quiet = if rows > 0 {
            b.purge_quiet(&binary, rows).await
        } else {
            String::new()
        };
        println!(
            "## Purge during checkouts (`scripts/bench.sh --purge`, {})\n\n{}\n{}",
            std::env::var("BENCH_STARTED").unwrap_or_default(),
            during,
            quiet
        );
        return;
    }
    if args.iter().any(|a| a == "--shoppers-only") {
        let seed = "bench_seed_shoppers";
        b.seed(seed, 100_000, 100_000).await;
        println!("{}", b.shopper_phases(seed).await);
        println!("{}", b.shopper_batch_sizes(seed).await);
        return;
    }
    let quick = args.iter().any(|a| a == "--quick");
    let mut sizes = if quick {
        vec![100_000]
    } else {
        vec![10_000i64, 100_000]
    };
    if million {
        sizes.push(1_000_000);
    }
    let mut md = String::new();
    let _ = writeln!(md, "## Drain time, this project vs the lower bound\n");
    let _ = writeln!(
        md,
        "Each row drains a fresh copy of one seeded database: N due reservations of pending orders \
         (1-3 per order, 60 % on {HOT_VARIANTS} hot drop variants of {VARIANTS}), plus \
         {FUTURE_RESERVATIONS} active reservations not yet due that must stay untouched.\n"
    );
    let _ = writeln!(md, "| N | contender | batch size | time (ms) | reservations/s | ratio to lower bound | batch p50 (ms) | batch p99 (ms) |");
    let _ = writeln!(md, "|---|---|---|---|---|---|---|---|");
    let mut ratios = String::new();
    for &n in &sizes {
        let seed = format!("bench_seed_{n}");
        eprintln!("seeding {n} due + {FUTURE_RESERVATIONS} future ...");
        b.seed(&seed, n, FUTURE_RESERVATIONS).await;
        let due = Bench::due_count(&url_for(&b.admin_url, &seed)).await;
        // The lower bound and the shipped defaults, interleaved, three times (once at 1M):
        // the medians, and their ratio, are what count.
        let reps = reps_arg(&args).unwrap_or(if n >= 1_000_000 { 2 } else { 3 });
        let mut lowers = Vec::new();
        let mut defaults = Vec::new();
        let mut wal: Vec<(i64, i64)> = Vec::new();
        for rep in 0..reps {
            eprintln!(
                "N={n}: lower bound and defaults, repetition {} ...",
                rep + 1
            );
            let (lower, lower_n) = b.lower_bound(&seed).await;
            assert_eq!(lower_n, due);
            lowers.push(lower);
            let lower_wal = b.last_wal.get();
            let (took, reports) = b.project(&seed, default_batch_size(), 1).await;
            wal.push((b.last_wal.get(), lower_wal));
            assert_eq!(released(&reports), due);
            defaults.push((took, reports.into_iter().next().unwrap()));
        }
        let mut sorted_lowers = lowers.clone();
        sorted_lowers.sort();
        let lower = sorted_lowers[reps / 2];
        let _ = writeln!(
            md,
            "| {n} | lower bound (one statement), median of {reps} | - | {:.0} | {:.0} | 1.00 | - | - |",
            ms(lower),
            rate(due, lower)
        );
        let mut sorted_defaults: Vec<_> = defaults.iter().collect();
        sorted_defaults.sort_by_key(|(took, _)| *took);
        let (took, r) = sorted_defaults[reps / 2];
        let _ = writeln!(
            md,
            "| {n} | **this project (defaults)**, median of {reps} | {} | {:.0} | {:.0} | **{:.2}** | {:.1} | {:.1} |",
            size_label(default_batch_size()),
            ms(*took),
            rate(due, *took),
            took.as_secs_f64() / lower.as_secs_f64(),
            r.batch_ms_p50,
            r.batch_ms_p99
        );
        let pairs: Vec<String> = lowers
            .iter()
            .zip(&defaults)
            .map(|(l, (d, _))| format!("{:.2}", d.as_secs_f64() / l.as_secs_f64()))
            .collect();
        let p99s: Vec<String> = defaults
            .iter()
            .map(|(_, r)| format!("{:.1}", r.batch_ms_p99))
            .collect();
        let wal_ratios: Vec<String> = wal
            .iter()
            .map(|(p, l)| format!("{:.2}", *p as f64 / (*l).max(1) as f64))
            .collect();
        let _ = writeln!(
            ratios,
            "- N = {n}: project / lower bound per repetition: {}; batch p99 (ms): {}; \
             WAL written, project / lower bound (far steadier than time; full-page images after a checkpoint vary it): {} ({:.1} MB / {:.1} MB)",
            pairs.join(", "),
            p99s.join(", "),
            wal_ratios.join(", "),
            wal.first().map_or(0.0, |w| w.0 as f64 / 1e6),
            wal.first().map_or(0.0, |w| w.1 as f64 / 1e6),
        );
        if n == 100_000 && !quick {
            for bs in [50, 100, 250, 1000, 2000] {
                eprintln!("N={n}: project, batch size {bs} ...");
                let (took, reports) = b.project(&seed, Some(bs), 1).await;
                assert_eq!(released(&reports), due);
                let r = &reports[0];
                let _ = writeln!(
                    md,
                    "| {n} | this project | {bs} | {:.0} | {:.0} | {:.2} | {:.1} | {:.1} |",
                    ms(took),
                    rate(due, took),
                    took.as_secs_f64() / lower.as_secs_f64(),
                    r.batch_ms_p50,
                    r.batch_ms_p99
                );
            }
        }
    }
    let _ = writeln!(md, "\nEach repetition of the shipped defaults against the lower bound run just before it:\n\n{ratios}");
    b.out.push_str(&md);
    let md = index_sets(&b, reps_arg(&args).unwrap_or(3)).await;
    b.out.push_str(&md);
    if quick {
        println!("{}", b.out);
        return;
    }

    // Per-row baseline at N = 5,000.
    let mut md = String::new();
    eprintln!("per-row baseline ...");
    let seed = "bench_seed_5000";
    b.seed(seed, 5_000, FUTURE_RESERVATIONS).await;
    let (per_row, pr_n) = b.per_row(seed).await;
    let (proj, reports) = b.project(seed, default_batch_size(), 1).await;
    assert_eq!(released(&reports), pr_n);
    let _ = writeln!(
        md,
        "\n## The old way: one transaction per reservation (N = 5,000)\n\n\
         In process: both timed inside the bench's process, from an open connection (connection, \
         preflight and process start left out); the same pair end to end, a new process per \
         run, is in \"End to end\" (`scripts/bench-e2e.sh`).\n"
    );
    let _ = writeln!(md, "| contender | time (ms) | reservations/s |");
    let _ = writeln!(md, "|---|---|---|");
    let _ = writeln!(
        md,
        "| per-row baseline | {:.0} | {:.0} |",
        ms(per_row),
        rate(pr_n, per_row)
    );
    let _ = writeln!(
        md,
        "| this project (defaults) | {:.0} | {:.0} |",
        ms(proj),
        rate(pr_n, proj)
    );
    let _ = writeln!(
        md,
        "\n**per-row / project = {:.1}** (in process)",
        per_row.as_secs_f64() / proj.as_secs_f64()
    );
    b.out.push_str(&md);

    // Around the release: events, report, window reads (N = 10,000).
    let seed = "bench_seed_10000";
    if quick {
        b.seed(seed, 10_000, FUTURE_RESERVATIONS).await;
    }
    let md = around_the_release(&b, seed, 10_000, reps_arg(&args).unwrap_or(3)).await;
    b.out.push_str(&md);

    // Scaling: runs at once over one backlog.
    let mut md = String::new();
    let seed = "bench_seed_100000";
    let _ = writeln!(
        md,
        "\n## Runs at once over one backlog (N = 100,000, defaults)\n"
    );
    let _ = writeln!(
        md,
        "| runs | time (ms) | reservations/s | released per run | batch retries |"
    );
    let _ = writeln!(md, "|---|---|---|---|---|");
    for runs in [1usize, 2, 4] {
        eprintln!("scaling: {runs} runs ...");
        let (took, reports) = b.project(seed, default_batch_size(), runs).await;
        let total = released(&reports);
        let per: Vec<String> = reports
            .iter()
            .map(|r| r.counts.reservations_released.to_string())
            .collect();
        let retries: u32 = reports.iter().map(|r| r.batch_retries).sum();
        let _ = writeln!(
            md,
            "| {runs} | {:.0} | {:.0} | {} | {retries} |",
            ms(took),
            rate(total, took),
            per.join(" + ")
        );
    }
    b.out.push_str(&md);

    // The shoppers' side.
    eprintln!("shopper phases ...");
    let seed = "bench_seed_shoppers";
    b.seed(seed, 100_000, 100_000).await;
    let md = b.shopper_phases(seed).await;
    b.out.push_str(&md);
    if !quick {
        let md = b.shopper_batch_sizes(seed).await;
        b.out.push_str(&md);
    }

    // Memory.
    let mut md = String::new();
    let _ = writeln!(md, "\n## Peak RSS of `unreserver run` (defaults)\n");
    let _ = writeln!(md, "| N | peak RSS (MiB) | reservations released |");
    let _ = writeln!(md, "|---|---|---|");
    for &n in &sizes {
        eprintln!("memory: N={n} ...");
        let (kib, out) = b.peak_rss(&format!("bench_seed_{n}"), &binary).await;
        let report: serde_json::Value = serde_json::from_str(out.trim()).unwrap();
        let _ = writeln!(
            md,
            "| {n} | {:.1} | {} |",
            kib as f64 / 1024.0,
            report["reservations_released"]
        );
    }
    b.out.push_str(&md);

    // Idle cost on 1,000,000 active reservations.
    let mut md = String::new();
    eprintln!("idle: seeding 1,000,000 active reservations ...");
    let seed = "bench_seed_idle";
    b.seed(seed, 0, 1_000_000).await;
    let url = b.copy(seed, "bench_idle").await;
    let settings = ReleaseSettings {
        time_budget: None,
        batch_size: default_batch_size(),
        ..ReleaseSettings::default()
    };
    let mut db = open_db(&url, &settings).await;
    let mut idle_ms = Vec::new();
    for _ in 0..20 {
        let started = Instant::now();
        let r = unreserver::run(&mut db, &settings, &RunOptions::default())
            .await
            .unwrap();
        assert_eq!(r.counts.reservations_released, 0);
        idle_ms.push(ms(started.elapsed()));
    }
    idle_ms.sort_by(f64::total_cmp);
    let page_sql = unreserver::db::sql::PAGE
        .replace("$1::timestamptz", "'-infinity'::timestamptz")
        .replace("$2::int8", "0::int8")
        .replace("$3::timestamptz", "'-infinity'::timestamptz")
        .replace("$4::int8", "0::int8")
        .replace(
            "$5::int8",
            &format!("{}::int8", default_batch_size().unwrap_or(100)),
        )
        .replace("$6::int4", "15::int4")
        .replace("$7::int8", "1::int8")
        .replace("$8::int8", "0::int8");
    let backlog_sql = unreserver::db::sql::BACKLOG
        .replace("$1::int4", "15::int4")
        .replace("$2::int4", "15::int4");
    let (page_ms, page_plan) = Bench::explain(&url, &page_sql).await;
    let (backlog_ms, backlog_plan) = Bench::explain(&url, &backlog_sql).await;
    let paid_sql = unreserver::db::sql::outbox::PAID_AFTER_RELEASE_LAST_DAY;
    let (paid_ms, paid_plan) = Bench::explain(&url, paid_sql).await;
    let _ = writeln!(
        md,
        "\n## Idle run: nothing due among 1,000,000 active reservations\n"
    );
    let _ = writeln!(
        md,
        "Database time (EXPLAIN ANALYZE execution time) of the two statements an idle run executes \
         after the preflight: page {page_ms:.3} ms + backlog count {backlog_ms:.3} ms + \
         late-payment count {paid_ms:.3} ms = **{:.3} ms**. Whole idle run as the client sees it (preflight, empty page, backlog \
         count; 20 runs): median {:.1} ms, max {:.1} ms.\n",
        page_ms + backlog_ms + paid_ms,
        idle_ms[idle_ms.len() / 2],
        idle_ms[idle_ms.len() - 1]
    );
    let _ = writeln!(
        md,
        "Page plan:\n\n```\n{page_plan}\n```\n\nBacklog plan:\n\n```\n{backlog_plan}\n```\n\n\
         Late-payment count plan:\n\n```\n{paid_plan}\n```"
    );
    b.out.push_str(&md);

    println!("{}", b.out);
}

/// Around the release: what publishing the expiry events (to moto's EventBridge, started by
/// `scripts/bench.sh`) costs the drain, and what the release-delay report and the events of a
/// window cost with and without the BRIN index on `released_at` among a month of history.
async fn around_the_release(b: &Bench, seed: &str, n: i64, reps: usize) -> String {
    let mut md = String::new();
    let _ = writeln!(
        md,
        "\n## Around the release: expiry events, report, events of a window\n"
    );
    let Ok(endpoint) = std::env::var("BENCH_AWS_ENDPOINT") else {
        let _ = writeln!(
            md,
            "Skipped: no BENCH_AWS_ENDPOINT (moto_server not available)."
        );
        return md;
    };
    let publisher = bench_publisher(&endpoint).await;
    let (mut without, mut with, mut totals, mut published) = (vec![], vec![], vec![], 0);
    for rep in 0..reps {
        eprintln!("events: N={n}, repetition {} ...", rep + 1);
        let url = b.copy(seed, "bench_events").await;
        let (_, report) = drain_with_defaults(url).await;
        without.push(report.duration_ms as f64);
        let url = b.copy(seed, "bench_events").await;
        let (took, report) = drain_publishing(url, &publisher).await;
        with.push(report.duration_ms as f64);
        totals.push(ms(took));
        published = report.events_published;
        assert_eq!(report.events_failed, 0);
    }
    let (w, wo, t) = (median(&mut with), median(&mut without), median(&mut totals));
    let _ = writeln!(
        md,
        "Draining N = {n} (defaults; medians of {reps} interleaved repetitions on copies of one \
         seed) while each committed batch's events go to EventBridge in the background (moto's \
         server on this machine, a custom bus): the release itself took **{w:.0} ms with events, \
         {wo:.0} ms without (ratio {:.2})**; with the publishing tail, {t:.0} ms for {published} \
         events ({:.0} events/s, `PutEvents` of 10, 4 in flight). moto is a single Python \
         process on the same 2 cores: a real EventBridge answers in a few ms per call.\n",
        w / wo,
        published as f64 / (t / 1000.0)
    );
    md.push_str(&window_reads(b, seed).await);
    md
}

async fn bench_publisher(endpoint: &str) -> unreserver::events::Publisher {
    let sdk = aws_config::defaults(aws_config::BehaviorVersion::latest())
        .region(aws_config::Region::new("us-east-1"))
        .endpoint_url(endpoint)
        .credentials_provider(aws_credential_types::Credentials::new(
            "bench", "bench", None, None, "bench",
        ))
        .load()
        .await;
    let client = aws_sdk_eventbridge::Client::new(&sdk);
    let bus = format!("bench-{}", std::process::id());
    client.create_event_bus().name(&bus).send().await.unwrap();
    unreserver::events::Publisher::new(client, bus)
}

/// A drain of `url` with the shipped defaults, publishing its events.
async fn drain_publishing(
    url: String,
    publisher: &unreserver::events::Publisher,
) -> (Duration, RunReport) {
    let settings = drain_settings();
    let mut db = open_db(&url, &settings).await;
    let started = Instant::now();
    let report = unreserver::events::run::run_publishing(
        &mut db,
        &settings,
        RunOptions::default(),
        Some(publisher),
        Duration::from_secs(300),
    )
    .await
    .unwrap_or_else(|f| panic!("{}", f.error.chain()));
    (started.elapsed(), report)
}

/// `report --days 7` and `events --since` (the last hour) on a drained copy that also holds a
/// month of released history, with the BRIN index on `released_at` and without it.
async fn window_reads(b: &Bench, seed: &str) -> String {
    let url = b.copy(seed, "bench_window").await;
    let (_, report) = drain_with_defaults(url.clone()).await;
    let c = connect(&url).await;
    const HISTORY: i64 = 1_000_000;
    c.batch_execute(&format!(
        "INSERT INTO orders_inventoryreservation
             (order_id, product_variant_id, quantity, status, created_at, expires_at, released_at)
           SELECT NULL, 1 + g % {VARIANTS}, 1, 'expired',
                  now() - interval '20 days' + g * interval '1 second',
                  now() - interval '20 days' + g * interval '1 second' + interval '15 minutes',
                  now() - interval '20 days' + g * interval '1 second' + interval '17 minutes'
             FROM generate_series(1, {HISTORY}) g"
    ))
    .await
    .unwrap();
    c.batch_execute("VACUUM ANALYZE orders_inventoryreservation")
        .await
        .unwrap();
    let settings = ReleaseSettings::default();
    let db = open_db(&url, &settings).await;
    let since = std::time::SystemTime::now() - Duration::from_secs(3600);
    let mut rows = Vec::new();
    for brin in [true, false] {
        if !brin {
            c.batch_execute(
                "DROP INDEX unreserver_released_at_brin; ANALYZE orders_inventoryreservation",
            )
            .await
            .unwrap();
        }
        let (mut report_ms, mut events_ms, mut events) = (vec![], vec![], 0);
        let mut paid_ms = vec![];
        for _ in 0..5 {
            let started = Instant::now();
            unreserver::db::sql::outbox::paid_after_release(&db.client, true)
                .await
                .unwrap();
            paid_ms.push(ms(started.elapsed()));
            let started = Instant::now();
            unreserver::release_delay_report(&db, &settings, 7)
                .await
                .unwrap();
            report_ms.push(ms(started.elapsed()));
            let started = Instant::now();
            let window =
                unreserver::db::sql::outbox::expired_in_window(&db.client, since, None, 15)
                    .await
                    .unwrap();
            events_ms.push(ms(started.elapsed()));
            events = window.len();
        }
        rows.push((
            brin,
            median(&mut report_ms),
            median(&mut events_ms),
            events,
            median(&mut paid_ms),
        ));
    }
    let mut md = String::new();
    let _ = writeln!(
        md,
        "The release-delay report and the events of the last hour on the drained copy \
         ({} reservations released now) plus {HISTORY} reservations released 8 to 20 days ago \
         (medians of 5):\n",
        report.counts.reservations_released
    );
    let _ = writeln!(
        md,
        "| BRIN on released_at | `report --days 7` (ms) | `events --since` 1 h (ms, rows) | \
         each run's late-payment count (ms, through the cancelled_at index) |"
    );
    let _ = writeln!(md, "|---|---|---|---|");
    for (brin, r, e, n, p) in rows {
        let _ = writeln!(
            md,
            "| {} | {r:.1} | {e:.1} ({n}) | {p:.1} |",
            if brin { "yes" } else { "no" }
        );
    }
    md
}

fn median(values: &mut [f64]) -> f64 {
    values.sort_by(f64::total_cmp);
    values.get(values.len() / 2).copied().unwrap_or(0.0)
}

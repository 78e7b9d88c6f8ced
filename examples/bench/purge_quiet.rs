//! The purge on a quiet database (part of `scripts/bench.sh --purge`): the same old rows
//! deleted three ways, each from the same start (the rows inserted, the table vacuumed and
//! analyzed, a checkpoint so that each way pays the same full-page images): `unreserver purge
//! --apply`, one `DELETE` statement, and fixed chunks of 1,000 rows keyed on the primary key
//! with a sleep after each commit, as pt-archiver does (`--limit 1000 --commit-each --sleep`;
//! pt-archiver is MySQL-only, so its loop is written here). WAL bytes per row deleted from
//! `pg_current_wal_lsn()` before and after.

use std::fmt::Write as _;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;
use tokio_postgres::Client;

use crate::{connect, url_for, Bench, VARIANTS};

/// The pt-archiver way's sleep after each chunk (its `--sleep` takes whole seconds: one second
/// a chunk would take over 80 minutes for 5,000,000 rows, a tenth of one about 9, so a hundredth
/// of one, which keeps the bench's run within minutes).
pub const PT_SLEEP: Duration = Duration::from_millis(10);
/// Its chunk.
pub const PT_LIMIT: i64 = 1_000;

/// The pt-archiver way's chunk: the next 1,000 old rows after the last key deleted, in key
/// order, deleted and committed; returns the last key and the count.
const PT_CHUNK: &str = "WITH c AS (SELECT id FROM orders_inventoryreservation
      WHERE id > $1 AND status = 'expired' AND released_at < now() - interval '60 days'
      ORDER BY id LIMIT 1000),
    gone AS (DELETE FROM orders_inventoryreservation r USING c WHERE r.id = c.id RETURNING r.id)
    SELECT max(id)::int8 AS last, count(*)::int8 AS n FROM gone";

const ONE_DELETE: &str = "DELETE FROM orders_inventoryreservation
    WHERE status = 'expired' AND released_at < now() - interval '60 days'";

/// Inserts `rows` old cart holds (released 70 days ago), then vacuums, analyzes and
/// checkpoints.
async fn old_holds(c: &Client, rows: i64) {
    let mut left = rows;
    while left > 0 {
        let n = left.min(250_000);
        c.batch_execute(&format!(
            "INSERT INTO orders_inventoryreservation
                 (order_id, product_variant_id, quantity, status, created_at, expires_at, released_at)
               SELECT NULL, 1 + (g::int8 * 7919) % {VARIANTS}, 1, 'expired', now() - interval '71 days',
                      now() - interval '70 days 12 hours', now() - interval '70 days'
                 FROM generate_series(1, {n}) g"
        ))
        .await
        .unwrap();
        left -= n;
    }
    // One statement a call: VACUUM may not run in the implicit transaction of several.
    for statement in ["VACUUM ANALYZE orders_inventoryreservation", "CHECKPOINT"] {
        c.batch_execute(statement).await.unwrap();
    }
}

async fn lsn(c: &Client) -> String {
    c.query_one("SELECT pg_current_wal_lsn()::text", &[])
        .await
        .unwrap()
        .get(0)
}

async fn wal_since(c: &Client, from: &str) -> f64 {
    c.query_one(
        "SELECT pg_wal_lsn_diff(pg_current_wal_lsn(), $1::text::pg_lsn)::float8",
        &[&from],
    )
    .await
    .unwrap()
    .get(0)
}

/// One way's figures.
struct Way {
    name: String,
    rows: u64,
    took: Duration,
    wal: f64,
    chunks: String,
}

impl Bench {
    /// The three ways on `rows` old rows.
    pub async fn purge_quiet(&self, binary: &str, rows: i64) -> String {
        let name = "bench_purge_quiet";
        self.seed(name, 0, 20_000).await;
        let url = url_for(&self.admin_url, name);
        let c = connect(&url).await;
        c.batch_execute(crate::purge::horizon_table())
            .await
            .unwrap();
        let mut ways = Vec::new();
        for way in ["purge", "delete", "pt"] {
            old_holds(&c, rows).await;
            eprintln!("purge quiet: {way} ...");
            let from = lsn(&c).await;
            let started = Instant::now();
            let (rows, chunks, name) = match way {
                "purge" => {
                    let out = Command::new(binary)
                        .args(["purge", "--apply"])
                        .env("DATABASE_URL", &url)
                        .env("TIME_BUDGET_SECONDS", "900")
                        .env_remove("EVENT_BUS_NAME")
                        .stderr(Stdio::null())
                        .output()
                        .unwrap();
                    let answer: Value = serde_json::from_slice(&out.stdout).unwrap_or(Value::Null);
                    (
                        answer["reservations"]["deleted"].as_u64().unwrap_or(0),
                        format!(
                            "{} (largest {} rows), stopped `{}`",
                            answer["chunks"],
                            answer["controller"]["batch_rows_max"],
                            answer["stopped"].as_str().unwrap_or("?")
                        ),
                        "`unreserver purge --apply` (adaptive chunks)".to_string(),
                    )
                }
                "delete" => (
                    c.execute(ONE_DELETE, &[]).await.unwrap(),
                    "1".to_string(),
                    "one `DELETE` statement".to_string(),
                ),
                _ => {
                    let (mut last, mut total, mut chunks) = (0i64, 0u64, 0u64);
                    loop {
                        let row = c.query_one(PT_CHUNK, &[&last]).await.unwrap();
                        let n: i64 = row.get("n");
                        if n == 0 {
                            break;
                        }
                        last = row.get("last");
                        total += n as u64;
                        chunks += 1;
                        tokio::time::sleep(PT_SLEEP).await;
                    }
                    (
                        total,
                        chunks.to_string(),
                        format!(
                            "fixed chunks of {PT_LIMIT}, {} ms sleep (pt-archiver's way)",
                            PT_SLEEP.as_millis()
                        ),
                    )
                }
            };
            let took = started.elapsed();
            let wal = wal_since(&c, &from).await;
            ways.push(Way {
                name,
                rows,
                took,
                wal,
                chunks,
            });
        }
        drop(c);
        self.admin()
            .await
            .batch_execute(&format!("DROP DATABASE {name}"))
            .await
            .unwrap();
        let mut md = format!(
            "\n### {rows} old rows on a quiet database\n\nEach way starts from the same table: \
             {rows} `expired` cart holds released 70 days ago inserted beside the seed's 20000 \
             active reservations, `VACUUM ANALYZE`, `CHECKPOINT`; nothing else runs. WAL from \
             `pg_wal_lsn_diff(pg_current_wal_lsn(), before)`. The chunked loop is pt-archiver's \
             (`--limit {PT_LIMIT} --commit-each` with a sleep; MySQL-only, so written in \
             examples/bench/purge_quiet.rs): `{}`.\n\n\
             | way | rows deleted | s | rows/s | WAL MB | WAL bytes/row | chunks |\n\
             |---|---|---|---|---|---|---|\n",
            PT_CHUNK.split_whitespace().collect::<Vec<_>>().join(" ")
        );
        for w in ways {
            let _ = writeln!(
                md,
                "| {} | {} | {:.1} | {:.0} | {:.1} | {:.0} | {} |",
                w.name,
                w.rows,
                w.took.as_secs_f64(),
                w.rows as f64 / w.took.as_secs_f64(),
                w.wal / 1e6,
                w.wal / (w.rows.max(1) as f64),
                w.chunks
            );
        }
        md
    }
}

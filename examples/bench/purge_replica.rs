//! The purge beside a lagging streaming replica (`scripts/bench.sh --purge` runs it with
//! `--purge-replica` once it has started a hot standby with `pg_basebackup`, its URL in
//! `BENCH_STANDBY_URL`): `unreserver purge --apply --max-lag MS` deletes old rows while the
//! bench pauses the standby's replay (`pg_wal_replay_pause()`) for a while and then resumes it.
//! A sampler reads the primary's `pg_stat_replication.replay_lag` and WAL position every
//! 50 ms: the largest lag, how long it stayed over the bound, and the WAL the primary wrote
//! meanwhile (the purge must write none but the chunk in flight when the lag crossed it).

use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::{connect, url_for, Bench, VARIANTS};

/// Old rows to purge: enough that the purge is still at work well after the replay is paused
/// (it deletes about 200,000 a second alone: 300,000 were gone before the pause).
const ROWS: i64 = 1_500_000;
/// The purge's bound.
const MAX_LAG_MS: u64 = 1_000;
/// When, after the purge starts, the standby's replay is paused, and for how long.
const PAUSE_AT: Duration = Duration::from_secs(1);
const PAUSE_FOR: Duration = Duration::from_secs(6);
const SAMPLE: Duration = Duration::from_millis(50);

/// What the sampler saw.
#[derive(Default)]
struct Seen {
    max_lag_ms: f64,
    over_ms: f64,
    wal_while_over: f64,
    wal_total: f64,
}

impl Bench {
    /// The replica part; `standby_url` is the standby's `postgres` database.
    pub async fn purge_replica(&self, binary: &str, standby_url: &str) -> String {
        let name = "bench_purge_replica";
        self.seed(name, 0, 20_000).await;
        let url = url_for(&self.admin_url, name);
        let c = connect(&url).await;
        c.batch_execute(crate::purge::horizon_table())
            .await
            .unwrap();
        c.batch_execute(&format!(
            "INSERT INTO orders_inventoryreservation
                 (order_id, product_variant_id, quantity, status, created_at, expires_at, released_at)
               SELECT NULL, 1 + (g::int8 * 7919) % {VARIANTS}, 1, 'expired', now() - interval '71 days',
                      now() - interval '70 days 12 hours', now() - interval '70 days'
                 FROM generate_series(1, {ROWS}) g"
        ))
        .await
        .unwrap();
        for statement in ["VACUUM ANALYZE orders_inventoryreservation", "CHECKPOINT"] {
            c.batch_execute(statement).await.unwrap();
        }
        // The standby caught up before the purge starts.
        let standby = connect(standby_url).await;
        loop {
            let caught_up: bool = c
                .query_one(
                    "SELECT COALESCE(bool_and(replay_lsn >= pg_current_wal_lsn()), false) \
                     FROM pg_stat_replication",
                    &[],
                )
                .await
                .unwrap()
                .get(0);
            if caught_up {
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let done = Arc::new(AtomicBool::new(false));
        let sampler = {
            let (url, done) = (url.clone(), done.clone());
            tokio::spawn(async move {
                let c = connect(&url).await;
                let mut seen = Seen::default();
                let mut last: Option<(Instant, f64, bool)> = None;
                while !done.load(Ordering::Relaxed) {
                    let row = c
                        .query_one(
                            "SELECT COALESCE(max(EXTRACT(EPOCH FROM replay_lag) * 1000), 0)::float8, \
                             pg_wal_lsn_diff(pg_current_wal_lsn(), '0/0')::float8 \
                             FROM pg_stat_replication",
                            &[],
                        )
                        .await
                        .unwrap();
                    let (lag, wal): (f64, f64) = (row.get(0), row.get(1));
                    let now = Instant::now();
                    seen.max_lag_ms = seen.max_lag_ms.max(lag);
                    if let Some((at, before, over)) = last {
                        seen.wal_total += wal - before;
                        if over {
                            seen.over_ms += (now - at).as_secs_f64() * 1000.0;
                            seen.wal_while_over += wal - before;
                        }
                    }
                    last = Some((now, wal, lag > MAX_LAG_MS as f64));
                    tokio::time::sleep(SAMPLE).await;
                }
                seen
            })
        };
        let pauser = tokio::spawn(async move {
            tokio::time::sleep(PAUSE_AT).await;
            standby
                .batch_execute("SELECT pg_wal_replay_pause()")
                .await
                .unwrap();
            tokio::time::sleep(PAUSE_FOR).await;
            standby
                .batch_execute("SELECT pg_wal_replay_resume()")
                .await
                .unwrap();
        });
        let started = Instant::now();
        let (bin, purge_url) = (binary.to_string(), url.clone());
        let out = tokio::task::spawn_blocking(move || {
            Command::new(bin)
                .args(["purge", "--apply", "--max-lag", &MAX_LAG_MS.to_string()])
                .env("DATABASE_URL", purge_url)
                .env("TIME_BUDGET_SECONDS", "120")
                .env_remove("EVENT_BUS_NAME")
                .stderr(Stdio::null())
                .output()
                .unwrap()
        })
        .await
        .unwrap();
        let took = started.elapsed();
        pauser.await.unwrap();
        done.store(true, Ordering::Relaxed);
        let seen = sampler.await.unwrap();
        let answer: Value = serde_json::from_slice(&out.stdout).unwrap_or(Value::Null);
        format!(
            "\n### Beside a lagging streaming replica\n\nA hot standby started by the bench \
             (`pg_basebackup -R -X stream`, `wal_receiver_status_interval = 1s`), caught up; \
             {ROWS} old cart holds; `unreserver purge --apply --max-lag {MAX_LAG_MS}` (as the \
             tables' owner, who sees `pg_stat_replication`). {} s after the purge starts the bench \
             pauses the standby's replay (`pg_wal_replay_pause()`) for {} s, then resumes it. The \
             bench samples the primary's `pg_stat_replication.replay_lag` every {} ms.\n\n\
             - purge: {} rows deleted in {:.1} s, {} chunks, stopped `{}`; {} lag pauses, {} ms \
             paused; the largest replay lag the purge saw {:.0} ms; `replicas.visible` {}\n\
             - sampled: the largest replay lag {:.0} ms; over the bound for {:.1} s in all; WAL \
             the primary wrote while the lag was over the bound {:.1} kB, of {:.1} MB during the \
             purge",
            PAUSE_AT.as_secs(),
            PAUSE_FOR.as_secs(),
            SAMPLE.as_millis(),
            answer["reservations"]["deleted"],
            took.as_secs_f64(),
            answer["chunks"],
            answer["stopped"].as_str().unwrap_or("?"),
            answer["lag_pauses"],
            answer["paused_ms"],
            answer["replicas"]["max_replay_lag_ms"]
                .as_f64()
                .unwrap_or(0.0),
            answer["replicas"]["visible"],
            seen.max_lag_ms,
            seen.over_ms / 1000.0,
            seen.wal_while_over / 1e3,
            seen.wal_total / 1e6,
        )
    }
}

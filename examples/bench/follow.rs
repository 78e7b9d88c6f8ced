//! Follow mode's figures (`scripts/bench.sh --follow`, its own section): the release delay of
//! reservations falling due one after another while `unreserver follow` runs, its wake-ups per
//! minute, and what an idle wake-up costs the database (the plan and time of `NEXT_DUE` beside
//! 200,000 active reservations not yet due). Without a bus the follower writes each `Stock
//! Released` event to its log on stderr (the sink outside AWS): the bench reads that log as it
//! comes and times each event's line against its batch's `released_at` (the database clock, the
//! batch transaction's start: a little before its commit, so the delay is, if anything,
//! overstated).

use std::fmt::Write as _;
use std::io::BufRead as _;
use std::process::{Command, Stdio};
use std::time::{Instant, SystemTime};

use serde_json::Value;
use unreserver::db::sql::follow::NEXT_DUE;

use super::{connect, url_for, Bench, FUTURE_RESERVATIONS};

/// Reservations falling due one after another, and the gap between two.
const FALLING: i64 = 100;
const GAP_MS: i64 = 500;
/// How long `unreserver follow` runs in each scenario.
const FOLLOW_SECONDS: u64 = 60;

fn at(v: &[f64], q: f64) -> f64 {
    if v.is_empty() {
        return f64::NAN;
    }
    v[((q * v.len() as f64).ceil() as usize).clamp(1, v.len()) - 1]
}

/// AWS Lambda's published price of compute on arm64, first tier (US East, N. Virginia): $ a
/// GB-second; and of requests: $ a million. The monthly free tier: GB-seconds.
const ARM_GB_SECOND: f64 = 0.000_013_333_4;
const REQUESTS_MILLION: f64 = 0.20;
const FREE_GB_SECONDS: f64 = 400_000.0;
/// The template's memory (MB) and follow mode's invocations in 30 days (one a minute).
const MEMORY_MB: f64 = 256.0;
const INVOCATIONS: f64 = 60.0 * 24.0 * 30.0;

/// What `ReleaseMode=follow` costs a month in Lambda, each invocation lasting what the idle
/// follow measured here (its 60 s, plus connecting).
fn lambda_cost(duration_ms: Option<f64>) -> String {
    let seconds = duration_ms.unwrap_or(f64::NAN) / 1000.0;
    let gb_seconds = INVOCATIONS * seconds * MEMORY_MB / 1024.0;
    let compute = gb_seconds * ARM_GB_SECOND;
    let requests = INVOCATIONS / 1e6 * REQUESTS_MILLION;
    let beyond_free = (gb_seconds - FREE_GB_SECONDS).max(0.0) * ARM_GB_SECOND;
    format!(
        "\nIn Lambda (`ReleaseMode=follow`, the template's {MEMORY_MB:.0} MB on arm64): \
         {INVOCATIONS:.0} invocations a month of {seconds:.1} s each (the idle follow above) are \
         {gb_seconds:.0} GB-s: ${compute:.2} of compute at AWS's published ${ARM_GB_SECOND} a \
         GB-s (first tier, US East) and ${requests:.2} of requests (${REQUESTS_MILLION} a \
         million); ${beyond_free:.2} beyond the monthly free tier of {FREE_GB_SECONDS:.0} GB-s \
         when nothing else uses it.\n"
    )
}

/// Runs `unreserver follow --for FOLLOW_SECONDS` on `url`; its report.
fn follow(binary: &str, url: &str) -> std::process::Child {
    Command::new(binary)
        .args(["follow", "--for", &FOLLOW_SECONDS.to_string()])
        .env("DATABASE_URL", url)
        .env_remove("EVENT_BUS_NAME")
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap()
}

fn report(child: std::process::Child) -> Value {
    let out = child.wait_with_output().unwrap();
    serde_json::from_slice(&out.stdout).unwrap_or(Value::Null)
}

/// Runs `unreserver follow --for FOLLOW_SECONDS` on `url` with its log in JSON on stderr, read
/// as it comes: its report, and each `Stock Released` event's delay (ms) from its batch's
/// `released_at` to the moment its log line was read here.
fn follow_with_stock_log(binary: &str, url: &str) -> (Value, Vec<f64>) {
    let mut child = Command::new(binary)
        .args(["follow", "--for", &FOLLOW_SECONDS.to_string()])
        .env("DATABASE_URL", url)
        .env("LOG_FORMAT", "json")
        .env_remove("EVENT_BUS_NAME")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let stderr = child.stderr.take().unwrap();
    let reader = std::thread::spawn(move || {
        let mut delays = Vec::new();
        for line in std::io::BufReader::new(stderr).lines() {
            let Ok(line) = line else { break };
            let seen = SystemTime::now();
            if !line.contains("Stock Released") {
                continue;
            }
            let log: Value = serde_json::from_str(&line).unwrap_or(Value::Null);
            // The JSON log flattens an event's fields (`event` at the top level).
            let event: Value = log["event"]
                .as_str()
                .or(log["fields"]["event"].as_str())
                .and_then(|e| serde_json::from_str(e).ok())
                .unwrap_or(Value::Null);
            let Some(at) = event["detail"]["released_at"]
                .as_str()
                .and_then(|t| humantime::parse_rfc3339(t).ok())
            else {
                continue;
            };
            delays.push(
                seen.duration_since(at)
                    .map_or(0.0, |d| d.as_secs_f64() * 1000.0),
            );
        }
        delays
    });
    let report = report(child);
    let mut delays = reader.join().unwrap_or_default();
    delays.sort_by(f64::total_cmp);
    (report, delays)
}

impl Bench {
    /// The follow-mode section.
    pub async fn follow(&self, binary: &str) -> String {
        let mut md = String::from("\n## Follow mode\n\n");
        let name = "bench_follow";
        self.seed(name, 0, FUTURE_RESERVATIONS).await;
        let url = url_for(&self.admin_url, name);
        let c = connect(&url).await;
        let _ = writeln!(
            md,
            "`unreserver follow --for {FOLLOW_SECONDS}` (release build, defaults) on the bench's \
             seed: {FUTURE_RESERVATIONS} active reservations due a day ahead, the recommended \
             indexes.\n"
        );
        // Idle: nothing falls due.
        eprintln!("follow: idle minute ...");
        let idle = report(follow(binary, &url));
        // Busy: FALLING reservations fall due one after another, GAP_MS apart.
        c.batch_execute(&format!(
            "INSERT INTO orders_order (order_number, status, payment_status) \
               SELECT 'F-' || g, 'pending', 'pending' FROM generate_series(1, {FALLING}) g;
             INSERT INTO orders_inventoryreservation \
                 (order_id, product_variant_id, quantity, status, created_at, expires_at) \
               SELECT o.id, 100, 1, 'active', now(), \
                      now() + interval '2 seconds' + (substr(o.order_number, 3)::int * {GAP_MS}) * interval '1 millisecond' \
                 FROM orders_order o WHERE o.order_number LIKE 'F-%';
             UPDATE products_productvariant SET reserved_quantity = reserved_quantity + {FALLING} WHERE id = 100"
        ))
        .await
        .unwrap();
        eprintln!("follow: {FALLING} reservations falling due ...");
        let (busy, stock) = follow_with_stock_log(binary, &url);
        let mut delays: Vec<f64> = c
            .query(
                "SELECT (EXTRACT(EPOCH FROM r.released_at - r.expires_at) * 1000)::float8 \
                 FROM orders_inventoryreservation r JOIN orders_order o ON o.id = r.order_id \
                 WHERE o.order_number LIKE 'F-%' AND r.status = 'expired'",
                &[],
            )
            .await
            .unwrap()
            .iter()
            .map(|row| row.get(0))
            .collect();
        delays.sort_by(f64::total_cmp);
        let per_minute = |r: &Value, field: &str| {
            let n = r["follow"][field].as_f64().unwrap_or(f64::NAN);
            let secs = r["duration_ms"].as_f64().unwrap_or(f64::NAN) / 1000.0;
            n * 60.0 / secs
        };
        let _ = writeln!(
            md,
            "| minute | released | release delay p50 / p95 / max (ms) | passes | wake-ups a minute |\n|---|---|---|---|---|"
        );
        let _ = writeln!(
            md,
            "| idle (nothing falls due) | {} | — | {} | {:.0} |",
            idle["reservations_released"],
            idle["follow"]["passes"],
            per_minute(&idle, "wakeups"),
        );
        let _ = writeln!(
            md,
            "| {FALLING} falling due {GAP_MS} ms apart | {} / {FALLING} | {:.0} / {:.0} / {:.0} | {} | {:.0} |",
            delays.len(),
            at(&delays, 0.5),
            at(&delays, 0.95),
            at(&delays, 1.0),
            busy["follow"]["passes"],
            per_minute(&busy, "wakeups"),
        );
        let _ = writeln!(
            md,
            "\n`Stock Released` in follow mode (no bus: each event a line of the follower's log \
             on stderr, `LOG_FORMAT=json`, read by the bench as it comes): {} events for the {} \
             reservations above, from their batch's `released_at` (database clock) to the line \
             read: p50 {:.0} ms, p95 {:.0} ms, max {:.0} ms (the promise: p95 within 5000 ms).",
            stock.len(),
            delays.len(),
            at(&stock, 0.5),
            at(&stock, 0.95),
            at(&stock, 1.0),
        );
        md.push_str(
            &self
                .idle_lookup(&c, idle["follow"]["wakeups"].as_f64())
                .await,
        );
        md.push_str(&lambda_cost(idle["duration_ms"].as_f64()));
        md
    }

    /// The plan and mean time of one idle wake-up's statement, and the database time of an
    /// idle minute.
    async fn idle_lookup(&self, c: &tokio_postgres::Client, wakeups: Option<f64>) -> String {
        let statement = c.prepare(NEXT_DUE).await.unwrap();
        let after: std::time::SystemTime = std::time::SystemTime::now();
        let (timeout, grace) = (15_i32, 15_i32);
        // After a pass that left nothing due: one due row is enough to tell.
        let count_up_to = 1_i64;
        let n = 2000;
        let started = Instant::now();
        for _ in 0..n {
            c.query_one(&statement, &[&after, &timeout, &grace, &count_up_to])
                .await
                .unwrap();
        }
        let mean = started.elapsed() / n;
        let plan = c
            .query(
                &format!(
                    "EXPLAIN (ANALYZE, BUFFERS, COSTS OFF, TIMING OFF, SUMMARY OFF) {}",
                    NEXT_DUE
                        .replace("$1::timestamptz", "now()")
                        .replace("$2::int4", "15")
                        .replace("$3::int4", "15")
                        .replace("$4::int8", "1")
                ),
                &[],
            )
            .await
            .unwrap();
        let plan: Vec<String> = plan.iter().map(|r| r.get::<_, String>(0)).collect();
        let per_minute = wakeups.map_or(f64::NAN, |w| w * 60.0 / FOLLOW_SECONDS as f64);
        let db_ms = per_minute * mean.as_secs_f64() * 1000.0;
        format!(
            "\nAn idle wake-up is one statement (`NEXT_DUE`), {:.3} ms a round trip over loopback \
             (mean of {n}); at {per_minute:.0} a minute, {db_ms:.1} ms of database time an idle \
             minute. Its plan: the due rows counted up to one, then one index lookup per part \
             of the next due instant (the partial indexes of `infra/indexes.sql`):\n\n\
             ```\n{}\n```\n",
            mean.as_secs_f64() * 1000.0,
            plan.join("\n")
        )
    }
}

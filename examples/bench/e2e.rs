//! The end-to-end benchmark (`--e2e`, `scripts/bench-e2e.sh`): the release as an operator's
//! schedule or cron runs it — a new `unreserver run` process each time, repeated until a run
//! finds nothing — against its contenders on copies of one seeded database (`CREATE DATABASE
//! ... TEMPLATE`): the seed's per-row loop at N = 5,000, and the one set-based statement on a
//! connection of its own at N = 100,000 (and 1,000,000) with each of three index sets. Every wall time of the
//! release runs from the process's start to its exit, connection and preflight included.

use std::fmt::Write as _;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use super::{connect, median, ms, Bench, FUTURE_RESERVATIONS, INDEX_SETS, LOWER_BOUND};
use unreserver::{Database, ReleaseSettings, RunOptions, Tls};

/// The index sets measured end to end: the project's, a plain partial index on `expires_at`,
/// Django's foreign-key indexes only.
const E2E_INDEX_SETS: [usize; 3] = [0, 2, 3];

/// One `unreserver run` process on `url` with the shipped defaults: its wall time, and the
/// reservations released and batches run that its report gives.
fn one_run(binary: &str, url: &str) -> (Duration, u64, u64) {
    let started = Instant::now();
    let out = Command::new(binary)
        .arg("run")
        .env("DATABASE_URL", url)
        .env("RUST_LOG", "warn")
        .stderr(Stdio::null())
        .output()
        .expect("cannot start the unreserver binary");
    let took = started.elapsed();
    assert!(
        out.status.success(),
        "unreserver run failed: {}",
        String::from_utf8_lossy(&out.stdout)
    );
    let report: serde_json::Value =
        serde_json::from_slice(&out.stdout).expect("the run report (JSON)");
    let released = report["reservations_released"].as_u64().unwrap_or(0);
    (took, released, report["batches"].as_u64().unwrap_or(0))
}

/// Runs until one finds nothing: the wall time of them all, the runs, the reservations
/// released and the batches run.
fn runs_until_nothing(binary: &str, url: &str) -> (Duration, usize, u64, u64) {
    let (mut total, mut runs, mut released, mut batches) = (Duration::ZERO, 0, 0, 0);
    loop {
        let (took, n, b) = one_run(binary, url);
        total += took;
        runs += 1;
        released += n;
        batches += b;
        if n == 0 || runs >= 1000 {
            return (total, runs, released, batches);
        }
    }
}

/// The one set-based statement on a connection of its own: its wall time from before the
/// connection (fork, SCRAM) to the statement's end — a process of its own, less the process's
/// start (3 ms for `unreserver --version` here), in the contender's favour.
async fn lower_bound_with_connection(url: &str) -> Duration {
    let started = Instant::now();
    let c = connect(url).await;
    c.batch_execute(LOWER_BOUND).await.unwrap();
    started.elapsed()
}

/// The end-to-end section of BENCHMARKS.md.
pub async fn e2e(b: &Bench, binary: &str, reps: usize, command: &str) -> String {
    let mut md = String::from("## End to end: a new process per run\n\n");
    let _ = writeln!(
        md,
        "Measured by `{command}` on {}. Each figure is wall time from a process's start to its \
         exit (connection, TLS setup, preflight included), as a schedule or cron runs the \
         tool: `unreserver run` (release build, the shipped defaults, `DATABASE_URL` over \
         loopback TCP with `sslmode=disable`) started again until a run finds nothing, that \
         last run included; each contender on a fresh copy of one seeded database \
         (`CREATE DATABASE ... TEMPLATE`). Medians of {reps} interleaved repetitions.\n",
        std::env::var("BENCH_STARTED").unwrap_or_default()
    );
    // BENCH_E2E_PARTS: which parts to measure (a comma list of empty, 5000, 100000, 1000000;
    // the first three when unset), for a partial run printed, not written.
    let parts = std::env::var("BENCH_E2E_PARTS").unwrap_or_else(|_| "empty,5000,100000".into());
    let part = |name: &str| parts.split(',').any(|p| p.trim() == name);
    if part("empty") {
        empty_run(b, binary, &mut md).await;
    }
    if part("5000") {
        per_row(b, binary, reps, &mut md).await;
    }
    if part("100000") {
        lower_bound(b, binary, reps, 100_000, &mut md).await;
    }
    if part("1000000") {
        lower_bound(b, binary, 1, 1_000_000, &mut md).await;
    }
    md
}

/// An idle run: nothing due among the seed's active reservations.
async fn empty_run(b: &Bench, binary: &str, md: &mut String) {
    eprintln!("e2e: empty run ...");
    let seed = "bench_e2e_empty";
    b.seed(seed, 0, FUTURE_RESERVATIONS).await;
    let url = b.copy(seed, "bench_e2e_idle").await;
    for _ in 0..3 {
        one_run(binary, &url);
    }
    const RUNS: usize = 30;
    // BENCH_BEFORE_BINARY: another build (the one before a change), its runs interleaved.
    let before = std::env::var("BENCH_BEFORE_BINARY").ok();
    let (mut wall, mut wall_before) = (Vec::new(), Vec::new());
    for _ in 0..RUNS {
        wall.push(ms(one_run(binary, &url).0));
        if let Some(other) = &before {
            wall_before.push(ms(one_run(other, &url).0));
        }
    }
    // The database's part, in this process: connecting (fork, SCRAM), the preflight and the
    // prepared statements, then the run's statements.
    let settings = ReleaseSettings {
        time_budget: None,
        ..ReleaseSettings::default()
    };
    let config: tokio_postgres::Config = url.parse().unwrap();
    let (mut bare, mut open, mut run) = (Vec::new(), Vec::new(), Vec::new());
    for _ in 0..RUNS {
        let started = Instant::now();
        let c = connect(&url).await;
        c.batch_execute("SELECT 1").await.unwrap();
        bare.push(ms(started.elapsed()));
        drop(c);
        let started = Instant::now();
        let mut db = Database::open(&config, &Tls::disabled(), settings.lock_timeout_ms)
            .await
            .unwrap();
        open.push(ms(started.elapsed()));
        let started = Instant::now();
        unreserver::run(&mut db, &settings, &RunOptions::default())
            .await
            .unwrap_or_else(|f| panic!("{}", f.error.chain()));
        run.push(ms(started.elapsed()));
    }
    let (w, o, r) = (median(&mut wall), median(&mut open), median(&mut run));
    let floor = median(&mut bare);
    let max = wall.iter().copied().fold(0.0, f64::max);
    let _ = writeln!(
        md,
        "### A run with nothing due ({FUTURE_RESERVATIONS} active reservations, none due)\n\n\
         | measure | median (ms) |\n|---|---|\n\
         | wall time of `unreserver run`, {RUNS} processes (max {max:.1}) | **{w:.1}** |\n\
         | its database work, timed in the bench's process: connect (backend fork, SCRAM) + preflight + prepared statements | {o:.1} |\n\
         | its database work: the run's statements (empty page, backlog and late-payment counts) | {r:.1} |\n\
         | the rest: process start, runtime, settings, exit | {:.1} |\n\
         | the server's floor: a bare connection (backend fork, SCRAM) and `SELECT 1` | {floor:.1} |",
        (w - o - r).max(0.0)
    );
    if let Some(other) = before {
        let _ = writeln!(
            md,
            "| the same wall time with the build before (`{}`), interleaved | {:.1} |",
            std::env::var("BENCH_BEFORE_LABEL").unwrap_or(other),
            median(&mut wall_before)
        );
    }
    md.push('\n');
}

/// N = 5,000 against the seed's per-row loop.
async fn per_row(b: &Bench, binary: &str, reps: usize, md: &mut String) {
    let seed = "bench_e2e_5000";
    eprintln!("e2e: N = 5,000 ...");
    b.seed(seed, 5_000, FUTURE_RESERVATIONS).await;
    let (mut old, mut new, mut runs) = (Vec::new(), Vec::new(), Vec::new());
    for rep in 0..reps {
        eprintln!("e2e: N = 5,000, repetition {} ...", rep + 1);
        let (took, _) = b.per_row(seed).await;
        old.push(ms(took));
        let url = b.copy(seed, "bench_e2e_run").await;
        let (took, n, released, batches) = runs_until_nothing(binary, &url);
        assert!(released >= 5_000, "released {released}");
        new.push(ms(took));
        runs.push(format!("{n} ({batches} batches)"));
    }
    let ratios: Vec<String> = old
        .iter()
        .zip(&new)
        .map(|(o, n)| format!("{:.1}", o / n))
        .collect();
    let (o, n) = (median(&mut old), median(&mut new));
    let _ = writeln!(
        md,
        "### 5,000 due, against the seed's per-row loop\n\n\
         The per-row loop (one transaction per reservation, `examples/bench`) is timed in the \
         bench's process from its first statement, its connection left out (in its favour).\n\n\
         | contender | median (ms) | runs (batches) per repetition |\n|---|---|---|\n\
         | per-row loop | {o:.0} | 1 |\n\
         | `unreserver run` until a run finds nothing | {n:.0} | {} |\n\n\
         **per-row / this project = {:.1}** (per repetition: {})\n",
        runs.join(", "),
        o / n,
        ratios.join(", ")
    );
}

/// `n` due (100,000 or 1,000,000) against the one set-based statement, on each index set.
async fn lower_bound(b: &Bench, binary: &str, reps: usize, n: usize, md: &mut String) {
    let seed = format!("bench_e2e_{n}");
    let label = thousands(n);
    eprintln!("e2e: N = {label} ...");
    b.seed(&seed, n as i64, FUTURE_RESERVATIONS).await;
    let _ = writeln!(
        md,
        "### {label} due, against the one set-based statement{}\n\n\
         The statement is timed in the bench's process from before its connection to its \
         end (a process of its own, less the process's start).\n\n\
         | index set | the one statement (ms) | `unreserver run` until a run finds nothing (ms) | runs (batches) per repetition | ratio (median) | ratios per repetition |\n\
         |---|---|---|---|---|---|",
        if reps == 1 { " (one repetition)" } else { "" }
    );
    for i in E2E_INDEX_SETS {
        let (name, sql) = INDEX_SETS[i];
        b.index_set.set(sql);
        let (mut lower, mut ours, mut runs) = (Vec::new(), Vec::new(), Vec::new());
        for rep in 0..reps {
            eprintln!("e2e: N = {label}, {name}, repetition {} ...", rep + 1);
            let url = b.copy(&seed, "bench_e2e_lower").await;
            lower.push(ms(lower_bound_with_connection(&url).await));
            let url = b.copy(&seed, "bench_e2e_run").await;
            let (took, runs_made, released, batches) = runs_until_nothing(binary, &url);
            assert!(released >= n as u64, "released {released}");
            ours.push(ms(took));
            runs.push(format!("{runs_made} ({batches} batches)"));
        }
        let ratios: Vec<String> = ours
            .iter()
            .zip(&lower)
            .map(|(o, l)| format!("{:.2}", o / l))
            .collect();
        let (l, o) = (median(&mut lower), median(&mut ours));
        let _ = writeln!(
            md,
            "| {name} | {l:.0} | {o:.0} | {} | **{:.2}** | {} |",
            runs.join(", "),
            o / l,
            ratios.join(", ")
        );
    }
    b.index_set.set("");
    md.push('\n');
}

/// 100000 as "100,000".
fn thousands(n: usize) -> String {
    let digits = n.to_string();
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i) % 3 == 0 {
            out.push(',');
        }
        out.push(c);
    }
    out
}

//! Adaptive batches and a run's workers (`scripts/bench.sh --adaptive`): the quiet shop (the
//! drain of 100,000 with each index set: the lower bound, the shipped defaults with one and
//! with two workers, and the old fixed 500), the busy shop (carts of one and of two items in
//! both lock orders during the same drain, the defaults beside fixed 500), the controller over
//! time while shoppers come and go, and WAL and memory with the defaults.

use std::fmt::Write as _;
use std::time::{Duration, Instant};

use unreserver::{ReleaseSettings, RunOptions, RunReport};

use crate::shoppers::{self, Cart, PHASE, SHOPPERS};
use crate::{
    connect, deferred_pct, drain_settings, ms, open_db, released, wal_position, Bench,
    HOT_VARIANTS, INDEX_SETS,
};

/// The contenders of the quiet shop, beside the lower bound.
const QUIET: [(&str, Option<u32>, u32); 3] = [
    ("defaults, 1 worker", None, 1),
    ("**defaults, 2 workers (shipped)**", None, 2),
    ("fixed 500, 1 worker (before)", Some(500), 1),
];

/// The shipped defaults (adaptive, `WORKERS` 2) with `batch_size` and `workers` instead.
fn with(batch_size: Option<u32>, workers: u32) -> ReleaseSettings {
    ReleaseSettings {
        batch_size,
        workers,
        ..drain_settings()
    }
}

/// One drain of `url` with `settings`: its time, report and the WAL it wrote.
async fn drain(url: String, settings: ReleaseSettings) -> (Duration, RunReport, i64) {
    let admin = connect(&url).await;
    let wal = wal_position(&admin).await;
    let mut db = open_db(&url, &settings).await;
    let started = Instant::now();
    let report = unreserver::run(&mut db, &settings, &RunOptions::default())
        .await
        .unwrap_or_else(|f| panic!("{}", f.error.chain()));
    let took = started.elapsed();
    (took, report, wal_position(&admin).await - wal)
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

impl Bench {
    /// The whole section.
    /// `busy_only`: the busy shop and the controller over time alone (to weigh a change).
    pub async fn adaptive(
        &self,
        seed: &str,
        reps: usize,
        million: Option<&str>,
        busy_only: bool,
        binary: &str,
    ) -> String {
        let mut md = String::new();
        if busy_only {
            md.push_str(&self.busy_shop(seed).await);
            md.push_str(&self.controller_over_time(seed).await);
            return md;
        }
        md.push_str(&self.quiet_shop(seed, reps).await);
        if let Some(big) = million {
            md.push_str(&self.quiet_million(big).await);
        }
        md.push_str(&self.memory(binary, seed, million).await);
        md.push_str(&self.busy_shop(seed).await);
        md.push_str(&self.controller_over_time(seed).await);
        md
    }

    /// The drain of `seed` with each index set: medians of `reps` interleaved repetitions.
    async fn quiet_shop(&self, seed: &str, reps: usize) -> String {
        let mut md = String::new();
        let _ = writeln!(
            md,
            "\n### Quiet shop: draining 100,000 with each index set\n\n\
             Each contender on a fresh copy of one seed with the index set applied, interleaved \
             with the lower bound (the one set-based statement), medians of {reps}. Ratio: the \
             contender's time over the lower bound's; WAL: bytes written per reservation \
             released (the lower bound's in brackets). In process: each drain and the \
             statement timed inside the bench's process on an open connection (end to end, a \
             new process per run: \"End to end\").\n"
        );
        let _ = writeln!(
            md,
            "| index set | lower bound (ms) | contender | time (ms) | ratio (median) | ratios per repetition | largest batch | workers | WAL per reservation (B) |"
        );
        let _ = writeln!(md, "|---|---|---|---|---|---|---|---|---|");
        let sets = [&INDEX_SETS[0], &INDEX_SETS[2], &INDEX_SETS[3]];
        for (name, sql) in sets {
            self.index_set.set(sql);
            let mut lowers = Vec::new();
            let mut lower_wal = 0;
            let mut runs: Vec<Vec<(f64, RunReport, i64)>> = vec![Vec::new(); QUIET.len()];
            for rep in 0..reps {
                eprintln!("adaptive, quiet: {name}, repetition {} ...", rep + 1);
                let (lower, due) = self.lower_bound(seed).await;
                lower_wal = self.last_wal.get() / due.max(1);
                lowers.push(ms(lower));
                for (k, (_, size, workers)) in QUIET.iter().enumerate() {
                    let url = self.copy(seed, "bench_adaptive").await;
                    let (took, r, wal) = drain(url, with(*size, *workers)).await;
                    assert_eq!(r.counts.reservations_released as i64, due);
                    let per = wal / due.max(1);
                    runs[k].push((ms(took), r, per));
                }
            }
            let lower = median(lowers.clone());
            for (k, (label, _, _)) in QUIET.iter().enumerate() {
                let ratios: Vec<f64> = runs[k]
                    .iter()
                    .zip(&lowers)
                    .map(|((t, _, _), l)| t / l)
                    .collect();
                let listed: Vec<String> = ratios.iter().map(|r| format!("{r:.2}")).collect();
                let time = median(runs[k].iter().map(|r| r.0).collect());
                let (_, r, wal) = &runs[k][0];
                let _ = writeln!(
                    md,
                    "| {name} | {lower:.0} | {label} | {time:.0} | **{:.2}** | {} | {} | {} | {wal} ({lower_wal}) |",
                    median(ratios.clone()),
                    listed.join(", "),
                    r.controller.batch_rows_max,
                    r.controller.workers,
                );
            }
        }
        self.index_set.set("");
        md
    }

    /// N = 1,000,000 with the recommended indexes: the lower bound and the defaults, once.
    async fn quiet_million(&self, seed: &str) -> String {
        eprintln!("adaptive, quiet: N = 1,000,000 ...");
        let (lower, due) = self.lower_bound(seed).await;
        let url = self.copy(seed, "bench_adaptive").await;
        let (took, r, wal) = drain(url, with(None, 2)).await;
        assert_eq!(r.counts.reservations_released as i64, due);
        format!(
            "\nN = 1,000,000 (recommended indexes, once): lower bound {:.0} ms, defaults with 2 \
             workers {:.0} ms, ratio **{:.2}** (largest batch {}, {} workers, {} B of WAL per \
             reservation).\n",
            ms(lower),
            ms(took),
            took.as_secs_f64() / lower.as_secs_f64(),
            r.controller.batch_rows_max,
            r.controller.workers,
            wal / due.max(1),
        )
    }

    /// Peak RSS of `unreserver run` with the defaults draining `seed` (and `million`).
    async fn memory(&self, binary: &str, seed: &str, million: Option<&str>) -> String {
        let mut md = String::from("\nPeak RSS of `unreserver run` with the defaults (GNU time):");
        for seed in std::iter::once(seed).chain(million) {
            eprintln!("adaptive, memory: {seed} ...");
            let (kib, out) = self.peak_rss(seed, binary).await;
            let report: serde_json::Value = serde_json::from_str(out.trim()).unwrap();
            let _ = write!(
                md,
                " {:.1} MiB releasing {} reservations with {} workers;",
                kib as f64 / 1024.0,
                report["reservations_released"],
                report["controller"]["workers"],
            );
        }
        md.pop();
        md.push_str(".\n");
        md
    }

    /// Shoppers on the backlog's hot rows during the drain, for each cart shape: the defaults,
    /// then fixed 500, each on a fresh copy after a quiet phase on it.
    async fn busy_shop(&self, seed: &str) -> String {
        let mut md = String::new();
        let (lower, _) = self.lower_bound(seed).await;
        let _ = writeln!(
            md,
            "\n### Busy shop: shoppers on the hot rows during the drain\n\n\
             {SHOPPERS} shoppers check out back to back on the {HOT_VARIANTS} hot drop variants the \
             backlog is concentrated on (carts as in \"Carts of several items\" below), a quiet \
             phase of {} s then a phase as long as the drain of 100,000, on a fresh copy per \
             row. Drain ratio: the drain's time under the shoppers over the quiet lower bound's \
             ({:.0} ms).\n",
            PHASE.as_secs(),
            ms(lower)
        );
        let _ = writeln!(
            md,
            "| cart | batch size | quiet p99 / max (ms) | drain p99 / max (ms) | p99 ratio (≤ 1.5) | max over quiet (≤ +50 ms) | deferred (< 1 %) | failed | drain (ms) | drain ratio | contended batches | largest batch |"
        );
        let _ = writeln!(md, "|---|---|---|---|---|---|---|---|---|---|---|---|");
        let shapes = [
            Cart::OneHot,
            Cart::TwoVariantsFirst,
            Cart::TwoItemByItem,
            Cart::OneCold,
        ];
        for cart in shapes {
            for (label, size) in [("defaults", None), ("fixed 500", Some(500))] {
                eprintln!("adaptive, busy: {} with {label} ...", cart.describe());
                let url = self.copy(seed, "bench_adaptive_busy").await;
                let (quiet, ()) = shoppers::phase(&url, cart, 1, async {}).await;
                let settings = with(size, 2);
                let (busy, (took, r, _)) =
                    shoppers::phase(&url, cart, 2, drain(url.clone(), settings)).await;
                let _ = writeln!(
                    md,
                    "| {} | {label} | {:.1} / {:.1} | {:.1} / {:.1} | **{:.2}** | **{:+.1}** | **{:.2} %** | {} | {:.0} | {:.2} | {} | {} |",
                    cart.describe(),
                    quiet.p99,
                    quiet.max,
                    busy.p99,
                    busy.max,
                    busy.p99 / quiet.p99.max(f64::EPSILON),
                    busy.max - quiet.max,
                    deferred_pct(&r),
                    quiet.failed + busy.failed,
                    ms(took),
                    took.as_secs_f64() / lower.as_secs_f64(),
                    r.controller.contended_batches,
                    r.controller.batch_rows_max,
                );
            }
        }
        md
    }

    /// The controller while shoppers arrive 1.5 s into the drain and leave 3 s later: the
    /// batch size and the workers allowed, from the run's own timeline, as a text plot.
    async fn controller_over_time(&self, seed: &str) -> String {
        eprintln!("adaptive, controller over time ...");
        let url = self.copy(seed, "bench_adaptive_time").await;
        let work = drain(url.clone(), with(None, 2));
        let shoppers_url = url.clone();
        let arriving = async move {
            tokio::time::sleep(Duration::from_millis(1200)).await;
            shoppers::phase(&shoppers_url, Cart::TwoItemByItem, 1, async {}).await
        };
        let ((_, r, _), (busy, ())) = tokio::join!(work, arriving);
        assert!(released(std::slice::from_ref(&r)) > 0);
        let mut md = String::new();
        let _ = writeln!(
            md,
            "\n### The controller while shoppers come and go\n\n\
             The drain of 100,000 with the defaults; {SHOPPERS} shoppers with two-item carts \
             (item by item) check out from 1.5 s to about {:.1} s into it ({} checkouts, p99 \
             {:.1} ms, max {:.1} ms). One line per 200 ms of the drain: the largest batch size \
             the controller chose in it (`#` = 200 rows) and the workers allowed to batch at \
             once.\n",
            1.5 + PHASE.as_secs_f64(),
            busy.n,
            busy.p99,
            busy.max,
        );
        md.push_str("```\n   t (s) | workers | batch rows\n");
        let end = r.controller.timeline.last().map_or(0.0, |s| s.0);
        let mut at = 0.0;
        while at <= end {
            let window: Vec<&(f64, u32, u32)> = r
                .controller
                .timeline
                .iter()
                .filter(|s| s.0 >= at && s.0 < at + 200.0)
                .collect();
            if let Some(size) = window.iter().map(|s| s.1).max() {
                let workers = window.iter().map(|s| s.2).max().unwrap_or(1);
                let _ = writeln!(
                    md,
                    "{:8.1} | {workers:7} | {:<20} {size}",
                    at / 1000.0,
                    "#".repeat((size as usize).div_ceil(200).min(20)),
                );
            }
            at += 200.0;
        }
        md.push_str("```\n");
        let c = &r.controller;
        let _ =
            writeln!(
            md,
            "\n{} batches; {} met shoppers; shrinks: {} for shoppers, {} for cuts, {} for time; \
             deferred {}.",
            r.batches, c.contended_batches, c.shrinks_for_shoppers, c.shrinks_for_cuts,
            c.shrinks_for_time, r.deferred
        );
        md
    }
}

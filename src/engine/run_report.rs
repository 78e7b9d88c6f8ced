//! The run report: what a run did, why it stopped and what it left, as printed by
//! `unreserver run` and returned by the Lambda function (one JSON object, a stable contract).

use std::collections::BTreeMap;

use serde::Serialize;

pub use super::controller::ControllerStats;
pub use super::counts::Counts;

/// Why a run stopped.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum StopReason {
    /// Nothing more is due that this run could take (what is left is locked or in grace).
    Drained,
    /// `MAX_BATCHES` batches ran.
    MaxBatches,
    /// The time budget was near: the Lambda deadline minus a margin, the CLI's
    /// `TIME_BUDGET_SECONDS`, or for a scheduled run the next schedule (`RUN_INTERVAL_SECONDS`).
    TimeBudget,
    /// A batch kept failing with a lock timeout, deadlock or serialization failure through every
    /// retry; the run backed off and leaves the rest to the next run. (A row held for long costs
    /// only the orders that need it: see `deferred`. A slow statement is a failure, not this.)
    RetriesExhausted,
    /// A table the release needs is locked by another session (a migration, a `LOCK TABLE`):
    /// see `locked_tables`. What the batches before committed stays; the next run goes on.
    TableLocked,
    /// Asked to stop (SIGTERM or SIGINT while `unreserver follow` runs): the batch in flight
    /// finished, no other started.
    Stopped,
    /// A batch failed with an error that a retry cannot fix; see the error.
    Failed,
}

impl StopReason {
    pub fn as_str(self) -> &'static str {
        match self {
            StopReason::Drained => "drained",
            StopReason::MaxBatches => "max_batches",
            StopReason::TimeBudget => "time_budget",
            StopReason::RetriesExhausted => "retries_exhausted",
            StopReason::TableLocked => "table_locked",
            StopReason::Stopped => "stopped",
            StopReason::Failed => "failed",
        }
    }
}

/// What a run did; in a dry run, what a real run would have done.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct RunReport {
    /// This run's id (a UUID), also in its summary line and metrics document.
    pub run_id: String,
    pub dry_run: bool,
    /// What the batches released, skipped and clamped, summed.
    #[serde(flatten)]
    pub counts: Counts,
    /// Batches that ran (committed, or rolled back in a dry run), empty final page included.
    pub batches: u32,
    /// Batch tries rolled back on a lock timeout, deadlock or serialization failure, or cut by
    /// their time budget, and retried (a large order's parts too).
    pub batch_retries: u32,
    /// Orders and cart holds left out because another transaction held a variant, drop or
    /// reservation row they need (for longer than `LOCK_TIMEOUT_MS`), and not released later in
    /// the run: the next run tries them again. Not the same as `skipped_locked` (orders a
    /// shopper held).
    pub deferred: u64,
    /// Seconds since the oldest of the deferred orders fell due (database clock); null when
    /// none is deferred.
    pub oldest_deferred_age_seconds: Option<f64>,
    /// Large orders (more active lines than a page) that could not be released within their
    /// budget even alone, or lost a lock conflict: left for the next run, which tries again.
    pub large_orders_left: u64,
    /// When the run stopped `table_locked`: the tables another session held locked.
    pub locked_tables: Vec<String>,
    /// Scans of the reservation table that read the due rows in passes: 0 when an index serves
    /// the keyset page (`infra/indexes.sql`, or an equivalent).
    pub pass_scans: u32,
    /// Recommended indexes (`infra/indexes.sql`) no index of the same definition stands in
    /// for; create them with `psql "$DATABASE_URL" -f infra/indexes.sql`.
    pub missing_indexes: Vec<String>,
    /// Paid orders still holding due active reservations, met by this run and left alone.
    pub paid_orders_with_due_reservations: u64,
    pub stopped_reason: StopReason,
    /// Due reservations still active when the run ended (locked, or beyond the run's limits).
    pub backlog_remaining: u64,
    /// Age of the oldest of those, in seconds; null when there is none.
    pub oldest_due_age_seconds: Option<f64>,
    /// 95th percentile and maximum of the release delay of the reservations this run released:
    /// seconds from when each fell due (`expires_at`, or `created_at` plus the timeout; grace
    /// not subtracted) to its release. Null when nothing was released.
    pub release_delay_p95_seconds: Option<f64>,
    pub release_delay_max_seconds: Option<f64>,
    /// Orders paid in the last 24 hours after the release had cancelled them (late payments to
    /// revive or refund); counted at the end of every run.
    pub paid_after_release: u64,
    /// Expiry events published to `EVENT_BUS_NAME`, and those that could not be (logged by
    /// order id); both 0 without a bus.
    pub events_published: u64,
    pub events_failed: u64,
    /// `Order Expiring Soon` events published (with `EXPIRY_WARNING_SECONDS`; counted in
    /// `events_published` too).
    pub expiry_warnings: u64,
    pub duration_ms: u64,
    /// Median and 99th percentile of the batch transactions' durations: how long a batch
    /// holds the rows it locks.
    pub batch_ms_p50: f64,
    pub batch_ms_p99: f64,
    pub batch_ms_max: f64,
    /// Median, 99th percentile and longest time a batch held the shop's hot counter rows
    /// (variants and drops): from taking them — at the batch's last step, or a queue batch's
    /// grant — to its commit, the longest a checkout on one of them could wait on the release.
    /// Batches that held none are not counted (0 when none did).
    pub hot_hold_ms_p50: f64,
    pub hot_hold_ms_p99: f64,
    pub hot_hold_ms_max: f64,
    /// Dry run only: per variant id, the units a real run would give back.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub units_by_variant: Option<BTreeMap<i64, i64>>,
    /// Dry run only: per drop product id, the units a real run would give back.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub units_by_drop: Option<BTreeMap<i64, i64>>,
    /// What the batch controller did: batch sizes, workers, why it shrank.
    pub controller: ControllerStats,
    /// Follow mode only: its passes and wake-ups; the rest of the report sums the passes.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub follow: Option<FollowStats>,
    /// The release delays (seconds, sorted) and batch durations (ms) the quantiles above are
    /// taken from, kept so that the reports of follow mode's passes sum exactly.
    #[serde(skip)]
    pub delays: Vec<f64>,
    #[serde(skip)]
    pub batch_durations_ms: Vec<f64>,
    #[serde(skip)]
    pub hot_holds_ms: Vec<f64>,
}

/// What follow mode did between its passes.
#[derive(Debug, Clone, Default, Serialize, PartialEq)]
pub struct FollowStats {
    /// Release passes (each a run over what was due then).
    pub passes: u64,
    /// Times it looked when the next reservation falls due (one index lookup each).
    pub wakeups: u64,
    /// Why it ended: `time` (its `--for`, its scheduled minute's end, or the invocation's
    /// deadline), `signal`, or — answered at once, without following — [`FOLLOW_STALE`] or
    /// [`FOLLOW_DUPLICATE`].
    pub ended: &'static str,
}

/// A scheduled follow answered at once: its scheduled time plus its seconds had passed.
pub const FOLLOW_STALE: &str = "stale";
/// A scheduled follow answered at once: another session already follows its minute.
pub const FOLLOW_DUPLICATE: &str = "duplicate";

/// The fields of the run report that other tools rely on (the CLI's contract); the report has
/// more, but never fewer.
pub const CONTRACT_FIELDS: &[&str] = &[
    "run_id",
    "dry_run",
    "reservations_released",
    "units_released",
    "orders_cancelled",
    "batches",
    "stopped_reason",
    "backlog_remaining",
    "duration_ms",
];

impl RunReport {
    pub fn new(dry_run: bool) -> Self {
        RunReport {
            run_id: String::new(),
            dry_run,
            counts: Counts::default(),
            batches: 0,
            batch_retries: 0,
            deferred: 0,
            oldest_deferred_age_seconds: None,
            large_orders_left: 0,
            locked_tables: Vec::new(),
            pass_scans: 0,
            missing_indexes: Vec::new(),
            paid_orders_with_due_reservations: 0,
            stopped_reason: StopReason::Drained,
            backlog_remaining: 0,
            oldest_due_age_seconds: None,
            release_delay_p95_seconds: None,
            release_delay_max_seconds: None,
            paid_after_release: 0,
            events_published: 0,
            events_failed: 0,
            expiry_warnings: 0,
            duration_ms: 0,
            batch_ms_p50: 0.0,
            batch_ms_p99: 0.0,
            batch_ms_max: 0.0,
            hot_hold_ms_p50: 0.0,
            hot_hold_ms_p99: 0.0,
            hot_hold_ms_max: 0.0,
            units_by_variant: dry_run.then(BTreeMap::new),
            units_by_drop: dry_run.then(BTreeMap::new),
            controller: ControllerStats::default(),
            follow: None,
            delays: Vec::new(),
            batch_durations_ms: Vec::new(),
            hot_holds_ms: Vec::new(),
        }
    }

    /// The quantiles of the release delays, batch durations and hot holds, from the samples
    /// kept.
    pub fn set_quantiles(&mut self) {
        (self.batch_ms_p50, self.batch_ms_p99, self.batch_ms_max) =
            median_p99_max(&mut self.batch_durations_ms);
        (
            self.hot_hold_ms_p50,
            self.hot_hold_ms_p99,
            self.hot_hold_ms_max,
        ) = median_p99_max(&mut self.hot_holds_ms);
        self.delays.sort_by(f64::total_cmp);
        if !self.delays.is_empty() {
            self.release_delay_p95_seconds = Some(quantile(&self.delays, 0.95));
            self.release_delay_max_seconds = self.delays.last().copied();
        }
    }

    /// Adds a later pass of follow mode: what was done is summed, what is left (the backlog,
    /// deferred work, why it stopped) is the later pass's.
    pub fn add_pass(&mut self, pass: RunReport) {
        self.add_work(&pass);
        self.events_published += pass.events_published;
        self.events_failed += pass.events_failed;
        self.expiry_warnings += pass.expiry_warnings;
        self.controller.add_pass(&pass.controller);
        self.set_quantiles();
        self.deferred = pass.deferred;
        self.oldest_deferred_age_seconds = pass.oldest_deferred_age_seconds;
        self.large_orders_left = pass.large_orders_left;
        self.locked_tables = pass.locked_tables;
        self.missing_indexes = pass.missing_indexes;
        self.paid_orders_with_due_reservations = pass.paid_orders_with_due_reservations;
        self.stopped_reason = pass.stopped_reason;
        self.backlog_remaining = pass.backlog_remaining;
        self.oldest_due_age_seconds = pass.oldest_due_age_seconds;
        self.paid_after_release = pass.paid_after_release;
    }
}

impl RunReport {
    /// Adds the work `other` did — counts, batches, retries, pass scans, units, release
    /// delays and batch durations — the one place that sums them, for a run's workers and for
    /// follow mode's passes alike (what each left behind is merged by its caller).
    pub fn add_work(&mut self, other: &RunReport) {
        self.counts += other.counts;
        self.batches += other.batches;
        self.batch_retries += other.batch_retries;
        self.pass_scans += other.pass_scans;
        if let (Some(variants), Some(drops)) = (&other.units_by_variant, &other.units_by_drop) {
            self.add_units(variants, drops);
        }
        self.delays.extend(&other.delays);
        self.batch_durations_ms.extend(&other.batch_durations_ms);
        self.hot_holds_ms.extend(&other.hot_holds_ms);
    }

    /// Adds units given back per variant and per drop, when the report keeps them (a dry run).
    pub fn add_units(&mut self, variants: &BTreeMap<i64, i64>, drops: &BTreeMap<i64, i64>) {
        for (into, more) in [
            (&mut self.units_by_variant, variants),
            (&mut self.units_by_drop, drops),
        ] {
            if let Some(into) = into.as_mut() {
                for (id, units) in more {
                    *into.entry(*id).or_default() += units;
                }
            }
        }
    }
}

/// Sorts `samples` and returns their median, 99th percentile and largest (0 for none).
fn median_p99_max(samples: &mut [f64]) -> (f64, f64, f64) {
    samples.sort_by(f64::total_cmp);
    let max = samples.last().copied().unwrap_or(0.0);
    (quantile(samples, 0.5), quantile(samples, 0.99), max)
}

/// The `q`-quantile (0..=1) of `sorted` by nearest rank; 0 when empty.
pub fn quantile(sorted: &[f64], q: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let rank = (q * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantiles_by_nearest_rank() {
        let v: Vec<f64> = (1..=100).map(f64::from).collect();
        assert_eq!(quantile(&v, 0.5), 50.0);
        assert_eq!(quantile(&v, 0.99), 99.0);
        assert_eq!(quantile(&v, 1.0), 100.0);
        assert_eq!(quantile(&[7.0], 0.99), 7.0);
        assert_eq!(quantile(&[], 0.5), 0.0);
    }

    #[test]
    fn report_has_the_contract_fields() {
        let json = serde_json::to_value(RunReport::new(false)).unwrap();
        for key in CONTRACT_FIELDS {
            assert!(json.get(key).is_some(), "missing {key}");
        }
        assert_eq!(json["stopped_reason"], "drained");
        assert!(json.get("units_by_variant").is_none());
        let dry = serde_json::to_value(RunReport::new(true)).unwrap();
        assert!(dry["units_by_variant"].is_object());
    }
}

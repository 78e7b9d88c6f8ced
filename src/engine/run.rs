//! The release run: batches one after another until nothing is due, `MAX_BATCHES` ran, or the
//! time budget is near; each batch retried with jittered backoff when it loses a lock conflict
//! to a shopper's transaction. Modeled on river's job cleaner: a loop of small bounded
//! transactions apart from what each does, and one result struct per run.

use std::collections::HashSet;
use std::time::{Duration, Instant};

use tracing::Instrument;

use super::batch::{self, BatchOutcome, BatchParams, Cursor};
use super::report::{quantile, RunReport, StopReason};
use crate::config::ReleaseSettings;
use crate::db::session::Database;
use crate::error::{is_transient_conflict, sql_state, Error, Result};

/// How a run is asked to go.
#[derive(Debug, Clone)]
pub struct RunOptions {
    /// Run every statement, then roll each batch back: report what would happen, change nothing.
    pub dry_run: bool,
    /// No batch starts unless it can finish before this instant.
    pub deadline: Option<Instant>,
    /// This run's id (a fresh UUID by default), in its report, logs and metrics.
    pub run_id: String,
}

impl Default for RunOptions {
    fn default() -> Self {
        RunOptions {
            dry_run: false,
            deadline: None,
            run_id: new_run_id(),
        }
    }
}

/// A fresh run id.
pub fn new_run_id() -> String {
    uuid::Uuid::new_v4().to_string()
}

/// A run that failed part-way: the error, and what the batches committed before it did.
#[derive(Debug, thiserror::Error)]
#[error("{error}")]
pub struct RunFailure {
    #[source]
    pub error: Error,
    pub report: Box<RunReport>,
}

/// Least time a batch is assumed to need when checking the deadline.
const MIN_BATCH_ALLOWANCE: Duration = Duration::from_millis(250);
/// Longest pause between tries of a batch.
const MAX_BACKOFF: Duration = Duration::from_secs(2);

/// Releases due reservations in batches on `db`.
pub async fn run(
    db: &mut Database,
    settings: &ReleaseSettings,
    options: &RunOptions,
) -> std::result::Result<RunReport, RunFailure> {
    let started = Instant::now();
    let mut run = Run::new(settings, options);
    let outcome = run.batches(db).await;
    run.finish(db, outcome, started).await
}

/// The state of one run between batches.
struct Run<'a> {
    settings: &'a ReleaseSettings,
    options: &'a RunOptions,
    params: BatchParams,
    report: RunReport,
    /// Durations (ms) of the batches that paged rows.
    durations: Vec<f64>,
    slowest: Duration,
    cursor: Cursor,
    /// Dry run: orders already counted (their reservations stay active after the rollback).
    counted_orders: HashSet<i64>,
    paid_orders: HashSet<i64>,
    due_released: u64,
}

impl<'a> Run<'a> {
    fn new(settings: &'a ReleaseSettings, options: &'a RunOptions) -> Self {
        let mut report = RunReport::new(options.dry_run);
        report.run_id.clone_from(&options.run_id);
        Run {
            settings,
            options,
            params: BatchParams::new(settings, options.dry_run),
            report,
            durations: Vec::new(),
            slowest: Duration::ZERO,
            cursor: Cursor::default(),
            counted_orders: HashSet::new(),
            paid_orders: HashSet::new(),
            due_released: 0,
        }
    }

    /// Runs batches until a stop reason; an error a retry cannot fix ends the loop.
    async fn batches(&mut self, db: &mut Database) -> Result<StopReason> {
        loop {
            if self.report.batches >= self.settings.max_batches {
                return Ok(StopReason::MaxBatches);
            }
            if past(self.options.deadline, self.allowance()) {
                return Ok(StopReason::TimeBudget);
            }
            let batch = match self.batch_with_retries(db).await? {
                Ok(batch) => batch,
                Err(stop) => return Ok(stop),
            };
            if batch.rows_paged == 0 {
                return Ok(StopReason::Drained);
            }
            let full_page = batch.rows_paged as u64 >= u64::from(self.settings.batch_size);
            self.record(batch);
            if !full_page {
                return Ok(StopReason::Drained);
            }
        }
    }

    /// Time a batch is assumed to need: twice the slowest so far, at least the minimum.
    fn allowance(&self) -> Duration {
        (self.slowest * 2).max(MIN_BATCH_ALLOWANCE)
    }

    /// One batch, tried again after each lock conflict; `Err(stop)` when the run must stop
    /// instead (retries exhausted, or no time left for another try).
    async fn batch_with_retries(
        &mut self,
        db: &mut Database,
    ) -> Result<std::result::Result<BatchOutcome, StopReason>> {
        let number = self.report.batches + 1;
        let mut attempt = 1;
        loop {
            let span = tracing::info_span!("batch", number, attempt);
            let started = Instant::now();
            let tried = batch::run(db, &self.params, &self.cursor, &self.counted_orders)
                .instrument(span.clone())
                .await;
            let error = match tried {
                Ok(batch) => {
                    self.timed(started.elapsed(), &batch);
                    return Ok(Ok(batch));
                }
                Err(error) if sql_state(&error).is_some_and(is_transient_conflict) => error,
                Err(error) => return Err(error),
            };
            tracing::debug!(parent: &span, error = %error.chain(), "batch rolled back, retrying");
            if attempt >= self.settings.batch_max_attempts {
                tracing::warn!(parent: &span, attempts = attempt, error = %error.chain(),
                    "batch kept losing lock conflicts; leaving the rest to the next run");
                return Ok(Err(StopReason::RetriesExhausted));
            }
            let pause = backoff(self.settings.retry_backoff_ms, attempt);
            if past(self.options.deadline, pause + self.allowance()) {
                return Ok(Err(StopReason::TimeBudget));
            }
            self.report.batch_retries += 1;
            attempt += 1;
            tokio::time::sleep(pause).await;
        }
    }

    fn timed(&mut self, took: Duration, batch: &BatchOutcome) {
        self.slowest = self.slowest.max(took);
        if batch.rows_paged > 0 {
            self.durations.push(took.as_secs_f64() * 1000.0);
        }
    }

    /// Adds a batch that paged rows to the report and moves the cursor on.
    fn record(&mut self, batch: BatchOutcome) {
        self.report.batches += 1;
        if self.options.dry_run {
            self.counted_orders
                .extend(batch.released_orders.iter().copied());
        }
        self.paid_orders.extend(batch.paid_orders.iter().copied());
        self.due_released += batch.due_reservations_released;
        log_batch(self.report.batches, &batch);
        self.cursor = batch.next_cursor.clone();
        add_batch(&mut self.report, batch);
    }

    /// Completes the report: batch timings, the stop reason, and the backlog left (counted on
    /// the database clock).
    async fn finish(
        mut self,
        db: &Database,
        outcome: Result<StopReason>,
        started: Instant,
    ) -> std::result::Result<RunReport, RunFailure> {
        self.report.paid_orders_with_due_reservations = self.paid_orders.len() as u64;
        self.durations.sort_by(f64::total_cmp);
        self.report.batch_ms_p50 = quantile(&self.durations, 0.5);
        self.report.batch_ms_p99 = quantile(&self.durations, 0.99);
        self.report.batch_ms_max = self.durations.last().copied().unwrap_or(0.0);
        let result = match outcome {
            Ok(reason) => self.count_backlog(db).await.map(|()| reason),
            Err(error) => Err(error),
        };
        let mut report = self.report;
        report.duration_ms = started.elapsed().as_millis() as u64;
        match result {
            Ok(reason) => {
                report.stopped_reason = reason;
                Ok(report)
            }
            Err(error) => {
                report.stopped_reason = StopReason::Failed;
                Err(RunFailure {
                    error,
                    report: Box::new(report),
                })
            }
        }
    }

    async fn count_backlog(&mut self, db: &Database) -> Result<()> {
        let backlog = db
            .statements
            .backlog(&db.client, self.params.rules())
            .await?;
        let count = backlog.due.max(0) as u64;
        self.report.backlog_remaining = if self.options.dry_run {
            // Nothing was changed: what a real run would leave is what is due now less the
            // due reservations it would have released.
            count.saturating_sub(self.due_released)
        } else {
            count
        };
        self.report.oldest_due_age_seconds = backlog.oldest_age_seconds;
        Ok(())
    }
}

fn past(deadline: Option<Instant>, allowance: Duration) -> bool {
    deadline.is_some_and(|d| Instant::now() + allowance >= d)
}

/// Exponential backoff with equal jitter: half the step fixed, half random.
fn backoff(base_ms: u32, attempt: u32) -> Duration {
    let step = Duration::from_millis(u64::from(base_ms))
        .saturating_mul(1u32 << attempt.min(16).saturating_sub(1))
        .min(MAX_BACKOFF);
    let half = step / 2;
    half + half.mul_f64(fastrand::f64())
}

fn log_batch(number: u32, batch: &BatchOutcome) {
    tracing::debug!(
        batch = number,
        rows_paged = batch.rows_paged,
        reservations_released = batch.reservations_released,
        units_released = batch.units_released,
        orders_cancelled = batch.orders_cancelled,
        skipped_locked = batch.skipped_locked,
        clamped_variants = batch.clamped_variants,
        clamped_drops = batch.clamped_drops,
        "batch done"
    );
}

fn add_batch(report: &mut RunReport, batch: BatchOutcome) {
    report.reservations_released += batch.reservations_released;
    report.holds_released += batch.holds_released;
    report.units_released += batch.units_released;
    report.orders_cancelled += batch.orders_cancelled;
    report.skipped_locked += batch.skipped_locked;
    report.clamped_variants += batch.clamped_variants;
    report.clamped_drops += batch.clamped_drops;
    if let Some(map) = report.units_by_variant.as_mut() {
        for (id, units) in batch.units_by_variant {
            *map.entry(id).or_default() += units;
        }
    }
    if let Some(map) = report.units_by_drop.as_mut() {
        for (id, units) in batch.units_by_drop {
            *map.entry(id).or_default() += units;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_with_jitter_and_is_capped() {
        for attempt in 1..=20 {
            let step = Duration::from_millis(50 * (1u64 << (attempt - 1).min(15))).min(MAX_BACKOFF);
            let pause = backoff(50, attempt);
            assert!(
                pause >= step / 2 && pause <= step,
                "attempt {attempt}: {pause:?}"
            );
        }
    }

    #[test]
    fn every_run_gets_a_fresh_id() {
        let (a, b) = (RunOptions::default(), RunOptions::default());
        assert_ne!(a.run_id, b.run_id);
        assert!(uuid::Uuid::parse_str(&a.run_id).is_ok());
    }
}

//! The release run: batches one after another until nothing is due, `MAX_BATCHES` ran, or the
//! time budget is near; each batch retried with jittered backoff when it loses a lock conflict
//! to a shopper's transaction. Modeled on river's job cleaner: a loop of small bounded
//! transactions and one result struct.

use std::collections::HashSet;
use std::time::{Duration, Instant};

use crate::batch::{self, BatchOutcome, BatchParams, Cursor};
use crate::database::Database;
use crate::error::{is_transient_conflict, sql_state, Error, Result};
use crate::report::{quantile, RunReport, StopReason};
use crate::settings::Settings;

/// How a run is asked to go.
#[derive(Debug, Clone, Default)]
pub struct RunOptions {
    /// Run every statement, then roll each batch back: report what would happen, change nothing.
    pub dry_run: bool,
    /// No batch starts unless it can finish before this instant.
    pub deadline: Option<Instant>,
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
    settings: &Settings,
    options: &RunOptions,
) -> std::result::Result<RunReport, RunFailure> {
    let started = Instant::now();
    let params = BatchParams::new(settings, options.dry_run);
    let mut report = RunReport::new(options.dry_run);
    let mut durations: Vec<f64> = Vec::new();
    let mut slowest = Duration::ZERO;
    let mut cursor = Cursor::default();
    let mut counted_orders: HashSet<i64> = HashSet::new();
    let mut paid_orders: HashSet<i64> = HashSet::new();
    let mut due_released: u64 = 0;

    let outcome: Result<StopReason> = async {
        loop {
            if report.batches >= settings.max_batches {
                return Ok(StopReason::MaxBatches);
            }
            let allowance = (slowest * 2).max(MIN_BATCH_ALLOWANCE);
            if past(options.deadline, allowance) {
                return Ok(StopReason::TimeBudget);
            }
            let mut attempt = 1;
            let batch = loop {
                let batch_started = Instant::now();
                match batch::run(db, &params, &cursor, &counted_orders).await {
                    Ok(batch) => {
                        let took = batch_started.elapsed();
                        slowest = slowest.max(took);
                        if batch.rows_paged > 0 {
                            durations.push(took.as_secs_f64() * 1000.0);
                        }
                        break batch;
                    }
                    Err(error) if sql_state(&error).is_some_and(is_transient_conflict) => {
                        tracing::debug!(attempt, error = %error.chain(), "batch rolled back, retrying");
                        if attempt >= settings.batch_max_attempts {
                            tracing::warn!(attempts = attempt, error = %error.chain(),
                                "batch kept losing lock conflicts; leaving the rest to the next run");
                            return Ok(StopReason::RetriesExhausted);
                        }
                        let pause = backoff(settings.retry_backoff_ms, attempt);
                        if past(options.deadline, pause + allowance) {
                            return Ok(StopReason::TimeBudget);
                        }
                        report.batch_retries += 1;
                        attempt += 1;
                        tokio::time::sleep(pause).await;
                    }
                    Err(error) => return Err(error),
                }
            };
            if batch.rows_paged == 0 {
                return Ok(StopReason::Drained);
            }
            report.batches += 1;
            let full_page = batch.rows_paged as u64 >= settings.batch_size as u64;
            if options.dry_run {
                counted_orders.extend(batch.released_orders.iter().copied());
            }
            paid_orders.extend(batch.paid_orders.iter().copied());
            due_released += batch.due_reservations_released;
            log_batch(report.batches, &batch);
            cursor = batch.next_cursor.clone();
            add_batch(&mut report, batch);
            if !full_page {
                return Ok(StopReason::Drained);
            }
        }
    }
    .await;

    report.paid_orders_with_due_reservations = paid_orders.len() as u64;
    durations.sort_by(f64::total_cmp);
    report.batch_ms_p50 = quantile(&durations, 0.5);
    report.batch_ms_p99 = quantile(&durations, 0.99);
    report.batch_ms_max = durations.last().copied().unwrap_or(0.0);
    let finish = |mut report: RunReport, reason, error: Option<Error>| {
        report.stopped_reason = reason;
        report.duration_ms = started.elapsed().as_millis() as u64;
        match error {
            None => Ok(report),
            Some(error) => Err(RunFailure {
                error,
                report: Box::new(report),
            }),
        }
    };
    let reason = match outcome {
        Ok(reason) => reason,
        Err(error) => return finish(report, StopReason::Failed, Some(error)),
    };
    match backlog(db, &params).await {
        Ok((count, oldest)) => {
            report.backlog_remaining = if options.dry_run {
                // Nothing was changed: what a real run would leave is what is due now less
                // the due reservations it would have released.
                count.saturating_sub(due_released)
            } else {
                count
            };
            report.oldest_due_age_seconds = oldest;
            finish(report, reason, None)
        }
        Err(error) => finish(report, StopReason::Failed, Some(error)),
    }
}

/// Due reservations still active, and the age of the oldest in seconds.
pub async fn backlog(db: &Database, params: &BatchParams) -> Result<(u64, Option<f64>)> {
    let row = db
        .client
        .query_one(
            &db.statements.backlog,
            &[&params.timeout_minutes(), &params.grace_minutes()],
        )
        .await
        .map_err(Error::db("counting the backlog"))?;
    let count: i64 = row.get(0);
    Ok((count.max(0) as u64, row.get(1)))
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
}

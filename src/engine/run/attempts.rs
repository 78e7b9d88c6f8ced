//! One batch of a run, tried again after a lock conflict (with jittered backoff) or a cut (with
//! half the rows), and what the controller learns from it.

use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use tokio_postgres::error::SqlState;
use tracing::Instrument;

use super::*;
use crate::db::session::Database;
use crate::db::sql::PageRow;
use crate::engine::batch::{BatchOutcome, Source};
use crate::engine::budget::{statement_timeout, timed_batch, Budget, TryError};
use crate::engine::controller::{self};
use crate::engine::retry::RetryPolicy;
use crate::engine::run_report::StopReason;
use crate::error::{is_cancelled, is_conflict, sql_state, Error, Result};

impl<'a> Run<'a> {
    /// One batch, tried again after each lock conflict and, with half the rows, after each
    /// cut by the batch budget; `Err(stop)` when the run must stop instead (retries exhausted,
    /// or no time left for another try).
    pub(super) async fn batch_with_retries(
        &mut self,
        db: &mut Database,
        work: Work,
    ) -> Result<std::result::Result<BatchOutcome, StopReason>> {
        let number = self.shared.batches.load(Ordering::SeqCst);
        let mut attempt = 1;
        loop {
            let span = tracing::info_span!("batch", number, attempt);
            self.params.page_size = i64::from(self.shared.controller().size());
            let chunk = self.retry_chunk();
            let rows = match (&self.passes, work) {
                (Some(passes), Work::Pass) => passes.front(self.page_rows()),
                _ => Vec::new(),
            };
            let queue = self.queue.clone();
            let source = match (work, &queue) {
                (Work::Queue, Some((row, orders, holds))) => Source::Queue {
                    row: *row,
                    orders,
                    holds,
                },
                (Work::Page | Work::Queue, _) => Source::Page(&self.cursor),
                (Work::Pass, _) => Source::Rows(&rows),
                (Work::Deferred, _) => Source::Deferred {
                    orders: &chunk.0,
                    holds: &chunk.1,
                },
            };
            let shared = self.shared;
            let gate = shared.pass_gate().await;
            let started = Instant::now();
            let tried = timed_batch(
                db,
                &self.params,
                source,
                &self.books.excluded_orders,
                Budget::Whole(self.batch_budget),
            )
            .instrument(span.clone())
            .await;
            let error = match tried {
                Ok(batch) => {
                    let took = started.elapsed();
                    self.succeeded(took, work, &chunk, &rows, &batch);
                    // The rest keeps the gate: while shoppers compete, the run's workers take
                    // turns, and no other worker's batch fills this one's rest.
                    self.rest(worked(took, &batch)).await;
                    drop(gate);
                    return Ok(Ok(batch));
                }
                Err(error) => error,
            };
            drop(gate);
            if let Some(stop) = self.after_failed_try(db, error, attempt, &span).await? {
                return Ok(Err(stop));
            }
            attempt += 1;
        }
    }

    /// While shoppers compete, rests as long as the batch worked (at most [`MAX_REST`]) before
    /// the next, holding the run's gate (all its permits: the caller's), so that no worker of
    /// the run batches meanwhile: the release then takes at most half of the time on the hot
    /// rows and of a core, and the checkouts the rest. Nothing while nobody competes. (Resting
    /// after the gate was given back, a run spread over two workers while nobody competed
    /// kept batching through the rests once shoppers came: its drain ran twice as fast beside
    /// them and their p99 rose with it.)
    pub(super) async fn rest(&self, worked: Duration) {
        if !self.shared.controller().parallel() {
            tokio::time::sleep(worked.min(MAX_REST)).await;
        }
    }

    /// Decides what follows a failed try: another try (None, after a pause), a stop, or the
    /// run's failure.
    pub(super) async fn after_failed_try(
        &mut self,
        db: &Database,
        error: TryError,
        attempt: u32,
        span: &tracing::Span,
    ) -> Result<Option<StopReason>> {
        let error = match error {
            TryError::Cut(error) => return self.after_cut(error, span).map(|()| None),
            TryError::Other(error) if sql_state(&error) == Some(&SqlState::LOCK_NOT_AVAILABLE) => {
                let tables = db.statements.locked_tables(&db.client).await?;
                if !tables.is_empty() {
                    return Ok(Some(self.table_locked(tables)));
                }
                error
            }
            TryError::Other(error) if is_conflict(&error) => error,
            TryError::Other(error) if is_cancelled(&error) => {
                return Err(statement_timeout(error, self.hint()))
            }
            TryError::Other(error) => return Err(error),
        };
        tracing::debug!(parent: span, error = %error.chain(), "batch rolled back, retrying");
        match self.pause_before_retry(attempt).await {
            Ok(()) => Ok(None),
            Err(StopReason::RetriesExhausted) => {
                tracing::warn!(parent: span, attempts = attempt, error = %error.chain(),
                    "batch kept losing lock conflicts; leaving the rest to the next run");
                Ok(Some(StopReason::RetriesExhausted))
            }
            Err(stop) => Ok(Some(stop)),
        }
    }

    /// The one rule for trying a batch again after its `attempt`-th try lost a lock conflict:
    /// a jittered backoff (`RETRY_BACKOFF_MS`, doubling), unless `BATCH_MAX_ATTEMPTS` tries
    /// were made (`RetriesExhausted`) or the pause would leave no time for the batch before
    /// the deadline (`TimeBudget`).
    pub(super) async fn pause_before_retry(
        &mut self,
        attempt: u32,
    ) -> std::result::Result<(), StopReason> {
        if attempt >= self.settings.batch_max_attempts {
            return Err(StopReason::RetriesExhausted);
        }
        let pause = RetryPolicy::backoff(self.settings.retry_backoff_ms).pause(attempt);
        if past(self.options.deadline, pause + self.allowance()) {
            return Err(StopReason::TimeBudget);
        }
        self.books.report.batch_retries += 1;
        tokio::time::sleep(pause).await;
        Ok(())
    }

    /// A batch cut by its budget: tried again at once with half the rows, unless it was small
    /// already twice in a row — then it is too slow, a failure.
    pub(super) fn after_cut(&mut self, error: Error, span: &tracing::Span) -> Result<()> {
        let what = match &error {
            Error::Database { context, .. } => *context,
            _ => "a batch",
        };
        let floor = self.settings.initial_batch_size();
        let at_min = self.params.page_size <= MIN_PAGE_SIZE.min(i64::from(floor));
        self.cuts_at_min = if at_min { self.cuts_at_min + 1 } else { 0 };
        if self.cuts_at_min >= 2 {
            return Err(Error::TooSlow {
                what,
                why: format!(
                    "a batch of {} rows still took longer than its budget of {} ms (half the \
                     shop's deadlock_timeout)",
                    self.params.page_size,
                    self.batch_budget.as_millis()
                ),
                hint: self.hint(),
            });
        }
        self.params.page_size = i64::from(self.shared.controller().cut());
        self.books.report.batch_retries += 1;
        tracing::warn!(parent: span, during = what, page_size = self.params.page_size,
            budget_ms = self.batch_budget.as_millis() as u64,
            "batch cut by its time budget; trying again with half the rows");
        Ok(())
    }

    /// What may make a slow batch fast: the recommended indexes that are missing.
    pub(super) fn hint(&self) -> String {
        let missing = &self.books.report.missing_indexes;
        if missing.is_empty() {
            String::new()
        } else {
            format!(
                "; the recommended indexes {} are missing: create them with infra/indexes.sql",
                missing.join(", ")
            )
        }
    }

    /// Books a batch that committed (`rows`: the pass rows it worked through), and tells the
    /// controller what it met.
    pub(super) fn succeeded(
        &mut self,
        took: Duration,
        work: Work,
        chunk: &(Vec<i64>, Vec<i64>),
        rows: &[PageRow],
        batch: &BatchOutcome,
    ) {
        let worked = match batch.rows_paged {
            0 => batch.counts.reservations_released as usize,
            paged => paged,
        };
        let met = controller::met_shoppers(batch);
        self.shared.controller().observe(worked, took, met);
        let done = (rows.len(), batch.released_orders.as_slice());
        self.cuts_at_min = 0;
        self.books.slowest = self.books.slowest.max(took);
        self.books
            .report
            .batch_durations_ms
            .push(took.as_secs_f64() * 1000.0);
        if let Some(hold) = batch.hot_hold {
            self.books
                .report
                .hot_holds_ms
                .push(hold.as_secs_f64() * 1000.0);
        }
        if work == Work::Deferred {
            self.retry_queue.0.drain(..chunk.0.len());
            self.retry_queue.1.drain(..chunk.1.len());
        }
        if let (Some(passes), Work::Pass) = (self.passes.as_mut(), work) {
            passes.consume(done.0, done.1);
        }
    }
}

/// The part of a batch's time it worked: not the pauses it polled for held rows in, which held
/// no row and took no CPU (a batch that polled 40 ms to do 5 ms of work rests 5 ms, not 45).
fn worked(took: Duration, batch: &BatchOutcome) -> Duration {
    let polled = Duration::from_secs_f64(batch.counts.held_wait_ms.max(0.0) / 1000.0);
    took.saturating_sub(polled)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_batch_rests_for_the_time_it_worked_not_the_time_it_polled() {
        let mut batch = BatchOutcome::default();
        let took = Duration::from_millis(45);
        assert_eq!(worked(took, &batch), took);
        batch.counts.held_wait_ms = 40.0;
        assert_eq!(worked(took, &batch), Duration::from_millis(5));
        batch.counts.held_wait_ms = 60.0;
        assert_eq!(worked(took, &batch), Duration::ZERO);
    }
}

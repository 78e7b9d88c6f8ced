//! The release run: batches one after another until nothing is due, `MAX_BATCHES` ran, or the
//! time budget is near; each batch retried with jittered backoff when it loses a lock conflict
//! to a shopper's transaction. Modeled on river's job cleaner: a loop of small bounded
//! transactions apart from what each does, and one result struct per run.

use std::collections::{BTreeSet, HashSet};
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use super::batch::{BatchParams, Cursor};
use super::budget::batch_budget;
use super::hooks::{Committed, OnCommit};
use super::pass::Passes;
use super::run_report::{RunReport, StopReason};
use crate::config::ReleaseSettings;
use crate::db::session::Database;
use crate::db::sql::{outbox, Counter};
use crate::error::{Error, Result};

/// How a run is asked to go.
#[derive(Debug, Clone)]
pub struct RunOptions {
    /// Run every statement, then roll each batch back: report what would happen, change nothing.
    pub dry_run: bool,
    /// No batch starts unless it can finish before this instant.
    pub deadline: Option<Instant>,
    /// This run's id (a fresh UUID by default), in its report, logs and metrics.
    pub run_id: String,
    /// Called after each committed batch with what it released (never in a dry run): the
    /// events layer composes and publishes the expiry events there.
    pub on_commit: Option<OnCommit>,
    /// Set to true, the run finishes the batch in flight and starts no other
    /// ([`StopReason::Stopped`]): follow mode's SIGTERM or SIGINT.
    pub stop: Option<tokio::sync::watch::Receiver<bool>>,
}

impl Default for RunOptions {
    fn default() -> Self {
        RunOptions {
            dry_run: false,
            deadline: None,
            run_id: new_run_id(),
            on_commit: None,
            stop: None,
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

mod attempts;
mod deferred;
mod ledger;
mod workers;

use ledger::*;
use workers::*;

/// Least time a batch is assumed to need when checking the deadline.
const MIN_BATCH_ALLOWANCE: Duration = Duration::from_millis(250);
/// A batch cut by its time budget at this page size or smaller is too slow: a failure.
const MIN_PAGE_SIZE: i64 = 16;
/// Rounds of tries of the deferred work at the end of a run, at most: a hot row that checkouts
/// take in turns is free at some tries and not others, so a round that released some is
/// followed by another; one that released nothing ends them (the rows are held for long).
const RETRY_ROUNDS: usize = 4;
/// Orders (or holds) a queue batch works at most: it holds the hottest row from the moment it
/// leaves the queue until it commits, and every shopper queued behind it waits that long, so
/// it must be as short as one more checkout, not a page.
const QUEUE_BATCH_ORDERS: usize = 100;
/// Times a run goes back to queue batches for rows its last tries of deferred work found held
/// for long (an order across several hot rows needs one per row).
const QUEUE_CYCLES: usize = 3;
/// Longest rest between two batches while shoppers compete.
const MAX_REST: Duration = Duration::from_millis(100);
/// Longest a run waits for a worker's connection to be open, checked and prepared.
const WORKER_OPEN_TIMEOUT: Duration = Duration::from_secs(2);
/// Connections a run leaves free for the shop when it opens workers.
const RESERVED_CONNECTIONS: i64 = 10;

/// Releases due reservations in batches on `db` (and, while nothing competes and the backlog
/// is more than a page, on up to `WORKERS` connections at once: see [`Run::spread`]).
pub async fn run(
    db: &mut Database,
    settings: &ReleaseSettings,
    options: &RunOptions,
) -> std::result::Result<RunReport, RunFailure> {
    let started = Instant::now();
    let budget = batch_budget(settings, db);
    let shared = Shared::new(settings, *budget.as_ref().unwrap_or(&MIN_BATCH_ALLOWANCE));
    let mut run = Run::new(settings, options, &shared);
    let outcome = match budget {
        Ok(budget) => {
            run.set_batch_budget(db, budget);
            run.drain(db).await
        }
        Err(error) => Err(error),
    };
    run.finish(db, outcome, started).await
}

/// How a worker's paging ended.
enum Paging {
    /// Nothing more is due in its share after the cursor.
    Drained,
    /// It must stop (a limit, a locked table, retries exhausted).
    Stopped(StopReason),
    /// A full page went by while nobody competed: more workers may join ([`Run::spread`]).
    Spread,
}

/// What the next batch works on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Work {
    /// The next page after the cursor.
    Page,
    /// The front of the run's deferred orders and holds.
    Deferred,
    /// The next rows of the current pass (no index serves the page).
    Pass,
    /// The orders left out for one held counter row, after waiting in its lock queue
    /// ([`Run::queue`]).
    Queue,
}

/// What the next queue batch works on: the row it waits for, and (a page of) the orders and
/// holds left out for it.
type QueueWork = ((Counter, i64), Vec<i64>, Vec<i64>);

/// The state of one run (or of one worker of it) between batches.
struct Run<'a> {
    settings: &'a ReleaseSettings,
    options: &'a RunOptions,
    shared: &'a Shared,
    params: BatchParams,
    /// The longest a batch may take: half the shop's `deadlock_timeout`.
    batch_budget: Duration,
    /// What the run's batches did, and what it remembers of the orders they met.
    books: Ledger,
    cursor: Cursor,
    /// The deferred pass's work still to try: (orders, holds).
    retry_queue: (Vec<i64>, Vec<i64>),
    /// The next queue batch's work.
    queue: Option<QueueWork>,
    /// Consecutive cuts of a batch at the smallest page size.
    cuts_at_min: u32,
    /// The due rows read in passes, when no index serves the keyset page.
    passes: Option<Passes>,
}

impl<'a> Run<'a> {
    fn new(settings: &'a ReleaseSettings, options: &'a RunOptions, shared: &'a Shared) -> Self {
        Run {
            settings,
            options,
            shared,
            params: BatchParams::new(settings, options.dry_run),
            batch_budget: Duration::ZERO,
            books: Ledger::new(options),
            cursor: Cursor::default(),
            retry_queue: (Vec::new(), Vec::new()),
            queue: None,
            cuts_at_min: 0,
            passes: None,
        }
    }

    /// The batch budget (see [`batch_budget`]), and how the run pages (passes when no index
    /// serves the keyset page).
    fn set_batch_budget(&mut self, db: &Database, budget: Duration) {
        self.batch_budget = budget;
        // A queue batch waits at most half its budget in the row's queue (a quarter of the
        // shop's deadlock_timeout), leaving the other half for its work.
        let queue_ms = (self.batch_budget.as_millis() / 2).max(1);
        self.params.queue_timeouts.lock_timeout = format!("{queue_ms}ms");
        self.books
            .report
            .missing_indexes
            .clone_from(&db.preflight.missing_indexes);
        if !db.preflight.expiry_index {
            self.passes = Some(Passes::new(self.settings.pass_size));
        }
    }

    /// The pages (spread over workers once the backlog proves larger than a page), then the
    /// deferred work; an error a retry cannot fix ends it.
    async fn drain(&mut self, db: &mut Database) -> Result<StopReason> {
        let spread = self.settings.workers > 1;
        match self.pages(db, spread).await? {
            Paging::Stopped(stop) => return Ok(stop),
            Paging::Drained => {}
            Paging::Spread => {
                if let Some(stop) = self.spread(db).await? {
                    return Ok(stop);
                }
            }
        }
        self.retry_deferred(db).await
    }

    /// Pages through this worker's share until it is drained or a stop reason; with `spread`,
    /// returns [`Paging::Spread`] after a full page while nobody competes.
    async fn pages(&mut self, db: &mut Database, spread: bool) -> Result<Paging> {
        loop {
            if let Some(stop) = self.start_batch() {
                return Ok(Paging::Stopped(stop));
            }
            let work = match self.passes.as_mut() {
                None => Work::Page,
                Some(passes) => {
                    let rules = self.params.rules();
                    if !passes
                        .refill(db, &mut self.cursor, rules, self.params.share)
                        .await?
                    {
                        return Ok(Paging::Drained);
                    }
                    Work::Pass
                }
            };
            let batch = match self.batch_with_retries(db, work).await? {
                Ok(batch) => batch,
                Err(stop) => return Ok(Paging::Stopped(stop)),
            };
            let drained = work == Work::Page && (batch.rows_paged as i64) < self.params.page_size;
            if batch.rows_paged > 0 {
                if let Some(stop) = self.record(db, batch).await? {
                    return Ok(Paging::Stopped(stop));
                }
            }
            if drained {
                return Ok(Paging::Drained);
            }
            if spread && self.shared.controller().parallel() {
                return Ok(Paging::Spread);
            }
        }
    }

    /// Whether another batch may start: not when asked to stop, when `MAX_BATCHES` batches of
    /// the run (all workers') have started, or when the deadline leaves no time for it. A
    /// batch that may start is counted at once, so workers never start more than the limit.
    fn start_batch(&self) -> Option<StopReason> {
        if self
            .options
            .stop
            .as_ref()
            .is_some_and(|stop| *stop.borrow())
        {
            return Some(StopReason::Stopped);
        }
        if past(self.options.deadline, self.allowance()) {
            return Some(StopReason::TimeBudget);
        }
        let max = self.settings.max_batches;
        let counted = self
            .shared
            .batches
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| {
                (n < max).then_some(n + 1)
            });
        counted.err().map(|_| StopReason::MaxBatches)
    }

    /// Time a batch is assumed to need: twice the slowest so far, at least the minimum.
    fn allowance(&self) -> Duration {
        (self.books.slowest * 2).max(MIN_BATCH_ALLOWANCE)
    }

    /// Rows a batch works on: the page size, as a count.
    fn page_rows(&self) -> usize {
        usize::try_from(self.params.page_size).unwrap_or(usize::MAX)
    }

    /// Completes the report: batch timings, the stop reason, what was deferred, and the
    /// backlog left (counted on the database clock).
    async fn finish(
        mut self,
        db: &Database,
        outcome: Result<StopReason>,
        started: Instant,
    ) -> std::result::Result<RunReport, RunFailure> {
        self.books.report.paid_orders_with_due_reservations = self.books.paid_orders.len() as u64;
        self.books.report.deferred =
            (self.books.deferred_orders.len() + self.books.deferred_holds.len()) as u64;
        self.books.report.pass_scans += self.passes.as_ref().map_or(0, |p| p.scans);
        self.books.report.controller = self.shared.controller().stats.clone();
        self.books.report.set_quantiles();
        let result = match outcome {
            // A locked table cannot be read either: the backlog stays uncounted (0).
            Ok(StopReason::TableLocked) => Ok(StopReason::TableLocked),
            Ok(reason) => self.count_backlog(db).await.map(|()| reason),
            Err(error) => Err(error),
        };
        let mut report = self.books.report;
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
        let rules = self.params.rules();
        let backlog = db.statements.backlog(&db.client, rules).await?;
        let count = backlog.due.max(0) as u64;
        self.books.report.backlog_remaining = if self.options.dry_run {
            // Nothing was changed: what a real run would leave is what is due now less the
            // due reservations it would have released.
            count.saturating_sub(self.books.due_released)
        } else {
            count
        };
        self.books.report.oldest_due_age_seconds = backlog.oldest_age_seconds;
        let paid_late = outbox::paid_after_release(&db.client, true).await?;
        self.books.report.paid_after_release = paid_late.max(0) as u64;
        if self.books.report.deferred > 0 {
            let orders: Vec<i64> = self.books.deferred_orders.iter().copied().collect();
            let holds: Vec<i64> = self.books.deferred_holds.iter().copied().collect();
            self.books.report.oldest_deferred_age_seconds = db
                .statements
                .deferred_age(&db.client, &orders, &holds, rules)
                .await?;
        }
        Ok(())
    }
}

fn past(deadline: Option<Instant>, allowance: Duration) -> bool {
    deadline.is_some_and(|d| Instant::now() + allowance >= d)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_run_gets_a_fresh_id() {
        let (a, b) = (RunOptions::default(), RunOptions::default());
        assert_ne!(a.run_id, b.run_id);
        assert!(uuid::Uuid::parse_str(&a.run_id).is_ok());
    }
}

//! The release run: batches one after another until nothing is due, `MAX_BATCHES` ran, or the
//! time budget is near; each batch retried with jittered backoff when it loses a lock conflict
//! to a shopper's transaction. Modeled on river's job cleaner: a loop of small bounded
//! transactions apart from what each does, and one result struct per run.

use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use tokio_postgres::error::SqlState;
use tracing::Instrument;

use super::batch::{self, BatchOutcome, BatchParams, Cursor, HotTurn, LongHeld, Source};
use super::controller::{self, Controller};
use super::pass::Passes;
use super::report::{RunReport, StopReason};
use crate::config::ReleaseSettings;
use crate::db::session::Database;
use crate::db::sql::{
    contention, outbox, CancelledOrder, Counter, PageRow, ReleasedReservation, Share,
};
use crate::error::{is_cancelled, is_conflict, sql_state, Error, Result};

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

/// What a committed batch released, as the on-commit hook sees it.
#[derive(Debug, Clone, Copy)]
pub struct Committed<'a> {
    pub released: &'a [ReleasedReservation],
    pub cancelled: &'a [CancelledOrder],
    pub run_id: &'a str,
}

/// The hook a run calls after each committed batch.
#[derive(Clone)]
pub struct OnCommit(std::sync::Arc<dyn Fn(Committed<'_>) + Send + Sync>);

impl OnCommit {
    pub fn new(hook: impl Fn(Committed<'_>) + Send + Sync + 'static) -> Self {
        OnCommit(std::sync::Arc::new(hook))
    }

    /// Hands a committed batch to the hook.
    pub fn call(&self, batch: Committed<'_>) {
        (self.0)(batch);
    }
}

impl std::fmt::Debug for OnCommit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("OnCommit")
    }
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

/// Least time a batch is assumed to need when checking the deadline.
const MIN_BATCH_ALLOWANCE: Duration = Duration::from_millis(250);
/// Longest pause between tries of a batch.
const MAX_BACKOFF: Duration = Duration::from_secs(2);
/// A batch cut by its time budget at this page size or smaller is too slow: a failure.
const MIN_PAGE_SIZE: i64 = 16;
/// How often the cancel request is sent again while a cut batch has not yet stopped.
const CANCEL_REPEAT: Duration = Duration::from_millis(20);
/// Cancel requests sent before cancelling through SQL (`pg_cancel_backend`).
const CANCEL_REQUESTS: u32 = 3;
/// Rounds of tries of the deferred work at the end of a run, at most: a hot row that checkouts
/// take in turns is free at some tries and not others, so a round that released some is
/// followed by another; one that released nothing ends them (the rows are held for long).
const RETRY_ROUNDS: usize = 4;
/// Orders (or holds) a queue batch works at most: it holds the hottest row from the moment it
/// leaves the queue until it commits, and every shopper queued behind it waits that long, so
/// it must be as short as one more checkout, not a page.
const QUEUE_BATCH_ORDERS: usize = 100;
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

/// What the workers of one run share: the controller, the count of batches, and the gate a
/// batch passes — one permit while nobody competes (the workers batch at once), every permit
/// while shoppers do (one batch at a time).
struct Shared {
    controller: std::sync::Mutex<Controller>,
    batches: AtomicU32,
    workers: AtomicU32,
    gate: tokio::sync::Semaphore,
}

impl Shared {
    fn new(settings: &ReleaseSettings, budget: Duration) -> Self {
        Shared {
            controller: std::sync::Mutex::new(Controller::new(settings, budget)),
            batches: AtomicU32::new(0),
            workers: AtomicU32::new(1),
            gate: tokio::sync::Semaphore::new(1),
        }
    }

    /// The controller (a poisoned lock cannot happen: no code panics while holding it; were
    /// it to, its state is still whole).
    fn controller(&self) -> std::sync::MutexGuard<'_, Controller> {
        self.controller
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Adds `n` workers.
    fn add_workers(&self, n: u32) {
        let workers = self.workers.fetch_add(n, Ordering::SeqCst) + n;
        self.gate.add_permits(n as usize);
        self.controller().stats.workers = workers;
    }

    /// Waits until a batch may run: alone while shoppers compete, beside the other workers'
    /// while nobody does.
    async fn pass_gate(&self) -> Option<tokio::sync::SemaphorePermit<'_>> {
        let permits = if self.controller().parallel() {
            1
        } else {
            self.workers.load(Ordering::SeqCst)
        };
        self.gate.acquire_many(permits).await.ok()
    }
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
    report: RunReport,
    /// Durations (ms) of the batches that released or paged rows.
    durations: Vec<f64>,
    slowest: Duration,
    /// Release delays (seconds) of the reservations released, for `release_delay_p95_seconds`.
    delays: Vec<f64>,
    cursor: Cursor,
    /// Orders no later batch of the run may take: in a dry run those already counted (their
    /// reservations stay active after the rollback); large orders too slow even alone.
    excluded_orders: HashSet<i64>,
    paid_orders: HashSet<i64>,
    due_released: u64,
    /// Orders and holds left out because another transaction held a row they need, not
    /// released since.
    deferred_orders: BTreeSet<i64>,
    deferred_holds: BTreeSet<i64>,
    /// The deferred pass's work still to try: (orders, holds).
    retry_queue: (Vec<i64>, Vec<i64>),
    /// The next queue batch's work.
    queue: Option<QueueWork>,
    /// Consecutive cuts of a batch at the smallest page size.
    cuts_at_min: u32,
    /// The due rows read in passes, when no index serves the keyset page.
    passes: Option<Passes>,
    /// Pass scans of the run's other workers.
    worker_scans: u32,
}

impl<'a> Run<'a> {
    fn new(settings: &'a ReleaseSettings, options: &'a RunOptions, shared: &'a Shared) -> Self {
        let mut report = RunReport::new(options.dry_run);
        report.run_id.clone_from(&options.run_id);
        Run {
            settings,
            options,
            shared,
            params: BatchParams::new(settings, options.dry_run),
            batch_budget: Duration::ZERO,
            report,
            durations: Vec::new(),
            slowest: Duration::ZERO,
            delays: Vec::new(),
            cursor: Cursor::default(),
            excluded_orders: HashSet::new(),
            paid_orders: HashSet::new(),
            due_released: 0,
            deferred_orders: BTreeSet::new(),
            deferred_holds: BTreeSet::new(),
            retry_queue: (Vec::new(), Vec::new()),
            queue: None,
            cuts_at_min: 0,
            passes: None,
            worker_scans: 0,
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
        self.report
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

    /// Opens up to `WORKERS` - 1 more connections (as many as the server has free beyond
    /// [`RESERVED_CONNECTIONS`]) and pages with all of them at once, each its own share of the
    /// orders after the cursor (what came before was this worker's), taking turns only to
    /// hold hot rows ([`HotTurn`]); then takes their reports and deferred work back. Without a
    /// connection to spare it goes on alone.
    async fn spread(&mut self, db: &mut Database) -> Result<Option<StopReason>> {
        let mut extra = self.open_workers(db).await;
        if extra.is_empty() {
            return Ok(match self.pages(db, false).await? {
                Paging::Stopped(stop) => Some(stop),
                Paging::Drained | Paging::Spread => None,
            });
        }
        let of = extra.len() as i64 + 1;
        let turn = HotTurn::default();
        let mut others: Vec<Run<'a>> = (1..of)
            .map(|index| self.fork(Share { index, of }, turn.clone()))
            .collect();
        let long_held = std::mem::take(&mut self.params.long_held);
        self.params = self.params.for_worker(Share { index: 0, of }, turn);
        self.params.long_held = long_held;
        self.shared.add_workers(extra.len() as u32);
        tracing::debug!(workers = of, "draining with more connections");
        let mine = self.pages(db, false);
        let theirs = others
            .iter_mut()
            .zip(extra.iter_mut())
            .map(|(run, db)| run.pages(db, false));
        let (mine, theirs) = tokio::join!(mine, futures_util::future::join_all(theirs));
        self.params.share = Share::ALL;
        self.params.hot_turn = None;
        let mut stop = None;
        let mut failure = None;
        for (result, other) in std::iter::once(mine)
            .chain(theirs)
            .zip(std::iter::once(None).chain(others.into_iter().map(Some)))
        {
            if let Some(other) = other {
                self.absorb(other);
            }
            match result {
                Ok(Paging::Stopped(reason)) => stop = stop.or(Some(reason)),
                Ok(Paging::Drained | Paging::Spread) => {}
                Err(error) => failure = failure.or(Some(error)),
            }
        }
        failure.map_or(Ok(stop), Err)
    }

    /// The extra connections a spread run may use: `WORKERS` - 1 at most, within the server's
    /// free connections less [`RESERVED_CONNECTIONS`]; one that fails to open is logged and
    /// the run goes on with fewer.
    async fn open_workers(&self, db: &Database) -> Vec<Database> {
        let free = match contention::free_connections(&db.client).await {
            Ok(free) => free,
            Err(error) => {
                tracing::warn!(error = %error.chain(), "could not count the free connections; draining alone");
                return Vec::new();
            }
        };
        let want = i64::from(self.settings.workers - 1).min(free - RESERVED_CONNECTIONS);
        // A pooler (PgBouncer) accepts the connection at once and may hold its first statement
        // until a server connection is free: a worker that is not ready soon is not waited for.
        let open = || tokio::time::timeout(WORKER_OPEN_TIMEOUT, db.sibling());
        let opened = futures_util::future::join_all((0..want.max(0)).map(|_| open())).await;
        opened
            .into_iter()
            .filter_map(|opened| match opened {
                Ok(Ok(worker)) => Some(worker),
                Ok(Err(error)) => {
                    tracing::warn!(error = %error.chain(), "could not open a worker's connection; draining with fewer");
                    None
                }
                Err(_) => {
                    tracing::warn!(timeout_ms = WORKER_OPEN_TIMEOUT.as_millis() as u64,
                        "a worker's connection was not ready in time (a full pool?); draining with fewer");
                    None
                }
            })
            .collect()
    }

    /// Another worker of this run, starting at this one's cursor with its own share.
    fn fork(&self, share: Share, turn: HotTurn) -> Run<'a> {
        let mut run = Run::new(self.settings, self.options, self.shared);
        run.params = self.params.for_worker(share, turn);
        run.batch_budget = self.batch_budget;
        run.cursor = self.cursor;
        run.slowest = self.slowest;
        // Orders this worker counted (a dry run), left for later (too large) or deferred: the
        // others must not take them again when a later line of theirs comes up in a share.
        run.excluded_orders = self
            .excluded_orders
            .iter()
            .chain(&self.deferred_orders)
            .copied()
            .collect();
        run.passes = self
            .passes
            .as_ref()
            .map(|_| Passes::new(self.settings.pass_size));
        run
    }

    /// Takes back what another worker did and left.
    fn absorb(&mut self, other: Run<'_>) {
        let Run {
            report,
            durations,
            slowest,
            delays,
            excluded_orders,
            paid_orders,
            due_released,
            deferred_orders,
            deferred_holds,
            params,
            passes,
            ..
        } = other;
        self.report.counts += report.counts;
        self.report.batches += report.batches;
        self.report.batch_retries += report.batch_retries;
        self.report.large_orders_left += report.large_orders_left;
        if self.report.locked_tables.is_empty() {
            self.report.locked_tables = report.locked_tables;
        }
        merge_units(&mut self.report.units_by_variant, report.units_by_variant);
        merge_units(&mut self.report.units_by_drop, report.units_by_drop);
        self.durations.extend(durations);
        self.slowest = self.slowest.max(slowest);
        self.delays.extend(delays);
        let deferred = &self.deferred_orders;
        let excluded: Vec<i64> = excluded_orders
            .into_iter()
            .filter(|order| !deferred.contains(order))
            .collect();
        self.excluded_orders.extend(excluded);
        self.paid_orders.extend(paid_orders);
        self.due_released += due_released;
        self.deferred_orders.extend(deferred_orders);
        self.deferred_holds.extend(deferred_holds);
        self.params.long_held.extend(&params.long_held);
        self.worker_scans += passes.map_or(0, |p| p.scans);
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

    /// Once the pages are drained: the orders left out for a counter row that stayed held are
    /// taken by queue batches, each waiting in that row's lock queue (see [`Source::Queue`]);
    /// then more tries, polling again, of whatever is still deferred (the cursor has passed
    /// it): round after round while a round releases some, [`RETRY_ROUNDS`] at most. What is
    /// still held then is left for the next run.
    async fn retry_deferred(&mut self, db: &mut Database) -> Result<StopReason> {
        if let Some(stop) = self.queue_batches(db).await? {
            return Ok(stop);
        }
        for _ in 0..RETRY_ROUNDS {
            let before = self.deferred_orders.len() + self.deferred_holds.len();
            if before == 0 {
                break;
            }
            if let Some(stop) = self.retry_round(db).await? {
                return Ok(stop);
            }
            if self.deferred_orders.len() + self.deferred_holds.len() >= before {
                break;
            }
        }
        Ok(StopReason::Drained)
    }

    /// One try of every deferred order and hold, a page at a time (each batch polling for the
    /// rows it finds held).
    async fn retry_round(&mut self, db: &mut Database) -> Result<Option<StopReason>> {
        self.retry_queue = (
            self.deferred_orders.iter().copied().collect(),
            self.deferred_holds.iter().copied().collect(),
        );
        while !self.retry_queue.0.is_empty() || !self.retry_queue.1.is_empty() {
            if let Some(stop) = self.start_batch() {
                return Ok(Some(stop));
            }
            let batch = match self.batch_with_retries(db, Work::Deferred).await? {
                Ok(batch) => batch,
                Err(stop) => return Ok(Some(stop)),
            };
            if let Some(stop) = self.record(db, batch).await? {
                return Ok(Some(stop));
            }
        }
        Ok(None)
    }

    /// One queue batch after another for each counter row the run found held for long (most
    /// orders first), [`QUEUE_BATCH_ORDERS`] of its still-deferred orders at a time, until the row's orders are
    /// done or a wait for it runs out. The run's record of held rows is emptied: the last try
    /// polls again for every row.
    async fn queue_batches(&mut self, db: &mut Database) -> Result<Option<StopReason>> {
        let queues = std::mem::take(&mut self.params.long_held).into_queues();
        for (row, owners) in queues {
            loop {
                let orders: Vec<i64> = owners
                    .orders
                    .iter()
                    .filter(|o| self.deferred_orders.contains(o))
                    .take(QUEUE_BATCH_ORDERS)
                    .copied()
                    .collect();
                let holds: Vec<i64> = owners
                    .holds
                    .iter()
                    .filter(|h| self.deferred_holds.contains(h))
                    .take(QUEUE_BATCH_ORDERS.saturating_sub(orders.len()))
                    .copied()
                    .collect();
                if orders.is_empty() && holds.is_empty() {
                    break;
                }
                if let Some(stop) = self.start_batch() {
                    return Ok(Some(stop));
                }
                self.queue = Some((row, orders, holds));
                let batch = match self.batch_with_retries(db, Work::Queue).await? {
                    Ok(batch) => batch,
                    Err(stop) => return Ok(Some(stop)),
                };
                let timed_out = batch.counts.queue_timeouts > 0;
                let progress =
                    !batch.released_orders.is_empty() || !batch.released_holds.is_empty();
                if let Some(stop) = self.record(db, batch).await? {
                    return Ok(Some(stop));
                }
                if timed_out || !progress {
                    break;
                }
            }
        }
        self.params.long_held = LongHeld::default();
        Ok(None)
    }

    /// Time a batch is assumed to need: twice the slowest so far, at least the minimum.
    fn allowance(&self) -> Duration {
        (self.slowest * 2).max(MIN_BATCH_ALLOWANCE)
    }

    /// Rows a batch works on: the page size, as a count.
    fn page_rows(&self) -> usize {
        usize::try_from(self.params.page_size).unwrap_or(usize::MAX)
    }

    /// The front of the retry queue, at most a page of it.
    fn retry_chunk(&self) -> (Vec<i64>, Vec<i64>) {
        let n = self.page_rows();
        let orders: Vec<i64> = self.retry_queue.0.iter().take(n).copied().collect();
        let rest = n.saturating_sub(orders.len());
        let holds = self.retry_queue.1.iter().take(rest).copied().collect();
        (orders, holds)
    }

    /// One batch, tried again after each lock conflict and, with half the rows, after each
    /// cut by the batch budget; `Err(stop)` when the run must stop instead (retries exhausted,
    /// or no time left for another try).
    async fn batch_with_retries(
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
            let gate = self.shared.pass_gate().await;
            let started = Instant::now();
            let tried = timed_batch(
                db,
                &self.params,
                source,
                &self.excluded_orders,
                Budget::Whole(self.batch_budget),
            )
            .instrument(span.clone())
            .await;
            drop(gate);
            let error = match tried {
                Ok(batch) => {
                    let took = started.elapsed();
                    self.succeeded(took, work, &chunk, &rows, &batch);
                    self.rest(took).await;
                    return Ok(Ok(batch));
                }
                Err(error) => error,
            };
            if let Some(stop) = self.after_failed_try(db, error, attempt, &span).await? {
                return Ok(Err(stop));
            }
            attempt += 1;
        }
    }

    /// While shoppers compete, rests as long as the batch took (at most [`MAX_REST`]) before
    /// the next: the release then takes at most half of the time on the hot rows and of a
    /// core, and the checkouts the rest. Nothing while nobody competes.
    async fn rest(&self, took: Duration) {
        if !self.shared.controller().parallel() {
            tokio::time::sleep(took.min(MAX_REST)).await;
        }
    }

    /// Decides what follows a failed try: another try (None, after a pause), a stop, or the
    /// run's failure.
    async fn after_failed_try(
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
        if attempt >= self.settings.batch_max_attempts {
            tracing::warn!(parent: span, attempts = attempt, error = %error.chain(),
                "batch kept losing lock conflicts; leaving the rest to the next run");
            return Ok(Some(StopReason::RetriesExhausted));
        }
        let pause = backoff(self.settings.retry_backoff_ms, attempt);
        if past(self.options.deadline, pause + self.allowance()) {
            return Ok(Some(StopReason::TimeBudget));
        }
        self.report.batch_retries += 1;
        tokio::time::sleep(pause).await;
        Ok(None)
    }

    /// A batch cut by its budget: tried again at once with half the rows, unless it was small
    /// already twice in a row — then it is too slow, a failure.
    fn after_cut(&mut self, error: Error, span: &tracing::Span) -> Result<()> {
        let what = match &error {
            Error::Database { context, .. } => *context,
            _ => "a batch",
        };
        let floor = self
            .settings
            .batch_size
            .unwrap_or(self.settings.batch_size_min);
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
        self.report.batch_retries += 1;
        tracing::warn!(parent: span, during = what, page_size = self.params.page_size,
            budget_ms = self.batch_budget.as_millis() as u64,
            "batch cut by its time budget; trying again with half the rows");
        Ok(())
    }

    /// What may make a slow batch fast: the recommended indexes that are missing.
    fn hint(&self) -> String {
        let missing = &self.report.missing_indexes;
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
    fn succeeded(
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
        self.slowest = self.slowest.max(took);
        self.durations.push(took.as_secs_f64() * 1000.0);
        if work == Work::Deferred {
            self.retry_queue.0.drain(..chunk.0.len());
            self.retry_queue.1.drain(..chunk.1.len());
        }
        if let (Some(passes), Work::Pass) = (self.passes.as_mut(), work) {
            passes.consume(done.0, done.1);
        }
    }

    /// A table the release needs is locked by another session (a migration, a `LOCK TABLE`):
    /// no batch can get through until it is released, so the run stops; the next one goes on.
    fn table_locked(&mut self, tables: Vec<String>) -> StopReason {
        tracing::warn!(tables = ?tables,
            "a table the release needs is locked by another session (a migration, a LOCK TABLE); stopping, the next run goes on");
        self.report.locked_tables = tables;
        StopReason::TableLocked
    }

    /// Books a batch, then works the large orders it left for batches of their own.
    async fn record(
        &mut self,
        db: &mut Database,
        batch: BatchOutcome,
    ) -> Result<Option<StopReason>> {
        if !batch.locked_tables.is_empty() {
            return Ok(Some(self.table_locked(batch.locked_tables)));
        }
        let large = batch.large_orders.clone();
        self.book(batch);
        for order in large {
            if let Some(stop) = self.start_batch() {
                return Ok(Some(stop));
            }
            self.large_order(db, order).await?;
        }
        Ok(None)
    }

    /// A batch of one order with more active lines than a page. Its budget runs from the
    /// moment it first locks a hot row: expiring its own lines holds nothing a shopper needs,
    /// and is bounded by `STATEMENT_TIMEOUT_MS`. Cut even so (or losing a lock conflict), the
    /// order is left for the next run (`large_orders_left`) and the run goes on without it.
    async fn large_order(&mut self, db: &mut Database, order: i64) -> Result<()> {
        let budget = Budget::FromHotPhase {
            hot: self.batch_budget,
            whole: Duration::from_millis(u64::from(self.settings.statement_timeout_ms)),
        };
        let span = tracing::info_span!("large_order", order);
        let gate = self.shared.pass_gate().await;
        let tried = timed_batch(
            db,
            &self.params,
            Source::Alone(order),
            &self.excluded_orders,
            budget,
        )
        .instrument(span.clone())
        .await;
        drop(gate);
        let error = match tried {
            Ok(mut batch) => {
                batch.counts.large_orders = u64::from(!batch.released_orders.is_empty());
                self.book(batch);
                return Ok(());
            }
            Err(TryError::Cut(error)) => error,
            Err(TryError::Other(error)) if is_conflict(&error) || is_cancelled(&error) => error,
            Err(TryError::Other(error)) => return Err(error),
        };
        tracing::warn!(parent: &span, order, error = %error.chain(),
            "a large order could not be released within its budget even alone; leaving it for the next run");
        self.report.large_orders_left += 1;
        self.excluded_orders.insert(order);
        Ok(())
    }

    /// Adds a batch to the report and moves the cursor on.
    fn book(&mut self, batch: BatchOutcome) {
        self.report.batches += 1;
        if self.options.dry_run {
            self.excluded_orders
                .extend(batch.released_orders.iter().copied());
        }
        self.paid_orders.extend(batch.paid_orders.iter().copied());
        self.due_released += batch.due_reservations_released;
        for id in &batch.released_orders {
            self.deferred_orders.remove(id);
        }
        for id in &batch.released_holds {
            self.deferred_holds.remove(id);
        }
        self.deferred_orders
            .extend(batch.deferred_orders.iter().copied());
        self.deferred_holds
            .extend(batch.deferred_holds.iter().copied());
        self.params.long_held.extend(&batch.long_held);
        log_batch(self.report.batches, &batch);
        // Only the lines that were due themselves have a release delay: a line released with
        // its order before its own expiry was not late.
        self.delays.extend(
            batch
                .released
                .iter()
                .filter(|r| r.was_due)
                .map(|r| r.delay_seconds),
        );
        if let (Some(hook), false) = (&self.options.on_commit, self.options.dry_run) {
            hook.call(Committed {
                released: &batch.released,
                cancelled: &batch.cancelled,
                run_id: &self.options.run_id,
            });
        }
        if batch.rows_paged > 0 && self.passes.is_none() {
            self.cursor = batch.next_cursor;
        }
        add_batch(&mut self.report, batch);
    }

    /// Completes the report: batch timings, the stop reason, what was deferred, and the
    /// backlog left (counted on the database clock).
    async fn finish(
        mut self,
        db: &Database,
        outcome: Result<StopReason>,
        started: Instant,
    ) -> std::result::Result<RunReport, RunFailure> {
        self.report.paid_orders_with_due_reservations = self.paid_orders.len() as u64;
        self.report.deferred = (self.deferred_orders.len() + self.deferred_holds.len()) as u64;
        self.report.pass_scans = self.passes.as_ref().map_or(0, |p| p.scans) + self.worker_scans;
        self.report.controller = self.shared.controller().stats.clone();
        self.report.batch_durations_ms = std::mem::take(&mut self.durations);
        self.report.delays = std::mem::take(&mut self.delays);
        self.report.set_quantiles();
        let result = match outcome {
            // A locked table cannot be read either: the backlog stays uncounted (0).
            Ok(StopReason::TableLocked) => Ok(StopReason::TableLocked),
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
        let rules = self.params.rules();
        let backlog = db.statements.backlog(&db.client, rules).await?;
        let count = backlog.due.max(0) as u64;
        self.report.backlog_remaining = if self.options.dry_run {
            // Nothing was changed: what a real run would leave is what is due now less the
            // due reservations it would have released.
            count.saturating_sub(self.due_released)
        } else {
            count
        };
        self.report.oldest_due_age_seconds = backlog.oldest_age_seconds;
        let paid_late = outbox::paid_after_release(&db.client, true).await?;
        self.report.paid_after_release = paid_late.max(0) as u64;
        if self.report.deferred > 0 {
            let orders: Vec<i64> = self.deferred_orders.iter().copied().collect();
            let holds: Vec<i64> = self.deferred_holds.iter().copied().collect();
            self.report.oldest_deferred_age_seconds = db
                .statements
                .deferred_age(&db.client, &orders, &holds, rules)
                .await?;
        }
        Ok(())
    }
}

/// The longest a batch may take: half the shop's `deadlock_timeout` (the setting, else the
/// server's), which must leave room for `LOCK_TIMEOUT_MS`.
pub(super) fn batch_budget(settings: &ReleaseSettings, db: &Database) -> Result<Duration> {
    let deadlock_ms = settings
        .shop_deadlock_timeout_ms
        .map_or(db.preflight.deadlock_timeout_ms, i64::from);
    if i64::from(settings.lock_timeout_ms) * 2 > deadlock_ms {
        return Err(Error::Setting {
            name: "LOCK_TIMEOUT_MS".into(),
            reason: format!(
                "{} ms must be at most half the shop's deadlock_timeout ({deadlock_ms} ms, \
                 SHOP_DEADLOCK_TIMEOUT_MS or the server's)",
                settings.lock_timeout_ms
            ),
        });
    }
    Ok(Duration::from_millis((deadlock_ms / 2).max(1) as u64))
}

/// Why a try of a batch failed: cut by its budget (the statement it was running was
/// cancelled by us), or anything else.
pub(super) enum TryError {
    Cut(Error),
    Other(Error),
}

/// How long a batch may run before it is cut.
#[derive(Debug, Clone, Copy)]
pub(super) enum Budget {
    /// From its start: every batch but a large order's.
    Whole(Duration),
    /// `hot` from the moment it first locks a hot row, and at most `whole` from its start: a
    /// batch of one large order.
    FromHotPhase { hot: Duration, whole: Duration },
}

impl Budget {
    /// When a batch that started at `started` is cut, given when it first locked a hot row.
    fn cut_at(self, started: Instant, hot_since: Option<Instant>) -> Instant {
        match self {
            Budget::Whole(budget) => started + budget,
            Budget::FromHotPhase { hot, whole } => {
                let whole = started + whole;
                hot_since.map_or(whole, |at| (at + hot).min(whole))
            }
        }
    }
}

/// Runs one batch within `budget`: past it, the statement running is cancelled (through
/// PostgreSQL's cancel protocol), the batch rolls back, and the error says it was cut. In any
/// lock cycle with a shopper it is thus the batch that gives up, before the shopper's
/// deadlock check, and no shopper waits on a batch longer than the budget.
pub(super) async fn timed_batch(
    db: &mut Database,
    params: &BatchParams,
    source: Source<'_>,
    exclude: &HashSet<i64>,
    budget: Budget,
) -> std::result::Result<BatchOutcome, TryError> {
    let mut canceller = db.canceller();
    // The hot phase of an earlier batch must not set this one's timer: read before the batch
    // resets it, it could lie past the budget already (a release on request tries again after
    // a backoff) and cut the batch at once.
    params.hot_phase.reset();
    let mut hot = params.hot_phase.subscribe();
    let started = Instant::now();
    let cut = {
        let batch = batch::run(db, params, source, exclude);
        tokio::pin!(batch);
        loop {
            let cut_at = budget.cut_at(started, *hot.borrow_and_update());
            tokio::select! {
                result = &mut batch => return result.map_err(TryError::Other),
                () = tokio::time::sleep_until(cut_at.into()) => break,
                Ok(()) = hot.changed() => {}
            }
        }
        let mut sent = 0_u32;
        loop {
            // A cancel request that has not stopped the batch after a few repeats may never
            // have reached the server (a proxy that drops it): cancel through SQL instead.
            if sent < CANCEL_REQUESTS {
                canceller.cancel().await;
            } else {
                canceller.cancel_through_sql().await;
            }
            sent += 1;
            tokio::select! {
                result = &mut batch => break result,
                () = tokio::time::sleep(CANCEL_REPEAT) => {}
            }
        }
    };
    // A cancel request sent may still be on its way: it must not reach the next batch's
    // statements (nor, through a pooler, another client's). The next batch gets a new session.
    db.reconnect().await.map_err(TryError::Other)?;
    cut.map_err(|e| {
        if is_cancelled(&e) {
            TryError::Cut(e)
        } else {
            TryError::Other(e)
        }
    })
}

/// A statement the server cancelled by its `statement_timeout` (not our budget): too slow.
pub(super) fn statement_timeout(error: Error, hint: String) -> Error {
    let what = match &error {
        Error::Database { context, .. } => *context,
        _ => "a statement",
    };
    Error::TooSlow {
        what,
        why: format!(
            "it hit the statement timeout (STATEMENT_TIMEOUT_MS): {}",
            error.chain()
        ),
        hint,
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
        reservations_released = batch.counts.reservations_released,
        units_released = batch.counts.units_released,
        orders_cancelled = batch.counts.orders_cancelled,
        skipped_locked = batch.counts.skipped_locked,
        deferred_orders = batch.deferred_orders.len(),
        deferred_holds = batch.deferred_holds.len(),
        no_longer_due = batch.counts.no_longer_due,
        clamped_variants = batch.counts.clamped_variants,
        clamped_drops = batch.counts.clamped_drops,
        "batch done"
    );
}

/// Adds the units of `more` to `into`, when the report keeps them (a dry run only).
fn merge_units(into: &mut Option<BTreeMap<i64, i64>>, more: Option<BTreeMap<i64, i64>>) {
    if let (Some(into), Some(more)) = (into.as_mut(), more) {
        for (id, units) in more {
            *into.entry(id).or_default() += units;
        }
    }
}

fn add_batch(report: &mut RunReport, batch: BatchOutcome) {
    report.counts += batch.counts;
    merge_units(&mut report.units_by_variant, Some(batch.units_by_variant));
    merge_units(&mut report.units_by_drop, Some(batch.units_by_drop));
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

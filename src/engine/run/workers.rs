//! A run's workers: more connections once the backlog proves larger than a page while nobody
//! competes, each draining its own share, taking turns to hold hot rows, and what they share.

use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use super::*;
use crate::config::ReleaseSettings;
use crate::db::session::Database;
use crate::db::sql::{contention, Share};
use crate::engine::batch::HotTurn;
use crate::engine::controller::Controller;
use crate::engine::pass::Passes;
use crate::engine::run_report::StopReason;
use crate::error::Result;

/// What the workers of one run share: the controller, the count of batches, and the gate a
/// batch passes — one permit while nobody competes (the workers batch at once), every permit
/// while shoppers do (one batch at a time).
pub(super) struct Shared {
    pub(super) controller: std::sync::Mutex<Controller>,
    pub(super) batches: AtomicU32,
    pub(super) workers: AtomicU32,
    pub(super) gate: tokio::sync::Semaphore,
}

impl Shared {
    pub(super) fn new(settings: &ReleaseSettings, budget: Duration) -> Self {
        Shared {
            controller: std::sync::Mutex::new(
                Controller::new(settings, budget).sized_from_what_is_due(),
            ),
            batches: AtomicU32::new(0),
            workers: AtomicU32::new(1),
            gate: tokio::sync::Semaphore::new(1),
        }
    }

    /// The controller (a poisoned lock cannot happen: no code panics while holding it; were
    /// it to, its state is still whole).
    pub(super) fn controller(&self) -> std::sync::MutexGuard<'_, Controller> {
        self.controller
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Adds `n` workers.
    pub(super) fn add_workers(&self, n: u32) {
        let workers = self.workers.fetch_add(n, Ordering::SeqCst) + n;
        self.gate.add_permits(n as usize);
        self.controller().stats.workers = workers;
    }

    /// Waits until a batch may run: alone while shoppers compete, beside the other workers'
    /// while nobody does.
    pub(super) async fn pass_gate(&self) -> Option<tokio::sync::SemaphorePermit<'_>> {
        let permits = if self.controller().parallel() {
            1
        } else {
            self.workers.load(Ordering::SeqCst)
        };
        self.gate.acquire_many(permits).await.ok()
    }
}

impl<'a> Run<'a> {
    /// Opens up to `WORKERS` - 1 more connections (as many as the server has free beyond
    /// [`RESERVED_CONNECTIONS`]) and pages with all of them at once, each its own share of the
    /// orders after the cursor (what came before was this worker's), taking turns only to
    /// hold hot rows ([`HotTurn`]); then takes their reports and deferred work back. Without a
    /// connection to spare it goes on alone.
    pub(super) async fn spread(&mut self, db: &mut Database) -> Result<Option<StopReason>> {
        let mut extra = self.open_workers(db).await;
        if extra.is_empty() {
            return Ok(match self.pages(db, false).await? {
                Paging::Stopped(stop) => Some(stop),
                Paging::Drained | Paging::Spread => None,
            });
        }
        let of = extra.len() as i64 + 1;
        if let Some(passes) = self.passes.as_mut() {
            passes.rewind(&mut self.cursor);
        }
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
                self.merge_worker(other);
            }
            match result {
                Ok(Paging::Stopped(reason)) => stop = stop.or(Some(reason)),
                Ok(Paging::Drained | Paging::Spread) => {}
                Err(error) => failure = failure.or(Some(error)),
            }
        }
        failure.map_or(Ok(stop), Err)
    }

    /// The extra connections a spread run may use: `WORKERS` - 1 at most (`POOLED_WORKERS` - 1
    /// behind a pooler or proxy, whose pool the role cannot read), each opened only while the
    /// server's free connections — every limit it shows, see
    /// [`contention::FREE_CONNECTIONS`] — leave more than [`RESERVED_CONNECTIONS`] for the shop,
    /// and counted again once open: a connection that took one the shop needed (another run
    /// opening workers at the same moment, shoppers arriving) is closed again at once. One that
    /// fails to open is logged and the run goes on with fewer.
    pub(super) async fn open_workers(&self, db: &Database) -> Vec<Database> {
        let mut want = self.settings.workers.saturating_sub(1);
        if db.preflight.behind_pooler {
            want = want.min(self.settings.pooled_workers.saturating_sub(1));
        }
        let mut opened = Vec::new();
        while (opened.len() as u32) < want {
            if !matches!(spare_connections(db).await, Some(spare) if spare > 0) {
                break;
            }
            let worker = match tokio::time::timeout(WORKER_OPEN_TIMEOUT, db.sibling()).await {
                Ok(Ok(worker)) => worker,
                Ok(Err(error)) => {
                    tracing::warn!(error = %error.chain(), "could not open a worker's connection; draining with fewer");
                    break;
                }
                Err(_) => {
                    // A pooler (PgBouncer) accepts the connection at once and may hold its first
                    // statement until a server connection is free: not waited for.
                    tracing::warn!(timeout_ms = WORKER_OPEN_TIMEOUT.as_millis() as u64,
                        "a worker's connection was not ready in time (a full pool?); draining with fewer");
                    break;
                }
            };
            // Counted again with the new connection open: the count must not have fallen below
            // the reserve (>= here: the worker's own connection is among the open ones now).
            if !matches!(spare_connections(db).await, Some(spare) if spare >= 0) {
                tracing::info!(
                    "a worker's connection left the shop too few free connections; closed it"
                );
                drop(worker);
                break;
            }
            opened.push(worker);
        }
        opened
    }

    /// Another worker of this run, starting at this one's cursor with its own share.
    pub(super) fn fork(&self, share: Share, turn: HotTurn) -> Run<'a> {
        let mut run = Run::new(self.settings, self.options, self.shared);
        run.params = self.params.for_worker(share, turn);
        run.batch_budget = self.batch_budget;
        run.cursor = self.cursor;
        run.books = self.books.for_worker(self.options);
        run.passes = self
            .passes
            .as_ref()
            .map(|_| Passes::new(self.settings.pass_size));
        run
    }

    /// Takes back what another worker did and left.
    pub(super) fn merge_worker(&mut self, other: Run<'_>) {
        let Run {
            books,
            params,
            passes,
            ..
        } = other;
        self.books.merge(books);
        self.books.report.pass_scans += passes.map_or(0, |p| p.scans);
        self.params.long_held.extend(&params.long_held);
    }
}

/// The free connections beyond the shop's reserve ([`RESERVED_CONNECTIONS`]): a worker's
/// connection may be opened while this is positive, and kept if it is not negative once open.
/// None when they cannot be counted (no more workers then).
async fn spare_connections(db: &Database) -> Option<i64> {
    match contention::free_connections(&db.client).await {
        Ok(free) => Some(free - RESERVED_CONNECTIONS),
        Err(error) => {
            tracing::warn!(error = %error.chain(), "could not count the free connections; no more workers");
            None
        }
    }
}

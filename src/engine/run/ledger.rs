//! A run's books: each batch booked into the report and the run's memory, and large orders
//! worked in batches of their own.

use std::time::{Duration, Instant};

use tracing::Instrument;

use super::*;
use crate::db::session::Database;
use crate::engine::batch::{BatchOutcome, Source};
use crate::engine::budget::{timed_batch, Budget, TryError};
use crate::engine::retry::{Poller, RetryPolicy};
use crate::engine::run_report::{RunReport, StopReason};
use crate::error::{is_cancelled, is_conflict, Result};

impl<'a> Run<'a> {
    /// A table the release needs is locked by another session (a migration, a `LOCK TABLE`):
    /// no batch can get through until it is released, so the run stops; the next one goes on.
    pub(super) fn table_locked(&mut self, tables: Vec<String>) -> StopReason {
        tracing::warn!(tables = ?tables,
            "a table the release needs is locked by another session (a migration, a LOCK TABLE); stopping, the next run goes on");
        self.books.report.locked_tables = tables;
        StopReason::TableLocked
    }

    /// Books a batch, then works the large orders it left for batches of their own.
    pub(super) async fn record(
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
            if let Some(stop) = self.large_order(db, order).await? {
                return Ok(Some(stop));
            }
        }
        Ok(None)
    }

    /// An order with more active lines than a page, released alone in parts of at most a
    /// page of lines each (see [`Source::Alone`]): each part is a batch of its own, claiming the
    /// order row and holding it no longer than the batch budget — the buyer's payment, which
    /// locks that row, waits at most one part. The first part takes [`MIN_PAGE_SIZE`] lines,
    /// each next one what takes the batch target at the rate the last one measured
    /// ([`Self::next_part_lines`]). A part that loses a lock conflict is tried again as it was,
    /// by the rule of every batch ([`Self::pause_before_retry`]). A part cut by its budget (or
    /// still losing lock conflicts after `BATCH_MAX_ATTEMPTS` tries) is tried again with half
    /// the lines; cut at [`MIN_PAGE_SIZE`] lines, the order
    /// is left for the next run (`large_orders_left`), which finishes it — its lines released
    /// with the instant the first part cancelled it — and the run goes on without it.
    pub(super) async fn large_order(
        &mut self,
        db: &mut Database,
        order: i64,
    ) -> Result<Option<StopReason>> {
        let (mut lines, budget) = self.large_order_parts();
        let most_lines = self.params.page_size.max(MIN_PAGE_SIZE);
        let mut parts = 0_u64;
        let mut conflicts = 0_u32;
        let mut held: Option<Poller> = None;
        loop {
            let span = tracing::info_span!("large_order", order, part = parts + 1, lines);
            let gate = self.shared.pass_gate().await;
            let started = Instant::now();
            let tried = timed_batch(
                db,
                &self.params,
                Source::Alone { order, lines },
                &self.books.excluded_orders,
                budget,
            )
            .instrument(span.clone())
            .await;
            let took = started.elapsed();
            drop(gate);
            let error = match tried.map(|batch| self.book_part(batch, lines, &mut parts)) {
                Ok(Part::Last) => return Ok(None),
                Ok(Part::Held) if self.held_order_freed(&mut held).await => continue,
                Ok(Part::Held) => {
                    self.leave_large_order(order);
                    return Ok(None);
                }
                Ok(Part::Released(released)) => {
                    if let Some(stop) = self.start_batch() {
                        return Ok(Some(stop));
                    }
                    lines = self.next_part_lines(released, took, most_lines);
                    continue;
                }
                Err(TryError::Other(error)) if is_conflict(&error) => {
                    // Lost a lock conflict to a shopper: the same part again, as any batch.
                    conflicts += 1;
                    match self.pause_before_retry(conflicts).await {
                        Ok(()) => continue,
                        Err(StopReason::RetriesExhausted) => error,
                        Err(stop) => return Ok(Some(stop)),
                    }
                }
                Err(TryError::Cut(error)) => error,
                Err(TryError::Other(error)) if is_conflict(&error) || is_cancelled(&error) => error,
                Err(TryError::Other(error)) => return Err(error),
            };
            if let Some(half) = self.smaller_part(lines) {
                tracing::debug!(parent: &span, order, lines, error = %error.chain(),
                    "a part of a large order was cut; trying again with half the lines");
                lines = half;
                continue;
            }
            tracing::warn!(parent: &span, order, error = %error.chain(),
                "a part of a large order could not be released within its budget; leaving it for the next run");
            self.leave_large_order(order);
            return Ok(None);
        }
    }

    /// The lines of a part tried again after it was cut (counted as a batch retry, as any cut
    /// batch): half as many, unless it was the smallest part already or a dry run's whole order.
    fn smaller_part(&mut self, lines: i64) -> Option<i64> {
        if lines <= MIN_PAGE_SIZE || self.options.dry_run {
            return None;
        }
        self.books.report.batch_retries += 1;
        Some((lines / 2).max(MIN_PAGE_SIZE))
    }

    /// Whether to try a part again whose order row another transaction held (its buyer,
    /// paying): after a pause, as any held row is polled for, until `LOCK_TIMEOUT_MS` has
    /// passed since the first; then the order is left for the next run — never to a page of
    /// this one, which would take it whole.
    async fn held_order_freed(&self, poll: &mut Option<Poller>) -> bool {
        let deadline = Instant::now() + self.params.lock_wait;
        let poll = poll.get_or_insert_with(|| RetryPolicy::POLL.until(Some(deadline)));
        poll.pause().await
    }

    /// A large order left for the next run (`large_orders_left`): no later batch of this run
    /// claims it, so no page takes it whole.
    fn leave_large_order(&mut self, order: i64) {
        self.books.report.large_orders_left += 1;
        self.books.excluded_orders.insert(order);
    }

    /// Books a part of a large order (`parts` booked before it with lines released) and tells
    /// what it was.
    fn book_part(&mut self, mut batch: BatchOutcome, lines: i64, parts: &mut u64) -> Part {
        let released = batch.released.len() as i64;
        let held = released == 0 && batch.counts.skipped_locked > 0;
        if *parts == 0 {
            batch.counts.large_orders = u64::from(released > 0);
        }
        *parts += u64::from(released > 0);
        self.book(batch);
        match released {
            0 if held => Part::Held,
            n if n >= lines => Part::Released(n),
            _ => {
                tracing::debug!(parts = *parts, "a large order released in parts");
                Part::Last
            }
        }
    }

    /// The lines of a large order's next part: the batch target at the rate the last part
    /// measured (`released` lines in `took`; its lines may be slow: triggers, wide rows), at
    /// most `most` (a page): the buyer waits on a part for about the target, and a part is
    /// rarely cut by its budget.
    fn next_part_lines(&self, released: i64, took: Duration, most: i64) -> i64 {
        let released = usize::try_from(released).unwrap_or(0);
        let fit = self.shared.controller().rows_for_target(released, took);
        i64::from(fit).clamp(MIN_PAGE_SIZE, most.max(MIN_PAGE_SIZE))
    }

    /// The lines of a large order's first part, and each part's budget. A dry run rolls each
    /// part back, so a second part would meet the first one's lines again: it takes the whole
    /// order in one part, its budget from its first hot row.
    fn large_order_parts(&self) -> (i64, Budget) {
        if self.options.dry_run {
            let whole = Duration::from_millis(u64::from(self.settings.statement_timeout_ms));
            let hot = self.batch_budget;
            (i64::MAX, Budget::FromHotPhase { hot, whole })
        } else {
            // The first part is the smallest: nothing is known of this order's lines yet
            // (the next parts are sized from its rate).
            (MIN_PAGE_SIZE, Budget::Whole(self.batch_budget))
        }
    }

    /// Books a batch, hands it to the on-commit hook, and moves the cursor on.
    pub(super) fn book(&mut self, batch: BatchOutcome) {
        self.params.long_held.extend(&batch.long_held);
        if let (Some(hook), false) = (&self.options.on_commit, self.options.dry_run) {
            hook.call(Committed {
                released: &batch.released,
                cancelled: &batch.cancelled,
                finished: &batch.finished,
                counters: &batch.returned,
                run_id: &self.options.run_id,
            });
        }
        if batch.rows_paged > 0 && self.passes.is_none() {
            self.cursor = batch.next_cursor;
        }
        self.books.book(batch, self.options.dry_run);
    }
}

pub(super) fn log_batch(number: u32, batch: &BatchOutcome) {
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

/// A run's books (or one worker's, merged into the run's when the workers are done): the
/// report of what its batches did, and what the run remembers of the orders they met. Each
/// batch is booked here, and one worker's books merge into another's here, so no field is
/// summed in two places.
#[derive(Debug)]
pub(super) struct Ledger {
    /// What the batches did: counts, batches, retries, units, delays and batch durations.
    pub(super) report: RunReport,
    /// The longest batch so far.
    pub(super) slowest: Duration,
    /// Orders no later batch of the run may take: in a dry run those already counted (their
    /// reservations stay active after the rollback); large orders too slow even alone.
    pub(super) excluded_orders: HashSet<i64>,
    /// Paid orders met that still hold due reservations.
    pub(super) paid_orders: HashSet<i64>,
    /// Reservations released that were due themselves.
    pub(super) due_released: u64,
    /// Orders and holds left out because another transaction held a row they need, not
    /// released since.
    pub(super) deferred_orders: BTreeSet<i64>,
    pub(super) deferred_holds: BTreeSet<i64>,
}

impl Ledger {
    pub(super) fn new(options: &RunOptions) -> Self {
        let mut report = RunReport::new(options.dry_run);
        report.run_id.clone_from(&options.run_id);
        Ledger {
            report,
            slowest: Duration::ZERO,
            excluded_orders: HashSet::new(),
            paid_orders: HashSet::new(),
            due_released: 0,
            deferred_orders: BTreeSet::new(),
            deferred_holds: BTreeSet::new(),
        }
    }

    /// The books a new worker starts with: the orders it must not take again (those this one
    /// counted in a dry run, left for later as too large, or deferred) and the slowest batch.
    pub(super) fn for_worker(&self, options: &RunOptions) -> Self {
        let mut books = Ledger::new(options);
        books.slowest = self.slowest;
        books.excluded_orders = self
            .excluded_orders
            .iter()
            .chain(&self.deferred_orders)
            .copied()
            .collect();
        books
    }

    /// Books one batch (committed, or rolled back in a dry run).
    pub(super) fn book(&mut self, batch: BatchOutcome, dry_run: bool) {
        self.report.batches += 1;
        if dry_run {
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
        log_batch(self.report.batches, &batch);
        // Only the lines that were due themselves have a release delay: a line released with
        // its order before its own expiry was not late.
        self.report.delays.extend(
            batch
                .released
                .iter()
                .filter(|r| r.was_due)
                .map(|r| r.delay_seconds),
        );
        self.report.counts += batch.counts;
        self.report
            .add_units(&batch.units_by_variant, &batch.units_by_drop);
    }

    /// Takes in another worker's books: what it did is summed (one place, shared with follow
    /// mode's passes: [`RunReport::add_work`]); what it left is added to what this one left.
    pub(super) fn merge(&mut self, other: Ledger) {
        self.report.add_work(&other.report);
        self.report.large_orders_left += other.report.large_orders_left;
        if self.report.locked_tables.is_empty() {
            self.report.locked_tables = other.report.locked_tables;
        }
        self.slowest = self.slowest.max(other.slowest);
        let deferred = &self.deferred_orders;
        let excluded: Vec<i64> = other
            .excluded_orders
            .into_iter()
            .filter(|order| !deferred.contains(order))
            .collect();
        self.excluded_orders.extend(excluded);
        self.paid_orders.extend(other.paid_orders);
        self.due_released += other.due_released;
        self.deferred_orders.extend(other.deferred_orders);
        self.deferred_holds.extend(other.deferred_holds);
    }
}

/// What a part of a large order was.
enum Part {
    /// It released this many lines, all it was given: more may be left.
    Released(i64),
    /// It released the last lines (or found none left).
    Last,
    /// It released nothing: another transaction holds the order row.
    Held,
}

//! One batch: a single short transaction that takes the next due candidates (a page after the
//! run's cursor, or the orders an earlier batch had to leave out), claims what it can without
//! waiting, releases it, gives the units back, and commits — or, in a dry run, rolls everything
//! back after reading what it would have done. Each step is one function over one statement of
//! [`crate::db::sql`], in the order `docs/design.md`'s "How a run works" gives.
//!
//! A batch never waits in a lock queue while it holds a row a shopper may want: every row lock
//! it takes is `SKIP LOCKED` or `NOWAIT`, so it can never close a lock cycle that another
//! backend's deadlock check would break by aborting a shopper. The release steps run after a
//! savepoint; the hot variant and drop rows come last, all or nothing, after a second
//! savepoint, so they are held only from their update to the commit. When one of them is held,
//! the batch rolls back to that second savepoint — giving back every hot row it had taken,
//! keeping the reservations it expired — and tries again after 2 ms, then 4, 8, ... up to 32
//! (a checkout holds one for a few milliseconds), holding none of them between tries, so no
//! shopper ever queues behind its polling. A held reservation row sends the batch back to the
//! first savepoint, and it polls for the held rows the same way. When a row is still held
//! after `LOCK_TIMEOUT_MS`, the batch leaves out only the orders and holds that need it
//! (`deferred`) and redoes the steps for the rest. An order that turns out not to be due on
//! the rows locked (it was extended after the claim) is left out the same way.
//!
//! A row that is never free when polled — a queue of checkouts on a drop's hottest variant —
//! is won by a queue batch ([`Source::Queue`]): it waits in that one row's lock queue while it
//! holds nothing else (so it cannot be part of a lock cycle), for at most a quarter of the
//! shop's `deadlock_timeout` (so it gives up long before any shopper's deadlock check, and
//! within half its budget), then works only the orders that need that row, taking everything
//! else without waiting: it joins the queue like one more short checkout.

use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::time::{Duration, Instant};

use tokio_postgres::error::SqlState;
use tokio_postgres::Transaction;

use super::counts::Counts;
use crate::config::ReleaseSettings;
use crate::db::session::Database;
use crate::db::sql::{
    self, BatchTimeouts, CancelledOrder, ClaimParams, ClaimedOrder, Counter, HeldReservation,
    OrdersParams, PageParams, PageRow, PgTimestamp, ReleaseParams, Released, ReleasedReservation,
    ReturnedUnits, Rules, Share, Statements, UnitsParams,
};
use crate::error::{sql_state, Error, Result};

/// Where a run's paging stands in each of the two due orders (see [`crate::db::sql::PAGE`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cursor {
    /// (`expires_at`, id) of the last expiring row paged.
    pub expiring: (PgTimestamp, i64),
    /// (`created_at`, id) of the last legacy row paged.
    pub legacy: (PgTimestamp, i64),
}

impl Default for Cursor {
    fn default() -> Self {
        Cursor {
            expiring: (PgTimestamp::MIN, 0),
            legacy: (PgTimestamp::MIN, 0),
        }
    }
}

/// Counter rows (variants, drops) that a batch of this run still found held by another
/// transaction after polling for them for `LOCK_TIMEOUT_MS`: held for long (an admin's open
/// transaction, a slow import), not for the few milliseconds of a checkout. Later batches of
/// the run try such a row once (`SKIP LOCKED`) and, when it is still held, leave out the orders
/// that need it at once instead of polling again: a row held for long costs only the orders
/// that need it, not a wait in every batch — a wait during which the batch would hold the
/// other hot rows it has updated, and shoppers would queue behind it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LongHeld(BTreeMap<(Counter, i64), Owners>);

/// The orders and cart holds left out because they need one held row.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Owners {
    pub orders: BTreeSet<i64>,
    pub holds: BTreeSet<i64>,
}

impl LongHeld {
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    fn contains(&self, counter: Counter, id: i64) -> bool {
        self.0.contains_key(&(counter, id))
    }

    /// Adds the rows of `other`, and the orders and holds that need them.
    pub fn extend(&mut self, other: &LongHeld) {
        for (row, owners) in &other.0 {
            let mine = self.0.entry(*row).or_default();
            mine.orders.extend(owners.orders.iter().copied());
            mine.holds.extend(owners.holds.iter().copied());
        }
    }

    /// The rows, each with the orders and holds left out for it, most orders first: the rows
    /// a queue batch waits for (see [`Source::Queue`]).
    pub fn into_queues(self) -> Vec<((Counter, i64), Owners)> {
        let mut rows: Vec<_> = self.0.into_iter().collect();
        rows.sort_by_key(|(row, owners)| (std::cmp::Reverse(owners.orders.len()), *row));
        rows
    }

    /// Whether every row `held` needs is a counter row known to be held for long (a held
    /// reservation row is never: it belongs to one order, polled for once).
    fn covers(&self, held: &[HeldReservation]) -> bool {
        held.iter().all(|h| {
            !h.reservation_held
                && h.variant
                    .is_none_or(|v| self.contains(Counter::Variants, v))
                && h.drop.is_none_or(|d| self.contains(Counter::Drops, d))
        })
    }

    /// Adds the counter rows `held` needs, with the order (or hold) that needs each.
    fn add(&mut self, held: &[HeldReservation]) {
        for h in held {
            let rows = [
                h.variant.map(|v| (Counter::Variants, v)),
                h.drop.map(|d| (Counter::Drops, d)),
            ];
            for row in rows.into_iter().flatten() {
                let owners = self.0.entry(row).or_default();
                match h.order_id {
                    Some(order) => owners.orders.insert(order),
                    None => owners.holds.insert(h.id),
                };
            }
        }
    }
}

/// What a batch works on.
#[derive(Debug, Clone, Copy)]
pub enum Source<'a> {
    /// The next page of due reservations after the cursor.
    Page(&'a Cursor),
    /// Orders and holds an earlier batch of the run left out (the cursor has passed them).
    Deferred { orders: &'a [i64], holds: &'a [i64] },
    /// Due rows a pass read (see [`super::pass`]), when no index serves the page.
    Rows(&'a [PageRow]),
    /// Orders and holds left out for one counter row that stayed held (a queue of checkouts
    /// on a drop's hottest variant): the batch first waits in that row's lock queue, holding
    /// nothing else, for at most the queue's lock timeout; once the row is its own it works
    /// these orders, taking every other row without waiting (what is held is left out at once).
    Queue {
        row: (Counter, i64),
        orders: &'a [i64],
        holds: &'a [i64],
    },
    /// One order with more active lines than a page, worked alone: its budget runs from the
    /// moment it first locks a hot row (see [`HotPhase`]), not from its start, as expiring its
    /// own lines holds nothing a shopper needs.
    Alone(i64),
    /// One order released on request (`unreserver release`), due or not: it is locked
    /// `NOWAIT` and judged on the locked row ([`crate::db::sql::on_request`]); a releasable
    /// order with active reservations is released by the same steps as any batch, with no
    /// reservation needing to be due. Its budget runs like [`Source::Alone`]'s.
    Requested(i64),
}

/// When the batch running now first locked a variant or drop row (the hot rows shoppers
/// queue on): from then on, shoppers may wait on it. The run's timer reads it to give a batch
/// of one large order its budget from that moment.
#[derive(Debug, Clone, Default)]
pub struct HotPhase(std::sync::Arc<tokio::sync::watch::Sender<Option<Instant>>>);

impl HotPhase {
    /// A receiver of the hot phase's start.
    pub fn subscribe(&self) -> tokio::sync::watch::Receiver<Option<Instant>> {
        self.0.subscribe()
    }

    pub(super) fn reset(&self) {
        self.0.send_replace(None);
    }

    /// Marks now as the start, unless it started already.
    fn start(&self) {
        self.0.send_if_modified(|at| {
            let first = at.is_none();
            if first {
                *at = Some(Instant::now());
            }
            first
        });
    }
}

/// The parameters every batch of a run shares, converted once to the types the SQL takes.
#[derive(Debug, Clone)]
pub struct BatchParams {
    /// Due reservations per page; the run halves it for a batch cut by the time budget.
    pub page_size: i64,
    /// How long a batch polls for rows another transaction holds before leaving out the
    /// orders that need them (`LOCK_TIMEOUT_MS`).
    pub lock_wait: Duration,
    /// Counter rows found held for long by earlier batches of the run (see [`LongHeld`]).
    pub long_held: LongHeld,
    /// The timeouts of a queue batch: its `lock_timeout` (how long it waits in the row's
    /// queue) is a quarter of the shop's `deadlock_timeout` (half the batch budget), set by
    /// the run.
    pub queue_timeouts: BatchTimeouts,
    /// When the current batch first locked a hot row.
    pub hot_phase: HotPhase,
    /// The share of the due rows this worker pages ([`Share::ALL`] for a run of one worker).
    pub share: Share,
    /// Shared by the workers of one run (None: one worker): see [`HotTurn`].
    pub hot_turn: Option<HotTurn>,
    /// Who last wrote each counter row the run updated (shared by its workers).
    pub counter_writers: CounterWriters,
    rules: Rules,
    timeouts: BatchTimeouts,
    dry_run: bool,
}

impl BatchParams {
    pub fn new(settings: &ReleaseSettings, dry_run: bool) -> Self {
        BatchParams {
            page_size: i64::from(settings.batch_size.unwrap_or(settings.batch_size_min)),
            lock_wait: Duration::from_millis(u64::from(settings.lock_timeout_ms)),
            long_held: LongHeld::default(),
            queue_timeouts: timeouts(settings),
            hot_phase: HotPhase::default(),
            share: Share::ALL,
            hot_turn: None,
            counter_writers: CounterWriters::default(),
            rules: rules(settings),
            timeouts: timeouts(settings),
            dry_run,
        }
    }

    /// The rule parameters of the statements.
    pub fn rules(&self) -> Rules {
        self.rules
    }

    /// The parameters of another worker of the same run: its own share and hot phase, the
    /// hot turn shared, nothing learnt yet of held rows.
    pub fn for_worker(&self, share: Share, hot_turn: HotTurn) -> Self {
        BatchParams {
            share,
            hot_turn: Some(hot_turn),
            hot_phase: HotPhase::default(),
            long_held: LongHeld::default(),
            ..self.clone()
        }
    }
}

/// The turn the workers of one run take to hold hot rows: a worker takes it before it locks a
/// variant or drop row and keeps it until its batch commits (giving it back whenever it rolls
/// those rows back to poll), so two workers never hold counter rows at once. A worker thus
/// never finds a counter row held by another worker of its run — a row it finds held is a
/// shopper's, and the controller and the deferred work see only shoppers — while the rest of
/// the batches (paging, claiming, expiring, cancelling: most of the work) runs in parallel.
#[derive(Debug, Clone, Default)]
pub struct HotTurn(std::sync::Arc<tokio::sync::Mutex<()>>);

/// One batch's hold on the run's [`HotTurn`] (nothing to take with one worker).
struct Turn {
    turn: Option<HotTurn>,
    held: Option<tokio::sync::OwnedMutexGuard<()>>,
}

impl Turn {
    fn new(turn: Option<HotTurn>) -> Self {
        Turn { turn, held: None }
    }

    /// Waits for the turn, unless this batch has it already.
    async fn take(&mut self) {
        if let (Some(turn), None) = (&self.turn, &self.held) {
            self.held = Some(turn.0.clone().lock_owned().await);
        }
    }

    /// Gives the turn back: the batch rolled back every hot row it held.
    fn give_back(&mut self) {
        self.held = None;
    }
}

/// The release rules of `settings` as the statements take them.
pub fn rules(settings: &ReleaseSettings) -> Rules {
    Rules {
        timeout_minutes: clamp_i32(settings.reservation_timeout_minutes),
        grace_minutes: clamp_i32(settings.payment_processing_grace_minutes),
    }
}

/// The lock and statement timeouts of `settings`, as a transaction of the release (a batch, a
/// revive, a counter repair) sets them for itself.
pub fn timeouts(settings: &ReleaseSettings) -> BatchTimeouts {
    BatchTimeouts {
        lock_timeout: format!("{}ms", settings.lock_timeout_ms),
        statement_timeout: format!("{}ms", settings.statement_timeout_ms),
    }
}

fn clamp_i32(value: u32) -> i32 {
    i32::try_from(value).unwrap_or(i32::MAX)
}

/// What one batch did (or, in a dry run, would have done).
#[derive(Debug, Clone, Default)]
pub struct BatchOutcome {
    /// Due rows the page held; 0 means nothing more is due after the cursor.
    pub rows_paged: usize,
    /// What this batch released, skipped, clamped and waited.
    pub counts: Counts,
    /// Of the reservations released, those that were due themselves (not just released with
    /// their order).
    pub due_reservations_released: u64,
    /// Paid orders met that still hold due active reservations (an anomaly; never touched).
    pub paid_orders: BTreeSet<i64>,
    /// Orders whose reservations this batch released.
    pub released_orders: Vec<i64>,
    /// Cart holds this batch released.
    pub released_holds: Vec<i64>,
    /// Orders and holds left out because a row they need is held by another transaction.
    pub deferred_orders: BTreeSet<i64>,
    pub deferred_holds: BTreeSet<i64>,
    /// Counter rows this batch found still held after polling for `LOCK_TIMEOUT_MS`.
    pub long_held: LongHeld,
    /// Claimed orders with more active lines than a page, left for a batch of their own
    /// ([`Source::Alone`]).
    pub large_orders: Vec<i64>,
    /// Tables another session locks (a migration, a `LOCK TABLE`), found when a row the batch
    /// waited for turned out not to be held: the batch rolled back, and the run stops.
    pub locked_tables: Vec<String>,
    pub units_by_variant: BTreeMap<i64, i64>,
    pub units_by_drop: BTreeMap<i64, i64>,
    /// The reservations released, as the release statement returned them: what the expiry
    /// events and the release delay are made of.
    pub released: Vec<ReleasedReservation>,
    /// The orders cancelled (pending orders whose reservations were released).
    pub cancelled: Vec<CancelledOrder>,
    /// The counter rows this batch updated, each with the (sub)transaction that wrote it.
    pub counter_writes: Vec<((Counter, i64), i64)>,
    /// The cursor after this page (unchanged for a batch of deferred work).
    pub next_cursor: Cursor,
    /// A [`Source::Requested`] batch: why the order was not released (None: it was, or it
    /// was left out for a held row — see `deferred_orders`).
    pub refused: Option<Refusal>,
}

/// Why an order asked for ([`Source::Requested`]) is not released, judged on its locked row.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// Its payment is `paid`: never touched.
    Paid,
    /// Its status or payment is one the release rules refuse.
    NotReleasable,
    /// It holds no active reservation.
    NothingActive,
    /// There is no such order.
    UnknownOrder,
}

/// The candidates of a batch: orders (deduplicated, ascending) and cart holds.
#[derive(Debug, Default)]
struct Candidates {
    orders: Vec<i64>,
    holds: Vec<i64>,
}

/// What this batch holds locked and means to release.
#[derive(Debug, Default)]
struct Claimed {
    orders: Vec<i64>,
    processing_orders: Vec<i64>,
    holds: Vec<i64>,
    /// Released on request: none of their reservations needs to be due.
    on_request: bool,
}

impl Claimed {
    fn is_empty(&self) -> bool {
        self.orders.is_empty() && self.holds.is_empty()
    }

    /// Leaves out `orders` and `holds`.
    fn remove(&mut self, orders: &BTreeSet<i64>, holds: &BTreeSet<i64>) {
        self.orders.retain(|id| !orders.contains(id));
        self.processing_orders.retain(|id| !orders.contains(id));
        self.holds.retain(|id| !holds.contains(id));
    }
}

/// Runs one batch on `source`. `exclude` holds orders a dry run has already counted (their
/// reservations are still active after the rollback); a real run passes an empty set.
pub async fn run(
    db: &mut Database,
    params: &BatchParams,
    source: Source<'_>,
    exclude: &HashSet<i64>,
) -> Result<BatchOutcome> {
    let st = &db.statements;
    let tx = db
        .client
        .transaction()
        .await
        .map_err(Error::db("beginning a batch"))?;
    let mut out = BatchOutcome::default();
    params.hot_phase.reset();
    let mut lock_wait = params.lock_wait;
    let max_lines = match source {
        Source::Alone(_) | Source::Requested(_) => None,
        _ => Some(params.page_size),
    };
    let candidates = match source {
        Source::Queue { row, orders, holds } => {
            st.set_batch_timeouts(&tx, &params.queue_timeouts).await?;
            if !queue_for(&tx, st, row, &mut out).await? {
                out.deferred_orders.extend(orders.iter().copied());
                out.deferred_holds.extend(holds.iter().copied());
                finish(tx, true).await?;
                return Ok(out);
            }
            lock_wait = Duration::ZERO;
            deferred(orders, holds, exclude)
        }
        Source::Requested(order) => {
            st.set_batch_timeouts(&tx, &params.timeouts).await?;
            let claimed = match claim_requested(&tx, order).await? {
                Ok(claimed) => claimed,
                Err(refusal) => {
                    out.refused = Some(refusal);
                    finish(tx, true).await?;
                    return Ok(out);
                }
            };
            return release_and_finish(tx, st, params, lock_wait, claimed, out).await;
        }
        _ => {
            st.set_batch_timeouts(&tx, &params.timeouts).await?;
            candidates_of(&tx, st, params, source, exclude, &mut out).await?
        }
    };
    let claimed = claim(&tx, st, params.rules, &candidates, max_lines, &mut out).await?;
    release_and_finish(tx, st, params, lock_wait, claimed, out).await
}

/// Steps 3 to 6 on what the batch claimed: release it, then commit (roll back in a dry run, or
/// when a table turned out to be locked).
async fn release_and_finish(
    tx: Transaction<'_>,
    st: &Statements,
    params: &BatchParams,
    lock_wait: Duration,
    mut claimed: Claimed,
    mut out: BatchOutcome,
) -> Result<BatchOutcome> {
    let mut turn = Turn::new(params.hot_turn.clone());
    if !claimed.is_empty() {
        release_claimed(
            &tx,
            st,
            params,
            lock_wait,
            &mut claimed,
            &mut turn,
            &mut out,
        )
        .await?;
    }
    if !out.locked_tables.is_empty() {
        finish(tx, true).await?;
        return Ok(BatchOutcome {
            locked_tables: out.locked_tables,
            rows_paged: out.rows_paged,
            ..BatchOutcome::default()
        });
    }
    finish(tx, params.dry_run).await?;
    if !params.dry_run {
        // Before the turn goes to another worker, which may update these rows next.
        params.counter_writers.record(&out.counter_writes);
    }
    drop(turn);
    Ok(out)
}

/// The candidates of a batch on a page, pass rows or deferred work.
async fn candidates_of(
    tx: &Transaction<'_>,
    st: &Statements,
    params: &BatchParams,
    source: Source<'_>,
    exclude: &HashSet<i64>,
    out: &mut BatchOutcome,
) -> Result<Candidates> {
    Ok(match source {
        Source::Page(cursor) => {
            let page = page(tx, st, params, cursor).await?;
            out.rows_paged = page.len();
            out.next_cursor = advance(cursor, &page);
            candidates(&page, exclude)
        }
        Source::Rows(rows) => {
            out.rows_paged = rows.len();
            out.next_cursor = Cursor::default();
            candidates(rows, exclude)
        }
        Source::Deferred { orders, holds } | Source::Queue { orders, holds, .. } => {
            deferred(orders, holds, exclude)
        }
        Source::Alone(order) | Source::Requested(order) => Candidates {
            orders: vec![order],
            holds: Vec::new(),
        },
    })
}

fn deferred(orders: &[i64], holds: &[i64], exclude: &HashSet<i64>) -> Candidates {
    Candidates {
        orders: orders
            .iter()
            .filter(|o| !exclude.contains(o))
            .copied()
            .collect(),
        holds: holds.to_vec(),
    }
}

/// A queue batch's first step: waits in the lock queue of `row`, holding nothing else, until it
/// is granted or the queue's lock timeout runs out (false: the transaction must roll back; the
/// orders stay deferred). Counts the wait.
async fn queue_for(
    tx: &Transaction<'_>,
    st: &Statements,
    (counter, id): (Counter, i64),
    out: &mut BatchOutcome,
) -> Result<bool> {
    let started = Instant::now();
    let granted = match st.queue_for(tx, counter, id).await {
        Ok(_) => true,
        Err(error) if sql_state(&error) == Some(&SqlState::LOCK_NOT_AVAILABLE) => false,
        Err(error) => return Err(error),
    };
    out.counts.queue_waits += 1;
    out.counts.queue_timeouts += u64::from(!granted);
    out.counts.queue_wait_ms += started.elapsed().as_secs_f64() * 1000.0;
    Ok(granted)
}

/// Step 1: the next due reservations after the cursor (locks nothing).
async fn page(
    tx: &Transaction<'_>,
    st: &Statements,
    params: &BatchParams,
    cursor: &Cursor,
) -> Result<Vec<PageRow>> {
    let p = PageParams {
        expiring_after: cursor.expiring,
        legacy_after: cursor.legacy,
        limit: params.page_size,
        rules: params.rules,
        share: params.share,
    };
    st.page(tx, &p).await
}

/// The cursor after `page`: the last row paged in each due order.
pub(crate) fn advance(cursor: &Cursor, page: &[PageRow]) -> Cursor {
    let mut next = *cursor;
    for row in page {
        let key = (row.due_key, row.id);
        if row.legacy {
            next.legacy = key;
        } else {
            next.expiring = key;
        }
    }
    next
}

fn candidates(page: &[PageRow], exclude: &HashSet<i64>) -> Candidates {
    let mut orders = BTreeSet::new();
    let mut holds = Vec::new();
    for row in page {
        match row.order_id {
            Some(order) if !exclude.contains(&order) => {
                orders.insert(order);
            }
            Some(_) => {}
            None => holds.push(row.id),
        }
    }
    Candidates {
        orders: orders.into_iter().collect(),
        holds,
    }
}

/// Step 2: claim the candidate orders and holds that are still due, skipping locked ones; tell
/// why the others were not claimed (paid anomaly, or held by a shopper).
/// An order with more than `max_lines` active lines is not released here but named in
/// `out.large_orders`, for a batch of its own (None: no limit, the batch is that one).
async fn claim(
    tx: &Transaction<'_>,
    st: &Statements,
    rules: Rules,
    candidates: &Candidates,
    max_lines: Option<i64>,
    out: &mut BatchOutcome,
) -> Result<Claimed> {
    let mut claimed = Claimed::default();
    if !candidates.orders.is_empty() {
        let p = ClaimParams {
            orders: OrdersParams {
                order_ids: &candidates.orders,
                rules,
            },
            count_lines_up_to: max_lines.map_or(1, |n| n.saturating_add(1)),
        };
        let mut large = Vec::new();
        for ClaimedOrder {
            id,
            processing,
            lines,
        } in st.claim_orders(tx, &p).await?
        {
            claimed.orders.push(id);
            if max_lines.is_some_and(|n| lines > n) {
                large.push(id);
            } else if processing {
                claimed.processing_orders.push(id);
            }
        }
        classify_unclaimed(tx, st, rules, candidates, &claimed, out).await?;
        claimed.orders.retain(|id| !large.contains(id));
        out.large_orders = large;
    }
    if !candidates.holds.is_empty() {
        claimed.holds = st.claim_holds(tx, &candidates.holds, rules).await?;
    }
    out.counts.skipped_locked += (candidates.holds.len() - claimed.holds.len()) as u64;
    Ok(claimed)
}

/// Step 2 of a [`Source::Requested`] batch: lock the order (`NOWAIT`: a shopper holding it
/// fails the batch at once with `lock_not_available`, and the caller polls) and judge it on the
/// locked row.
async fn claim_requested(
    tx: &Transaction<'_>,
    order_id: i64,
) -> Result<std::result::Result<Claimed, Refusal>> {
    let Some(order) = sql::on_request::lock_requested_order(tx, order_id).await? else {
        return Ok(Err(Refusal::UnknownOrder));
    };
    if order.paid {
        return Ok(Err(Refusal::Paid));
    }
    if !order.releasable {
        return Ok(Err(Refusal::NotReleasable));
    }
    if order.active_lines == 0 {
        return Ok(Err(Refusal::NothingActive));
    }
    Ok(Ok(Claimed {
        orders: vec![order.id],
        processing_orders: if order.processing {
            vec![order.id]
        } else {
            Vec::new()
        },
        holds: Vec::new(),
        on_request: true,
    }))
}

/// Candidates not claimed: paid (an anomaly), not due or not releasable (payment grace), or
/// held by a shopper. Only the last are skipped work; the backlog count at the end of the run
/// tells which are still due. Runs only when some candidates were not claimed.
async fn classify_unclaimed(
    tx: &Transaction<'_>,
    st: &Statements,
    rules: Rules,
    candidates: &Candidates,
    claimed: &Claimed,
    out: &mut BatchOutcome,
) -> Result<()> {
    let unclaimed: Vec<i64> = candidates
        .orders
        .iter()
        .filter(|id| claimed.orders.binary_search(id).is_err())
        .copied()
        .collect();
    if unclaimed.is_empty() {
        return Ok(());
    }
    let p = OrdersParams {
        order_ids: &unclaimed,
        rules,
    };
    for order in st.classify_unclaimed(tx, &p).await? {
        if order.paid {
            out.paid_orders.insert(order.id);
        } else if order.due {
            out.counts.skipped_locked += 1;
        }
    }
    Ok(())
}

/// How one round of the release steps ended.
enum Round {
    /// Everything claimed was released; the outcome is filled in.
    Done,
    /// Another transaction holds a reservation row the round needs: nothing of this round
    /// stays.
    Held,
    /// Counter rows stayed held while the round tried them for `LOCK_TIMEOUT_MS` (or are
    /// known to be held for long). Nothing of this round stays.
    CountersHeld(HeldCounters),
    /// Some claimed orders (or holds) were not due on the rows locked: leave them out.
    NotDue {
        orders: BTreeSet<i64>,
        holds: BTreeSet<i64>,
    },
}

/// The first pause before a batch looks again for rows another transaction holds (a checkout
/// holds a hot row for a few milliseconds); each further pause doubles, up to [`MAX_POLL`], so
/// a row held for long costs a few looks, not hundreds.
const POLL: Duration = Duration::from_millis(2);
const MAX_POLL: Duration = Duration::from_millis(32);

/// Sleeps `pause`, adds it to `waited_ms`, then doubles it (up to [`MAX_POLL`]) for the next time.
async fn poll_pause(pause: &mut Duration, waited_ms: &mut f64) {
    tokio::time::sleep(*pause).await;
    *waited_ms += pause.as_secs_f64() * 1000.0;
    *pause = (*pause * 2).min(MAX_POLL);
}

/// How long a batch may poll for held rows, and which it need not poll for.
#[derive(Debug, Clone, Copy)]
struct Patience<'a> {
    /// Polling for rows held by another transaction ends here (`LOCK_TIMEOUT_MS` after the
    /// release steps began).
    until: Instant,
    /// Counter rows known to be held for long: tried once, never polled for.
    long_held: &'a LongHeld,
    /// When the batch first locked a hot row.
    hot: &'a HotPhase,
    /// Who last wrote the counter rows, as far as the run knows.
    writers: &'a CounterWriters,
}

/// Steps 3 to 5 after a savepoint, in rounds. The release never waits in a lock queue (every
/// lock it takes is `SKIP LOCKED` or `NOWAIT`), so it can never close a lock cycle: a round that meets a
/// held row rolls back to the savepoint, and the batch polls for the rows (without waiting on
/// them) for up to `LOCK_TIMEOUT_MS`, then leaves out only the orders and holds that need rows
/// still held. A round that meets an order no longer due leaves it out the same way.
async fn release_claimed(
    tx: &Transaction<'_>,
    st: &Statements,
    params: &BatchParams,
    lock_wait: Duration,
    claimed: &mut Claimed,
    turn: &mut Turn,
    out: &mut BatchOutcome,
) -> Result<()> {
    let rules = params.rules;
    let patience = Patience {
        until: Instant::now() + lock_wait,
        long_held: &params.long_held,
        hot: &params.hot_phase,
        writers: &params.counter_writers,
    };
    sql::savepoint(tx, false).await?;
    while !claimed.is_empty() {
        let round = release_round(tx, st, rules, claimed, patience, turn, out).await?;
        if !matches!(round, Round::Done) {
            // Every round below rolls back to the savepoint: no hot row stays held.
            sql::savepoint(tx, true).await?;
            turn.give_back();
        }
        match round {
            Round::Done => return Ok(()),
            Round::CountersHeld(HeldCounters { last, always }) => {
                out.long_held.add(&always);
                leave_out(&last, claimed, out);
            }
            Round::NotDue { orders, holds } => {
                out.counts.no_longer_due += (orders.len() + holds.len()) as u64;
                claimed.remove(&orders, &holds);
            }
            Round::Held => {
                wait_for_held_rows(tx, st, claimed, patience, turn, out).await?;
                if !out.locked_tables.is_empty() {
                    return Ok(());
                }
            }
        }
    }
    Ok(())
}

/// Polls for the rows the claimed orders and holds need until none is held or `until`; then
/// leaves out the orders and holds whose rows are still held, and notes the counter rows among
/// them as held for long. Rows already known to be held for long are not polled for. Returns
/// with every row the rest need locked by this batch (the probe locks what it finds free),
/// inside the savepoint.
async fn wait_for_held_rows(
    tx: &Transaction<'_>,
    st: &Statements,
    claimed: &mut Claimed,
    patience: Patience<'_>,
    turn: &mut Turn,
    out: &mut BatchOutcome,
) -> Result<()> {
    let mut pause = POLL;
    let mut first = true;
    loop {
        // The probe locks the counter rows it finds free.
        turn.take().await;
        let held = st.probe_held(tx, &claimed.orders, &claimed.holds).await?;
        if held.is_empty() {
            if std::mem::take(&mut first) {
                // Nothing held the moment after a round met a held row: a row lock just
                // released — or a table lock, which no row poll will ever see.
                out.locked_tables = st.locked_tables(tx).await?;
            }
            patience.hot.start();
            return Ok(());
        }
        first = false;
        sql::savepoint(tx, true).await?;
        turn.give_back();
        let known = patience.long_held.covers(&held);
        if !known && Instant::now() < patience.until {
            poll_pause(&mut pause, &mut out.counts.held_wait_ms).await;
            continue;
        }
        out.long_held.add(&held);
        leave_out(&held, claimed, out);
        if claimed.is_empty() {
            return Ok(());
        }
    }
}

/// Leaves out the orders and holds whose rows are still held (`held`).
fn leave_out(held: &[HeldReservation], claimed: &mut Claimed, out: &mut BatchOutcome) {
    let (orders, holds) = owners(held);
    tracing::debug!(
        orders = orders.len(),
        holds = holds.len(),
        "rows held by another transaction: leaving their orders for later"
    );
    claimed.remove(&orders, &holds);
    out.deferred_orders.extend(orders);
    out.deferred_holds.extend(holds);
}

/// The orders (and holds) the held reservations belong to.
fn owners(held: &[HeldReservation]) -> (BTreeSet<i64>, BTreeSet<i64>) {
    let mut orders = BTreeSet::new();
    let mut holds = BTreeSet::new();
    for h in held {
        match h.order_id {
            Some(order) => orders.insert(order),
            None => holds.insert(h.id),
        };
    }
    (orders, holds)
}

/// One round of the release steps: expire and cancel, check due-ness on the rows locked, give
/// the units back. `lock_not_available` — a reservation row held (the release step's `NOWAIT`), or a
/// lock timeout (only a safeguard) — counts as a held row.
async fn release_round(
    tx: &Transaction<'_>,
    st: &Statements,
    rules: Rules,
    claimed: &Claimed,
    patience: Patience<'_>,
    turn: &mut Turn,
    out: &mut BatchOutcome,
) -> Result<Round> {
    match release_steps(tx, st, rules, claimed, patience, turn, out).await {
        Err(error) if sql_state(&error) == Some(&SqlState::LOCK_NOT_AVAILABLE) => Ok(Round::Held),
        other => other,
    }
}

async fn release_steps(
    tx: &Transaction<'_>,
    st: &Statements,
    rules: Rules,
    claimed: &Claimed,
    patience: Patience<'_>,
    turn: &mut Turn,
    out: &mut BatchOutcome,
) -> Result<Round> {
    let Released {
        reservations,
        cancelled,
    } = release(tx, st, rules, claimed).await?;
    let (orders, holds) = not_due(&reservations, claimed);
    if !orders.is_empty() || !holds.is_empty() {
        return Ok(Round::NotDue { orders, holds });
    }
    let mut done = Tally::default();
    done.add(&reservations);
    done.cancelled = cancelled;
    let waited = &mut out.counts.held_wait_ms;
    match take_counters(tx, st, &done, &reservations, patience, turn, waited).await? {
        Ok(written) => {
            done.counts.clamped_variants = Written::clamped(&written.variants);
            done.counts.clamped_drops = Written::clamped(&written.drops);
            done.counts.counters_written_by_others = patience.writers.written_by_others(&written);
            out.counter_writes = written.rows().map(|(c, r)| ((c, r.id), r.writer)).collect();
        }
        Err(held) => return Ok(Round::CountersHeld(held)),
    }
    done.released = reservations;
    done.into_outcome(out);
    Ok(Round::Done)
}

/// Step 3: expire every active reservation of the claimed orders, and the claimed holds; cancel
/// the pending orders among them (one statement).
async fn release(
    tx: &Transaction<'_>,
    st: &Statements,
    rules: Rules,
    claimed: &Claimed,
) -> Result<Released> {
    let p = ReleaseParams {
        order_ids: &claimed.orders,
        hold_ids: &claimed.holds,
        processing_order_ids: &claimed.processing_orders,
        rules,
    };
    st.release_reservations(tx, &p).await
}

/// Step 4: the claimed orders none of whose locked rows is due, and the claimed holds not due
/// (none for an order released on request: it need not be due).
fn not_due(released: &[ReleasedReservation], claimed: &Claimed) -> (BTreeSet<i64>, BTreeSet<i64>) {
    if claimed.on_request {
        return (BTreeSet::new(), BTreeSet::new());
    }
    let due_orders: BTreeSet<i64> = released
        .iter()
        .filter(|r| r.was_due)
        .filter_map(|r| r.order_id)
        .collect();
    let orders = claimed
        .orders
        .iter()
        .filter(|o| !due_orders.contains(o))
        .copied()
        .collect();
    let holds = released
        .iter()
        .filter(|r| r.order_id.is_none() && !r.was_due)
        .map(|r| r.id)
        .collect();
    (orders, holds)
}

/// What a completed round released.
#[derive(Debug, Default)]
struct Tally {
    /// Reservations, units, holds and orders released; counters clamped.
    counts: Counts,
    due_reservations_released: u64,
    cancelled: Vec<CancelledOrder>,
    released: Vec<ReleasedReservation>,
    released_orders: Vec<i64>,
    released_holds: Vec<i64>,
    units_by_variant: BTreeMap<i64, i64>,
    units_by_drop: BTreeMap<i64, i64>,
}

impl Tally {
    /// Counts the released rows and sums the units per variant and drop.
    fn add(&mut self, released: &[ReleasedReservation]) {
        let mut orders = BTreeSet::new();
        for r in released {
            let quantity = i64::from(r.quantity);
            self.counts.reservations_released += 1;
            self.due_reservations_released += u64::from(r.was_due);
            self.counts.units_released += quantity.unsigned_abs();
            match r.order_id {
                Some(order) => {
                    orders.insert(order);
                }
                None => self.released_holds.push(r.id),
            }
            *self.units_by_variant.entry(r.variant_id).or_default() += quantity;
            if let Some(drop_id) = r.drop_id {
                *self.units_by_drop.entry(drop_id).or_default() += quantity;
            }
        }
        self.released_orders = orders.into_iter().collect();
        self.counts.holds_released = self.released_holds.len() as u64;
    }

    fn into_outcome(self, out: &mut BatchOutcome) {
        out.counts += Counts {
            orders_cancelled: self.cancelled.len() as u64,
            ..self.counts
        };
        out.due_reservations_released = self.due_reservations_released;
        out.released_orders = self.released_orders;
        out.released_holds = self.released_holds;
        out.units_by_variant = self.units_by_variant;
        out.units_by_drop = self.units_by_drop;
        out.released = self.released;
        out.cancelled = self.cancelled;
    }
}

/// Counter rows a round gave up on, as the reservations that need them.
#[derive(Debug)]
struct HeldCounters {
    /// Held at the last try: their orders and holds are left out of the batch.
    last: Vec<HeldReservation>,
    /// Held at every try: held for long (an open admin transaction, an import), not by the
    /// checkouts of a hot row taking turns; later batches of the run do not poll for them.
    always: Vec<HeldReservation>,
}

/// Step 5: gives the units back to the variants, then the drops, all or nothing, after
/// [`sql::COUNTERS_SAVEPOINT`], so that the hot rows are held only from these updates to the
/// commit. Each try takes what is free (`SKIP LOCKED`); a row held makes it roll back to the
/// counters' savepoint — giving back every counter row it took, keeping the reservations
/// released and the orders cancelled — and try again after a pause, holding no hot row
/// between tries, so no shopper ever queues behind the batch's polling. Returns the counters
/// clamped at zero (variants, drops), or, when rows are still held after `LOCK_TIMEOUT_MS` (at
/// once when they are known to be held for long), the released reservations that need them.
async fn take_counters(
    tx: &Transaction<'_>,
    st: &Statements,
    tally: &Tally,
    released: &[ReleasedReservation],
    patience: Patience<'_>,
    turn: &mut Turn,
    waited_ms: &mut f64,
) -> Result<std::result::Result<Written, HeldCounters>> {
    sql::counters_savepoint(tx, false).await?;
    let mut pause = POLL;
    let mut polling_since = None;
    let mut always: Option<(BTreeSet<i64>, BTreeSet<i64>)> = None;
    // The time from the first try that met a held row to the last try: pauses and tries.
    let mut count_wait = |since: Option<Instant>| {
        *waited_ms += since.map_or(0.0, |s: Instant| s.elapsed().as_secs_f64() * 1000.0);
    };
    loop {
        turn.take().await;
        patience.hot.start();
        let variants = return_units(tx, st, Counter::Variants, &tally.units_by_variant).await?;
        let drops = return_units(tx, st, Counter::Drops, &tally.units_by_drop).await?;
        let (held_variants, held_drops) = match (variants, drops) {
            (Ok(v), Ok(d)) => {
                count_wait(polling_since);
                return Ok(Ok(Written::new(v, d)));
            }
            (v, d) => (v.err().unwrap_or_default(), d.err().unwrap_or_default()),
        };
        sql::counters_savepoint(tx, true).await?;
        turn.give_back();
        let (always_v, always_d) =
            always.get_or_insert_with(|| (held_variants.clone(), held_drops.clone()));
        always_v.retain(|v| held_variants.contains(v));
        always_d.retain(|d| held_drops.contains(d));
        let held = needing(released, &held_variants, &held_drops);
        if patience.long_held.covers(&held) || Instant::now() >= patience.until {
            count_wait(polling_since);
            let always = needing(released, always_v, always_d);
            return Ok(Err(HeldCounters { last: held, always }));
        }
        polling_since.get_or_insert_with(Instant::now);
        poll_pause(&mut pause, &mut 0.0).await;
    }
}

/// One kind of counter's update (ascending ids, as a `BTreeMap` iterates): the rows updated, or
/// the ids of the rows another transaction holds (the rows that
/// were free are updated all the same; the caller rolls them back).
async fn return_units(
    tx: &Transaction<'_>,
    st: &Statements,
    counter: Counter,
    units: &BTreeMap<i64, i64>,
) -> Result<std::result::Result<Vec<ReturnedUnits>, BTreeSet<i64>>> {
    let (ids, amounts): (Vec<i64>, Vec<i64>) = units.iter().map(|(id, n)| (*id, *n)).unzip();
    let p = UnitsParams {
        ids: &ids,
        units: &amounts,
    };
    let rows = st.return_units(tx, counter, &p).await?;
    if rows.len() < ids.len() {
        let taken: BTreeSet<i64> = rows.iter().map(|row| row.id).collect();
        return Ok(Err(ids
            .into_iter()
            .filter(|id| !taken.contains(id))
            .collect()));
    }
    Ok(Ok(rows))
}

/// The counter rows a batch updated.
#[derive(Debug, Default)]
struct Written {
    variants: Vec<ReturnedUnits>,
    drops: Vec<ReturnedUnits>,
}

impl Written {
    fn new(variants: Vec<ReturnedUnits>, drops: Vec<ReturnedUnits>) -> Self {
        Written { variants, drops }
    }

    fn rows(&self) -> impl Iterator<Item = (Counter, &ReturnedUnits)> {
        let variants = self.variants.iter().map(|r| (Counter::Variants, r));
        variants.chain(self.drops.iter().map(|r| (Counter::Drops, r)))
    }

    fn clamped(rows: &[ReturnedUnits]) -> u64 {
        rows.iter().map(|r| u64::from(r.clamped)).sum()
    }
}

/// The transaction that last wrote each counter row a run's batches updated (its subtransaction
/// `xmin`), shared by the run's workers and kept after each commit: a batch that finds a row
/// last written by another transaction knows a checkout updated it in between (see
/// `engine::controller`).
#[derive(Debug, Clone, Default)]
pub struct CounterWriters(std::sync::Arc<std::sync::Mutex<BTreeMap<(Counter, i64), i64>>>);

impl CounterWriters {
    fn map(&self) -> std::sync::MutexGuard<'_, BTreeMap<(Counter, i64), i64>> {
        self.0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// How many of the rows `written` updated were written last by another transaction since
    /// this run wrote them (a row the run never wrote tells nothing).
    fn written_by_others(&self, written: &Written) -> u64 {
        let map = self.map();
        written
            .rows()
            .filter(|(counter, r)| {
                map.get(&(*counter, r.id))
                    .is_some_and(|&ours| ours != r.previous_writer)
            })
            .count() as u64
    }

    /// Keeps what a committed batch wrote.
    fn record(&self, writes: &[((Counter, i64), i64)]) {
        self.map().extend(writes.iter().copied());
    }
}

/// The released reservations that need one of the held counter rows, as the probe would
/// report them.
fn needing(
    released: &[ReleasedReservation],
    variants: &BTreeSet<i64>,
    drops: &BTreeSet<i64>,
) -> Vec<HeldReservation> {
    released
        .iter()
        .filter_map(|r| {
            let variant = variants.contains(&r.variant_id).then_some(r.variant_id);
            let drop = r.drop_id.filter(|d| drops.contains(d));
            (variant.is_some() || drop.is_some()).then_some(HeldReservation {
                id: r.id,
                order_id: r.order_id,
                reservation_held: false,
                variant,
                drop,
            })
        })
        .collect()
}

/// Step 6: commit, or in a dry run roll back.
async fn finish(tx: Transaction<'_>, dry_run: bool) -> Result<()> {
    if dry_run {
        tx.rollback()
            .await
            .map_err(Error::db("rolling back the dry-run batch"))
    } else {
        tx.commit().await.map_err(Error::db("committing a batch"))
    }
}

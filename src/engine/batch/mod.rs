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
//! (jittered: the one retry policy, [`crate::engine::retry`]; a checkout holds a hot row for a
//! few milliseconds), holding none of them between tries, so no
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

mod candidates;
mod counters;
mod memory;
mod params;
mod release;

use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::time::Duration;

use tokio_postgres::Transaction;

use super::counts::Counts;
use crate::db::session::Database;
use crate::db::sql::{
    CancelledOrder, Counter, PageRow, ReleasedReservation, ReturnedUnits, Statements,
};
use crate::error::{Error, Result};
pub(crate) use candidates::advance;
pub use candidates::Cursor;
use candidates::*;
use counters::*;
use memory::Turn;
pub use memory::{CounterWriters, HotTurn, LongHeld};
pub use params::{rules, timeouts, BatchParams, HotPhase};
use release::*;

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
    /// nothing else, for at most the queue's lock timeout; once the row is its own it releases
    /// the lines of these orders that need it, taking every other row they need without waiting
    /// (what is held is left out at once). An order with lines on other hot rows (a cart
    /// spanning sizes) is cancelled with these lines, and its other lines are released later by
    /// the queue batches of their own rows, with the same instant (see
    /// [`crate::db::sql::RELEASE_RESERVATIONS`]): winning one hot row at a time wins the order.
    Queue {
        row: (Counter, i64),
        orders: &'a [i64],
        holds: &'a [i64],
    },
    /// A part of one order with more active lines than a page, worked alone: at most `lines`
    /// of its active lines (the first by id). The first part cancels the order; each later one
    /// releases the next lines with the order's `cancelled_at` (see
    /// [`crate::db::sql::RELEASE_RESERVATIONS`]), so no part holds the order row — which the
    /// buyer's payment locks — longer than one batch.
    Alone { order: i64, lines: i64 },
    /// One order released on request (`unreserver release`), due or not: it is locked
    /// `NOWAIT` and judged on the locked row ([`crate::db::sql::on_request`]); a releasable
    /// order with active reservations is released by the same steps as any batch, with no
    /// reservation needing to be due. Its budget runs from the moment it first locks a hot row
    /// (see [`HotPhase`]).
    OnRequest(i64),
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
    /// Orders an earlier batch cancelled whose further lines this one released (a part of a
    /// giant order, the next hot row of an order across several): announced, not counted.
    pub finished: Vec<CancelledOrder>,
    /// The counter rows this batch updated, as the update returned them (what each shows for
    /// sale after it, whether it was clamped): what the `Stock Released` events say.
    pub returned: Vec<(Counter, ReturnedUnits)>,
    /// The counter rows this batch updated, each with the (sub)transaction that wrote it.
    pub counter_writes: Vec<((Counter, i64), i64)>,
    /// The cursor after this page (unchanged for a batch of deferred work).
    pub next_cursor: Cursor,
    /// A [`Source::OnRequest`] batch: why the order was not released (None: it was, or it
    /// was left out for a held row — see `deferred_orders`).
    pub refused: Option<Refusal>,
    /// How long the batch held hot counter rows, from the last time it took them (its
    /// counters' update, its probe, or a queue batch's grant) to its commit: the longest a
    /// checkout on one of them could have waited on it. None: it ended holding none.
    pub hot_hold: Option<Duration>,
}

/// Why an order asked for ([`Source::OnRequest`]) is not released, judged on its locked row.
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

/// Runs one batch on `source`. `exclude` holds orders a dry run has already counted (their
/// reservations are still active after the rollback); a real run passes an empty set.
pub async fn release_batch(
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
    let cx = BatchContext {
        tx: &tx,
        st,
        params,
    };
    let mut out = BatchOutcome::default();
    let mut turn = Turn::new(params.hot_turn.clone());
    params.hot_phase.reset();
    let mut lock_wait = params.lock_wait;
    let max_lines = match source {
        Source::Alone { .. } | Source::OnRequest(_) => None,
        _ => Some(params.page_size),
    };
    let candidates = match source {
        Source::Queue { row, orders, holds } => {
            st.set_batch_timeouts(&tx, &params.queue_timeouts).await?;
            if !queue_for(cx, row, &mut out).await? {
                out.deferred_orders.extend(orders.iter().copied());
                out.deferred_holds.extend(holds.iter().copied());
                finish(tx, true).await?;
                return Ok(out);
            }
            turn.granted();
            lock_wait = Duration::ZERO;
            deferred(orders, holds, exclude)
        }
        Source::OnRequest(order) => {
            st.set_batch_timeouts(&tx, &params.timeouts).await?;
            let claimed = match claim_requested(&tx, order).await? {
                Ok(claimed) => claimed,
                Err(refusal) => {
                    out.refused = Some(refusal);
                    finish(tx, true).await?;
                    return Ok(out);
                }
            };
            return release_and_finish(tx, st, params, lock_wait, claimed, out, turn).await;
        }
        _ => {
            st.set_batch_timeouts(&tx, &params.timeouts).await?;
            candidates_of(cx, source, exclude, &mut out).await?
        }
    };
    let mut claimed = claim(cx, &candidates, max_lines, &mut out).await?;
    match source {
        Source::Alone { lines, .. } => claimed.line_limit = Some(lines.max(1)),
        Source::Queue { row, .. } => claimed.only_row = Some(row),
        _ => {}
    }
    release_and_finish(tx, st, params, lock_wait, claimed, out, turn).await
}

/// What every step of one batch works with: its transaction, the connection's prepared
/// statements and the run's parameters.
#[derive(Clone, Copy)]
struct BatchContext<'b, 't> {
    tx: &'b Transaction<'t>,
    st: &'b Statements,
    params: &'b BatchParams,
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
    mut turn: Turn,
) -> Result<BatchOutcome> {
    if !claimed.is_empty() {
        let cx = BatchContext {
            tx: &tx,
            st,
            params,
        };
        release_claimed(cx, lock_wait, &mut claimed, &mut turn, &mut out).await?;
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
    out.hot_hold = turn.hold();
    if !params.dry_run {
        // Before the turn goes to another worker, which may update these rows next.
        params.counter_writers.record(&out.counter_writes);
    }
    drop(turn);
    Ok(out)
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

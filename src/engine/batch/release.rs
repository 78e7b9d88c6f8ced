//! Steps 3 to 5 of a batch, in rounds: expire and cancel, decide on the rows locked, give the
//! units back; a held row is polled for, then its orders are left out.

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use tokio_postgres::error::SqlState;

use super::*;
use crate::db::sql::{
    self, CancelledOrder, HeldReservation, ReleaseParams, Released, ReleasedReservation,
};
use crate::engine::retry::RetryPolicy;
use crate::error::{sql_state, Result};

/// How one round of the release steps ended.
pub(super) enum Round {
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

/// How long a batch may poll for held rows, and which it need not poll for.
#[derive(Debug, Clone, Copy)]
pub(super) struct Patience<'a> {
    /// Polling for rows held by another transaction ends here (`LOCK_TIMEOUT_MS` after the
    /// release steps began).
    pub(super) until: Instant,
    /// Counter rows known to be held for long: tried once, never polled for.
    pub(super) long_held: &'a LongHeld,
    /// When the batch first locked a hot row.
    pub(super) hot: &'a HotPhase,
    /// Who last wrote the counter rows, as far as the run knows.
    pub(super) writers: &'a CounterWriters,
}

/// Steps 3 to 5 after a savepoint, in rounds. The release never waits in a lock queue (every
/// lock it takes is `SKIP LOCKED` or `NOWAIT`), so it can never close a lock cycle: a round that meets a
/// held row rolls back to the savepoint, and the batch polls for the rows (without waiting on
/// them) for up to `LOCK_TIMEOUT_MS`, then leaves out only the orders and holds that need rows
/// still held. A round that meets an order no longer due leaves it out the same way.
pub(super) async fn release_claimed(
    cx: BatchContext<'_, '_>,
    lock_wait: Duration,
    claimed: &mut Claimed,
    turn: &mut Turn,
    out: &mut BatchOutcome,
) -> Result<()> {
    let patience = Patience {
        until: Instant::now() + lock_wait,
        long_held: &cx.params.long_held,
        hot: &cx.params.hot_phase,
        writers: &cx.params.counter_writers,
    };
    sql::savepoint(cx.tx, false).await?;
    while !claimed.is_empty() {
        let round = release_round(cx, claimed, patience, turn, out).await?;
        if !matches!(round, Round::Done) {
            // Every round below rolls back to the savepoint: no hot row stays held.
            sql::savepoint(cx.tx, true).await?;
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
                wait_for_held_rows(cx, claimed, patience, turn, out).await?;
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
pub(super) async fn wait_for_held_rows(
    cx: BatchContext<'_, '_>,
    claimed: &mut Claimed,
    patience: Patience<'_>,
    turn: &mut Turn,
    out: &mut BatchOutcome,
) -> Result<()> {
    let mut poller = RetryPolicy::POLL.until(Some(patience.until));
    let mut first = true;
    loop {
        // The probe locks the counter rows it finds free.
        turn.take().await;
        let held = cx
            .st
            .probe_held(cx.tx, &claimed.orders, &claimed.holds)
            .await?;
        if held.is_empty() {
            if std::mem::take(&mut first) {
                // Nothing held the moment after a round met a held row: a row lock just
                // released — or a table lock, which no row poll will ever see.
                out.locked_tables = cx.st.locked_tables(cx.tx).await?;
            }
            patience.hot.start();
            return Ok(());
        }
        first = false;
        sql::savepoint(cx.tx, true).await?;
        turn.give_back();
        let known = patience.long_held.covers(&held);
        // Rows known to be held for long are not polled for; the others until the patience
        // runs out (the one retry policy: 2 ms doubling to 32, jittered, cut at the deadline).
        if !known {
            let before = poller.waited();
            let again = poller.pause().await;
            out.counts.held_wait_ms += (poller.waited() - before).as_secs_f64() * 1000.0;
            if again {
                continue;
            }
        }
        out.long_held.add(&held);
        leave_out(&held, claimed, out);
        if claimed.is_empty() {
            return Ok(());
        }
    }
}

/// Leaves out the orders and holds whose rows are still held (`held`).
pub(super) fn leave_out(held: &[HeldReservation], claimed: &mut Claimed, out: &mut BatchOutcome) {
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
pub(super) fn owners(held: &[HeldReservation]) -> (BTreeSet<i64>, BTreeSet<i64>) {
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
pub(super) async fn release_round(
    cx: BatchContext<'_, '_>,
    claimed: &Claimed,
    patience: Patience<'_>,
    turn: &mut Turn,
    out: &mut BatchOutcome,
) -> Result<Round> {
    match release_steps(cx, claimed, patience, turn, out).await {
        Err(error) if sql_state(&error) == Some(&SqlState::LOCK_NOT_AVAILABLE) => Ok(Round::Held),
        other => other,
    }
}

pub(super) async fn release_steps(
    cx: BatchContext<'_, '_>,
    claimed: &Claimed,
    patience: Patience<'_>,
    turn: &mut Turn,
    out: &mut BatchOutcome,
) -> Result<Round> {
    let Released {
        reservations,
        cancelled,
        finished,
    } = release(cx, claimed).await?;
    let (orders, holds) = not_due(&reservations, claimed);
    if !orders.is_empty() || !holds.is_empty() {
        return Ok(Round::NotDue { orders, holds });
    }
    let mut done = Tally::default();
    done.add(&reservations);
    done.cancelled = cancelled;
    done.finished = finished;
    let waited = &mut out.counts.held_wait_ms;
    match take_counters(cx, &done, &reservations, patience, turn, waited).await? {
        Ok(written) => {
            done.counts.clamped_variants = Written::clamped(&written.variants);
            done.counts.clamped_drops = Written::clamped(&written.drops);
            done.counts.counters_written_by_others = patience.writers.written_by_others(&written);
            out.counter_writes = written.rows().map(|(c, r)| ((c, r.id), r.writer)).collect();
            out.returned = written.rows().map(|(c, r)| (c, *r)).collect();
        }
        Err(held) => return Ok(Round::CountersHeld(held)),
    }
    done.released = reservations;
    done.into_outcome(out);
    Ok(Round::Done)
}

/// Step 3: expire every active reservation of the claimed orders, and the claimed holds; cancel
/// the pending orders among them (one statement).
pub(super) async fn release(cx: BatchContext<'_, '_>, claimed: &Claimed) -> Result<Released> {
    let p = ReleaseParams {
        order_ids: &claimed.orders,
        hold_ids: &claimed.holds,
        processing_order_ids: &claimed.processing_orders,
        cancelled_order_ids: &claimed.cancelled_orders,
        rules: cx.params.rules,
        line_limit: claimed.line_limit,
        only_row: claimed.only_row,
    };
    cx.st.release_reservations(cx.tx, &p).await
}

/// Step 4: the claimed orders none of whose locked rows is due, and the claimed holds not due
/// (none for an order released on request: it need not be due).
pub(super) fn not_due(
    released: &[ReleasedReservation],
    claimed: &Claimed,
) -> (BTreeSet<i64>, BTreeSet<i64>) {
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
pub(super) struct Tally {
    /// Reservations, units, holds and orders released; counters clamped.
    pub(super) counts: Counts,
    pub(super) due_reservations_released: u64,
    pub(super) cancelled: Vec<CancelledOrder>,
    pub(super) finished: Vec<CancelledOrder>,
    pub(super) released: Vec<ReleasedReservation>,
    pub(super) released_orders: Vec<i64>,
    pub(super) released_holds: Vec<i64>,
    pub(super) units_by_variant: BTreeMap<i64, i64>,
    pub(super) units_by_drop: BTreeMap<i64, i64>,
}

impl Tally {
    /// Counts the released rows and sums the units per variant and drop.
    pub(super) fn add(&mut self, released: &[ReleasedReservation]) {
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

    pub(super) fn into_outcome(self, out: &mut BatchOutcome) {
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
        out.finished = self.finished;
    }
}

//! What a run remembers between its batches: the counter rows found held for long, who last
//! wrote each counter row, and the turn its workers take to hold hot rows.

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use super::*;
use crate::db::sql::{Counter, HeldReservation};

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

    pub(super) fn contains(&self, counter: Counter, id: i64) -> bool {
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
    pub(super) fn covers(&self, held: &[HeldReservation]) -> bool {
        held.iter().all(|h| {
            !h.reservation_held
                && h.variant
                    .is_none_or(|v| self.contains(Counter::Variants, v))
                && h.drop.is_none_or(|d| self.contains(Counter::Drops, d))
        })
    }

    /// Adds the counter rows `held` needs, with the order (or hold) that needs each.
    pub(super) fn add(&mut self, held: &[HeldReservation]) {
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

/// The turn the workers of one run take to hold hot rows: a worker takes it before it locks a
/// variant or drop row and keeps it until its batch commits (giving it back whenever it rolls
/// those rows back to poll), so two workers never hold counter rows at once. A worker thus
/// never finds a counter row held by another worker of its run — a row it finds held is a
/// shopper's, and the controller and the deferred work see only shoppers — while the rest of
/// the batches (paging, claiming, expiring, cancelling: most of the work) runs in parallel.
#[derive(Debug, Clone, Default)]
pub struct HotTurn(std::sync::Arc<tokio::sync::Mutex<()>>);

/// One batch's hold on the run's [`HotTurn`] (nothing to take with one worker), and how long
/// the batch has held hot counter rows: what a checkout on one of them could wait on it.
pub(super) struct Turn {
    pub(super) turn: Option<HotTurn>,
    pub(super) held: Option<tokio::sync::OwnedMutexGuard<()>>,
    /// When the batch last took hot rows that a rollback to a savepoint gives back (None: it
    /// holds none now).
    taken_at: Option<Instant>,
    /// When a queue batch was granted its row: held until the transaction ends.
    granted_at: Option<Instant>,
}

impl Turn {
    pub(super) fn new(turn: Option<HotTurn>) -> Self {
        Turn {
            turn,
            held: None,
            taken_at: None,
            granted_at: None,
        }
    }

    /// Waits for the turn, unless this batch has it already; the batch locks hot rows next.
    pub(super) async fn take(&mut self) {
        if let (Some(turn), None) = (&self.turn, &self.held) {
            self.held = Some(turn.0.clone().lock_owned().await);
        }
        self.taken_at.get_or_insert_with(Instant::now);
    }

    /// Gives the turn back: the batch rolled back every hot row it held after its savepoint.
    pub(super) fn give_back(&mut self) {
        self.held = None;
        self.taken_at = None;
    }

    /// A queue batch was granted its row now: it holds it until it commits or rolls back.
    pub(super) fn granted(&mut self) {
        self.granted_at = Some(Instant::now());
    }

    /// How long the batch has held hot rows without a break, up to now (call it when the
    /// transaction has ended): None when it holds none. A queue batch's grant comes before
    /// anything it takes.
    pub(super) fn hold(&self) -> Option<Duration> {
        Some(self.granted_at.or(self.taken_at)?.elapsed())
    }
}

/// The transaction that last wrote each counter row a run's batches updated (its subtransaction
/// `xmin`), shared by the run's workers and kept after each commit: a batch that finds a row
/// last written by another transaction knows a checkout updated it in between (see
/// `engine::controller`).
#[derive(Debug, Clone, Default)]
pub struct CounterWriters(std::sync::Arc<std::sync::Mutex<BTreeMap<(Counter, i64), i64>>>);

impl CounterWriters {
    pub(super) fn map(&self) -> std::sync::MutexGuard<'_, BTreeMap<(Counter, i64), i64>> {
        self.0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// How many of the rows `written` updated were written last by another transaction since
    /// this run wrote them (a row the run never wrote tells nothing).
    pub(super) fn written_by_others(&self, written: &Written) -> u64 {
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
    pub(super) fn record(&self, writes: &[((Counter, i64), i64)]) {
        self.map().extend(writes.iter().copied());
    }
}

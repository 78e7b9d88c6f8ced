//! The end of a run's paging: queue batches for the rows held for long, then rounds of tries of
//! the deferred orders and holds.

use super::*;
use std::collections::BTreeSet;

use crate::db::session::Database;
use crate::db::sql::{self, LineRows};
use crate::engine::batch::LongHeld;
use crate::engine::run_report::StopReason;
use crate::error::Result;

impl<'a> Run<'a> {
    /// Once the pages are drained: the orders left out for a counter row that stayed held are
    /// taken by queue batches, each waiting in that row's lock queue (see [`Source::Queue`]);
    /// then more tries, polling again, of whatever is still deferred (the cursor has passed
    /// it): round after round while a round releases some, [`RETRY_ROUNDS`] at most. Rows those
    /// tries found held for long (the other hot rows of an order across several) get queue
    /// batches in turn, [`QUEUE_CYCLES`] times at most. What is still held then is left for the
    /// next run.
    pub(super) async fn retry_deferred(&mut self, db: &mut Database) -> Result<StopReason> {
        for _ in 0..QUEUE_CYCLES {
            if let Some(stop) = self.queue_batches(db).await? {
                return Ok(stop);
            }
            if let Some(stop) = self.retry_rounds(db).await? {
                return Ok(stop);
            }
            let left = self.books.deferred_orders.len() + self.books.deferred_holds.len();
            if left == 0 || self.params.long_held.is_empty() {
                break;
            }
        }
        Ok(StopReason::Drained)
    }

    /// Rounds of tries of the deferred work, while a round releases some, [`RETRY_ROUNDS`] at
    /// most.
    async fn retry_rounds(&mut self, db: &mut Database) -> Result<Option<StopReason>> {
        for _ in 0..RETRY_ROUNDS {
            let before = self.books.deferred_orders.len() + self.books.deferred_holds.len();
            if before == 0 {
                break;
            }
            if let Some(stop) = self.retry_round(db).await? {
                return Ok(Some(stop));
            }
            if self.books.deferred_orders.len() + self.books.deferred_holds.len() >= before {
                break;
            }
        }
        Ok(None)
    }

    /// One try of every deferred order and hold, a page at a time (each batch polling for the
    /// rows it finds held).
    pub(super) async fn retry_round(&mut self, db: &mut Database) -> Result<Option<StopReason>> {
        self.retry_queue = (
            self.books.deferred_orders.iter().copied().collect(),
            self.books.deferred_holds.iter().copied().collect(),
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
    /// orders first), [`QUEUE_BATCH_ORDERS`] of its still-deferred orders at a time, until the
    /// row's orders are done or a wait for it runs out. A queue batch releases only the lines
    /// that need its row; an order with lines on other rows (a cart spanning several hot rows)
    /// stays deferred for them, cancelled already, and is finished by their queue batches (in
    /// this round when those rows are known to be held, or the next). The run's record of held
    /// rows is emptied: the last try polls again for every row.
    pub(super) async fn queue_batches(&mut self, db: &mut Database) -> Result<Option<StopReason>> {
        let queues = std::mem::take(&mut self.params.long_held).into_queues();
        for (row, owners) in queues {
            // Orders this row's batches released (those with lines on other rows stay deferred).
            let mut done_here = BTreeSet::new();
            loop {
                let orders: Vec<i64> = owners
                    .orders
                    .iter()
                    .filter(|o| self.books.deferred_orders.contains(o) && !done_here.contains(*o))
                    .take(QUEUE_BATCH_ORDERS)
                    .copied()
                    .collect();
                let holds: Vec<i64> = owners
                    .holds
                    .iter()
                    .filter(|h| self.books.deferred_holds.contains(h))
                    .take(QUEUE_BATCH_ORDERS.saturating_sub(orders.len()))
                    .copied()
                    .collect();
                if orders.is_empty() && holds.is_empty() {
                    break;
                }
                if let Some(stop) = self.start_batch() {
                    return Ok(Some(stop));
                }
                let lines = sql::counter_rows_of(&db.client, &orders, &holds).await?;
                let elsewhere = orders_needing_other_rows(row, &lines);
                self.queue = Some((row, orders, holds));
                let batch = match self.batch_with_retries(db, Work::Queue).await? {
                    Ok(batch) => batch,
                    Err(stop) => return Ok(Some(stop)),
                };
                let timed_out = batch.counts.queue_timeouts > 0;
                let progress =
                    !batch.released_orders.is_empty() || !batch.released_holds.is_empty();
                let released = batch.released_orders.clone();
                if let Some(stop) = self.record(db, batch).await? {
                    return Ok(Some(stop));
                }
                // Released on this row only: still deferred for its other rows.
                let partly = released.iter().filter(|o| elsewhere.contains(o));
                self.books.deferred_orders.extend(partly);
                done_here.extend(released);
                if timed_out || !progress {
                    break;
                }
            }
        }
        self.params.long_held = LongHeld::default();
        Ok(None)
    }

    /// The front of the retry queue, at most a page of it.
    pub(super) fn retry_chunk(&self) -> (Vec<i64>, Vec<i64>) {
        let n = self.page_rows();
        let orders: Vec<i64> = self.retry_queue.0.iter().take(n).copied().collect();
        let rest = n.saturating_sub(orders.len());
        let holds = self.retry_queue.1.iter().take(rest).copied().collect();
        (orders, holds)
    }
}

/// The orders among `lines` with an active line that does not need `row`: a queue batch for
/// `row` leaves those lines for their own rows.
fn orders_needing_other_rows(row: (Counter, i64), lines: &[LineRows]) -> BTreeSet<i64> {
    lines
        .iter()
        .filter(|l| {
            let on_row = match row {
                (Counter::Variants, id) => l.variant_id == id,
                (Counter::Drops, id) => l.drop_id == Some(id),
            };
            !on_row
        })
        .filter_map(|l| l.order_id)
        .collect()
}

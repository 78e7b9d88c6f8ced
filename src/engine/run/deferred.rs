//! The end of a run's paging: queue batches for the rows held for long, then rounds of tries of
//! the deferred orders and holds.

use super::*;
use crate::db::session::Database;
use crate::engine::batch::LongHeld;
use crate::engine::run_report::StopReason;
use crate::error::Result;

impl<'a> Run<'a> {
    /// Once the pages are drained: the orders left out for a counter row that stayed held are
    /// taken by queue batches, each waiting in that row's lock queue (see [`Source::Queue`]);
    /// then more tries, polling again, of whatever is still deferred (the cursor has passed
    /// it): round after round while a round releases some, [`RETRY_ROUNDS`] at most. What is
    /// still held then is left for the next run.
    pub(super) async fn retry_deferred(&mut self, db: &mut Database) -> Result<StopReason> {
        if let Some(stop) = self.queue_batches(db).await? {
            return Ok(stop);
        }
        for _ in 0..RETRY_ROUNDS {
            let before = self.books.deferred_orders.len() + self.books.deferred_holds.len();
            if before == 0 {
                break;
            }
            if let Some(stop) = self.retry_round(db).await? {
                return Ok(stop);
            }
            if self.books.deferred_orders.len() + self.books.deferred_holds.len() >= before {
                break;
            }
        }
        Ok(StopReason::Drained)
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
    /// orders first), [`QUEUE_BATCH_ORDERS`] of its still-deferred orders at a time, until the row's orders are
    /// done or a wait for it runs out. The run's record of held rows is emptied: the last try
    /// polls again for every row.
    pub(super) async fn queue_batches(&mut self, db: &mut Database) -> Result<Option<StopReason>> {
        let queues = std::mem::take(&mut self.params.long_held).into_queues();
        for (row, owners) in queues {
            loop {
                let orders: Vec<i64> = owners
                    .orders
                    .iter()
                    .filter(|o| self.books.deferred_orders.contains(o))
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

    /// The front of the retry queue, at most a page of it.
    pub(super) fn retry_chunk(&self) -> (Vec<i64>, Vec<i64>) {
        let n = self.page_rows();
        let orders: Vec<i64> = self.retry_queue.0.iter().take(n).copied().collect();
        let rest = n.saturating_sub(orders.len());
        let holds = self.retry_queue.1.iter().take(rest).copied().collect();
        (orders, holds)
    }
}

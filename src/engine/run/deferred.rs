//! The end of a run's paging: queue batches for the rows held for long, then rounds of tries of
//! the deferred orders and holds.

use super::*;
use std::collections::{BTreeMap, BTreeSet};

use crate::db::session::Database;
use crate::db::sql::{self, LineRows};
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
    /// orders first), [`QUEUE_BATCH_ORDERS`] of its still-deferred orders at a time, until the
    /// row's orders are done or a wait for it runs out. Each batch waits in the queue of every
    /// counter row its orders need (an order across two or three hot rows is won only with all
    /// of them), at most [`QUEUE_BATCH_ROWS`] rows: the orders are grouped by
    /// [`queue_group`]. It waits for them in the release's lock order; when a later wait runs
    /// out — a shopper holding a later row waits for one the batch has won (a cart locked in
    /// another order: a lock cycle the batch's `lock_timeout` breaks) — the next batch for
    /// the row waits in the reverse order, the order such shoppers take. The run's record of
    /// held rows is emptied: the last try polls again for every row.
    pub(super) async fn queue_batches(&mut self, db: &mut Database) -> Result<Option<StopReason>> {
        let queues = std::mem::take(&mut self.params.long_held).into_queues();
        for (row, owners) in queues {
            let mut reverse = false;
            loop {
                let orders: Vec<i64> = owners
                    .orders
                    .iter()
                    .filter(|o| self.books.deferred_orders.contains(o))
                    .take(QUEUE_BATCH_ORDERS * 4)
                    .copied()
                    .collect();
                let holds: Vec<i64> = owners
                    .holds
                    .iter()
                    .filter(|h| self.books.deferred_holds.contains(h))
                    .take((QUEUE_BATCH_ORDERS * 4).saturating_sub(orders.len()))
                    .copied()
                    .collect();
                if orders.is_empty() && holds.is_empty() {
                    break;
                }
                if let Some(stop) = self.start_batch() {
                    return Ok(Some(stop));
                }
                let lines = sql::counter_rows_of(&db.client, &orders, &holds).await?;
                let (mut rows, orders, holds) = queue_group(row, &orders, &holds, &lines);
                if reverse {
                    rows.reverse();
                }
                let several = rows.len() > 1;
                self.queue = Some((rows, orders, holds));
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
                if timed_out && several && !reverse {
                    reverse = true;
                    continue;
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

/// Who holds a line: an order, or a cart hold (a reservation without an order).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Owner {
    Order(i64),
    Hold(i64),
}

/// The work of one queue batch for `row`: of the orders and holds left out for it (in their
/// order), as many as share at most [`QUEUE_BATCH_ROWS`] counter rows between them (the rows
/// their active `lines` need, `row` included), [`QUEUE_BATCH_ORDERS`] at most — and those rows
/// in the release's lock order (variants, then drops, ascending ids), the order the batch waits
/// for them in. A first owner needing more rows than that is taken alone with the first of
/// its rows; the rest of its rows are then tried without waiting.
fn queue_group(
    row: (Counter, i64),
    orders: &[i64],
    holds: &[i64],
    lines: &[LineRows],
) -> QueueWork {
    let mut needs: BTreeMap<Owner, BTreeSet<(Counter, i64)>> = BTreeMap::new();
    for line in lines {
        let owner = line.order_id.map_or(Owner::Hold(line.id), Owner::Order);
        let rows = needs.entry(owner).or_default();
        rows.insert((Counter::Variants, line.variant_id));
        if let Some(drop) = line.drop_id {
            rows.insert((Counter::Drops, drop));
        }
    }
    let owners = orders
        .iter()
        .map(|&o| Owner::Order(o))
        .chain(holds.iter().map(|&h| Owner::Hold(h)));
    let mut rows = BTreeSet::from([row]);
    let (mut picked_orders, mut picked_holds) = (Vec::new(), Vec::new());
    let empty = BTreeSet::new();
    for owner in owners {
        if picked_orders.len() + picked_holds.len() >= QUEUE_BATCH_ORDERS {
            break;
        }
        let need = needs.get(&owner).unwrap_or(&empty);
        let union: BTreeSet<_> = rows.union(need).copied().collect();
        let first = picked_orders.is_empty() && picked_holds.is_empty();
        if union.len() <= QUEUE_BATCH_ROWS {
            rows = union;
        } else if first {
            rows.extend(need.iter().copied().take(QUEUE_BATCH_ROWS - 1));
            rows = rows.into_iter().take(QUEUE_BATCH_ROWS).collect();
        } else {
            continue;
        }
        match owner {
            Owner::Order(o) => picked_orders.push(o),
            Owner::Hold(h) => picked_holds.push(h),
        }
    }
    (rows.into_iter().collect(), picked_orders, picked_holds)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn line(order: i64, variant: i64, drop: Option<i64>) -> LineRows {
        LineRows {
            order_id: Some(order),
            id: order * 100 + variant,
            variant_id: variant,
            drop_id: drop,
        }
    }

    #[test]
    fn a_queue_batch_waits_for_every_row_its_orders_need_in_lock_order() {
        let v = |id| (Counter::Variants, id);
        let d = |id| (Counter::Drops, id);
        // Orders 1 and 2 need variants 7 and 5 (and 7's drop 3); order 3 needs only 7.
        let lines = [
            line(1, 7, Some(3)),
            line(1, 5, None),
            line(2, 5, None),
            line(2, 7, Some(3)),
            line(3, 7, Some(3)),
        ];
        let (rows, orders, holds) = queue_group(v(7), &[1, 2, 3], &[], &lines);
        assert_eq!(rows, vec![v(5), v(7), d(3)]);
        assert_eq!((orders, holds), (vec![1, 2, 3], vec![]));
    }

    #[test]
    fn a_queue_batch_takes_no_more_rows_than_its_bound() {
        let v = |id| (Counter::Variants, id);
        // Order 1 needs 6 rows, order 2 four others: only order 1 fits beside the queued row.
        let mut lines: Vec<LineRows> = (10..16).map(|x| line(1, x, None)).collect();
        lines.extend((20..24).map(|x| line(2, x, None)));
        let (rows, orders, _) = queue_group(v(10), &[1, 2], &[], &lines);
        assert_eq!(rows.len(), QUEUE_BATCH_ROWS);
        assert_eq!(orders, vec![1]);
        // A first order needing more than the bound is taken alone, with the queued row.
        let lines: Vec<LineRows> = (30..40).map(|x| line(4, x, None)).collect();
        let (rows, orders, _) = queue_group(v(35), &[4], &[], &lines);
        assert_eq!((rows.len(), orders), (QUEUE_BATCH_ROWS, vec![4]));
        assert!(rows.contains(&v(35)), "{rows:?}");
    }
}

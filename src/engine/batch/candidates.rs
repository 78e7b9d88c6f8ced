//! Steps 1 and 2 of a batch: its candidates (a page after the cursor, pass rows, deferred or
//! queued work, one order) and their claims, skipping what a shopper holds.

use std::collections::{BTreeSet, HashSet};
use std::time::Instant;

use tokio_postgres::error::SqlState;
use tokio_postgres::Transaction;

use super::*;
use crate::db::sql::{
    self, ClaimParams, ClaimedOrder, Counter, OrdersParams, PageParams, PageRow, PgTimestamp,
};
use crate::error::{sql_state, Result};

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

/// The candidates of a batch: orders (deduplicated, ascending) and cart holds.
#[derive(Debug, Default)]
pub(super) struct Candidates {
    pub(super) orders: Vec<i64>,
    pub(super) holds: Vec<i64>,
}

/// What this batch holds locked and means to release.
#[derive(Debug, Default)]
pub(super) struct Claimed {
    pub(super) orders: Vec<i64>,
    pub(super) processing_orders: Vec<i64>,
    /// Claimed orders that are `cancelled` already (on their locked row), or may be (an order
    /// asked for): the release step looks up the instant that cancelled them.
    pub(super) cancelled_orders: Vec<i64>,
    pub(super) holds: Vec<i64>,
    /// Released on request: none of their reservations needs to be due.
    pub(super) on_request: bool,
    /// A part of an order too large for one batch: at most this many of its lines.
    pub(super) line_limit: Option<i64>,
    /// A queue batch: only the lines that need this counter row (the rest of each order is
    /// released later, with the instant this batch cancels it).
    pub(super) only_row: Option<(Counter, i64)>,
}

impl Claimed {
    pub(super) fn is_empty(&self) -> bool {
        self.orders.is_empty() && self.holds.is_empty()
    }

    /// Leaves out `orders` and `holds`.
    pub(super) fn remove(&mut self, orders: &BTreeSet<i64>, holds: &BTreeSet<i64>) {
        self.orders.retain(|id| !orders.contains(id));
        self.processing_orders.retain(|id| !orders.contains(id));
        self.cancelled_orders.retain(|id| !orders.contains(id));
        self.holds.retain(|id| !holds.contains(id));
    }
}

/// The candidates of a batch on a page, pass rows or deferred work.
pub(super) async fn candidates_of(
    cx: BatchContext<'_, '_>,
    source: Source<'_>,
    exclude: &HashSet<i64>,
    out: &mut BatchOutcome,
) -> Result<Candidates> {
    Ok(match source {
        Source::Page(cursor) => {
            let page = page(cx, cursor).await?;
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
        Source::Alone { order, .. } | Source::OnRequest(order) => Candidates {
            orders: vec![order],
            holds: Vec::new(),
        },
    })
}

pub(super) fn deferred(orders: &[i64], holds: &[i64], exclude: &HashSet<i64>) -> Candidates {
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
pub(super) async fn queue_for(
    cx: BatchContext<'_, '_>,
    (counter, id): (Counter, i64),
    out: &mut BatchOutcome,
) -> Result<bool> {
    let started = Instant::now();
    let granted = match cx.st.queue_for(cx.tx, counter, id).await {
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
pub(super) async fn page(cx: BatchContext<'_, '_>, cursor: &Cursor) -> Result<Vec<PageRow>> {
    let p = PageParams {
        expiring_after: cursor.expiring,
        legacy_after: cursor.legacy,
        limit: cx.params.page_size,
        rules: cx.params.rules,
        share: cx.params.share,
    };
    cx.st.page(cx.tx, &p).await
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

pub(super) fn candidates(page: &[PageRow], exclude: &HashSet<i64>) -> Candidates {
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
pub(super) async fn claim(
    cx: BatchContext<'_, '_>,
    candidates: &Candidates,
    max_lines: Option<i64>,
    out: &mut BatchOutcome,
) -> Result<Claimed> {
    let mut claimed = Claimed::default();
    if !candidates.orders.is_empty() {
        let p = ClaimParams {
            orders: OrdersParams {
                order_ids: &candidates.orders,
                rules: cx.params.rules,
            },
            count_lines_up_to: max_lines.map_or(1, |n| n.saturating_add(1)),
        };
        let mut large = Vec::new();
        for ClaimedOrder {
            id,
            processing,
            cancelled,
            lines,
        } in cx.st.claim_orders(cx.tx, &p).await?
        {
            claimed.orders.push(id);
            if max_lines.is_some_and(|n| lines > n) {
                large.push(id);
                continue;
            }
            if processing {
                claimed.processing_orders.push(id);
            }
            if cancelled {
                claimed.cancelled_orders.push(id);
            }
        }
        classify_unclaimed(cx, candidates, &claimed, out).await?;
        claimed.orders.retain(|id| !large.contains(id));
        out.large_orders = large;
    }
    if !candidates.holds.is_empty() {
        claimed.holds = cx
            .st
            .claim_holds(cx.tx, &candidates.holds, cx.params.rules)
            .await?;
    }
    out.counts.skipped_locked += (candidates.holds.len() - claimed.holds.len()) as u64;
    Ok(claimed)
}

/// Step 2 of a [`Source::OnRequest`] batch: lock the order (`NOWAIT`: a shopper holding it
/// fails the batch at once with `lock_not_available`, and the caller polls) and judge it on the
/// locked row.
pub(super) async fn claim_requested(
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
        // Looked up on its locked row by the release step (one order).
        cancelled_orders: vec![order.id],
        holds: Vec::new(),
        on_request: true,
        line_limit: None,
        only_row: None,
    }))
}

/// Candidates not claimed: paid (an anomaly), not due or not releasable (payment grace), or
/// held by a shopper. Only the last are skipped work; the backlog count at the end of the run
/// tells which are still due. Runs only when some candidates were not claimed.
pub(super) async fn classify_unclaimed(
    cx: BatchContext<'_, '_>,
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
        rules: cx.params.rules,
    };
    for order in cx.st.classify_unclaimed(cx.tx, &p).await? {
        if order.paid {
            out.paid_orders.insert(order.id);
        } else if order.due {
            out.counts.skipped_locked += 1;
        }
    }
    Ok(())
}

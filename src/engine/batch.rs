//! One batch: a single short transaction that pages to the next due candidates, claims what it
//! can without waiting, releases it, gives the units back, and commits — or, in a dry run,
//! rolls everything back after reading what it would have done. Each step is one function over
//! one statement of [`crate::db::sql`], in the order README's "How a run works" gives.

use std::collections::{BTreeMap, BTreeSet, HashSet};

use tokio_postgres::Transaction;

use crate::config::ReleaseSettings;
use crate::db::session::Database;
use crate::db::sql::{
    BatchTimeouts, ClaimedOrder, OrdersParams, PageParams, PageRow, ReleaseParams,
    ReleasedReservation, Rules, Statements, UnitsParams,
};
use crate::error::{Error, Result};

/// Where a run's paging stands in each of the two due orders (see [`crate::db::sql::PAGE`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cursor {
    /// (`expires_at` as text, id) of the last expiring row paged.
    pub expiring: (String, i64),
    /// (`created_at` as text, id) of the last legacy row paged.
    pub legacy: (String, i64),
}

impl Default for Cursor {
    fn default() -> Self {
        Cursor {
            expiring: ("-infinity".into(), 0),
            legacy: ("-infinity".into(), 0),
        }
    }
}

/// The parameters every batch of a run shares, converted once to the types the SQL takes.
#[derive(Debug, Clone)]
pub struct BatchParams {
    page_size: i64,
    rules: Rules,
    timeouts: BatchTimeouts,
    dry_run: bool,
}

impl BatchParams {
    pub fn new(settings: &ReleaseSettings, dry_run: bool) -> Self {
        BatchParams {
            page_size: i64::from(settings.batch_size),
            rules: rules(settings),
            timeouts: BatchTimeouts {
                lock_timeout: format!("{}ms", settings.lock_timeout_ms),
                statement_timeout: format!("{}ms", settings.statement_timeout_ms),
            },
            dry_run,
        }
    }

    /// The rule parameters of the statements.
    pub fn rules(&self) -> Rules {
        self.rules
    }
}

/// The release rules of `settings` as the statements take them.
pub fn rules(settings: &ReleaseSettings) -> Rules {
    Rules {
        timeout_minutes: clamp_i32(settings.reservation_timeout_minutes),
        grace_minutes: clamp_i32(settings.payment_processing_grace_minutes),
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
    pub reservations_released: u64,
    /// Of those, the ones that were due themselves (not just released with their order).
    pub due_reservations_released: u64,
    pub holds_released: u64,
    pub units_released: u64,
    pub orders_cancelled: u64,
    /// Eligible orders and holds that a shopper's transaction held, skipped without waiting.
    pub skipped_locked: u64,
    /// Paid orders met that still hold due active reservations (an anomaly; never touched).
    pub paid_orders: BTreeSet<i64>,
    pub clamped_variants: u64,
    pub clamped_drops: u64,
    /// Orders whose reservations this batch released.
    pub released_orders: Vec<i64>,
    pub units_by_variant: BTreeMap<i64, i64>,
    pub units_by_drop: BTreeMap<i64, i64>,
    /// The cursor after this page.
    pub next_cursor: Cursor,
}

/// The page's proposals: orders (deduplicated, ascending) and cart holds.
#[derive(Debug, Default)]
struct Candidates {
    orders: Vec<i64>,
    holds: Vec<i64>,
}

/// What this batch holds locked and will release.
#[derive(Debug, Default)]
struct Claimed {
    orders: Vec<i64>,
    processing_orders: Vec<i64>,
    holds: Vec<i64>,
}

/// Runs one batch after `cursor`. `exclude` holds orders a dry run has already counted (their
/// reservations are still active after the rollback); a real run passes an empty set.
pub async fn run(
    db: &mut Database,
    params: &BatchParams,
    cursor: &Cursor,
    exclude: &HashSet<i64>,
) -> Result<BatchOutcome> {
    let st = &db.statements;
    let tx = db
        .client
        .transaction()
        .await
        .map_err(Error::db("beginning a batch"))?;
    st.set_batch_timeouts(&tx, &params.timeouts).await?;
    let page = page(&tx, st, params, cursor).await?;
    let mut out = BatchOutcome {
        rows_paged: page.len(),
        next_cursor: advance(cursor, &page),
        ..BatchOutcome::default()
    };
    let candidates = candidates(&page, exclude);
    let claimed = claim(&tx, st, params.rules, &candidates, &mut out).await?;
    if !claimed.orders.is_empty() || !claimed.holds.is_empty() {
        let released = release(&tx, st, params.rules, &claimed).await?;
        tally(&released, &mut out);
        cancel_orders(&tx, st, &mut out).await?;
        return_units(&tx, st, &mut out).await?;
    }
    finish(tx, params.dry_run).await?;
    Ok(out)
}

/// Step 1: the next due reservations after the cursor (locks nothing).
async fn page(
    tx: &Transaction<'_>,
    st: &Statements,
    params: &BatchParams,
    cursor: &Cursor,
) -> Result<Vec<PageRow>> {
    let p = PageParams {
        expiring_after: (&cursor.expiring.0, cursor.expiring.1),
        legacy_after: (&cursor.legacy.0, cursor.legacy.1),
        limit: params.page_size,
        rules: params.rules,
    };
    st.page(tx, &p).await
}

/// The cursor after `page`: the last row paged in each due order.
fn advance(cursor: &Cursor, page: &[PageRow]) -> Cursor {
    let mut next = cursor.clone();
    for row in page {
        let key = (row.due_key.clone(), row.id);
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
async fn claim(
    tx: &Transaction<'_>,
    st: &Statements,
    rules: Rules,
    candidates: &Candidates,
    out: &mut BatchOutcome,
) -> Result<Claimed> {
    let mut claimed = Claimed::default();
    if !candidates.orders.is_empty() {
        let p = OrdersParams {
            order_ids: &candidates.orders,
            rules,
        };
        for ClaimedOrder { id, processing } in st.claim_orders(tx, &p).await? {
            claimed.orders.push(id);
            if processing {
                claimed.processing_orders.push(id);
            }
        }
        classify_unclaimed(tx, st, rules, candidates, &claimed, out).await?;
    }
    if !candidates.holds.is_empty() {
        claimed.holds = st.claim_holds(tx, &candidates.holds, rules).await?;
    }
    out.skipped_locked += (candidates.holds.len() - claimed.holds.len()) as u64;
    Ok(claimed)
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
            out.skipped_locked += 1;
        }
    }
    Ok(())
}

/// Step 3: expire every active reservation of the claimed orders, and the claimed holds.
async fn release(
    tx: &Transaction<'_>,
    st: &Statements,
    rules: Rules,
    claimed: &Claimed,
) -> Result<Vec<ReleasedReservation>> {
    let p = ReleaseParams {
        order_ids: &claimed.orders,
        hold_ids: &claimed.holds,
        processing_order_ids: &claimed.processing_orders,
        rules,
    };
    st.release_reservations(tx, &p).await
}

/// Counts what was released and sums the units per variant and drop.
fn tally(released: &[ReleasedReservation], out: &mut BatchOutcome) {
    let mut orders = BTreeSet::new();
    for r in released {
        let quantity = i64::from(r.quantity);
        out.reservations_released += 1;
        out.due_reservations_released += u64::from(r.was_due);
        out.units_released += quantity.unsigned_abs();
        match r.order_id {
            Some(order) => {
                orders.insert(order);
            }
            None => out.holds_released += 1,
        }
        *out.units_by_variant.entry(r.variant_id).or_default() += quantity;
        if let Some(drop_id) = r.drop_id {
            *out.units_by_drop.entry(drop_id).or_default() += quantity;
        }
    }
    out.released_orders = orders.into_iter().collect();
}

/// Step 4: cancel the pending orders whose reservations were released.
async fn cancel_orders(
    tx: &Transaction<'_>,
    st: &Statements,
    out: &mut BatchOutcome,
) -> Result<()> {
    if !out.released_orders.is_empty() {
        out.orders_cancelled = st.cancel_orders(tx, &out.released_orders).await?.len() as u64;
    }
    Ok(())
}

/// Step 5: give the units back, variants first, then drops (ascending ids, as a BTreeMap
/// iterates), counting the counters clamped at zero.
async fn return_units(tx: &Transaction<'_>, st: &Statements, out: &mut BatchOutcome) -> Result<()> {
    if !out.units_by_variant.is_empty() {
        let (ids, units) = columns(&out.units_by_variant);
        let p = UnitsParams {
            ids: &ids,
            units: &units,
        };
        let rows = st.return_variant_units(tx, &p).await?;
        out.clamped_variants = rows.iter().filter(|r| r.clamped).count() as u64;
    }
    if !out.units_by_drop.is_empty() {
        let (ids, units) = columns(&out.units_by_drop);
        let p = UnitsParams {
            ids: &ids,
            units: &units,
        };
        let rows = st.return_drop_units(tx, &p).await?;
        out.clamped_drops = rows.iter().filter(|r| r.clamped).count() as u64;
    }
    Ok(())
}

fn columns(map: &BTreeMap<i64, i64>) -> (Vec<i64>, Vec<i64>) {
    map.iter().map(|(id, units)| (*id, *units)).unzip()
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

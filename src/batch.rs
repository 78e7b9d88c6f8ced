//! One batch: a single short transaction that pages to the next due candidates, claims what it
//! can without waiting, releases it, gives the units back, and commits — or, in a dry run,
//! rolls everything back after reading what it would have done.

use std::collections::{BTreeMap, BTreeSet, HashSet};

use crate::database::Database;
use crate::error::{Error, Result};
use crate::settings::Settings;

/// Where a run's paging stands in each of the two due orders (see [`crate::sql::PAGE`]).
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
    timeout_minutes: i32,
    grace_minutes: i32,
    lock_timeout: String,
    statement_timeout: String,
    dry_run: bool,
}

impl BatchParams {
    pub fn new(settings: &Settings, dry_run: bool) -> Self {
        BatchParams {
            page_size: i64::from(settings.batch_size),
            timeout_minutes: clamp_i32(settings.reservation_timeout_minutes),
            grace_minutes: clamp_i32(settings.payment_processing_grace_minutes),
            lock_timeout: format!("{}ms", settings.lock_timeout_ms),
            statement_timeout: format!("{}ms", settings.statement_timeout_ms),
            dry_run,
        }
    }

    pub fn timeout_minutes(&self) -> i32 {
        self.timeout_minutes
    }

    pub fn grace_minutes(&self) -> i32 {
        self.grace_minutes
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
    tx.query(
        &st.set_batch_timeouts,
        &[&params.lock_timeout, &params.statement_timeout],
    )
    .await
    .map_err(Error::db("setting the batch timeouts"))?;

    let page = tx
        .query(
            &st.page,
            &[
                &cursor.expiring.0,
                &cursor.expiring.1,
                &cursor.legacy.0,
                &cursor.legacy.1,
                &params.page_size,
                &params.timeout_minutes,
            ],
        )
        .await
        .map_err(Error::db("paging due reservations"))?;

    let mut out = BatchOutcome {
        rows_paged: page.len(),
        next_cursor: cursor.clone(),
        ..BatchOutcome::default()
    };
    let mut order_candidates = BTreeSet::new();
    let mut hold_candidates = Vec::new();
    for row in &page {
        let id: i64 = row.get(0);
        let order_id: Option<i64> = row.get(1);
        let key: String = row.get(2);
        let legacy: bool = row.get(3);
        if legacy {
            out.next_cursor.legacy = (key, id);
        } else {
            out.next_cursor.expiring = (key, id);
        }
        match order_id {
            Some(order) if !exclude.contains(&order) => {
                order_candidates.insert(order);
            }
            Some(_) => {}
            None => hold_candidates.push(id),
        }
    }
    if order_candidates.is_empty() && hold_candidates.is_empty() {
        finish(tx, params.dry_run).await?;
        return Ok(out);
    }

    let order_candidates: Vec<i64> = order_candidates.into_iter().collect();
    let mut claimed_orders: Vec<i64> = Vec::new();
    let mut processing_orders: Vec<i64> = Vec::new();
    if !order_candidates.is_empty() {
        let rows = tx
            .query(
                &st.claim_orders,
                &[
                    &order_candidates,
                    &params.timeout_minutes,
                    &params.grace_minutes,
                ],
            )
            .await
            .map_err(Error::db("claiming orders"))?;
        for row in &rows {
            let id: i64 = row.get(0);
            claimed_orders.push(id);
            if row.get::<_, bool>(1) {
                processing_orders.push(id);
            }
        }
    }
    let claimed_holds: Vec<i64> = if hold_candidates.is_empty() {
        Vec::new()
    } else {
        tx.query(
            &st.claim_holds,
            &[&hold_candidates, &params.timeout_minutes],
        )
        .await
        .map_err(Error::db("claiming cart holds"))?
        .iter()
        .map(|r| r.get(0))
        .collect()
    };
    // Candidates not claimed: paid (an anomaly), not due or not releasable (payment grace), or
    // held by a shopper. Only the last are skipped work; the backlog count at the end of the run
    // tells which are still due.
    let unclaimed: Vec<i64> = order_candidates
        .iter()
        .filter(|id| claimed_orders.binary_search(id).is_err())
        .copied()
        .collect();
    if !unclaimed.is_empty() {
        let rows = tx
            .query(
                &st.classify_unclaimed,
                &[&unclaimed, &params.timeout_minutes, &params.grace_minutes],
            )
            .await
            .map_err(Error::db("classifying unclaimed orders"))?;
        for row in &rows {
            let id: i64 = row.get(0);
            if row.get::<_, bool>(1) {
                out.paid_orders.insert(id);
            } else if row.get::<_, bool>(2) {
                out.skipped_locked += 1;
            }
        }
    }
    out.skipped_locked += (hold_candidates.len() - claimed_holds.len()) as u64;
    if claimed_orders.is_empty() && claimed_holds.is_empty() {
        finish(tx, params.dry_run).await?;
        return Ok(out);
    }

    let released = tx
        .query(
            &st.release_reservations,
            &[
                &claimed_orders,
                &claimed_holds,
                &params.timeout_minutes,
                &params.grace_minutes,
                &processing_orders,
            ],
        )
        .await
        .map_err(Error::db("expiring reservations"))?;
    let mut released_orders = BTreeSet::new();
    for row in &released {
        let order_id: Option<i64> = row.get(1);
        let variant: i64 = row.get(2);
        let drop_product: Option<i64> = row.get(3);
        let quantity = i64::from(row.get::<_, i32>(4));
        out.reservations_released += 1;
        if row.get::<_, bool>(5) {
            out.due_reservations_released += 1;
        }
        out.units_released += quantity.unsigned_abs();
        match order_id {
            Some(order) => {
                released_orders.insert(order);
            }
            None => out.holds_released += 1,
        }
        *out.units_by_variant.entry(variant).or_default() += quantity;
        if let Some(drop_product) = drop_product {
            *out.units_by_drop.entry(drop_product).or_default() += quantity;
        }
    }
    out.released_orders = released_orders.into_iter().collect();

    if !out.released_orders.is_empty() {
        out.orders_cancelled = tx
            .query(&st.cancel_orders, &[&out.released_orders])
            .await
            .map_err(Error::db("cancelling orders"))?
            .len() as u64;
    }
    out.clamped_variants = return_units(&tx, &st.return_variant_units, &out.units_by_variant)
        .await
        .map_err(Error::db("returning units to variants"))?;
    out.clamped_drops = return_units(&tx, &st.return_drop_units, &out.units_by_drop)
        .await
        .map_err(Error::db("returning units to drops"))?;
    finish(tx, params.dry_run).await?;
    Ok(out)
}

/// Subtracts `units` (ascending ids, as a BTreeMap iterates) from the counter rows; returns
/// how many had to be clamped at zero.
async fn return_units(
    tx: &tokio_postgres::Transaction<'_>,
    statement: &tokio_postgres::Statement,
    units: &BTreeMap<i64, i64>,
) -> std::result::Result<u64, tokio_postgres::Error> {
    if units.is_empty() {
        return Ok(0);
    }
    let ids: Vec<i64> = units.keys().copied().collect();
    let amounts: Vec<i64> = units.values().copied().collect();
    let rows = tx.query(statement, &[&ids, &amounts]).await?;
    Ok(rows.iter().filter(|r| r.get::<_, bool>(1)).count() as u64)
}

async fn finish(tx: tokio_postgres::Transaction<'_>, dry_run: bool) -> Result<()> {
    if dry_run {
        tx.rollback()
            .await
            .map_err(Error::db("rolling back the dry-run batch"))
    } else {
        tx.commit().await.map_err(Error::db("committing a batch"))
    }
}

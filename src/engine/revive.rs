//! Reviving an order the release cancelled, for a payment that arrived late: in one
//! transaction, lock the order, check that the release cancelled it (not the shop), lock its
//! counter rows in the release's order, check that each still has room for what the order
//! needs of it, and only then make its reservations active again, reserve the units again and
//! set the order back to `pending`. Otherwise nothing changes.
//!
//! Revive never waits in a lock queue (every lock is `NOWAIT`, see [`crate::db::sql::revive`]):
//! a row a shopper holds fails the try, whose transaction is rolled back before anything else —
//! revive keeps no row, the order's least, while it waits — and revive tries again by the one
//! retry policy ([`super::retry::HeldRowRetry`]): after 2 ms, then 4, ... up to 32 (jittered),
//! for up to `LOCK_TIMEOUT_MS`; then after a backoff, up to `BATCH_MAX_ATTEMPTS` such attempts
//! in all, and then it fails with a retryable [`Error::Busy`]. Each try decides on the rows it
//! locked itself. In a lock cycle with a shopper it is thus always revive that gives up.

use std::collections::BTreeMap;

use serde::Serialize;
use tokio_postgres::error::SqlState;
use tokio_postgres::Transaction;

use super::batch;
use super::retry::HeldRowRetry;
use crate::config::ReleaseSettings;
use crate::db::session::Database;
use crate::db::sql::retention;
use crate::db::sql::revive::{self as sql, ReleasedRow};
use crate::db::sql::BatchTimeouts;
use crate::error::{sql_state, Error, Result};

/// Why an order was or was not revived.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Reason {
    Revived,
    /// The order is `pending` and its lines are active: it holds its stock already (a retried
    /// revive, e.g. a payment webhook delivered twice). An answer, not an error.
    AlreadyActive,
    /// A counter row has less room than the order needs of it: see `short`.
    StockShort,
    /// The order is not cancelled, or the shop cancelled it (not the release).
    NotCancelledByRelease,
    /// No such order, and a purge deleted orders up to a higher id (only orders the release
    /// cancelled, unpaid, longer ago than the retention): a payment this late cannot be honoured
    /// from stock. An order the shop deleted itself in that id range answers the same.
    Purged,
    UnknownOrder,
}

/// A counter row without room for what the order needs of it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Short {
    pub product_variant_id: i64,
    /// Set when the drop row is short; null when the variant is.
    pub drop_product_id: Option<i64>,
    pub wanted: i64,
    pub available: i64,
}

/// What `revive` answers (the CLI prints it, the Lambda returns it).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ReviveOutcome {
    pub order_id: i64,
    pub revived: bool,
    pub reason: Reason,
    pub short: Vec<Short>,
}

impl ReviveOutcome {
    /// Whether the order holds its stock after this answer: revived now, or already active.
    pub fn holds_its_stock(&self) -> bool {
        matches!(self.reason, Reason::Revived | Reason::AlreadyActive)
    }

    fn not(order_id: i64, reason: Reason) -> Self {
        ReviveOutcome {
            order_id,
            revived: false,
            reason,
            short: Vec::new(),
        }
    }
}

/// Revives `order_id` if the release cancelled it and the stock is still there.
pub async fn revive(
    db: &mut Database,
    settings: &ReleaseSettings,
    hold_minutes: u32,
    order_id: i64,
) -> Result<ReviveOutcome> {
    let timeouts = batch::timeouts(settings);
    let hold = i32::try_from(hold_minutes).unwrap_or(i32::MAX);
    let mut tries = HeldRowRetry::of(settings).start();
    loop {
        match try_revive(db, &timeouts, hold, order_id).await {
            Err(e) if sql_state(&e) == Some(&SqlState::LOCK_NOT_AVAILABLE) => {
                tracing::debug!(order_id, attempt = tries.attempt(), error = %e.chain(),
                    "revive: a row is held");
            }
            done => return done,
        }
        if !tries.after_held().await {
            break;
        }
    }
    Err(Error::Busy {
        what: "reviving the order",
        why: format!(
            "order {order_id} or a stock row it needs stayed locked by another transaction \
             through {} tries; try again shortly",
            settings.batch_max_attempts
        ),
    })
}

/// One revive transaction: committed when it revived the order, otherwise rolled back — a held
/// row fails it with `55P03` — before the caller goes on, so that no row is kept while it
/// waits to try again.
async fn try_revive(
    db: &mut Database,
    timeouts: &BatchTimeouts,
    hold_minutes: i32,
    order_id: i64,
) -> Result<ReviveOutcome> {
    let tx = db
        .client
        .transaction()
        .await
        .map_err(Error::db("beginning the revive"))?;
    let decided = match db.statements.set_batch_timeouts(&tx, timeouts).await {
        Ok(()) => decide(&tx, hold_minutes, order_id).await,
        Err(e) => Err(e),
    };
    match decided {
        Ok(Decided::Revive) => {
            tx.commit()
                .await
                .map_err(Error::db("committing the revive"))?;
            Ok(ReviveOutcome {
                order_id,
                revived: true,
                reason: Reason::Revived,
                short: Vec::new(),
            })
        }
        Ok(Decided::Answer(outcome)) => {
            tx.rollback()
                .await
                .map_err(Error::db("ending the revive"))?;
            Ok(outcome)
        }
        Err(e) => {
            if let Err(rollback) = tx.rollback().await {
                tracing::debug!(error = %rollback, "rolling back the failed revive");
            }
            Err(e)
        }
    }
}

/// What one revive transaction decided, on the rows it locked.
enum Decided {
    /// The order is revived: commit.
    Revive,
    /// Nothing to change: this answer.
    Answer(ReviveOutcome),
}

/// Locks the order, its released reservations and counter rows (`NOWAIT`), decides on them,
/// and when everything has room, revives the order (not yet committed).
async fn decide(tx: &Transaction<'_>, hold_minutes: i32, order_id: i64) -> Result<Decided> {
    let Some(status) = sql::lock_order(tx, order_id).await? else {
        let purged = retention::horizon(tx)
            .await?
            .and_then(|h| h.max_order_id)
            .is_some_and(|highest| order_id <= highest);
        let reason = if purged {
            Reason::Purged
        } else {
            Reason::UnknownOrder
        };
        return Ok(Decided::Answer(ReviveOutcome::not(order_id, reason)));
    };
    if status == "pending" && sql::active_lines(tx, order_id).await? > 0 {
        // A retry of a revive that was done (or an order never released): nothing changed.
        return Ok(Decided::Answer(ReviveOutcome::not(
            order_id,
            Reason::AlreadyActive,
        )));
    }
    let rows = sql::lock_released(tx, order_id).await?;
    if status != "cancelled" || rows.is_empty() {
        return Ok(Decided::Answer(ReviveOutcome::not(
            order_id,
            Reason::NotCancelledByRelease,
        )));
    }
    let need = Need::of(&rows);
    let short = shortages(tx, &need).await?;
    if !short.is_empty() {
        return Ok(Decided::Answer(ReviveOutcome {
            short,
            ..ReviveOutcome::not(order_id, Reason::StockShort)
        }));
    }
    apply(tx, need, hold_minutes, order_id).await?;
    Ok(Decided::Revive)
}

/// What the order needs of each counter row, summed over its released reservations.
struct Need {
    /// Variant id → units.
    variants: BTreeMap<i64, i64>,
    /// Drop id → (the drop's variant, units).
    drops: BTreeMap<i64, (i64, i64)>,
}

impl Need {
    fn of(rows: &[ReleasedRow]) -> Need {
        let mut need = Need {
            variants: BTreeMap::new(),
            drops: BTreeMap::new(),
        };
        for r in rows {
            *need.variants.entry(r.variant_id).or_insert(0) += i64::from(r.quantity);
            if let Some(d) = r.drop_id {
                need.drops.entry(d).or_insert((r.variant_id, 0)).1 += i64::from(r.quantity);
            }
        }
        need
    }
}

/// Locks the variant rows, then the drop rows (ascending ids), and lists those without room.
async fn shortages(tx: &Transaction<'_>, need: &Need) -> Result<Vec<Short>> {
    let (variants, drops) = (&need.variants, &need.drops);
    let mut short = Vec::new();
    let ids: Vec<i64> = variants.keys().copied().collect();
    for room in sql::lock_room(tx, false, &ids).await? {
        let want = variants.get(&room.id).copied().unwrap_or(0);
        if room.available < want {
            short.push(Short {
                product_variant_id: room.id,
                drop_product_id: None,
                wanted: want,
                available: room.available,
            });
        }
    }
    let ids: Vec<i64> = drops.keys().copied().collect();
    for room in sql::lock_room(tx, true, &ids).await? {
        let (variant, want) = drops.get(&room.id).copied().unwrap_or((0, 0));
        if room.available < want {
            short.push(Short {
                product_variant_id: variant,
                drop_product_id: Some(room.id),
                wanted: want,
                available: room.available,
            });
        }
    }
    Ok(short)
}

/// Reactivates the reservations, reserves the units again, reopens the order.
async fn apply(tx: &Transaction<'_>, need: Need, hold_minutes: i32, order_id: i64) -> Result<()> {
    // The rows are locked (LOCK_RELEASED): the same rows are reactivated.
    sql::reactivate(tx, order_id, hold_minutes).await?;
    let Need { variants, drops } = need;
    let (ids, units): (Vec<i64>, Vec<i64>) = variants.into_iter().unzip();
    sql::add_units(tx, false, &ids, &units).await?;
    let (ids, units): (Vec<i64>, Vec<i64>) = drops.into_iter().map(|(d, (_, n))| (d, n)).unzip();
    sql::add_units(tx, true, &ids, &units).await?;
    sql::reopen_order(tx, order_id).await?;
    Ok(())
}

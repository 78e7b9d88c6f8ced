//! `reconcile`: finds the variant and drop counters whose `reserved_quantity` disagrees with
//! the sum of their active reservations and, asked to, sets them right — exactly, under live
//! traffic. The candidates come from one read of each table (no lock); each is then confirmed,
//! and repaired, in a short transaction of its own that locks only that counter row, without
//! waiting (`SKIP LOCKED`: a row a shopper holds is skipped, polled for by the one retry policy
//! — 2 ms, then 4, ... up to 32, jittered, for `LOCK_TIMEOUT_MS`, holding no row between tries
//! — and reported when still held), and sums the row's active reservations in a statement that
//! starts after the lock was granted. One row a transaction: no lock cycle can form; variants
//! come before drops, as in the shop's lock order. Also listed, never touched: paid orders and
//! orders the shop cancelled itself that still hold active reservations.

use std::time::Duration;

use serde::Serialize;

use super::batch;
use super::retry::RetryPolicy;
use crate::config::ReleaseSettings;
use crate::db::session::Database;
use crate::db::sql::reconcile::{self as sql, CounterKind, CounterReading};
use crate::db::sql::BatchTimeouts;
use crate::error::{Error, Result};

/// Most orders listed of each untouched kind.
pub const ORDERS_LISTED: i64 = 100;

/// What to reconcile.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Scope {
    /// Set the drifted counters right; without it nothing changes.
    pub apply: bool,
    /// Only these variants and drops; both empty: every variant and every drop.
    pub variants: Vec<i64>,
    pub drops: Vec<i64>,
}

/// One counter that disagreed with its active reservations.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct CounterRow {
    /// `variant` or `drop`.
    pub kind: &'static str,
    pub id: i64,
    pub reserved_quantity: i64,
    pub active_reserved: i64,
    /// `reserved_quantity - active_reserved`.
    pub delta: i64,
    pub repaired: bool,
    /// Another transaction held the row at every try (`LOCK_TIMEOUT_MS` of polling): its
    /// reading is the unlocked one.
    pub skipped_locked: bool,
}

/// The answer of `reconcile`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ReconcileReport {
    pub apply: bool,
    /// Counter rows read.
    pub checked: u64,
    /// Counters found disagreeing (confirmed under lock, or skipped while held).
    pub drifted: u64,
    pub repaired: u64,
    pub skipped_locked: u64,
    pub rows: Vec<CounterRow>,
    /// Paid orders still holding active reservations (never touched; up to 100).
    pub paid_orders_with_active_reservations: Vec<i64>,
    /// Orders the shop cancelled itself that still hold active reservations (never touched;
    /// up to 100).
    pub cancelled_orders_with_active_reservations: Vec<i64>,
}

impl ReconcileReport {
    /// Drift left: a dry run that found some, or rows skipped.
    pub fn drift_remains(&self) -> bool {
        self.repaired < self.drifted
    }
}

/// Reads, and with `scope.apply` repairs, the counters in `scope`.
pub async fn reconcile(
    db: &mut Database,
    settings: &ReleaseSettings,
    scope: &Scope,
) -> Result<ReconcileReport> {
    let timeouts = batch::timeouts(settings);
    let patience = Duration::from_millis(u64::from(settings.lock_timeout_ms));
    let mut report = ReconcileReport {
        apply: scope.apply,
        checked: 0,
        drifted: 0,
        repaired: 0,
        skipped_locked: 0,
        rows: Vec::new(),
        paid_orders_with_active_reservations: Vec::new(),
        cancelled_orders_with_active_reservations: Vec::new(),
    };
    for (kind, ids) in kinds(scope) {
        let candidates = candidates(db, kind, ids.as_deref(), &mut report).await?;
        let mut held = Vec::new();
        for reading in candidates {
            if let Some(reading) =
                repair(db, &timeouts, kind, reading, scope.apply, &mut report).await?
            {
                held.push(reading);
            }
        }
        // The rows that were held are polled for; those still held then are reported skipped.
        let mut poll = RetryPolicy::POLL.within(patience);
        while !held.is_empty() && poll.pause().await {
            let mut still = Vec::new();
            for reading in held {
                if let Some(reading) =
                    repair(db, &timeouts, kind, reading, scope.apply, &mut report).await?
                {
                    still.push(reading);
                }
            }
            held = still;
        }
        for reading in held {
            report.rows.push(row(kind, reading, false, true));
            report.drifted += 1;
            report.skipped_locked += 1;
        }
    }
    untouched(db, &mut report).await?;
    Ok(report)
}

/// The kinds to check, with the ids named for each (None: all of that kind).
fn kinds(scope: &Scope) -> Vec<(CounterKind, Option<Vec<i64>>)> {
    if scope.variants.is_empty() && scope.drops.is_empty() {
        return vec![(CounterKind::Variant, None), (CounterKind::Drop, None)];
    }
    let mut kinds = Vec::new();
    if !scope.variants.is_empty() {
        kinds.push((CounterKind::Variant, Some(scope.variants.clone())));
    }
    if !scope.drops.is_empty() {
        kinds.push((CounterKind::Drop, Some(scope.drops.clone())));
    }
    kinds
}

/// The counters of one kind that disagree in one unlocked read; named ids that do not exist
/// are an error.
async fn candidates(
    db: &Database,
    kind: CounterKind,
    ids: Option<&[i64]>,
    report: &mut ReconcileReport,
) -> Result<Vec<CounterReading>> {
    let counted = sql::counted(&db.client, kind, ids).await?;
    if !counted.unknown.is_empty() {
        return Err(Error::Setting {
            name: format!("{} id", kind.as_str()),
            reason: format!("no {} has id {:?}", kind.as_str(), counted.unknown),
        });
    }
    report.checked += counted.checked.max(0) as u64;
    sql::drifted(&db.client, kind, ids).await
}

/// Confirms one candidate under its row's lock and, with `apply`, repairs it (one transaction).
/// Returns the candidate back when another transaction held the row.
async fn repair(
    db: &mut Database,
    timeouts: &BatchTimeouts,
    kind: CounterKind,
    candidate: CounterReading,
    apply: bool,
    report: &mut ReconcileReport,
) -> Result<Option<CounterReading>> {
    let tx = db
        .client
        .transaction()
        .await
        .map_err(Error::db("beginning a counter repair"))?;
    db.statements.set_batch_timeouts(&tx, timeouts).await?;
    let Some(reserved_quantity) = sql::lock_counter(&tx, kind, candidate.id).await? else {
        return Ok(Some(candidate));
    };
    let active_reserved = sql::active_units(&tx, kind, candidate.id).await?;
    if reserved_quantity == active_reserved {
        // It agrees now: a transaction in flight during the read, not drift.
        return Ok(None);
    }
    let reading = CounterReading {
        id: candidate.id,
        reserved_quantity,
        active_reserved,
    };
    report.drifted += 1;
    if apply {
        sql::set_counter(&tx, kind, candidate.id, active_reserved).await?;
        tx.commit()
            .await
            .map_err(Error::db("committing a counter repair"))?;
        report.repaired += 1;
        tracing::info!(
            kind = kind.as_str(),
            id = candidate.id,
            reserved_quantity,
            active_reserved,
            "counter repaired"
        );
    }
    report.rows.push(row(kind, reading, apply, false));
    Ok(None)
}

fn row(kind: CounterKind, r: CounterReading, repaired: bool, skipped_locked: bool) -> CounterRow {
    CounterRow {
        kind: kind.as_str(),
        id: r.id,
        reserved_quantity: r.reserved_quantity,
        active_reserved: r.active_reserved,
        delta: r.reserved_quantity - r.active_reserved,
        repaired,
        skipped_locked,
    }
}

/// The orders the release never touches that still hold active reservations.
async fn untouched(db: &Database, report: &mut ReconcileReport) -> Result<()> {
    for order in sql::untouched_orders(&db.client, ORDERS_LISTED * 2).await? {
        let list = if order.paid {
            &mut report.paid_orders_with_active_reservations
        } else {
            &mut report.cancelled_orders_with_active_reservations
        };
        if list.len() < ORDERS_LISTED as usize {
            list.push(order.id);
        }
    }
    Ok(())
}

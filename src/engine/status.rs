//! `unreserver status` / `{"action": "status"}`: the health of the reservations as the release
//! sees them — the due backlog and its age, paid orders still holding stock, orders paid after
//! the release cancelled them, counters that
//! disagree with their reservations, and missing recommended indexes. Reads only.

use serde::Serialize;

use super::batch;
use crate::config::ReleaseSettings;
use crate::db::session::Database;
use crate::db::sql::reconcile::{self, CounterKind};
use crate::db::sql::{self, outbox};
use crate::error::Result;

/// Most out-of-sync counter rows listed (all are counted).
pub const DRIFT_ROWS_LISTED: i64 = 100;

/// A counter row whose `reserved_quantity` is not the sum of its active reservations.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct Drift {
    pub id: i64,
    pub reserved_quantity: i64,
    pub active_reserved: i64,
}

#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct StatusReport {
    /// Active reservations a run would release now.
    pub due_reservations: u64,
    /// Age of the oldest of them in seconds (grace included); null when none is due.
    pub oldest_due_age_seconds: Option<f64>,
    /// Paid orders still holding active reservations (never touched by the release).
    pub paid_orders_with_active_reservations: u64,
    /// Orders paid after the release cancelled them, cancelled in the last 24 hours, and in
    /// all: late payments to revive (`unreserver revive`) or refund.
    pub paid_after_release: u64,
    pub paid_after_release_total: u64,
    pub variants_out_of_sync_count: u64,
    /// Up to 100 of them, by id.
    pub variants_out_of_sync: Vec<Drift>,
    pub drops_out_of_sync_count: u64,
    pub drops_out_of_sync: Vec<Drift>,
    /// Indexes of `infra/indexes.sql` not present: without them every batch scans the table.
    pub missing_indexes: Vec<String>,
    pub deadlock_timeout_ms: i64,
}

/// Reads the status. The drift queries read whole tables: run it by hand, not every minute.
pub async fn status(db: &Database, settings: &ReleaseSettings) -> Result<StatusReport> {
    let backlog = db
        .statements
        .backlog(&db.client, batch::rules(settings))
        .await?;
    let paid = sql::paid_orders_with_active_reservations(&db.client).await?;
    let paid_late = outbox::paid_after_release(&db.client, true).await?;
    let paid_late_total = outbox::paid_after_release(&db.client, false).await?;
    let (variants_out_of_sync_count, variants_out_of_sync) = drift(db, false).await?;
    let (drops_out_of_sync_count, drops_out_of_sync) = drift(db, true).await?;
    Ok(StatusReport {
        due_reservations: backlog.due.max(0) as u64,
        oldest_due_age_seconds: backlog.oldest_age_seconds,
        paid_orders_with_active_reservations: paid.max(0) as u64,
        paid_after_release: paid_late.max(0) as u64,
        paid_after_release_total: paid_late_total.max(0) as u64,
        variants_out_of_sync_count,
        variants_out_of_sync,
        drops_out_of_sync_count,
        drops_out_of_sync,
        missing_indexes: db.preflight.missing_indexes.clone(),
        deadlock_timeout_ms: db.preflight.deadlock_timeout_ms,
    })
}

/// The counters of one kind that disagree with their active reservations, read as `reconcile`
/// reads them: how many, and the first [`DRIFT_ROWS_LISTED`].
async fn drift(db: &Database, drops: bool) -> Result<(u64, Vec<Drift>)> {
    let kind = if drops {
        CounterKind::Drop
    } else {
        CounterKind::Variant
    };
    let rows = reconcile::drifted(&db.client, kind, None).await?;
    let total = rows.len() as u64;
    let listed = rows
        .iter()
        .take(DRIFT_ROWS_LISTED as usize)
        .map(|r| Drift {
            id: r.id,
            reserved_quantity: r.reserved_quantity,
            active_reserved: r.active_reserved,
        })
        .collect();
    Ok((total, listed))
}

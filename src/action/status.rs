//! `status`: the backlog, anomalies, counter drift and missing indexes (reads only).

use crate::action::{open, AppState};
use crate::engine::status::{status, StatusReport};
use crate::error::Result;

/// The status takes no input.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Status;

impl Status {
    pub async fn execute(self, state: &AppState) -> Result<StatusReport> {
        let db = open(state).await?;
        let report = status(&db, &state.config.release).await?;
        tracing::info!(
            due_reservations = report.due_reservations,
            oldest_due_age_seconds = report.oldest_due_age_seconds,
            paid_orders_with_active_reservations = report.paid_orders_with_active_reservations,
            variants_out_of_sync = report.variants_out_of_sync_count,
            drops_out_of_sync = report.drops_out_of_sync_count,
            missing_indexes = ?report.missing_indexes,
            "status read"
        );
        Ok(report)
    }
}

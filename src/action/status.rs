//! `status`: the backlog, anomalies, counter drift and missing indexes (reads only).

use crate::action::{open, Action, AppState, Failure, Front, Invocation, Reply, Source};
use crate::engine::status::{status, StatusReport};
use crate::error::Result;

/// Print the backlog, anomalies and counter drift.
///
/// The status takes no input: `unreserver status`, or the payload `{"action": "status"}`.
#[derive(Debug, Clone, Default, PartialEq, Eq, clap::Args, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Status {
    /// Who asked, as a payload may say (accepted by every action; a run logs it).
    #[arg(skip)]
    #[serde(default)]
    pub source: Option<Source>,
}

impl Action for Status {
    const NAME: &'static str = "status";
    type Answer = StatusReport;

    fn check(self, _front: Front) -> Result<Self> {
        Ok(self)
    }
}

impl Reply for StatusReport {
    fn to_json(&self) -> serde_json::Value {
        serde_json::to_value(self).unwrap_or_default()
    }
}

impl Status {
    pub async fn execute(
        self,
        state: &AppState,
        _invocation: &Invocation<'_>,
    ) -> std::result::Result<StatusReport, Failure> {
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

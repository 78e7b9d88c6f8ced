//! `reconcile`: the stock counters that disagree with their active reservations, listed and,
//! with `apply`, set right without ever waiting behind a shopper.

use crate::action::{
    open, Action, AppState, Failure, Front, Invocation, Metrics, Observed, Reply, Source,
};
use crate::engine::reconcile::{reconcile, ReconcileReport, Scope};
use crate::error::{Error, Result};

/// Compare every variant's and drop's reserved_quantity with its active reservations and,
/// with --apply, set the drifted ones right (never waiting behind a shopper). Exit 3 while
/// drift remains.
///
/// What to reconcile: `unreserver reconcile [--apply] [--variant ID]... [--drop ID]...`, or
/// the payload `{"action": "reconcile", "apply": false, "variant_ids": [..], "drop_ids": [..]}`
/// (all optional).
#[derive(Debug, Clone, Default, PartialEq, Eq, clap::Args, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Reconcile {
    /// Repair the counters that disagree (without it, nothing changes).
    #[arg(long)]
    #[serde(default)]
    pub apply: bool,
    /// Only this variant (repeatable).
    #[arg(long = "variant", value_name = "ID")]
    #[serde(default)]
    pub variant_ids: Vec<i64>,
    /// Only this drop product (repeatable).
    #[arg(long = "drop", value_name = "ID")]
    #[serde(default)]
    pub drop_ids: Vec<i64>,
    /// Who asked, as a payload may say (accepted by every action; a run logs it).
    #[arg(skip)]
    #[serde(default)]
    pub source: Option<Source>,
}

impl Action for Reconcile {
    const NAME: &'static str = "reconcile";
    const METRICS: Metrics = Metrics::Reconcile;
    type Answer = ReconcileReport;

    /// Ids are positive (named as the front-end names them).
    fn check(self, front: Front) -> Result<Self> {
        let ids = self.variant_ids.iter().chain(&self.drop_ids);
        if let Some(bad) = ids.copied().find(|id| *id <= 0) {
            return Err(Error::Setting {
                name: front
                    .name("--variant/--drop", "variant_ids/drop_ids")
                    .into(),
                reason: format!("{bad} is not a positive id"),
            });
        }
        Ok(self)
    }
}

impl Reply for ReconcileReport {
    fn to_json(&self) -> serde_json::Value {
        serde_json::to_value(self).unwrap_or_default()
    }

    fn done(&self) -> bool {
        !self.drift_remains()
    }

    fn observed(&self) -> Observed<'_> {
        Observed::Reconcile(self)
    }
}

impl Reconcile {
    /// What to reconcile, as the engine takes it.
    pub fn scope(&self) -> Scope {
        Scope {
            apply: self.apply,
            variants: self.variant_ids.clone(),
            drops: self.drop_ids.clone(),
        }
    }

    pub async fn execute(
        self,
        state: &AppState,
        _invocation: &Invocation<'_>,
    ) -> std::result::Result<ReconcileReport, Failure> {
        let mut db = open(state).await?;
        let report = reconcile(&mut db, &state.config.release, &self.scope()).await?;
        tracing::info!(
            apply = report.apply,
            checked = report.checked,
            drifted = report.drifted,
            repaired = report.repaired,
            skipped_locked = report.skipped_locked,
            paid_orders_with_active_reservations =
                report.paid_orders_with_active_reservations.len(),
            cancelled_orders_with_active_reservations =
                report.cancelled_orders_with_active_reservations.len(),
            "reconciled"
        );
        Ok(report)
    }
}

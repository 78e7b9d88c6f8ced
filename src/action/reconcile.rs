//! `reconcile`: the stock counters that disagree with their active reservations, listed and,
//! with `apply`, set right without ever waiting behind a shopper.

use crate::action::{open, AppState};
use crate::engine::reconcile::{reconcile, ReconcileReport, Scope};
use crate::error::{Error, Result};

/// What to reconcile.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Reconcile {
    pub scope: Scope,
}

impl Reconcile {
    /// The input, checked: ids are positive (`field` names them as the front-end does).
    pub fn new(field: &str, apply: bool, variants: Vec<i64>, drops: Vec<i64>) -> Result<Self> {
        if let Some(bad) = variants.iter().chain(&drops).find(|id| **id <= 0) {
            return Err(Error::Setting {
                name: field.into(),
                reason: format!("{bad} is not a positive id"),
            });
        }
        Ok(Reconcile {
            scope: Scope {
                apply,
                variants,
                drops,
            },
        })
    }

    pub async fn execute(self, state: &AppState) -> Result<ReconcileReport> {
        let mut db = open(state).await?;
        let report = reconcile(&mut db, &state.config.release, &self.scope).await?;
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

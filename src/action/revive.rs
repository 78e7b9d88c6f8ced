//! `revive`: an order the release cancelled whose payment came late gets its stock back, if the
//! stock is still there.

use crate::action::{open, Action, AppState, Failure, Front, Invocation, Reply, Source};
use crate::engine::revive::{revive, ReviveOutcome};
use crate::error::Result;

/// Revive an order the release cancelled, if its stock is still there (a late payment).
///
/// The order to revive: `unreserver revive ORDER_ID`, or the payload
/// `{"action": "revive", "order_id": 123}`.
#[derive(Debug, Clone, PartialEq, Eq, clap::Args, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Revive {
    /// The order's id (`orders_order.id`).
    #[arg(value_name = "ORDER_ID")]
    pub order_id: i64,
    /// Who asked, as a payload may say (accepted by every action; a run logs it).
    #[arg(skip)]
    #[serde(default)]
    pub source: Option<Source>,
}

impl Action for Revive {
    const NAME: &'static str = "revive";
    type Answer = ReviveOutcome;

    fn check(self, front: Front) -> Result<Self> {
        super::order_id(front.name("ORDER_ID", "order_id"), self.order_id)?;
        Ok(self)
    }
}

impl Reply for ReviveOutcome {
    fn to_json(&self) -> serde_json::Value {
        serde_json::to_value(self).unwrap_or_default()
    }

    /// Exit 0 when the order holds its stock: revived now, or `already_active` (a retried
    /// webhook's answer, not an error).
    fn done(&self) -> bool {
        self.holds_its_stock()
    }
}

impl Revive {
    pub async fn execute(
        self,
        state: &AppState,
        _invocation: &Invocation<'_>,
    ) -> std::result::Result<ReviveOutcome, Failure> {
        let mut db = open(state).await?;
        let config = &state.config;
        let order_id = self.order_id;
        let outcome = revive(
            &mut db,
            &config.release,
            config.revive.hold_minutes,
            order_id,
        )
        .await?;
        tracing::info!(order_id, revived = outcome.revived, reason = ?outcome.reason, "revive");
        Ok(outcome)
    }
}

//! `revive`: an order the release cancelled whose payment came late gets its stock back, if the
//! stock is still there.

use crate::action::{open, AppState};
use crate::engine::revive::{revive, ReviveOutcome};
use crate::error::Result;

/// The order to revive.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Revive {
    /// `orders_order.id`, positive.
    pub order_id: i64,
}

impl Revive {
    /// The input, checked: `field` is the name the front-end gave the order id.
    pub fn new(field: &str, order_id: i64) -> Result<Self> {
        Ok(Revive {
            order_id: super::order_id(field, order_id)?,
        })
    }

    pub async fn execute(self, state: &AppState) -> Result<ReviveOutcome> {
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

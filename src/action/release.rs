//! `release`: release one order's active reservations now, due or not — the shop's abandon or
//! payment-failed webhook calls it — by the release's rules otherwise, publishing its
//! `Order Expired` event (`"reason": "released_on_request"`).

use crate::action::{open, AppState, Invocation};
use crate::engine::on_request::RequestOutcome;
use crate::error::Result;
use crate::events;

/// The order to release.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Release {
    /// `orders_order.id`, positive.
    pub order_id: i64,
}

impl Release {
    /// The input, checked: `field` is the name the front-end gave the order id.
    pub fn new(field: &str, order_id: i64) -> Result<Self> {
        Ok(Release {
            order_id: super::order_id(field, order_id)?,
        })
    }

    pub async fn execute(
        self,
        state: &AppState,
        invocation: &Invocation<'_>,
    ) -> Result<RequestOutcome> {
        let mut db = open(state).await?;
        let order_id = self.order_id;
        let outcome = events::run::release_order(
            &mut db,
            &state.config.release,
            order_id,
            state.publisher.as_ref(),
            invocation.run_id,
            (invocation.deadline, invocation.publish_grace),
        )
        .await?;
        tracing::info!(order_id, released = outcome.released, reason = ?outcome.reason,
            reservations_released = outcome.reservations_released,
            events_failed = outcome.events_failed, "release on request");
        Ok(outcome)
    }
}

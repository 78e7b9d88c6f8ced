//! `release`: release one order's active reservations now, due or not — the shop's abandon or
//! payment-failed webhook calls it — by the release's rules otherwise, publishing its
//! `Order Expired` event (`"reason": "released_on_request"`).

use crate::action::{open, Action, AppState, Failure, Front, Invocation, Reply, Source};
use crate::engine::on_request::OnRequestOutcome;
use crate::error::Result;
use crate::events;

/// Release one order's active reservations now, due or not (the shop's abandon or
/// payment-failed webhook), by the release's rules otherwise: never a paid order. Exit 3
/// when the order is not released (see "reason").
///
/// The order to release now, due or not: `unreserver release ORDER_ID`, or the payload
/// `{"action": "release", "order_id": 123}` (the shop's abandon or payment-failed webhook).
#[derive(Debug, Clone, PartialEq, Eq, clap::Args, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Release {
    /// The order's id (`orders_order.id`).
    #[arg(value_name = "ORDER_ID")]
    pub order_id: i64,
    /// Who asked, as a payload may say (accepted by every action; a run logs it).
    #[arg(skip)]
    #[serde(default)]
    pub source: Option<Source>,
}

impl Action for Release {
    const NAME: &'static str = "release";
    type Answer = OnRequestOutcome;

    fn check(self, front: Front) -> Result<Self> {
        super::order_id(front.name("ORDER_ID", "order_id"), self.order_id)?;
        Ok(self)
    }
}

impl Reply for OnRequestOutcome {
    fn to_json(&self) -> serde_json::Value {
        serde_json::to_value(self).unwrap_or_default()
    }

    fn done(&self) -> bool {
        self.released
    }
}

impl Release {
    pub async fn execute(
        self,
        state: &AppState,
        invocation: &Invocation<'_>,
    ) -> std::result::Result<OnRequestOutcome, Failure> {
        let mut db = open(state).await?;
        let order_id = self.order_id;
        let outcome = events::run::release_on_request(
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

//! The warnings before expiry: one `Order Expiring Soon` event per pending order that falls due
//! by the release's rule (its earliest active reservation's due instant, legacy lines and grace
//! included) within the window (the lead time plus the time to the next check: the run
//! interval, or follow mode's tick), published to the bus. Nothing of ours is stored: a check
//! covers the whole window, so a warning is sent at least once while checks come at least once
//! a window and the bus takes them (twice sometimes: consumers deduplicate by `order_id` +
//! `expires_at`; an extended hold is warned again for its new expiry).

use std::time::Duration;

use super::model;
use super::publisher::{Published, Publisher};
use crate::db::session::Database;
use crate::db::sql::warnings::expiring_soon;
use crate::db::sql::Rules;
use crate::engine::run_report::RunReport;

/// Publishes the warnings of orders that fall due by `rules` within `window`, and counts them in
/// `report` (`expiry_warnings`, and `events_published` / `events_failed`). A failed read is
/// logged and leaves the release to go on: a warning never stops stock coming back.
pub async fn publish(
    db: &Database,
    publisher: &Publisher,
    window: Duration,
    rules: Rules,
    run_id: &str,
    report: &mut RunReport,
) {
    let rows = match expiring_soon(&db.client, window.as_secs_f64(), rules).await {
        Ok(rows) => rows,
        Err(error) => {
            tracing::error!(error_type = error.kind(), error = %error.chain(),
                "could not read the orders whose hold runs out soon: no expiry warnings this time");
            return;
        }
    };
    let events = model::expiring_soon(&rows, run_id);
    if events.is_empty() {
        return;
    }
    let orders = events.len() as u64;
    let Published { published, failed } = publisher.publish(events).await;
    tracing::info!(orders, published, failed, "expiry warnings");
    report.expiry_warnings += published;
    report.events_published += published;
    report.events_failed += failed;
}

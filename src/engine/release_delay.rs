//! The release-delay report (`unreserver report`, `{"action": "report"}`): per UTC day, what
//! the release expired and how long after it fell due, from the shop's own rows.
//!
//! The delay is `released_at` minus when the line fell due by the release's rule: `expires_at`
//! (legacy rows: `created_at` plus `RESERVATION_TIMEOUT_MINUTES`; a line due since `-infinity`:
//! its `created_at`). The grace an order with a `processing` payment had is not recorded
//! anywhere, so it is not subtracted: such an order's delay includes its grace.

use serde::Serialize;

use crate::config::ReleaseSettings;
use crate::db::session::Database;
use crate::db::sql::delay_report::{self, DayRow};
use crate::error::Result;

/// The report: one entry per UTC day, newest first.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct DelayReport {
    pub days: Vec<Day>,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Day {
    /// `YYYY-MM-DD` (UTC).
    pub day: String,
    pub reservations_released: i64,
    pub units_released: i64,
    pub orders_cancelled: i64,
    pub holds_released: i64,
    pub release_delay_seconds: Delay,
}

/// Release delay percentiles of a day, in seconds; null on a day without releases.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Delay {
    pub p50: Option<f64>,
    pub p95: Option<f64>,
    pub max: Option<f64>,
}

/// The most days a report covers.
pub const MAX_DAYS: u32 = 366;

/// The report of the last `days` UTC days, today included.
pub async fn report(db: &Database, settings: &ReleaseSettings, days: u32) -> Result<DelayReport> {
    let days = i32::try_from(days.clamp(1, MAX_DAYS)).unwrap_or(7);
    let timeout = i32::try_from(settings.reservation_timeout_minutes).unwrap_or(i32::MAX);
    let rows = delay_report::release_delay_by_day(&db.client, days, timeout).await?;
    Ok(DelayReport {
        days: rows.into_iter().map(day).collect(),
    })
}

fn day(row: DayRow) -> Day {
    let round = |v: Option<f64>| v.map(|s| (s * 1000.0).round() / 1000.0);
    Day {
        day: row.day,
        reservations_released: row.reservations_released,
        units_released: row.units_released,
        orders_cancelled: row.orders_cancelled,
        holds_released: row.holds_released,
        release_delay_seconds: Delay {
            p50: round(row.p50),
            p95: round(row.p95),
            max: round(row.max),
        },
    }
}

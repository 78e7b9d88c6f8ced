//! The release-delay report (`unreserver report`, `{"action": "report"}`): per UTC day, what
//! the release expired and how long after it fell due, from the shop's own rows.
//!
//! The delay is `released_at` minus when the line fell due by the release's rule: `expires_at`
//! (legacy rows: `created_at` plus `RESERVATION_TIMEOUT_MINUTES`; a line due since `-infinity`:
//! its `created_at`). The grace an order with a `processing` payment had is not recorded
//! anywhere, so it is not subtracted: such an order's delay includes its grace.
//!
//! A day a purge reached is answered as purged, not as a day without releases: `purged` is true
//! from the UTC day of the retention horizon back (`db::sql::retention`), and a day wholly before
//! it has null counts (its rows are gone, not zero).

use serde::Serialize;

use crate::config::ReleaseSettings;
use crate::db::session::Database;
use crate::db::sql::delay_report::{self, DayRow};
use crate::db::sql::retention;
use crate::error::Result;

/// The report: one entry per UTC day, newest first.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct DelayReport {
    /// Rows released before this instant (`YYYY-MM-DDTHH:MM:SSZ`) may have been purged; null
    /// when no purge ever deleted anything.
    pub purged_before: Option<String>,
    pub days: Vec<Day>,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Day {
    /// `YYYY-MM-DD` (UTC).
    pub day: String,
    /// A purge deleted (some of) the day's rows: its counts are of what is left, null when the
    /// whole day is older than the horizon.
    pub purged: bool,
    pub reservations_released: Option<i64>,
    pub units_released: Option<i64>,
    pub orders_cancelled: Option<i64>,
    pub holds_released: Option<i64>,
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
    let horizon = retention::horizon(&db.client).await?;
    let purged_day = horizon.as_ref().map(|h| h.purged_day.as_str());
    Ok(DelayReport {
        days: rows.into_iter().map(|row| day(row, purged_day)).collect(),
        purged_before: horizon.map(|h| h.purged_before_utc),
    })
}

/// A day of the report; `purged_day` is the horizon's UTC day (`YYYY-MM-DD` sorts as text).
fn day(row: DayRow, purged_day: Option<&str>) -> Day {
    let round = |v: Option<f64>| v.map(|s| (s * 1000.0).round() / 1000.0);
    let purged = purged_day.is_some_and(|p| row.day.as_str() <= p);
    let gone = purged_day.is_some_and(|p| row.day.as_str() < p);
    let count = |n: i64| (!gone).then_some(n);
    Day {
        purged,
        reservations_released: count(row.reservations_released),
        units_released: count(row.units_released),
        orders_cancelled: count(row.orders_cancelled),
        holds_released: count(row.holds_released),
        release_delay_seconds: Delay {
            p50: round(row.p50),
            p95: round(row.p95),
            max: round(row.max),
        },
        day: row.day,
    }
}

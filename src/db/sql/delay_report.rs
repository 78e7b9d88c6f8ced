//! The release-delay report: per UTC day, what the release expired and how long after falling
//! due, computed from the shop's own rows (no state of ours), so every front-end gives the same
//! report. Locks nothing.

use tokio_postgres::GenericClient;

use super::fetch;
use crate::error::Result;

/// One row per UTC day of the last `$1` days (today included), newest first: reservations
/// expired that day (by `released_at`), their units, the cart holds among them, the orders the
/// release cancelled (`cancelled_at` = `released_at`), and the release delay of the lines that
/// were due when released (a line released with its order before its own expiry has none) —
/// `released_at` minus when it fell due, by the rule's `seconds_due!` (`expires_at`, legacy
/// rows `created_at` plus `$2` minutes, a row due since `-infinity` from its `created_at`; no
/// grace) — at p50, p95 and max.
/// Days without releases have zero counts and null delays. Reads only the window's rows
/// through `released_at` (the BRIN index of `infra/indexes.sql`).
pub const RELEASE_DELAY_BY_DAY: &str = concat!(
    "WITH bounds AS (SELECT date_trunc('day', now(), 'UTC') AS today), ",
    "days AS (SELECT generate_series(b.today - make_interval(days => $1::int4 - 1), b.today, ",
    "interval '1 day') AS day FROM bounds b), ",
    "rel AS (SELECT date_trunc('day', r.released_at, 'UTC') AS day, r.order_id, r.quantity, ",
    seconds_due!("r", "$2", "r.released_at"),
    " AS delay, ",
    "COALESCE(",
    cancelled_by_release!("o", "r"),
    ", false) AS cancelled ",
    "FROM orders_inventoryreservation r LEFT JOIN orders_order o ON o.id = r.order_id, bounds b ",
    "WHERE r.status = 'expired' ",
    "AND r.released_at >= b.today - make_interval(days => $1::int4 - 1)) ",
    "SELECT to_char(d.day AT TIME ZONE 'UTC', 'YYYY-MM-DD') AS day, ",
    "count(rel.day)::int8 AS reservations_released, ",
    "COALESCE(sum(rel.quantity), 0)::int8 AS units_released, ",
    "count(DISTINCT rel.order_id) FILTER (WHERE rel.cancelled)::int8 AS orders_cancelled, ",
    "count(rel.day) FILTER (WHERE rel.order_id IS NULL)::int8 AS holds_released, ",
    "percentile_cont(0.5) WITHIN GROUP (ORDER BY rel.delay) FILTER (WHERE rel.delay >= 0) AS p50, ",
    "percentile_cont(0.95) WITHIN GROUP (ORDER BY rel.delay) FILTER (WHERE rel.delay >= 0) AS p95, ",
    "max(rel.delay) FILTER (WHERE rel.delay >= 0) AS max ",
    "FROM days d LEFT JOIN rel ON rel.day = d.day GROUP BY d.day ORDER BY d.day DESC"
);

/// A row of [`RELEASE_DELAY_BY_DAY`].
#[derive(Debug, Clone, PartialEq)]
pub struct DayRow {
    /// `YYYY-MM-DD`, UTC.
    pub day: String,
    pub reservations_released: i64,
    pub units_released: i64,
    pub orders_cancelled: i64,
    pub holds_released: i64,
    pub p50: Option<f64>,
    pub p95: Option<f64>,
    pub max: Option<f64>,
}

/// [`RELEASE_DELAY_BY_DAY`] for the last `days` days; `timeout_minutes` dates legacy rows.
pub async fn release_delay_by_day(
    client: &(impl GenericClient + Sync),
    days: i32,
    timeout_minutes: i32,
) -> Result<Vec<DayRow>> {
    fetch(
        client,
        RELEASE_DELAY_BY_DAY,
        &[&days, &timeout_minutes],
        "reading the release-delay report",
        |row| {
            Ok(DayRow {
                day: row.try_get("day")?,
                reservations_released: row.try_get("reservations_released")?,
                units_released: row.try_get("units_released")?,
                orders_cancelled: row.try_get("orders_cancelled")?,
                holds_released: row.try_get("holds_released")?,
                p50: row.try_get("p50")?,
                p95: row.try_get("p95")?,
                max: row.try_get("max")?,
            })
        },
    )
    .await
}

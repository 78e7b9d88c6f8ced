//! The expiry warnings' one statement: the pending orders whose hold runs out soon. Reads only;
//! locks nothing — a warning changes nothing, and one sent twice is deduplicated by its
//! consumer (`order_id` + `expires_at`).

use std::time::SystemTime;

use tokio_postgres::GenericClient;

use super::{fetch, Rules};
use crate::error::Result;

/// Every active reservation of each pending order the release may touch (not paid) that falls
/// due within the next $1 seconds and not before now, by the release's rule: the order's due
/// instant — the earliest of its active lines' (`due_instant!`: `expires_at`, a legacy line's
/// `created_at` plus the timeout, plus the grace while its payment is `processing`) — the order,
/// and its lines. The candidates are the lines whose own due instant may be in the window, from
/// two ranges of the partial indexes of `infra/indexes.sql`: `unreserver_active_expiry_idx` by
/// `expires_at`, `unreserver_active_legacy_idx` by `created_at` (each widened by one grace for
/// a payment in it); each candidate order's lines through the foreign-key index on `order_id`
/// (its due instant computed once: `MATERIALIZED`). Ordered by order, then line.
///
/// $1 window seconds, $2 reservation timeout minutes, $3 grace minutes.
pub const EXPIRING_SOON: &str = concat!(
    "WITH soon AS (SELECT r.order_id FROM orders_inventoryreservation r ",
    "WHERE r.status = 'active' AND r.order_id IS NOT NULL ",
    "AND r.expires_at > now() - make_interval(mins => $3::int4) ",
    "AND r.expires_at <= now() + make_interval(secs => $1::float8) ",
    "UNION SELECT r.order_id FROM orders_inventoryreservation r ",
    "WHERE r.status = 'active' AND r.order_id IS NOT NULL AND r.expires_at IS NULL ",
    "AND r.created_at > now() - make_interval(mins => $2::int4 + $3::int4) ",
    "AND r.created_at <= now() + make_interval(secs => $1::float8) ",
    "- make_interval(mins => $2::int4)), ",
    "due AS MATERIALIZED (SELECT o.id, o.order_number, ",
    "(SELECT min(",
    due_instant!("x", "$2", "o.payment_status = 'processing'", "$3"),
    ") FROM orders_inventoryreservation x ",
    "WHERE x.order_id = o.id AND x.status = 'active') AS due_at ",
    "FROM soon s JOIN orders_order o ON o.id = s.order_id ",
    "WHERE o.status = 'pending' AND ",
    releasable_order!("o"),
    ") SELECT d.id::int8 AS order_id, d.order_number::text AS order_number, ",
    "to_timestamp(d.due_at::float8) AS expires_at, ",
    "r.id::int8 AS reservation_id, r.product_variant_id::int8 AS variant_id, ",
    "r.drop_product_id::int8 AS drop_id, r.quantity::int4 AS quantity ",
    "FROM due d JOIN orders_inventoryreservation r ON r.order_id = d.id AND r.status = 'active' ",
    "WHERE d.due_at > ",
    epoch!("now()"),
    " AND d.due_at <= ",
    epoch!("now()"),
    " + $1::float8 ORDER BY d.id, r.id"
);

/// A row of [`EXPIRING_SOON`]: one line of an order whose hold runs out soon.
#[derive(Debug, Clone, PartialEq)]
pub struct ExpiringRow {
    pub order_id: i64,
    pub order_number: Option<String>,
    /// When the order falls due: the earliest due instant of its active reservations (grace
    /// included).
    pub expires_at: SystemTime,
    pub reservation_id: i64,
    pub variant_id: i64,
    pub drop_id: Option<i64>,
    pub quantity: i32,
}

/// [`EXPIRING_SOON`].
pub async fn expiring_soon(
    client: &(impl GenericClient + Sync),
    window_seconds: f64,
    rules: Rules,
) -> Result<Vec<ExpiringRow>> {
    fetch(
        client,
        EXPIRING_SOON,
        &[
            &window_seconds,
            &rules.timeout_minutes,
            &rules.grace_minutes,
        ],
        "finding the orders whose hold runs out soon",
        |row| {
            Ok(ExpiringRow {
                order_id: row.try_get("order_id")?,
                order_number: row.try_get("order_number")?,
                expires_at: row.try_get("expires_at")?,
                reservation_id: row.try_get("reservation_id")?,
                variant_id: row.try_get("variant_id")?,
                drop_id: row.try_get("drop_id")?,
                quantity: row.try_get("quantity")?,
            })
        },
    )
    .await
}

//! The expiry warnings' one statement: the pending orders whose hold runs out soon. Reads only;
//! locks nothing — a warning changes nothing, and one sent twice is deduplicated by its
//! consumer (`order_id` + `expires_at`).

use std::time::SystemTime;

use tokio_postgres::GenericClient;

use super::fetch;
use crate::error::Result;

/// Every active reservation of each pending order the release may touch (not paid) whose
/// earliest active reservation falls due within the next $1 seconds and not before now: that
/// reservation's `expires_at`, the order, and its lines. The candidates come from a range of
/// the partial index on `(expires_at, id) WHERE status = 'active'`; each order's earliest
/// expiry and lines through the foreign-key index on `order_id`. Ordered by order, then line.
///
/// $1 window seconds.
pub const EXPIRING_SOON: &str = concat!(
    "WITH soon AS (SELECT DISTINCT r.order_id FROM orders_inventoryreservation r ",
    "WHERE r.status = 'active' AND r.order_id IS NOT NULL AND r.expires_at > now() ",
    "AND r.expires_at <= now() + make_interval(secs => $1::float8)), ",
    "due AS (SELECT o.id, o.order_number, ",
    "(SELECT min(x.expires_at) FROM orders_inventoryreservation x ",
    "WHERE x.order_id = o.id AND x.status = 'active') AS expires_at ",
    "FROM soon s JOIN orders_order o ON o.id = s.order_id ",
    "WHERE o.status = 'pending' AND ",
    releasable_order!("o"),
    ") SELECT d.id::int8 AS order_id, d.order_number::text AS order_number, d.expires_at, ",
    "r.id::int8 AS reservation_id, r.product_variant_id::int8 AS variant_id, ",
    "r.drop_product_id::int8 AS drop_id, r.quantity::int4 AS quantity ",
    "FROM due d JOIN orders_inventoryreservation r ON r.order_id = d.id AND r.status = 'active' ",
    "WHERE d.expires_at > now() ORDER BY d.id, r.id"
);

/// A row of [`EXPIRING_SOON`]: one line of an order whose hold runs out soon.
#[derive(Debug, Clone, PartialEq)]
pub struct ExpiringRow {
    pub order_id: i64,
    pub order_number: Option<String>,
    /// When the order's earliest active reservation falls due.
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
) -> Result<Vec<ExpiringRow>> {
    fetch(
        client,
        EXPIRING_SOON,
        &[&window_seconds],
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

//! What the database says the release did, read back without any state of ours: the expiry
//! and `Stock Released` events of a window (the database is the outbox) and the orders paid after the release
//! cancelled them. None of these statements locks anything.
//!
//! An order the release cancelled is `cancelled` with `cancelled_at` equal to the `released_at`
//! of its `expired` reservations: the batch sets both to its transaction's `now()`. An order
//! the shop cancelled itself fails that test (its `cancelled_at` predates the release), and an
//! order revived after its release is no longer `cancelled`.

use std::time::SystemTime;

use tokio_postgres::GenericClient;

use super::{fetch, fetch_one};
use crate::error::Result;

/// A reservation the release expired, with what an event says of it.
#[derive(Debug, Clone, PartialEq)]
pub struct ExpiredRow {
    pub reservation_id: i64,
    /// None for a cart hold.
    pub order_id: Option<i64>,
    pub order_number: Option<String>,
    pub variant_id: i64,
    pub drop_id: Option<i64>,
    pub quantity: i32,
    pub released_at: SystemTime,
    /// It was due when released (`expires_at`, or `created_at` plus the timeout, at or before
    /// `released_at`; grace not counted). An order none of whose rows was due was released on
    /// request.
    pub due: bool,
}

/// The reservations the release expired in [$1, $2) (`$2` NULL: up to `now()`), for the
/// expiry events: the rows of the orders it cancelled, and the cart holds, each saying whether
/// it was due when released. Ordered so that an order's rows are adjacent. Reads the window
/// through `released_at` (the BRIN index of `infra/indexes.sql` keeps it to the window); locks
/// nothing.
///
/// $1 since, $2 until, $3 reservation timeout minutes.
pub const EXPIRED_IN_WINDOW: &str = concat!(
    "SELECT r.id::int8 AS reservation_id, ",
    "r.order_id::int8 AS order_id, o.order_number::text AS order_number, ",
    "r.product_variant_id::int8 AS variant_id, r.drop_product_id::int8 AS drop_id, ",
    "r.quantity::int4 AS quantity, r.released_at, COALESCE(",
    due_at!("r", "$3"),
    " <= ",
    epoch!("r", "released_at"),
    ", true) AS due ",
    "FROM orders_inventoryreservation r LEFT JOIN orders_order o ON o.id = r.order_id ",
    "WHERE r.status = 'expired' AND r.released_at >= $1::timestamptz ",
    "AND r.released_at < COALESCE($2::timestamptz, now()) ",
    "AND (r.order_id IS NULL OR ",
    cancelled_by_release!("o", "r"),
    ") ORDER BY r.released_at, r.order_id NULLS LAST, r.id"
);

/// [`EXPIRED_IN_WINDOW`].
pub async fn expired_in_window(
    client: &(impl GenericClient + Sync),
    since: SystemTime,
    until: Option<SystemTime>,
    timeout_minutes: i32,
) -> Result<Vec<ExpiredRow>> {
    fetch(
        client,
        EXPIRED_IN_WINDOW,
        &[&since, &until, &timeout_minutes],
        "reading the expiry events of the window",
        |row| {
            Ok(ExpiredRow {
                reservation_id: row.try_get("reservation_id")?,
                order_id: row.try_get("order_id")?,
                order_number: row.try_get("order_number")?,
                variant_id: row.try_get("variant_id")?,
                drop_id: row.try_get("drop_id")?,
                quantity: row.try_get("quantity")?,
                released_at: row.try_get("released_at")?,
                due: row.try_get("due")?,
            })
        },
    )
    .await
}

/// Every reservation the release expired in [$1, $2) (`$2` NULL: up to `now()`), for the
/// `Stock Released` events: the units each batch gave back, whoever's order it was (also an
/// order the shop had cancelled itself). Ordered by `released_at`, so that each batch's rows
/// (one `released_at`, its transaction's `now()`) are adjacent. A reservation revived since is
/// active again and no longer here. Reads the window through `released_at`, like
/// [`EXPIRED_IN_WINDOW`]; locks nothing.
///
/// $1 since, $2 until, $3 reservation timeout minutes.
pub const RELEASED_IN_WINDOW: &str = concat!(
    "SELECT r.id::int8 AS reservation_id, r.order_id::int8 AS order_id, ",
    "r.product_variant_id::int8 AS variant_id, r.drop_product_id::int8 AS drop_id, ",
    "r.quantity::int4 AS quantity, r.released_at, COALESCE(",
    due_at!("r", "$3"),
    " <= ",
    epoch!("r", "released_at"),
    ", true) AS due ",
    "FROM orders_inventoryreservation r ",
    "WHERE r.status = 'expired' AND r.released_at >= $1::timestamptz ",
    "AND r.released_at < COALESCE($2::timestamptz, now()) ",
    "ORDER BY r.released_at, r.id"
);

/// [`RELEASED_IN_WINDOW`] (rows without an order number).
pub async fn released_in_window(
    client: &(impl GenericClient + Sync),
    since: SystemTime,
    until: Option<SystemTime>,
    timeout_minutes: i32,
) -> Result<Vec<ExpiredRow>> {
    fetch(
        client,
        RELEASED_IN_WINDOW,
        &[&since, &until, &timeout_minutes],
        "reading the reservations released in the window",
        |row| {
            Ok(ExpiredRow {
                reservation_id: row.try_get("reservation_id")?,
                order_id: row.try_get("order_id")?,
                order_number: None,
                variant_id: row.try_get("variant_id")?,
                drop_id: row.try_get("drop_id")?,
                quantity: row.try_get("quantity")?,
                released_at: row.try_get("released_at")?,
                due: row.try_get("due")?,
            })
        },
    )
    .await
}

/// Orders paid after the release cancelled them (a shopper's payment arrived late: revive it
/// with `unreserver revive`, or refund it), among the orders `$window` admits. Locks nothing.
macro_rules! paid_after_release {
    ($window:literal) => {
        concat!(
            "SELECT count(*)::int8 AS orders FROM orders_order o ",
            "WHERE o.status = 'cancelled' AND o.payment_status = 'paid' AND ",
            $window,
            " AND EXISTS (SELECT 1 FROM orders_inventoryreservation r WHERE r.order_id = o.id ",
            "AND r.status = 'expired' AND ",
            cancelled_by_release!("o", "r"),
            ")"
        )
    };
}

/// Those cancelled in the last 24 hours: every run counts them. The optional index
/// `orders_order (cancelled_at) WHERE cancelled_at IS NOT NULL` of `infra/indexes.sql` keeps
/// this to the orders cancelled in that day (its only column is `cancelled_at`, so the shop's
/// updates of an order's status or payment stay HOT); without it, a scan of the orders, once
/// per run. (Not through the BRIN index on `released_at`: the planner will not use it while
/// the column is mostly NULL.)
pub const PAID_AFTER_RELEASE_LAST_DAY: &str =
    paid_after_release!("o.cancelled_at >= now() - interval '24 hours'");

/// All of them (`status`'s `paid_after_release_total`): a scan of the orders, for `status`
/// only.
pub const PAID_AFTER_RELEASE_TOTAL: &str = paid_after_release!("o.cancelled_at IS NOT NULL");

/// [`PAID_AFTER_RELEASE_LAST_DAY`] (`last_day`), or [`PAID_AFTER_RELEASE_TOTAL`].
pub async fn paid_after_release(
    client: &(impl GenericClient + Sync),
    last_day: bool,
) -> Result<i64> {
    let statement = if last_day {
        PAID_AFTER_RELEASE_LAST_DAY
    } else {
        PAID_AFTER_RELEASE_TOTAL
    };
    fetch_one(
        client,
        statement,
        &[],
        "counting orders paid after their release",
        |row| row.try_get("orders"),
    )
    .await
}

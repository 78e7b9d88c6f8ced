//! Reviving an order the release cancelled, when its payment arrives late: the statements of
//! one revive transaction, in the order they run. Every lock is `NOWAIT`: revive never waits in
//! a lock queue, so it can never close a lock cycle with a shopper's transaction; a row someone
//! holds fails the statement at once (`55P03`), the transaction rolls back, and the caller
//! tries again a few milliseconds later, for a bounded time (see `engine::revive`). Lock order:
//! the order, its reservations, variant rows in ascending id, drop rows in ascending id — the
//! release's order.

use tokio_postgres::GenericClient;

use super::{fetch, fetch_one};
use crate::error::Result;

/// Locks the order `FOR UPDATE NOWAIT` and returns its status (no row: unknown order).
/// `FOR UPDATE`, as the release's claim: no reservation can be added to it meanwhile.
///
/// $1 order id.
pub const LOCK_ORDER: &str =
    "SELECT o.id::int8 AS id, o.status::text AS status FROM orders_order o \
     WHERE o.id = $1::int8 FOR UPDATE NOWAIT";

/// [`LOCK_ORDER`]: the order's status, None when there is no such order.
pub async fn lock_order(
    client: &(impl GenericClient + Sync),
    order_id: i64,
) -> Result<Option<String>> {
    let rows = fetch(
        client,
        LOCK_ORDER,
        &[&order_id],
        "locking the order to revive",
        |row| row.try_get::<_, Option<String>>("status"),
    )
    .await?;
    Ok(rows.into_iter().next().map(Option::unwrap_or_default))
}

/// Locks the reservations the release expired when it cancelled the (locked) order — `expired`,
/// with `released_at` equal to the order's `cancelled_at` — `FOR NO KEY UPDATE NOWAIT`, and
/// returns what each held. None: the release did not cancel this order (the shop did).
///
/// $1 order id.
pub const LOCK_RELEASED: &str = concat!(
    "SELECT r.id::int8 AS id, ",
    "r.product_variant_id::int8 AS variant_id, r.drop_product_id::int8 AS drop_id, ",
    "r.quantity::int4 AS quantity FROM orders_inventoryreservation r ",
    "JOIN orders_order o ON o.id = r.order_id ",
    "WHERE r.order_id = $1::int8 AND r.status = 'expired' AND ",
    cancelled_by_release!("o", "r"),
    " ORDER BY r.id FOR NO KEY UPDATE OF r NOWAIT"
);

/// A row of [`LOCK_RELEASED`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReleasedRow {
    pub id: i64,
    pub variant_id: i64,
    pub drop_id: Option<i64>,
    pub quantity: i32,
}

/// [`LOCK_RELEASED`].
pub async fn lock_released(
    client: &(impl GenericClient + Sync),
    order_id: i64,
) -> Result<Vec<ReleasedRow>> {
    fetch(
        client,
        LOCK_RELEASED,
        &[&order_id],
        "locking the released reservations",
        |row| {
            Ok(ReleasedRow {
                id: row.try_get("id")?,
                variant_id: row.try_get("variant_id")?,
                drop_id: row.try_get("drop_id")?,
                quantity: row.try_get("quantity")?,
            })
        },
    )
    .await
}

/// Locks the variant rows `FOR NO KEY UPDATE NOWAIT`, ascending id, and returns the units each
/// can still reserve: `stock_quantity − reserved_quantity`.
///
/// $1 variant ids.
pub const LOCK_VARIANT_ROOM: &str = "SELECT t.id::int8 AS id, \
     (t.stock_quantity::int8 - t.reserved_quantity::int8) AS available \
     FROM products_productvariant t WHERE t.id = ANY($1::int8[]) \
     ORDER BY t.id FOR NO KEY UPDATE NOWAIT";

/// Locks the drop rows `FOR NO KEY UPDATE NOWAIT`, ascending id, after the variants, and returns
/// the units each can still reserve: `drop_quantity − reserved_quantity − sold_quantity`.
///
/// $1 drop product ids.
pub const LOCK_DROP_ROOM: &str = "SELECT t.id::int8 AS id, \
     (t.drop_quantity::int8 - t.reserved_quantity::int8 - t.sold_quantity::int8) AS available \
     FROM drops_dropproduct t WHERE t.id = ANY($1::int8[]) \
     ORDER BY t.id FOR NO KEY UPDATE NOWAIT";

/// A row of [`LOCK_VARIANT_ROOM`] / [`LOCK_DROP_ROOM`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Room {
    pub id: i64,
    pub available: i64,
}

/// [`LOCK_VARIANT_ROOM`] (`drops` false) or [`LOCK_DROP_ROOM`].
pub async fn lock_room(
    client: &(impl GenericClient + Sync),
    drops: bool,
    ids: &[i64],
) -> Result<Vec<Room>> {
    let (statement, context) = if drops {
        (LOCK_DROP_ROOM, "locking the drop rows to revive")
    } else {
        (LOCK_VARIANT_ROOM, "locking the variant rows to revive")
    };
    fetch(client, statement, &[&ids], context, |row| {
        Ok(Room {
            id: row.try_get("id")?,
            available: row.try_get("available")?,
        })
    })
    .await
}

/// Makes the released reservations (those [`LOCK_RELEASED`] locked) active again, due in $2
/// minutes from `now()`, `released_at` cleared (an active reservation was never released, to
/// the shop's code and to any report on that column); how many. Rows locked already. A retry
/// of the revive (a payment webhook delivered twice) finds the order `pending` with active
/// lines ([`ACTIVE_LINES`]) and answers `already_active`.
///
/// $1 order id, $2 hold minutes.
pub const REACTIVATE: &str = concat!(
    "WITH upd AS (UPDATE orders_inventoryreservation r ",
    "SET status = 'active', expires_at = now() + make_interval(mins => $2::int4), ",
    "released_at = NULL ",
    "FROM orders_order o WHERE o.id = $1::int8 AND r.order_id = o.id ",
    "AND r.status = 'expired' AND ",
    cancelled_by_release!("o", "r"),
    " RETURNING r.id) SELECT count(*)::int8 AS n FROM upd"
);

/// [`REACTIVATE`].
pub async fn reactivate(
    client: &(impl GenericClient + Sync),
    order_id: i64,
    hold_minutes: i32,
) -> Result<i64> {
    fetch_one(
        client,
        REACTIVATE,
        &[&order_id, &hold_minutes],
        "reactivating the reservations",
        |row| row.try_get("n"),
    )
    .await
}

/// Active reservations of the order: a `pending` order with any holds its stock already (a
/// revive done before, or never released), so there is nothing to revive. Reads only; the
/// order row is locked by [`LOCK_ORDER`] already, so no line is added or released meanwhile.
///
/// $1 order id.
pub const ACTIVE_LINES: &str = "SELECT count(*)::int8 AS n FROM orders_inventoryreservation r \
     WHERE r.order_id = $1::int8 AND r.status = 'active'";

/// [`ACTIVE_LINES`].
pub async fn active_lines(client: &(impl GenericClient + Sync), order_id: i64) -> Result<i64> {
    fetch_one(
        client,
        ACTIVE_LINES,
        &[&order_id],
        "checking for an earlier revive",
        |row| row.try_get("n"),
    )
    .await
}

/// Adds units to the counter rows of `$table` (locked already); returns the ids updated.
macro_rules! add_units {
    ($table:literal) => {
        concat!(
            "UPDATE ",
            $table,
            " t SET reserved_quantity = t.reserved_quantity + x.units, updated_at = now() ",
            "FROM unnest($1::int8[], $2::int8[]) AS x(id, units) WHERE t.id = x.id ",
            "RETURNING t.id::int8 AS id"
        )
    };
}

/// Reserves the revived units on the variants again. $1 ids, $2 units.
pub const ADD_VARIANT_UNITS: &str = add_units!("products_productvariant");
/// Reserves the revived units on the drops again. $1 ids, $2 units.
pub const ADD_DROP_UNITS: &str = add_units!("drops_dropproduct");

/// [`ADD_VARIANT_UNITS`] (`drops` false) or [`ADD_DROP_UNITS`]: how many rows were updated.
pub async fn add_units(
    client: &(impl GenericClient + Sync),
    drops: bool,
    ids: &[i64],
    units: &[i64],
) -> Result<usize> {
    let (statement, context) = if drops {
        (ADD_DROP_UNITS, "reserving the revived units on drops")
    } else {
        (ADD_VARIANT_UNITS, "reserving the revived units on variants")
    };
    let rows = fetch(client, statement, &[&ids, &units], context, |row| {
        row.try_get::<_, i64>("id")
    })
    .await?;
    Ok(rows.len())
}

/// Sets the (locked) order back to `pending`, `cancelled_at` cleared. $1 order id.
pub const REOPEN_ORDER: &str = "UPDATE orders_order SET status = 'pending', cancelled_at = NULL, \
     updated_at = now() WHERE id = $1::int8 AND status = 'cancelled' RETURNING id::int8 AS id";

/// [`REOPEN_ORDER`]: whether the order was reopened.
pub async fn reopen_order(client: &(impl GenericClient + Sync), order_id: i64) -> Result<bool> {
    let rows = fetch(
        client,
        REOPEN_ORDER,
        &[&order_id],
        "reopening the order",
        |row| row.try_get::<_, i64>("id"),
    )
    .await?;
    Ok(!rows.is_empty())
}

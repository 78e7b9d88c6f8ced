//! The statements of `reconcile`: which counters disagree with their active reservations, and
//! the repair of one counter row in a transaction of its own. The reads lock nothing; the
//! repair locks the one counter row `FOR NO KEY UPDATE SKIP LOCKED` (never waiting behind a
//! shopper: a held row is skipped) and only then sums the row's active reservations, in a
//! statement of its own — under READ COMMITTED a statement takes its snapshot when it starts,
//! so the sum sees every checkout, payment and release that committed before the lock was
//! granted, and none can commit a change to this counter until the repair commits.

use tokio_postgres::GenericClient;

use super::{fetch, fetch_one};
use crate::error::Result;

/// Which counter table.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CounterKind {
    Variant,
    Drop,
}

impl CounterKind {
    pub fn as_str(self) -> &'static str {
        self.pick("variant", "drop")
    }

    /// The variant's or the drop's form of a statement.
    fn pick(self, variant: &'static str, drop: &'static str) -> &'static str {
        match self {
            CounterKind::Variant => variant,
            CounterKind::Drop => drop,
        }
    }
}

/// The counters of `$table` that disagree with the sum of their active reservations (through
/// `$fk`), among the ids in $1 (NULL: all), by id. Reads the table and the active reservations
/// once each; locks nothing: `status` lists them as they are, `reconcile` takes them as
/// candidates and confirms each under its lock.
macro_rules! drifted_counters {
    ($table:literal, $fk:literal) => {
        concat!(
            "WITH sums AS (SELECT ",
            $fk,
            " AS id, sum(quantity) AS units FROM orders_inventoryreservation ",
            "WHERE status = 'active' AND ",
            $fk,
            " IS NOT NULL AND ($1::int8[] IS NULL OR ",
            $fk,
            " = ANY($1::int8[])) GROUP BY ",
            $fk,
            ") SELECT t.id::int8 AS id, t.reserved_quantity::int8 AS reserved_quantity, ",
            "COALESCE(s.units, 0)::int8 AS active_reserved FROM ",
            $table,
            " t LEFT JOIN sums s ON s.id = t.id ",
            "WHERE ($1::int8[] IS NULL OR t.id = ANY($1::int8[])) ",
            "AND t.reserved_quantity IS DISTINCT FROM COALESCE(s.units, 0) ORDER BY t.id"
        )
    };
}

pub const DRIFTED_VARIANTS: &str =
    drifted_counters!("products_productvariant", "product_variant_id");
pub const DRIFTED_DROPS: &str = drifted_counters!("drops_dropproduct", "drop_product_id");

/// How many counter rows of the table are checked: those in $1 (NULL: all); and which of the
/// ids in $1 do not exist. Locks nothing.
macro_rules! counted {
    ($table:literal) => {
        concat!(
            "SELECT (SELECT count(*) FROM ",
            $table,
            " t WHERE $1::int8[] IS NULL OR t.id = ANY($1::int8[]))::int8 AS checked, ",
            "ARRAY(SELECT u.id FROM unnest(COALESCE($1::int8[], '{}')) u(id) ",
            "WHERE NOT EXISTS (SELECT 1 FROM ",
            $table,
            " t WHERE t.id = u.id) ORDER BY u.id)::int8[] AS unknown"
        )
    };
}

pub const COUNT_VARIANTS: &str = counted!("products_productvariant");
pub const COUNT_DROPS: &str = counted!("drops_dropproduct");

/// A counter that disagreed with its active reservations.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CounterReading {
    pub id: i64,
    pub reserved_quantity: i64,
    pub active_reserved: i64,
}

/// [`DRIFTED_VARIANTS`] or [`DRIFTED_DROPS`].
pub async fn drifted(
    client: &(impl GenericClient + Sync),
    kind: CounterKind,
    ids: Option<&[i64]>,
) -> Result<Vec<CounterReading>> {
    let statement = kind.pick(DRIFTED_VARIANTS, DRIFTED_DROPS);
    fetch(client, statement, &[&ids], "reading the counters", |row| {
        Ok(CounterReading {
            id: row.try_get("id")?,
            reserved_quantity: row.try_get("reserved_quantity")?,
            active_reserved: row.try_get("active_reserved")?,
        })
    })
    .await
}

/// What [`COUNT_VARIANTS`] or [`COUNT_DROPS`] found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Counted {
    pub checked: i64,
    pub unknown: Vec<i64>,
}

/// [`COUNT_VARIANTS`] or [`COUNT_DROPS`].
pub async fn counted(
    client: &(impl GenericClient + Sync),
    kind: CounterKind,
    ids: Option<&[i64]>,
) -> Result<Counted> {
    let statement = kind.pick(COUNT_VARIANTS, COUNT_DROPS);
    fetch_one(client, statement, &[&ids], "counting the counters", |row| {
        Ok(Counted {
            checked: row.try_get("checked")?,
            unknown: row.try_get("unknown")?,
        })
    })
    .await
}

/// Locks one counter row, `FOR NO KEY UPDATE SKIP LOCKED`: no row when another transaction
/// holds it (a checkout, a payment, a release) — skipped, never waited on. $1 the row's id.
macro_rules! lock_counter {
    ($table:literal) => {
        concat!(
            "SELECT id::int8 AS id, reserved_quantity::int8 AS reserved_quantity FROM ",
            $table,
            " WHERE id = $1::int8 FOR NO KEY UPDATE SKIP LOCKED"
        )
    };
}

pub const LOCK_VARIANT_COUNTER: &str = lock_counter!("products_productvariant");
pub const LOCK_DROP_COUNTER: &str = lock_counter!("drops_dropproduct");

/// The sum of the row's active reservations, read by a statement that starts after the row's
/// lock was granted (its own snapshot). $1 the counter row's id. Locks nothing.
macro_rules! active_units {
    ($fk:literal) => {
        concat!(
            "SELECT COALESCE(sum(quantity), 0)::int8 AS units FROM orders_inventoryreservation ",
            "WHERE ",
            $fk,
            " = $1::int8 AND status = 'active'"
        )
    };
}

pub const ACTIVE_VARIANT_UNITS: &str = active_units!("product_variant_id");
pub const ACTIVE_DROP_UNITS: &str = active_units!("drop_product_id");

/// Sets the (locked) counter to $2. $1 the row's id. Returns the id.
macro_rules! set_counter {
    ($table:literal) => {
        concat!(
            "UPDATE ",
            $table,
            " SET reserved_quantity = $2::int8, updated_at = now() WHERE id = $1::int8 ",
            "RETURNING id::int8 AS id"
        )
    };
}

pub const SET_VARIANT_COUNTER: &str = set_counter!("products_productvariant");
pub const SET_DROP_COUNTER: &str = set_counter!("drops_dropproduct");

/// [`LOCK_VARIANT_COUNTER`] or [`LOCK_DROP_COUNTER`]: the counter's value under lock, None when
/// another transaction holds the row.
pub async fn lock_counter(
    client: &(impl GenericClient + Sync),
    kind: CounterKind,
    id: i64,
) -> Result<Option<i64>> {
    let statement = kind.pick(LOCK_VARIANT_COUNTER, LOCK_DROP_COUNTER);
    let rows = fetch(client, statement, &[&id], "locking a counter row", |row| {
        row.try_get::<_, i64>("reserved_quantity")
    })
    .await?;
    Ok(rows.first().copied())
}

/// [`ACTIVE_VARIANT_UNITS`] or [`ACTIVE_DROP_UNITS`].
pub async fn active_units(
    client: &(impl GenericClient + Sync),
    kind: CounterKind,
    id: i64,
) -> Result<i64> {
    let statement = kind.pick(ACTIVE_VARIANT_UNITS, ACTIVE_DROP_UNITS);
    fetch_one(
        client,
        statement,
        &[&id],
        "summing active reservations",
        |row| row.try_get("units"),
    )
    .await
}

/// [`SET_VARIANT_COUNTER`] or [`SET_DROP_COUNTER`].
pub async fn set_counter(
    client: &(impl GenericClient + Sync),
    kind: CounterKind,
    id: i64,
    units: i64,
) -> Result<()> {
    let statement = kind.pick(SET_VARIANT_COUNTER, SET_DROP_COUNTER);
    fetch_one(
        client,
        statement,
        &[&id, &units],
        "repairing a counter",
        |row| row.try_get::<_, i64>("id"),
    )
    .await
    .map(drop)
}

/// Orders holding active reservations that the release never touches, listed for the
/// operator: paid orders (`paid`), and orders the shop cancelled itself (`cancelled` with an
/// active reservation: the release expires an order's reservations when it cancels it).
/// Locks nothing.
pub const UNTOUCHED_ORDERS: &str = "SELECT o.id::int8 AS id, \
     (o.payment_status = 'paid')::bool AS paid \
     FROM orders_order o WHERE (o.payment_status = 'paid' OR o.status = 'cancelled') \
     AND EXISTS (SELECT 1 FROM orders_inventoryreservation r \
     WHERE r.order_id = o.id AND r.status = 'active') ORDER BY o.id LIMIT $1::int8";

/// A row of [`UNTOUCHED_ORDERS`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct UntouchedOrder {
    pub id: i64,
    pub paid: bool,
}

/// [`UNTOUCHED_ORDERS`].
pub async fn untouched_orders(
    client: &(impl GenericClient + Sync),
    limit: i64,
) -> Result<Vec<UntouchedOrder>> {
    fetch(
        client,
        UNTOUCHED_ORDERS,
        &[&limit],
        "listing untouched orders",
        |row| {
            Ok(UntouchedOrder {
                id: row.try_get("id")?,
                paid: row.try_get("paid")?,
            })
        },
    )
    .await
}

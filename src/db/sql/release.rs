//! The release steps of a batch, on the rows it claimed: expire the reservations and cancel the
//! pending orders (`NOWAIT`), give the units back to variants then drops (`SKIP LOCKED`,
//! all or nothing), probe which rows another transaction holds, and the age of deferred work.

use tokio_postgres::types::ToSql;
use tokio_postgres::{GenericClient, Row};

use super::{fetch, fetch_one, Rules, Statements};
use crate::error::Result;

/// Expires every active reservation of the claimed orders (all of an order's reservations go
/// together, due or not) and the claimed holds, and cancels those of the claimed orders that
/// are still `pending` (a `cancelled` order keeps its original `cancelled_at`), in one
/// statement: one round trip, one snapshot. Returns each released reservation, what it held,
/// whether it was due itself, and the order number of its order when this statement cancelled
/// that order.
///
/// Locks the reservation rows `FOR NO KEY UPDATE NOWAIT`, in the one scan that finds them,
/// before updating them: the release never waits in a lock queue, so it can never close a lock
/// cycle that another backend's deadlock check would then break by aborting a shopper. The
/// claimed orders are ours already (no reservation can be added to them: the foreign-key check
/// would wait on our order lock), so only a shop transaction updating a reservation without its
/// order's lock can hold one: then the statement fails at once with `lock_not_available`, and
/// the batch rolls back to its savepoint (giving back the row locks the statement took, and
/// undoing the cancellations), finds the held rows with [`PROBE_HELD`] (which skips instead)
/// and waits for them by polling, or leaves their orders out. `NOWAIT` rather than `SKIP
/// LOCKED` because a held row is rare here: the common batch needs no second scan to tell the
/// rows it skipped. The order rows the cancellation updates are locked already by
/// [`CLAIM_ORDERS`]: it takes no new lock and cannot wait.
///
/// The lock and the update work on the latest version of each row, and `was_due` is computed
/// on that version: the batch decides on the rows it has locked. An order none of whose rows is
/// due any more (the shopper came back and extended it after the claim) must not be released:
/// the batch sees it in the result, rolls back to its savepoint (release and cancellation
/// alike) and redoes the step without it. A dry run also uses `was_due` to tell the backlog a
/// real run would leave.
///
/// An order too large for one batch is released in parts ([`ReleaseParams::line_limit`]: the
/// first lines by id): the first part cancels it, with `cancelled_at` the `released_at` of its
/// lines; each later part finds it cancelled by the release (the one rule,
/// `cancelled_by_release!`: an expired line's `released_at` equals its `cancelled_at`) and
/// releases the next lines with that same instant, so the order reads as the release cancelled
/// it — all its lines released together — to revive, the events replay and the report, and a
/// cut between two parts is finished by the next batch that claims it. An order the shop
/// cancelled itself keeps its `cancelled_at`, and its lines get the batch's `now()`.
///
/// `finishing` reads only the claimed orders the claim found `cancelled` on their locked rows
/// ($9: usually none; an order asked for is always looked up), not every claimed order: read
/// so, 1,800 orders a batch took the planner a scan of the whole table (14 ms of a batch's
/// 110 at 100,000 due). It reads them by primary key behind a fence (`OFFSET 0`): without it,
/// the planner, whose statistics lag behind a large drain (it believes few orders are
/// cancelled), scanned the whole of `unreserver_cancelled_at_idx` for them instead — every
/// order the drain had cancelled so far, once per batch (68 of a batch's 138 ms after 600,000
/// releases). `cardinality($9) > 0` makes an empty list a constant `false` the planner reads
/// nothing for: `id = ANY('{}')` alone is a contradiction, which in its logic implies any
/// partial index's predicate, and it answered it by walking all of `unreserver_cancelled_at_idx`
/// (25 ms a batch once 26,000 orders were cancelled, in every batch of a drain while shoppers
/// competed).
///
/// `released` updates the locked rows by their ids as an array (`r.id = ANY(ARRAY(...))`: one
/// primary-key lookup each), not as a join with `locked`: the planner, which counts the
/// expired rows as still active until it analyzes again, joined them by walking the primary
/// key from its start (50,000 index entries for 3,700 rows, 25 ms of a batch's 110 halfway
/// through 100,000).
///
/// A queue batch releases only the lines that need the row it won ($7 a variant or $8 a drop):
/// the order is cancelled with them, and its lines on other hot rows — each with its own queue
/// of checkouts — are released by those rows' queue batches, with the same instant: an order
/// across several hot rows comes back one row at a time, and the release never waits for a row
/// while it holds another.
///
/// $1 claimed order ids, $2 claimed hold ids, $3 reservation timeout minutes, $4 grace minutes,
/// $5 the claimed orders whose payment is `processing`, $6 the most lines to release (NULL:
/// all), $7 only lines of this variant (NULL: any), $8 only lines of this drop row (NULL: any),
/// $9 the claimed orders that are (or may be) `cancelled` already.
pub const RELEASE_RESERVATIONS: &str = concat!(
    "WITH finishing AS MATERIALIZED (SELECT o.id, o.cancelled_at, o.order_number ",
    "FROM (SELECT o.id, o.status, o.cancelled_at, o.order_number FROM orders_order o ",
    "WHERE o.id = ANY($9::int8[]) AND cardinality($9::int8[]) > 0 OFFSET 0) o ",
    "WHERE o.status = 'cancelled' AND EXISTS (SELECT 1 ",
    "FROM orders_inventoryreservation x WHERE x.order_id = o.id AND x.status = 'expired' AND ",
    cancelled_by_release!("o", "x"),
    ")), ",
    "locked AS MATERIALIZED (SELECT r.id FROM orders_inventoryreservation r ",
    "WHERE r.status = 'active' AND (r.order_id = ANY($1::int8[]) OR r.id = ANY($2::int8[])) ",
    "AND ($7::int8 IS NULL OR r.product_variant_id = $7::int8) ",
    "AND ($8::int8 IS NULL OR r.drop_product_id = $8::int8) ",
    "ORDER BY r.id LIMIT $6::int8 FOR NO KEY UPDATE NOWAIT), ",
    "released AS (UPDATE orders_inventoryreservation r SET status = 'expired', ",
    "released_at = COALESCE((SELECT f.cancelled_at FROM finishing f WHERE f.id = r.order_id), now()) ",
    "WHERE r.id = ANY(ARRAY(SELECT l.id FROM locked l)) AND r.status = 'active' ",
    "RETURNING r.id, r.order_id, r.product_variant_id, r.drop_product_id, r.quantity, ",
    "r.expires_at, r.created_at, r.released_at), ",
    "cancelled AS (UPDATE orders_order o ",
    "SET status = 'cancelled', cancelled_at = now(), updated_at = now() ",
    "WHERE o.id IN (SELECT order_id FROM released) AND o.status = 'pending' ",
    "RETURNING o.id, o.order_number) ",
    "SELECT r.id::int8 AS id, r.order_id::int8 AS order_id, ",
    "r.product_variant_id::int8 AS variant_id, r.drop_product_id::int8 AS drop_id, ",
    "r.quantity::int4 AS quantity, COALESCE(",
    is_due!("r", "$3", "r.order_id = ANY($5::int8[])", "$4"),
    ", false) AS was_due, ",
    seconds_due!("r", "$3", "now()"),
    " AS delay_seconds, r.released_at AS released_at, ",
    "c.id IS NOT NULL AS order_cancelled, f.id IS NOT NULL AS order_finished, ",
    "COALESCE(c.order_number::text, f.order_number::text, '') AS cancelled_order_number ",
    "FROM released r LEFT JOIN cancelled c ON c.id = r.order_id ",
    "LEFT JOIN finishing f ON f.id = r.order_id"
);

/// Parameters of [`RELEASE_RESERVATIONS`].
#[derive(Debug, Clone, Copy)]
pub struct ReleaseParams<'a> {
    pub order_ids: &'a [i64],
    pub hold_ids: &'a [i64],
    /// The claimed orders whose payment is `processing`.
    pub processing_order_ids: &'a [i64],
    /// The claimed orders that are (or may be) `cancelled` already: only theirs can be the
    /// later part of an order the release cancelled.
    pub cancelled_order_ids: &'a [i64],
    pub rules: Rules,
    /// At most this many lines (the first by id), for a part of an order too large for one
    /// batch; None: every line.
    pub line_limit: Option<i64>,
    /// Only the lines that need this counter row (a queue batch's); None: every line.
    pub only_row: Option<(Counter, i64)>,
}

/// A reservation [`RELEASE_RESERVATIONS`] made `expired`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ReleasedReservation {
    pub id: i64,
    /// None for a cart hold.
    pub order_id: Option<i64>,
    pub variant_id: i64,
    pub drop_id: Option<i64>,
    pub quantity: i32,
    /// Whether it was due itself (not only released with its order).
    pub was_due: bool,
    /// Seconds from when it fell due (`expires_at`, or `created_at` plus the timeout; no grace)
    /// to its release: the release delay the report and `ReleaseDelayP95` measure (the rule's
    /// `seconds_due!`: a row due since `-infinity` counts from its `created_at`; one due at
    /// `infinity`, released on request, is `-Infinity`).
    pub delay_seconds: f64,
    /// The row's `released_at`: the batch transaction's `now()`, the `cancelled_at` of the
    /// order the batch cancels with it — or, for a later part of an order the release cancelled
    /// in an earlier one, that order's `cancelled_at`.
    pub released_at: std::time::SystemTime,
}

/// An order [`RELEASE_RESERVATIONS`] cancelled (its `cancelled_at` is the batch's `now()`, the
/// `released_at` of its reservations).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CancelledOrder {
    pub id: i64,
    pub order_number: String,
}

/// What [`RELEASE_RESERVATIONS`] did: the reservations released, the orders cancelled, and the
/// orders an earlier part cancelled whose next lines this one released (each once, ascending).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Released {
    pub reservations: Vec<ReleasedReservation>,
    pub cancelled: Vec<CancelledOrder>,
    /// Orders the release cancelled in an earlier batch (a part of a giant order, or an order
    /// across several hot rows), whose further lines this batch released: announced like the
    /// cancelled ones, not counted again.
    pub finished: Vec<CancelledOrder>,
}

impl Released {
    /// Splits the statement's rows: every row is a reservation; a row whose order this
    /// statement cancelled also names that order (each of its reservations does). Whether it
    /// was cancelled is its own column: a shop's NULL order number must not hide a cancellation.
    fn from_rows(rows: Vec<(ReleasedReservation, bool, bool, String)>) -> Self {
        let mut cancelled = std::collections::BTreeMap::new();
        let mut finished = std::collections::BTreeMap::new();
        let mut reservations = Vec::with_capacity(rows.len());
        for (reservation, was_cancelled, was_finished, number) in rows {
            if let Some(order) = reservation.order_id {
                if was_cancelled {
                    cancelled.entry(order).or_insert(number);
                } else if was_finished {
                    finished.entry(order).or_insert(number);
                }
            }
            reservations.push(reservation);
        }
        let orders = |map: std::collections::BTreeMap<i64, String>| {
            map.into_iter()
                .map(|(id, order_number)| CancelledOrder { id, order_number })
                .collect()
        };
        Released {
            reservations,
            cancelled: orders(cancelled),
            finished: orders(finished),
        }
    }
}

impl Statements {
    /// [`RELEASE_RESERVATIONS`].
    pub async fn release_reservations(
        &self,
        client: &(impl GenericClient + Sync),
        p: &ReleaseParams<'_>,
    ) -> Result<Released> {
        let rows = fetch(
            client,
            &self.release_reservations,
            &[
                &p.order_ids,
                &p.hold_ids,
                &p.rules.timeout_minutes,
                &p.rules.grace_minutes,
                &p.processing_order_ids,
                &p.line_limit,
                &p.only_row
                    .and_then(|(c, id)| (c == Counter::Variants).then_some(id)),
                &p.only_row
                    .and_then(|(c, id)| (c == Counter::Drops).then_some(id)),
                &p.cancelled_order_ids,
            ],
            "expiring reservations and cancelling their orders",
            |row| {
                let reservation = ReleasedReservation {
                    id: row.try_get("id")?,
                    order_id: row.try_get("order_id")?,
                    variant_id: row.try_get("variant_id")?,
                    drop_id: row.try_get("drop_id")?,
                    quantity: row.try_get("quantity")?,
                    was_due: row.try_get("was_due")?,
                    delay_seconds: row.try_get("delay_seconds")?,
                    released_at: row.try_get("released_at")?,
                };
                let cancelled: bool = row.try_get("order_cancelled")?;
                let finished: bool = row.try_get("order_finished")?;
                let number: String = row.try_get("cancelled_order_number")?;
                Ok((reservation, cancelled, finished, number))
            },
        )
        .await?;
        Ok(Released::from_rows(rows))
    }
}

/// Gives released units back to the counter rows of `$table`, never below zero, returning for
/// each row whether the subtraction had to be clamped (the counter had drifted below what its
/// reservations held). Locks the rows in ascending id order with `FOR NO KEY UPDATE SKIP
/// LOCKED`: the lock the update takes anyway, so a checkout inserting a reservation that
/// references the row is not blocked; and never waiting, so the release can never close a lock
/// cycle. A row another transaction holds is skipped and missing from the result: the batch
/// keeps what it updated and tries the missing rows again by polling, or rolls back to its
/// savepoint and leaves out the orders that need them. The locked version is the latest one, so
/// `l.reserved_quantity` is the value the update subtracts from.
///
/// Each row also says which transaction wrote it last before this one (`previous_writer`, the
/// locked version's `xmin`) and which writes it now (`writer`: this batch's subtransaction, the
/// counters' savepoint): a previous writer that is not the run's own last write of the row
/// means a checkout (or anything else) updated the counter since — the sign of a shopper that
/// every checkout on the row gives, whenever it ran (see `engine::controller`).
///
/// One statement per kind, variants first and every one of them updated before any drop row is
/// locked: the order the shop's checkout locks them in. A batch that took a drop while a
/// checkout held its variant would have that checkout wait on the drop until the batch gave up
/// polling for the variant (measured: the shoppers' max checkout rose by 100 ms when both kinds
/// were locked in one statement).
///
/// `available_after` is what the row shows for sale once updated (`$available` on the new
/// version), read here, under the lock the batch holds to its commit: the `Stock Released`
/// events say it.
macro_rules! return_units {
    ($table:literal, $available:literal) => {
        concat!(
            "WITH released(id, units) AS (SELECT * FROM unnest($1::int8[], $2::int8[])), ",
            "locked AS (SELECT t.id, t.reserved_quantity, t.xmin::text::int8 AS before_xmin FROM ",
            $table,
            " t WHERE t.id = ANY($1::int8[]) ORDER BY t.id FOR NO KEY UPDATE SKIP LOCKED) ",
            "UPDATE ",
            $table,
            " t SET reserved_quantity = GREATEST(l.reserved_quantity - rel.units, 0), ",
            "updated_at = now() FROM locked l JOIN released rel ON rel.id = l.id ",
            "WHERE t.id = l.id RETURNING t.id::int8 AS id, COALESCE(l.reserved_quantity < rel.units, false) AS clamped, ",
            "l.before_xmin AS previous_writer, t.xmin::text::int8 AS writer, (",
            $available,
            ")::int8 AS available_after"
        )
    };
}

/// Gives the released units back to the variants. These hot rows are locked last but for the
/// drops, so they are held only until the commit that follows. `SKIP LOCKED`: a row another
/// transaction holds is left out of the result, and the batch rolls back to its savepoint
/// (giving back the rows this statement took) instead of keeping them while it polls.
///
/// $1 variant ids (ascending, distinct), $2 units to give back to each.
pub const RETURN_VARIANT_UNITS: &str = return_units!(
    "products_productvariant",
    "t.stock_quantity - t.reserved_quantity"
);

/// Gives the released units back to limited-drop rows: locked after the variants, the order the
/// shop's checkout uses.
///
/// $1 drop product ids (ascending, distinct), $2 units to give back to each.
pub const RETURN_DROP_UNITS: &str = return_units!(
    "drops_dropproduct",
    "t.drop_quantity - t.reserved_quantity - t.sold_quantity"
);

/// Parameters of [`RETURN_VARIANT_UNITS`] and [`RETURN_DROP_UNITS`]: counter row ids
/// (ascending, distinct) and the units to give back to each.
#[derive(Debug, Clone, Copy)]
pub struct UnitsParams<'a> {
    pub ids: &'a [i64],
    pub units: &'a [i64],
}

/// A row of [`RETURN_VARIANT_UNITS`] / [`RETURN_DROP_UNITS`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReturnedUnits {
    pub id: i64,
    /// The counter had drifted below what its reservations held and was clamped at zero.
    pub clamped: bool,
    /// The transaction that wrote the row before this update (its `xmin`, as a number), and
    /// the one that writes it now.
    pub previous_writer: i64,
    pub writer: i64,
    /// What the row shows for sale after the update: stock − reserved for a variant, drop −
    /// reserved − sold for a drop row.
    pub available_after: i64,
}

fn returned_units(row: &Row) -> std::result::Result<ReturnedUnits, tokio_postgres::Error> {
    Ok(ReturnedUnits {
        id: row.try_get("id")?,
        clamped: row.try_get("clamped")?,
        previous_writer: row.try_get("previous_writer")?,
        writer: row.try_get("writer")?,
        available_after: row.try_get("available_after")?,
    })
}

/// Which counter rows [`Statements::return_units`] updates.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Counter {
    /// `products_productvariant` ([`RETURN_VARIANT_UNITS`]).
    Variants,
    /// `drops_dropproduct` ([`RETURN_DROP_UNITS`]).
    Drops,
}

impl Statements {
    /// [`RETURN_VARIANT_UNITS`] or [`RETURN_DROP_UNITS`].
    pub async fn return_units(
        &self,
        client: &(impl GenericClient + Sync),
        counter: Counter,
        p: &UnitsParams<'_>,
    ) -> Result<Vec<ReturnedUnits>> {
        let (statement, context) = match counter {
            Counter::Variants => (&self.return_variant_units, "returning units to variants"),
            Counter::Drops => (&self.return_drop_units, "returning units to drops"),
        };
        let params: [&(dyn ToSql + Sync); 2] = [&p.ids, &p.units];
        fetch(client, statement, &params, context, returned_units).await
    }
}

/// Waits in the lock queue of one variant row a queue of checkouts never leaves free, and locks
/// it `FOR NO KEY UPDATE` (the lock the units' update takes anyway: it does not block a
/// checkout's foreign-key check). The only statement of the release that waits for a row
/// lock, and it runs first in its transaction, holding nothing else: the release cannot be
/// part of a lock cycle while it waits, and the transaction's `lock_timeout` (a quarter of the
/// shop's `deadlock_timeout`) ends the wait before any shopper's deadlock check would run. Like
/// a checkout, it is granted the row in its turn; a holder that upgrades its own lock on the
/// row meanwhile is not held up by it (a transaction that already holds a lock on a tuple does
/// not queue behind waiters for it). An order across several such rows is won one row at a
/// time (see [`RELEASE_RESERVATIONS`]), never by waiting for a second row while holding a
/// first. Unprepared: a few queue batches a run.
///
/// $1 variant id. Returns the row's id.
pub const QUEUE_FOR_VARIANT: &str =
    "SELECT id::int8 AS id FROM products_productvariant WHERE id = $1::int8 FOR NO KEY UPDATE";

/// [`QUEUE_FOR_VARIANT`] for a limited-drop row.
///
/// $1 drop product id. Returns the row's id.
pub const QUEUE_FOR_DROP: &str =
    "SELECT id::int8 AS id FROM drops_dropproduct WHERE id = $1::int8 FOR NO KEY UPDATE";

impl Statements {
    /// [`QUEUE_FOR_VARIANT`] or [`QUEUE_FOR_DROP`]: whether the row exists (and is now ours).
    /// Fails with `lock_not_available` when the transaction's `lock_timeout` ran out first.
    pub async fn queue_for(
        &self,
        client: &(impl GenericClient + Sync),
        counter: Counter,
        id: i64,
    ) -> Result<bool> {
        let statement = match counter {
            Counter::Variants => QUEUE_FOR_VARIANT,
            Counter::Drops => QUEUE_FOR_DROP,
        };
        let rows = fetch(
            client,
            statement,
            &[&id],
            "waiting in a hot row's lock queue",
            |row| row.try_get::<_, i64>("id"),
        )
        .await?;
        Ok(!rows.is_empty())
    }
}

/// Finds, without waiting, which rows a batch needs that another transaction holds: the active
/// reservations of the claimed orders and holds, and the variant and drop rows they reference.
/// Runs only after a release step met a held row (rolled back to the savepoint), every few
/// milliseconds until the rows are free or `LOCK_TIMEOUT_MS` has passed. Locks the rows it can
/// get `FOR NO KEY UPDATE SKIP LOCKED` (the lock the release takes anyway; it does not block a
/// checkout's foreign-key check), so that once it finds nothing held, the release steps that
/// follow cannot meet a held row. Returns each reservation that needs a held row, with its
/// order (NULL for a hold) and which rows are held: the reservation itself, its variant, its
/// drop (the run remembers counter rows held for long; see `engine::batch::LongHeld`).
///
/// $1 claimed order ids, $2 claimed hold ids.
pub const PROBE_HELD: &str = concat!(
    "WITH res AS MATERIALIZED (SELECT r.id, r.order_id, r.product_variant_id AS v, ",
    "r.drop_product_id AS d FROM orders_inventoryreservation r WHERE r.status = 'active' ",
    "AND (r.order_id = ANY($1::int8[]) OR r.id = ANY($2::int8[]))), ",
    "free_res AS MATERIALIZED (SELECT r.id FROM orders_inventoryreservation r ",
    "WHERE r.id IN (SELECT id FROM res) FOR NO KEY UPDATE SKIP LOCKED), ",
    "free_v AS MATERIALIZED (SELECT t.id FROM products_productvariant t ",
    "WHERE t.id IN (SELECT v FROM res) ORDER BY t.id FOR NO KEY UPDATE SKIP LOCKED), ",
    "free_d AS MATERIALIZED (SELECT t.id FROM drops_dropproduct t ",
    "WHERE t.id IN (SELECT d FROM res) ORDER BY t.id FOR NO KEY UPDATE SKIP LOCKED) ",
    "SELECT res.id::int8 AS id, res.order_id::int8 AS order_id, ",
    "fr.id IS NULL AS reservation_held, ",
    "CASE WHEN fv.id IS NULL THEN res.v END::int8 AS held_variant, ",
    "CASE WHEN res.d IS NOT NULL AND fd.id IS NULL THEN res.d END::int8 AS held_drop FROM res ",
    "LEFT JOIN free_res fr ON fr.id = res.id LEFT JOIN free_v fv ON fv.id = res.v ",
    "LEFT JOIN free_d fd ON fd.id = res.d ",
    "WHERE fr.id IS NULL OR fv.id IS NULL OR (res.d IS NOT NULL AND fd.id IS NULL)"
);

/// A row of [`PROBE_HELD`]: a reservation that needs a row another transaction holds, and
/// which.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HeldReservation {
    pub id: i64,
    /// None for a cart hold.
    pub order_id: Option<i64>,
    /// The reservation row itself is held.
    pub reservation_held: bool,
    /// Its variant row, when held.
    pub variant: Option<i64>,
    /// Its drop row, when held.
    pub drop: Option<i64>,
}

impl Statements {
    /// [`PROBE_HELD`].
    pub async fn probe_held(
        &self,
        client: &(impl GenericClient + Sync),
        order_ids: &[i64],
        hold_ids: &[i64],
    ) -> Result<Vec<HeldReservation>> {
        fetch(
            client,
            &self.probe_held,
            &[&order_ids, &hold_ids],
            "finding the rows another transaction holds",
            |row| {
                Ok(HeldReservation {
                    id: row.try_get("id")?,
                    order_id: row.try_get("order_id")?,
                    reservation_held: row.try_get("reservation_held")?,
                    variant: row.try_get("held_variant")?,
                    drop: row.try_get("held_drop")?,
                })
            },
        )
        .await
    }
}

/// Seconds since the oldest of the given orders and holds fell due (grace included: the rule's
/// `seconds_due!`), among their active reservations; NULL when none is still due. A run's
/// `OldestDeferredAge`, from the database clock: no state is kept between runs. Reads only;
/// locks nothing.
///
/// $1 order ids, $2 hold ids, $3 reservation timeout minutes, $4 grace minutes.
pub const DEFERRED_AGE: &str = concat!(
    "SELECT max(d.age) AS age_seconds FROM (SELECT ",
    seconds_due!("r", "$3", "o.payment_status = 'processing'", "$4", "now()"),
    " AS age FROM orders_inventoryreservation r LEFT JOIN orders_order o ON o.id = r.order_id ",
    "WHERE r.status = 'active' AND (r.order_id = ANY($1::int8[]) OR r.id = ANY($2::int8[])) AND ",
    is_due!("r", "$3", "o.payment_status = 'processing'", "$4"),
    ") d"
);

impl Statements {
    /// [`DEFERRED_AGE`].
    pub async fn deferred_age(
        &self,
        client: &(impl GenericClient + Sync),
        order_ids: &[i64],
        hold_ids: &[i64],
        rules: Rules,
    ) -> Result<Option<f64>> {
        fetch_one(
            client,
            &self.deferred_age,
            &[
                &order_ids,
                &hold_ids,
                &rules.timeout_minutes,
                &rules.grace_minutes,
            ],
            "measuring the age of deferred orders",
            |row| row.try_get("age_seconds"),
        )
        .await
    }
}

//! Every SQL statement the release runs, in one place, each with what it locks and why, and
//! beside it its typed wrapper: a params struct (or plain arguments) bound in one place and a
//! row struct decoded in one place, by column name, with `try_get` (a type that does not fit is
//! an error, never a panic). No caller passes `$n` by position or reads a column by index.
//!
//! The rules of release live here as SQL fragments shared by the statements that apply them
//! ([`releasable_order!`], [`grace!`], [`due_at!`]), so that the claim, the dry run, the backlog
//! count and `status` can never disagree about what is due. Every time comparison is against the
//! database clock (`now()`, the batch transaction's start), never the client's.
//!
//! Every column a statement returns is cast to the type the code reads (ids to `int8`,
//! quantities to `int4`, conditions coalesced to booleans), so a shop whose ids are `integer`
//! or whose columns allow NULL gets correct results, never a panic in the row decoder.
//!
//! Lock order of a batch, the same as the shop's payment code: order rows → reservation rows →
//! variant rows → drop rows (each kind in ascending id). No statement of a batch waits in a
//! lock queue: order, variant and drop rows are locked `SKIP LOCKED`, reservation rows `NOWAIT`,
//! so the release can never close a lock cycle with a shopper's transaction. `lock_timeout`,
//! set per batch well below the server's `deadlock_timeout`, is only a safeguard.

use bytes::BytesMut;
use tokio_postgres::types::{accepts, to_sql_checked, FromSql, IsNull, ToSql, Type};
use tokio_postgres::{Client, GenericClient, Row, Statement, ToStatement};

use crate::error::{Error, Result};

/// The release's rule parameters, shared by every statement that decides what is due.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rules {
    /// When a legacy row (NULL `expires_at`) is due: `created_at` plus this, in minutes.
    pub timeout_minutes: i32,
    /// Extra minutes for an order whose payment is `processing`.
    pub grace_minutes: i32,
}

/// Runs `statement` with `params` and decodes every row with `decode`; any error names
/// `context`.
async fn fetch<C, S, T>(
    client: &C,
    statement: &S,
    params: &[&(dyn ToSql + Sync)],
    context: &'static str,
    decode: fn(&Row) -> std::result::Result<T, tokio_postgres::Error>,
) -> Result<Vec<T>>
where
    C: GenericClient + Sync,
    S: ?Sized + ToStatement + Sync + Send,
{
    let rows = client
        .query(statement, params)
        .await
        .map_err(Error::db(context))?;
    rows.iter()
        .map(|row| decode(row).map_err(Error::db(context)))
        .collect()
}

/// Like [`fetch`], for a statement that returns exactly one row.
async fn fetch_one<C, S, T>(
    client: &C,
    statement: &S,
    params: &[&(dyn ToSql + Sync)],
    context: &'static str,
    decode: fn(&Row) -> std::result::Result<T, tokio_postgres::Error>,
) -> Result<T>
where
    C: GenericClient + Sync,
    S: ?Sized + ToStatement + Sync + Send,
{
    let row = client
        .query_one(statement, params)
        .await
        .map_err(Error::db(context))?;
    decode(&row).map_err(Error::db(context))
}

/// The release's statements, prepared once per connection: each batch then costs one round
/// trip a statement. Each method is the typed wrapper of the statement of the same name.
pub struct Statements {
    set_batch_timeouts: Statement,
    page: Statement,
    claim_orders: Statement,
    classify_unclaimed: Statement,
    claim_holds: Statement,
    release_reservations: Statement,
    return_variant_units: Statement,
    return_drop_units: Statement,
    probe_held: Statement,
    deferred_age: Statement,
    backlog: Statement,
}

impl Statements {
    /// Prepares every statement of the release on `client`.
    pub async fn prepare(client: &Client) -> Result<Statements> {
        let prepare = |text: &'static str| async move {
            client
                .prepare(text)
                .await
                .map_err(Error::db("preparing the release statements"))
        };
        Ok(Statements {
            set_batch_timeouts: prepare(SET_BATCH_TIMEOUTS).await?,
            page: prepare(PAGE).await?,
            claim_orders: prepare(CLAIM_ORDERS).await?,
            classify_unclaimed: prepare(CLASSIFY_UNCLAIMED).await?,
            claim_holds: prepare(CLAIM_HOLDS).await?,
            release_reservations: prepare(RELEASE_RESERVATIONS).await?,
            return_variant_units: prepare(RETURN_VARIANT_UNITS).await?,
            return_drop_units: prepare(RETURN_DROP_UNITS).await?,
            probe_held: prepare(PROBE_HELD).await?,
            deferred_age: prepare(DEFERRED_AGE).await?,
            backlog: prepare(BACKLOG).await?,
        })
    }
}

/// An order whose reservations the release may touch: `pending` or `cancelled`, and not paid.
/// `paid`, `refunded` and any payment status this tool does not know are never touched.
macro_rules! releasable_order {
    ($o:literal) => {
        concat!(
            $o,
            ".status IN ('pending', 'cancelled') AND ",
            $o,
            ".payment_status IN ('pending', 'failed', 'processing')"
        )
    };
}

/// Extra time before a reservation of an order whose payment status is `$payment` is due: the
/// payment-processing grace (minutes in parameter `$g`) while the shopper is mid-payment,
/// nothing otherwise.
macro_rules! grace {
    ($payment:literal, $g:literal) => {
        concat!(
            "CASE WHEN ",
            $payment,
            " = 'processing' THEN make_interval(mins => ",
            $g,
            "::int4) ELSE interval '0' END"
        )
    };
}

/// When reservation `$r` is due before any grace: its `expires_at`, or for a legacy row with
/// NULL `expires_at`, `created_at` plus the reservation timeout (minutes in parameter `$t`).
macro_rules! due_at {
    ($r:literal, $t:literal) => {
        concat!(
            "COALESCE(",
            $r,
            ".expires_at, ",
            $r,
            ".created_at + make_interval(mins => ",
            $t,
            "::int4))"
        )
    };
}

/// The active reservations due by `now()` before grace, in the two index orders the release
/// pages through: by `expires_at`, then legacy rows by `created_at`. `$t` holds the timeout.
macro_rules! due_reservations {
    ($t:literal) => {
        concat!(
            "SELECT r.id, r.order_id, ",
            due_at!("r", $t),
            " AS due_at FROM orders_inventoryreservation r WHERE r.status = 'active' AND (r.expires_at <= now() OR (r.expires_at IS NULL AND r.created_at <= now() - make_interval(mins => ",
            $t,
            "::int4)))"
        )
    };
}

/// Pins the session settings every statement's meaning may depend on, once per connection:
/// dates and intervals are read and written the same way whatever the server's or the role's
/// defaults. Locks nothing.
pub const PIN_SESSION: &str =
    "SET TimeZone = 'UTC'; SET DateStyle = 'ISO, YMD'; SET IntervalStyle = 'postgres'";

/// [`PIN_SESSION`].
pub async fn pin_session(client: &Client) -> Result<()> {
    client
        .batch_execute(PIN_SESSION)
        .await
        .map_err(Error::db("pinning the session settings"))
}

/// Marks the point a batch returns to when a release step loses a lock wait or finds an order
/// no longer due: the claims before it stay, the release steps after it are undone (with the
/// row locks they took). Locks nothing.
pub const SAVEPOINT: &str = "SAVEPOINT unreserver_release";

/// Undoes the release steps since [`SAVEPOINT`], keeping the savepoint for the next round.
pub const ROLLBACK_TO_SAVEPOINT: &str = "ROLLBACK TO SAVEPOINT unreserver_release";

/// [`SAVEPOINT`] or [`ROLLBACK_TO_SAVEPOINT`].
pub async fn savepoint(client: &(impl GenericClient + Sync), rollback: bool) -> Result<()> {
    let (statement, context) = if rollback {
        (ROLLBACK_TO_SAVEPOINT, "rolling back to the savepoint")
    } else {
        (SAVEPOINT, "setting the savepoint")
    };
    client
        .batch_execute(statement)
        .await
        .map_err(Error::db(context))
}

/// Sets the batch's lock and statement timeouts for this transaction only.
/// $1 lock_timeout, $2 statement_timeout (both like '100ms'). Locks nothing.
pub const SET_BATCH_TIMEOUTS: &str =
    "SELECT set_config('lock_timeout', $1, true), set_config('statement_timeout', $2, true)";

/// Parameters of [`SET_BATCH_TIMEOUTS`], in PostgreSQL's duration syntax (`100ms`).
#[derive(Debug, Clone)]
pub struct BatchTimeouts {
    pub lock_timeout: String,
    pub statement_timeout: String,
}

impl Statements {
    /// [`SET_BATCH_TIMEOUTS`].
    pub async fn set_batch_timeouts(
        &self,
        client: &(impl GenericClient + Sync),
        p: &BatchTimeouts,
    ) -> Result<()> {
        fetch(
            client,
            &self.set_batch_timeouts,
            &[&p.lock_timeout, &p.statement_timeout],
            "setting the batch timeouts",
            |_| Ok(()),
        )
        .await
        .map(drop)
    }
}

/// The next page of candidates, after the run's cursors, in due order. Locks nothing and reads
/// only the reservations: it proposes; the claims below check every rule under lock.
///
/// Keyset pagination over the two partial indexes of `infra/indexes.sql`
/// (`(expires_at, id) WHERE status = 'active'`, and `(created_at, id) WHERE status = 'active'
/// AND expires_at IS NULL`): each due row is visited once per run, so rows a run passes over (a
/// paid order's, an order in payment grace, an order a shopper holds) never make every later
/// batch rescan them. Legacy rows come after the rest.
///
/// The cursor travels as a binary `timestamptz` ([`PgTimestamp`]), never as text, so it does
/// not depend on the session's `DateStyle` or `TimeZone`.
///
/// $1/$2 cursor (expires_at, id) of the expiring rows, $3/$4 cursor (created_at, id) of the
/// legacy rows, $5 page size, $6 reservation timeout minutes.
/// Returns per row: id, order_id, cursor key, legacy.
pub const PAGE: &str = concat!(
    "SELECT id::int8 AS id, order_id::int8 AS order_id, due_key, legacy FROM (",
    "(SELECT r.id, r.order_id, r.expires_at AS due_key, false AS legacy ",
    "FROM orders_inventoryreservation r ",
    "WHERE r.status = 'active' AND r.expires_at <= now() ",
    "AND (r.expires_at, r.id) > ($1::timestamptz, $2::int8) ",
    "ORDER BY r.expires_at, r.id LIMIT $5::int8) ",
    "UNION ALL ",
    "(SELECT r.id, r.order_id, r.created_at, true ",
    "FROM orders_inventoryreservation r ",
    "WHERE r.status = 'active' AND r.expires_at IS NULL ",
    "AND r.created_at <= now() - make_interval(mins => $6::int4) ",
    "AND (r.created_at, r.id) > ($3::timestamptz, $4::int8) ",
    "ORDER BY r.created_at, r.id LIMIT $5::int8)) p ",
    "ORDER BY legacy, due_key, id LIMIT $5::int8"
);

/// A `timestamptz` exactly as PostgreSQL sends it in binary: microseconds since 2000-01-01 UTC,
/// `-infinity` and `infinity` as `i64::MIN` and `i64::MAX`. The paging cursor only compares and
/// sends it back, so it needs no calendar arithmetic and no zone.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct PgTimestamp(pub i64);

impl PgTimestamp {
    /// `-infinity`: before every row.
    pub const MIN: PgTimestamp = PgTimestamp(i64::MIN);
}

impl<'a> FromSql<'a> for PgTimestamp {
    fn from_sql(
        _: &Type,
        raw: &'a [u8],
    ) -> std::result::Result<Self, Box<dyn std::error::Error + Sync + Send>> {
        let bytes: [u8; 8] = raw.try_into()?;
        Ok(PgTimestamp(i64::from_be_bytes(bytes)))
    }

    accepts!(TIMESTAMPTZ);
}

impl ToSql for PgTimestamp {
    fn to_sql(
        &self,
        _: &Type,
        out: &mut BytesMut,
    ) -> std::result::Result<IsNull, Box<dyn std::error::Error + Sync + Send>> {
        out.extend_from_slice(&self.0.to_be_bytes());
        Ok(IsNull::No)
    }

    accepts!(TIMESTAMPTZ);
    to_sql_checked!();
}

/// Parameters of [`PAGE`].
#[derive(Debug, Clone, Copy)]
pub struct PageParams {
    /// The cursor of the expiring rows: (`expires_at`, id) of the last one paged.
    pub expiring_after: (PgTimestamp, i64),
    /// The cursor of the legacy rows: (`created_at`, id).
    pub legacy_after: (PgTimestamp, i64),
    pub limit: i64,
    pub rules: Rules,
}

/// A row of [`PAGE`]: a due reservation proposed to the batch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PageRow {
    pub id: i64,
    /// None for a cart hold.
    pub order_id: Option<i64>,
    /// The row's cursor key: `expires_at`, or `created_at` for a legacy row.
    pub due_key: PgTimestamp,
    pub legacy: bool,
}

impl Statements {
    /// [`PAGE`].
    pub async fn page(
        &self,
        client: &(impl GenericClient + Sync),
        p: &PageParams,
    ) -> Result<Vec<PageRow>> {
        fetch(
            client,
            &self.page,
            &[
                &p.expiring_after.0,
                &p.expiring_after.1,
                &p.legacy_after.0,
                &p.legacy_after.1,
                &p.limit,
                &p.rules.timeout_minutes,
            ],
            "paging due reservations",
            |row| {
                Ok(PageRow {
                    id: row.try_get("id")?,
                    order_id: row.try_get("order_id")?,
                    due_key: row.try_get("due_key")?,
                    legacy: row.try_get("legacy")?,
                })
            },
        )
        .await
    }
}

/// The release rule for order `o`: releasable, and holding an active reservation that is due
/// (grace included). $t holds the reservation timeout, $g the grace, both in minutes.
macro_rules! order_is_due {
    ($t:literal, $g:literal) => {
        concat!(
            releasable_order!("o"),
            " AND EXISTS (SELECT 1 FROM orders_inventoryreservation r ",
            "WHERE r.order_id = o.id AND r.status = 'active' AND ",
            due_at!("r", $t),
            " + ",
            grace!("o.payment_status", $g),
            " <= now())"
        )
    };
}

/// Claims the candidate orders that are still releasable and still have a due active
/// reservation, checked on the locked row. Locks the order rows `FOR UPDATE SKIP LOCKED`: an
/// order a shopper's transaction holds in any way (payment, a reservation being added) is
/// skipped, never waited on, and stays for the next run. `FOR UPDATE` rather than `FOR NO KEY
/// UPDATE` so that an order getting a new reservation right now is skipped too.
///
/// $1 candidate order ids, $2 reservation timeout minutes, $3 grace minutes.
/// Returns id, and whether the order's payment is `processing` (its grace applies).
pub const CLAIM_ORDERS: &str = concat!(
    "SELECT o.id::int8 AS id, COALESCE(o.payment_status = 'processing', false) AS processing ",
    "FROM orders_order o ",
    "WHERE o.id = ANY($1::int8[]) AND ",
    order_is_due!("$2", "$3"),
    " ORDER BY o.id FOR UPDATE OF o SKIP LOCKED"
);

/// Parameters of [`CLAIM_ORDERS`] and [`CLASSIFY_UNCLAIMED`].
#[derive(Debug, Clone, Copy)]
pub struct OrdersParams<'a> {
    pub order_ids: &'a [i64],
    pub rules: Rules,
}

/// A row of [`CLAIM_ORDERS`]: an order this batch now holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ClaimedOrder {
    pub id: i64,
    /// Its payment is `processing`: the grace applies to its reservations.
    pub processing: bool,
}

impl Statements {
    /// [`CLAIM_ORDERS`].
    pub async fn claim_orders(
        &self,
        client: &(impl GenericClient + Sync),
        p: &OrdersParams<'_>,
    ) -> Result<Vec<ClaimedOrder>> {
        fetch(
            client,
            &self.claim_orders,
            &[
                &p.order_ids,
                &p.rules.timeout_minutes,
                &p.rules.grace_minutes,
            ],
            "claiming orders",
            |row| {
                Ok(ClaimedOrder {
                    id: row.try_get("id")?,
                    processing: row.try_get("processing")?,
                })
            },
        )
        .await
    }
}

/// Why candidate orders were not claimed: paid (an anomaly to report), not due or not
/// releasable (a payment in grace, a confirmed order), or — when the rule still holds —
/// locked by a shopper. Runs only when some candidates were not claimed. Locks nothing.
///
/// $1 unclaimed order ids, $2 reservation timeout minutes, $3 grace minutes.
pub const CLASSIFY_UNCLAIMED: &str = concat!(
    "SELECT o.id::int8 AS id, COALESCE(o.payment_status = 'paid', false) AS paid, COALESCE(",
    order_is_due!("$2", "$3"),
    ", false) AS due FROM orders_order o WHERE o.id = ANY($1::int8[])"
);

/// A row of [`CLASSIFY_UNCLAIMED`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct UnclaimedOrder {
    pub id: i64,
    /// Paid: an anomaly to report, never touched.
    pub paid: bool,
    /// Still due under the rules: so a shopper held it.
    pub due: bool,
}

impl Statements {
    /// [`CLASSIFY_UNCLAIMED`].
    pub async fn classify_unclaimed(
        &self,
        client: &(impl GenericClient + Sync),
        p: &OrdersParams<'_>,
    ) -> Result<Vec<UnclaimedOrder>> {
        fetch(
            client,
            &self.classify_unclaimed,
            &[
                &p.order_ids,
                &p.rules.timeout_minutes,
                &p.rules.grace_minutes,
            ],
            "classifying unclaimed orders",
            |row| {
                Ok(UnclaimedOrder {
                    id: row.try_get("id")?,
                    paid: row.try_get("paid")?,
                    due: row.try_get("due")?,
                })
            },
        )
        .await
    }
}

/// Claims candidate cart holds (reservations without an order) that are still active and due.
/// Locks those reservation rows `FOR UPDATE SKIP LOCKED`: a hold a shopper is converting into
/// an order right now is skipped.
///
/// $1 candidate reservation ids, $2 reservation timeout minutes.
pub const CLAIM_HOLDS: &str = concat!(
    "SELECT r.id::int8 AS id FROM orders_inventoryreservation r ",
    "WHERE r.id = ANY($1::int8[]) AND r.order_id IS NULL AND r.status = 'active' AND ",
    due_at!("r", "$2"),
    " <= now() ORDER BY r.id FOR UPDATE SKIP LOCKED"
);

impl Statements {
    /// [`CLAIM_HOLDS`]: the ids of the holds claimed.
    pub async fn claim_holds(
        &self,
        client: &(impl GenericClient + Sync),
        hold_ids: &[i64],
        rules: Rules,
    ) -> Result<Vec<i64>> {
        fetch(
            client,
            &self.claim_holds,
            &[&hold_ids, &rules.timeout_minutes],
            "claiming cart holds",
            |row| row.try_get("id"),
        )
        .await
    }
}

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
/// $1 claimed order ids, $2 claimed hold ids, $3 reservation timeout minutes, $4 grace minutes,
/// $5 the claimed orders whose payment is `processing`.
pub const RELEASE_RESERVATIONS: &str = concat!(
    "WITH locked AS MATERIALIZED (SELECT r.id FROM orders_inventoryreservation r ",
    "WHERE r.status = 'active' AND (r.order_id = ANY($1::int8[]) OR r.id = ANY($2::int8[])) ",
    "FOR NO KEY UPDATE NOWAIT), ",
    "released AS (UPDATE orders_inventoryreservation r SET status = 'expired', released_at = now() ",
    "FROM locked l WHERE r.id = l.id AND r.status = 'active' ",
    "RETURNING r.id, r.order_id, r.product_variant_id, r.drop_product_id, r.quantity, ",
    "r.expires_at, r.created_at), ",
    "cancelled AS (UPDATE orders_order o ",
    "SET status = 'cancelled', cancelled_at = now(), updated_at = now() ",
    "WHERE o.id IN (SELECT order_id FROM released) AND o.status = 'pending' ",
    "RETURNING o.id, o.order_number) ",
    "SELECT r.id::int8 AS id, r.order_id::int8 AS order_id, ",
    "r.product_variant_id::int8 AS variant_id, r.drop_product_id::int8 AS drop_id, ",
    "r.quantity::int4 AS quantity, COALESCE(",
    due_at!("r", "$3"),
    " + CASE WHEN r.order_id = ANY($5::int8[]) THEN make_interval(mins => $4::int4) ",
    "ELSE interval '0' END <= now(), false) AS was_due, ",
    "EXTRACT(EPOCH FROM now() - ",
    due_at!("r", "$3"),
    ")::float8 AS delay_seconds, now() AS released_at, ",
    "c.id IS NOT NULL AS order_cancelled, ",
    "COALESCE(c.order_number::text, '') AS cancelled_order_number ",
    "FROM released r LEFT JOIN cancelled c ON c.id = r.order_id"
);

/// Parameters of [`RELEASE_RESERVATIONS`].
#[derive(Debug, Clone, Copy)]
pub struct ReleaseParams<'a> {
    pub order_ids: &'a [i64],
    pub hold_ids: &'a [i64],
    /// The claimed orders whose payment is `processing`.
    pub processing_order_ids: &'a [i64],
    pub rules: Rules,
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
    /// to its release: the release delay the report and `ReleaseDelayP95` measure.
    pub delay_seconds: f64,
    /// The batch transaction's `now()`: the row's `released_at`, and the `cancelled_at` of the
    /// order the batch cancels with it.
    pub released_at: std::time::SystemTime,
}

/// An order [`RELEASE_RESERVATIONS`] cancelled (its `cancelled_at` is the batch's `now()`, the
/// `released_at` of its reservations).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CancelledOrder {
    pub id: i64,
    pub order_number: String,
}

/// What [`RELEASE_RESERVATIONS`] did: the reservations released, and the orders cancelled
/// (each once, ascending).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Released {
    pub reservations: Vec<ReleasedReservation>,
    pub cancelled: Vec<CancelledOrder>,
}

impl Released {
    /// Splits the statement's rows: every row is a reservation; a row whose order this
    /// statement cancelled also names that order (each of its reservations does). Whether it
    /// was cancelled is its own column: a shop's NULL order number must not hide a cancellation.
    fn from_rows(rows: Vec<(ReleasedReservation, Option<String>)>) -> Self {
        let mut cancelled = std::collections::BTreeMap::new();
        let mut reservations = Vec::with_capacity(rows.len());
        for (reservation, number) in rows {
            if let (Some(order), Some(number)) = (reservation.order_id, number) {
                cancelled.entry(order).or_insert(number);
            }
            reservations.push(reservation);
        }
        Released {
            reservations,
            cancelled: cancelled
                .into_iter()
                .map(|(id, order_number)| CancelledOrder { id, order_number })
                .collect(),
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
                let number: String = row.try_get("cancelled_order_number")?;
                Ok((reservation, cancelled.then_some(number)))
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
/// One statement per kind, variants first and every one of them updated before any drop row is
/// locked: the order the shop's checkout locks them in. A batch that took a drop while a
/// checkout held its variant would have that checkout wait on the drop until the batch gave up
/// polling for the variant (measured: the shoppers' max checkout rose by 100 ms when both kinds
/// were locked in one statement).
macro_rules! return_units {
    ($table:literal) => {
        concat!(
            "WITH released(id, units) AS (SELECT * FROM unnest($1::int8[], $2::int8[])), ",
            "locked AS (SELECT t.id, t.reserved_quantity FROM ",
            $table,
            " t WHERE t.id = ANY($1::int8[]) ORDER BY t.id FOR NO KEY UPDATE SKIP LOCKED) ",
            "UPDATE ",
            $table,
            " t SET reserved_quantity = GREATEST(l.reserved_quantity - rel.units, 0), ",
            "updated_at = now() FROM locked l JOIN released rel ON rel.id = l.id ",
            "WHERE t.id = l.id RETURNING t.id::int8 AS id, COALESCE(l.reserved_quantity < rel.units, false) AS clamped"
        )
    };
}

/// Gives the released units back to the variants. These hot rows are locked last but for the
/// drops, so they are held only until the commit that follows.
///
/// $1 variant ids (ascending, distinct), $2 units to give back to each.
pub const RETURN_VARIANT_UNITS: &str = return_units!("products_productvariant");

/// Gives the released units back to limited-drop rows: locked after the variants, the order the
/// shop's checkout uses.
///
/// $1 drop product ids (ascending, distinct), $2 units to give back to each.
pub const RETURN_DROP_UNITS: &str = return_units!("drops_dropproduct");

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
}

fn returned_units(row: &Row) -> std::result::Result<ReturnedUnits, tokio_postgres::Error> {
    Ok(ReturnedUnits {
        id: row.try_get("id")?,
        clamped: row.try_get("clamped")?,
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

/// Seconds since the oldest of the given orders and holds fell due (grace included), among
/// their active reservations; NULL when none is still due. A run's `OldestDeferredAge`, from
/// the database clock: no state is kept between runs. Reads only; locks nothing.
///
/// $1 order ids, $2 hold ids, $3 reservation timeout minutes, $4 grace minutes.
pub const DEFERRED_AGE: &str = concat!(
    "SELECT EXTRACT(EPOCH FROM now() - min(d.due))::float8 AS age_seconds FROM (SELECT ",
    due_at!("r", "$3"),
    " + ",
    grace!("o.payment_status", "$4"),
    " AS due FROM orders_inventoryreservation r LEFT JOIN orders_order o ON o.id = r.order_id ",
    "WHERE r.status = 'active' AND (r.order_id = ANY($1::int8[]) OR r.id = ANY($2::int8[]))) d ",
    "WHERE d.due <= now()"
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

/// Due reservations a run has left (a run's `backlog_remaining`, `status`'s `due_reservations`)
/// and the age in seconds of the oldest, grace included, paid and untouchable orders excluded.
/// Reads only; locks nothing. Uses the partial indexes when present.
///
/// $1 reservation timeout minutes, $2 grace minutes.
pub const BACKLOG: &str = concat!(
    "SELECT count(*)::int8 AS due, EXTRACT(EPOCH FROM now() - min(d.due_at + ",
    grace!("o.payment_status", "$2"),
    "))::float8 AS oldest_age_seconds FROM (",
    due_reservations!("$1"),
    ") d LEFT JOIN orders_order o ON o.id = d.order_id ",
    "WHERE d.order_id IS NULL OR (",
    releasable_order!("o"),
    " AND d.due_at + ",
    grace!("o.payment_status", "$2"),
    " <= now())"
);

/// The row of [`BACKLOG`].
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Backlog {
    pub due: i64,
    /// Seconds since the oldest became due; None when nothing is due.
    pub oldest_age_seconds: Option<f64>,
}

impl Statements {
    /// [`BACKLOG`].
    pub async fn backlog(
        &self,
        client: &(impl GenericClient + Sync),
        rules: Rules,
    ) -> Result<Backlog> {
        fetch_one(
            client,
            &self.backlog,
            &[&rules.timeout_minutes, &rules.grace_minutes],
            "counting the backlog",
            |row| {
                Ok(Backlog {
                    due: row.try_get("due")?,
                    oldest_age_seconds: row.try_get("oldest_age_seconds")?,
                })
            },
        )
        .await
    }
}

/// Paid orders that still hold active reservations: an anomaly (the shop should have converted
/// them). The release never touches them. Reads every active reservation; locks nothing.
pub const PAID_ORDERS_WITH_ACTIVE_RESERVATIONS: &str =
    "SELECT count(DISTINCT r.order_id)::int8 AS orders \
     FROM orders_inventoryreservation r JOIN orders_order o ON o.id = r.order_id \
     WHERE r.status = 'active' AND o.payment_status = 'paid'";

/// [`PAID_ORDERS_WITH_ACTIVE_RESERVATIONS`].
pub async fn paid_orders_with_active_reservations(
    client: &(impl GenericClient + Sync),
) -> Result<i64> {
    let context = "counting paid orders with active reservations";
    let decode = |row: &Row| row.try_get("orders");
    fetch_one(
        client,
        PAID_ORDERS_WITH_ACTIVE_RESERVATIONS,
        &[],
        context,
        decode,
    )
    .await
}

/// Counter rows of `$table` whose `reserved_quantity` differs from the sum of their active
/// reservations (`$fk` is the reservation column that references them), at most $1 rows, and
/// how many there are in all. A full read of the table and of the active reservations; locks
/// nothing. For `status` only, never on the release path.
macro_rules! counter_drift {
    ($table:literal, $fk:literal) => {
        concat!(
            "SELECT t.id::int8 AS id, t.reserved_quantity::int8 AS reserved_quantity, ",
            "COALESCE(a.units, 0)::int8 AS active_reserved, count(*) OVER () AS total ",
            "FROM ",
            $table,
            " t LEFT JOIN (SELECT ",
            $fk,
            " AS id, sum(quantity) AS units FROM orders_inventoryreservation ",
            "WHERE status = 'active' AND ",
            $fk,
            " IS NOT NULL GROUP BY ",
            $fk,
            ") a ON a.id = t.id WHERE t.reserved_quantity <> COALESCE(a.units, 0) ",
            "ORDER BY t.id LIMIT $1::int8"
        )
    };
}

/// Variants whose counter disagrees with their active reservations. $1 row limit.
pub const VARIANT_DRIFT: &str = counter_drift!("products_productvariant", "product_variant_id");

/// Drop rows whose counter disagrees with their active reservations. $1 row limit.
pub const DROP_DRIFT: &str = counter_drift!("drops_dropproduct", "drop_product_id");

/// A row of [`VARIANT_DRIFT`] / [`DROP_DRIFT`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DriftRow {
    pub id: i64,
    pub reserved_quantity: i64,
    pub active_reserved: i64,
    /// How many rows drift in all (the statement lists at most its limit).
    pub total: i64,
}

/// [`VARIANT_DRIFT`] (`drops` false) or [`DROP_DRIFT`] (`drops` true), at most `limit` rows.
pub async fn counter_drift(
    client: &(impl GenericClient + Sync),
    drops: bool,
    limit: i64,
) -> Result<Vec<DriftRow>> {
    let (statement, context) = if drops {
        (DROP_DRIFT, "comparing drop counters")
    } else {
        (VARIANT_DRIFT, "comparing variant counters")
    };
    fetch(client, statement, &[&limit], context, |row| {
        Ok(DriftRow {
            id: row.try_get("id")?,
            reserved_quantity: row.try_get("reserved_quantity")?,
            active_reserved: row.try_get("active_reserved")?,
            total: row.try_get("total")?,
        })
    })
    .await
}

/// The columns that exist of the tables named in $1 (resolved through `search_path`), to check
/// the schema before anything changes. Reads the catalog only.
pub const TABLE_COLUMNS: &str = "SELECT t.name AS table_name, a.attname::text AS column_name, \
     format_type(a.atttypid, NULL) AS data_type \
     FROM unnest($1::text[]) AS t(name) \
     JOIN pg_attribute a ON a.attrelid = to_regclass(t.name) \
     WHERE a.attnum > 0 AND NOT a.attisdropped";

/// A row of [`TABLE_COLUMNS`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TableColumn {
    pub table: String,
    pub column: String,
    /// As `format_type` names it: `timestamp with time zone`, `bigint`, ...
    pub data_type: String,
}

/// [`TABLE_COLUMNS`].
pub async fn table_columns(
    client: &(impl GenericClient + Sync),
    tables: &[&str],
) -> Result<Vec<TableColumn>> {
    fetch(client, TABLE_COLUMNS, &[&tables], "schema check", |row| {
        Ok(TableColumn {
            table: row.try_get("table_name")?,
            column: row.try_get("column_name")?,
            data_type: row.try_get("data_type")?,
        })
    })
    .await
}

/// The valid indexes of the reservation table, by definition: access method, key columns in
/// order (an expression key as an empty name, so the positions stay; `INCLUDE` columns left
/// out: they give no order), each key column's sort options, and the predicate as PostgreSQL
/// prints it (NULL for a full index). The preflight decides from these, not from names, whether
/// the release can page through an index (a shop may have an equivalent one under another
/// name). Reads the catalog.
pub const RESERVATION_INDEXES: &str = "SELECT c.relname::text AS name, am.amname::text AS method, \
     ARRAY(SELECT COALESCE(a.attname::text, '') \
           FROM unnest(i.indkey::int2[]) WITH ORDINALITY AS k(attnum, n) \
           LEFT JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = k.attnum \
           WHERE k.n <= i.indnkeyatts ORDER BY k.n) AS columns, \
     ARRAY(SELECT o.option FROM unnest(i.indoption::int2[]) WITH ORDINALITY AS o(option, n) \
           WHERE o.n <= i.indnkeyatts ORDER BY o.n) AS options, \
     pg_get_expr(i.indpred, i.indrelid) AS predicate \
     FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid JOIN pg_am am ON am.oid = c.relam \
     WHERE i.indrelid = to_regclass('orders_inventoryreservation') AND i.indisvalid";

/// A row of [`RESERVATION_INDEXES`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IndexDefinition {
    pub name: String,
    /// The access method (`btree`, `brin`, ...).
    pub method: String,
    /// Key columns in order; an expression key is an empty name.
    pub columns: Vec<String>,
    /// Each key column's `pg_index.indoption`: bit 1 `DESC`, bit 2 `NULLS FIRST`.
    pub options: Vec<i16>,
    /// The partial index's predicate, e.g. `(status)::text = 'active'::text`.
    pub predicate: Option<String>,
}

/// [`RESERVATION_INDEXES`].
pub async fn reservation_indexes(
    client: &(impl GenericClient + Sync),
) -> Result<Vec<IndexDefinition>> {
    fetch(client, RESERVATION_INDEXES, &[], "index check", |row| {
        Ok(IndexDefinition {
            name: row.try_get("name")?,
            method: row.try_get("method")?,
            columns: row.try_get("columns")?,
            options: row.try_get("options")?,
            predicate: row.try_get("predicate")?,
        })
    })
    .await
}

/// The server's `deadlock_timeout` in milliseconds, to check that the batch's `lock_timeout`
/// stays well below it. Reads a setting.
pub const DEADLOCK_TIMEOUT_MS: &str =
    "SELECT setting::int8 AS ms FROM pg_settings WHERE name = 'deadlock_timeout'";

/// [`DEADLOCK_TIMEOUT_MS`].
pub async fn deadlock_timeout_ms(client: &(impl GenericClient + Sync)) -> Result<i64> {
    let decode = |row: &Row| row.try_get("ms");
    fetch_one(
        client,
        DEADLOCK_TIMEOUT_MS,
        &[],
        "reading deadlock_timeout",
        decode,
    )
    .await
}

pub mod delay_report;
pub mod outbox;
pub mod revive;

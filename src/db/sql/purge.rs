//! The statements of `purge`: what the release left behind, deleted in small committed chunks
//! keyed on the primary key, as pt-archiver does. A chunk is a window of consecutive ids (at
//! most the controller's size); in it, only rows nobody holds are locked (`FOR UPDATE SKIP
//! LOCKED`: a row a shopper, a revive or a migration holds is skipped and counted, never
//! waited on), re-checked under the lock, and deleted in the same transaction. Every time
//! comparison is against the database clock (`now()`, the chunk's start).
//!
//! What goes:
//! - an `expired` reservation released more than DAYS ago (`purgeable_reservation!`); with
//!   `--orders`, not the lines of an order the release cancelled, which go with their order;
//! - with `--orders`, an order the release cancelled (the one rule, `cancelled_by_release!`),
//!   with no payment (`pending` or `failed`), every line of it `expired` more than DAYS ago
//!   (`purgeable_order!`), with its lines, only when no other table references it (the foreign
//!   keys read from the catalogue, [`FOREIGN_KEYS_TO_ORDERS`], checked by [`referenced_orders`]
//!   after the locks are granted, so that a deferred key never fails a chunk at commit).
//!
//! Row locks need `UPDATE` on one column of the table (PostgreSQL's rule for `FOR UPDATE`):
//! `infra/purge-role.sql` grants the purge role the least it needs for that.

use tokio_postgres::GenericClient;

use super::{fetch, fetch_one};
use crate::error::Result;

/// Reservation `$r` may be purged: `expired`, released more than `$days` (a parameter, int4)
/// days ago on the database clock; and when `$keep` (a parameter, bool) is true, not a line of
/// an order the release cancelled (those go with their order, and are the evidence the rule
/// reads). A NULL `released_at` never matches.
macro_rules! purgeable_reservation {
    ($r:literal, $days:literal, $keep:literal) => {
        concat!(
            $r,
            ".status = 'expired' AND ",
            $r,
            ".released_at < now() - make_interval(days => ",
            $days,
            "::int4) AND NOT (",
            $keep,
            "::bool AND EXISTS (SELECT 1 FROM orders_order o WHERE o.id = ",
            $r,
            ".order_id AND ",
            cancelled_by_release!("o", "r"),
            "))"
        )
    };
}

/// Order `$o` may be purged with its lines: the release cancelled it (`cancelled_by_release!`
/// on one of its lines), it has no payment (`pending` or `failed`: never `paid`, `refunded`,
/// `processing` or a status this tool does not know), and every line of it is `expired` and was
/// released more than `$days` (a parameter, int4) days ago. An order the shop cancelled itself
/// has a `cancelled_at` no line's `released_at` equals: never purged.
macro_rules! purgeable_order {
    ($o:literal, $days:literal) => {
        concat!(
            $o,
            ".payment_status IN ('pending', 'failed') AND EXISTS (SELECT 1 FROM ",
            "orders_inventoryreservation r WHERE r.order_id = ",
            $o,
            ".id AND ",
            cancelled_by_release!("o", "r"),
            ") AND NOT EXISTS (SELECT 1 FROM orders_inventoryreservation r WHERE r.order_id = ",
            $o,
            ".id AND NOT COALESCE(r.status = 'expired' AND r.released_at < now() - ",
            "make_interval(days => ",
            $days,
            "::int4), false))"
        )
    };
}

/// The id range holding the reservations that may be purged: the least and greatest id of
/// those released more than $1 (int4) days ago (their `released_at` through
/// `unreserver_released_at_brin` when present), NULL when none. The chunks walk this range
/// only: a purge cut by its time budget starts next time where the rows left begin. $2 (bool):
/// keep the lines of orders the release cancelled (`--orders`). Locks nothing.
pub const RESERVATION_RANGE: &str = concat!(
    "SELECT min(r.id)::int8 AS first_id, max(r.id)::int8 AS last_id ",
    "FROM orders_inventoryreservation r WHERE ",
    purgeable_reservation!("r", "$1", "$2")
);

/// The id range holding the orders that may be purged: the least and greatest id of the
/// orders cancelled more than $1 (int4) days ago (through `unreserver_cancelled_at_idx` when
/// present), NULL when none; the rule itself is applied per chunk. Locks nothing.
pub const ORDER_RANGE: &str = "SELECT min(o.id)::int8 AS first_id, max(o.id)::int8 AS last_id \
     FROM orders_order o WHERE o.status = 'cancelled' \
     AND o.cancelled_at < now() - make_interval(days => $1::int4)";

/// A chunk's window of reservations: the next $2 (int8) ids after $1 (int8), up to $3 (int8,
/// the range's end), read through the primary key; returns the window's last id (NULL: none
/// left) and how many ids it holds. Read apart from the chunk, in the chunk's transaction, so
/// that the chunk's statement gets both ends of its window as parameters: given the end as a
/// value read inside the same statement, the planner could not see how narrow the window was
/// and scanned every old row of the table for each chunk (the rule's subquery run on each),
/// chunks of 100 rows taking seconds on a table that had grown. Locks nothing.
pub const RESERVATION_WINDOW: &str = "SELECT max(s.id)::int8 AS last_id, \
     count(*)::int8 AS scanned FROM (SELECT r.id FROM orders_inventoryreservation r \
     WHERE r.id > $1::int8 AND r.id <= $3::int8 ORDER BY r.id LIMIT $2::int8) s";

/// One chunk of reservations: in the window of ids after $1 (int8) up to $2 (int8, the
/// window's last id, [`RESERVATION_WINDOW`]), read through the primary key, the rows that may
/// be purged (older than $3 days, $4 keeping the lines of orders the release cancelled) are
/// counted (no lock), and when $5 (bool, apply) is true locked `FOR UPDATE SKIP LOCKED` — a
/// row another transaction holds is skipped, the rule re-checked on each row as the lock is
/// granted — and deleted. Returns the rows eligible and the rows deleted (eligible less
/// deleted were held).
pub const PURGE_RESERVATION_CHUNK: &str = concat!(
    "WITH eligible AS MATERIALIZED (SELECT r.id FROM orders_inventoryreservation r ",
    "WHERE r.id > $1::int8 AND r.id <= $2::int8 AND ",
    purgeable_reservation!("r", "$3", "$4"),
    "), locked AS MATERIALIZED (SELECT r.id FROM orders_inventoryreservation r ",
    "WHERE $5::bool AND r.id > $1::int8 AND r.id <= $2::int8 AND ",
    purgeable_reservation!("r", "$3", "$4"),
    " FOR UPDATE OF r SKIP LOCKED), ",
    "gone AS (DELETE FROM orders_inventoryreservation r USING locked l WHERE r.id = l.id ",
    "RETURNING r.id) ",
    "SELECT (SELECT count(*) FROM eligible)::int8 AS eligible, ",
    "(SELECT count(*) FROM gone)::int8 AS deleted"
);

/// A chunk's window of orders: the next $2 (int8) order ids after $1 (int8), up to $3 (int8),
/// read through the primary key; the window's last id (NULL: none left) and size. Read apart
/// from the chunk for the reason [`RESERVATION_WINDOW`] gives. Locks nothing.
pub const ORDER_WINDOW: &str = "SELECT max(s.id)::int8 AS last_id, count(*)::int8 AS scanned \
     FROM (SELECT o.id FROM orders_order o WHERE o.id > $1::int8 AND o.id <= $3::int8 \
     ORDER BY o.id LIMIT $2::int8) s";

/// One chunk of orders: in the window of order ids after $1 (int8) up to $2 (int8, the
/// window's last id, [`ORDER_WINDOW`]), the orders that may be purged (`purgeable_order!`,
/// older than $3 days), read without a lock, and when $4 (bool, apply) is true those locked
/// `FOR UPDATE SKIP LOCKED` (an order a shopper or the shop holds is skipped; the rule
/// re-checked as each lock is granted). Order rows first, as in the shop's lock order. Returns
/// the eligible and locked ids.
pub const LOCK_ORDER_CHUNK: &str = concat!(
    "WITH eligible AS MATERIALIZED (SELECT o.id FROM orders_order o ",
    "WHERE o.id > $1::int8 AND o.id <= $2::int8 AND ",
    purgeable_order!("o", "$3"),
    "), locked AS MATERIALIZED (SELECT o.id FROM orders_order o ",
    "WHERE $4::bool AND o.id > $1::int8 AND o.id <= $2::int8 AND ",
    purgeable_order!("o", "$3"),
    " FOR UPDATE OF o SKIP LOCKED) ",
    "SELECT ARRAY(SELECT id::int8 FROM eligible ORDER BY id) AS eligible, ",
    "ARRAY(SELECT id::int8 FROM locked ORDER BY id) AS locked"
);

/// The lines of the (locked) orders in $1 (int8[]), locked `FOR UPDATE SKIP LOCKED` after
/// their orders (the shop's lock order); returns the orders whose every line was locked — an
/// order with a line another transaction holds stays for a later purge. Counts the lines each
/// order has in a statement that started after the order locks were granted: no line can be
/// added to a locked order.
pub const LOCK_ORDER_LINES: &str = concat!(
    "WITH locked AS MATERIALIZED (SELECT r.id, r.order_id FROM orders_inventoryreservation r ",
    "WHERE r.order_id = ANY($1::int8[]) FOR UPDATE OF r SKIP LOCKED) ",
    "SELECT c.id::int8 AS id FROM unnest($1::int8[]) c(id) ",
    "WHERE (SELECT count(*) FROM orders_inventoryreservation r WHERE r.order_id = c.id) ",
    "= (SELECT count(*) FROM locked l WHERE l.order_id = c.id) ORDER BY c.id"
);

/// The lines of the orders in $1 (int8[]), counted: what a dry run would delete with them.
/// Locks nothing.
pub const COUNT_ORDER_LINES: &str = "SELECT count(*)::int8 AS affected \
     FROM orders_inventoryreservation r WHERE r.order_id = ANY($1::int8[])";

/// Deletes the lines of the orders in $1 (int8[]), every one of them locked by
/// [`LOCK_ORDER_LINES`]. Returns how many.
pub const DELETE_ORDER_LINES: &str = "WITH gone AS (DELETE FROM orders_inventoryreservation r \
     WHERE r.order_id = ANY($1::int8[]) RETURNING r.id) SELECT count(*)::int8 AS affected FROM gone";

/// Deletes the orders in $1 (int8[]), each locked by [`LOCK_ORDER_CHUNK`], its lines deleted by
/// [`DELETE_ORDER_LINES`] and no row of another table referencing it ([`referenced_orders`]).
/// Returns how many.
pub const DELETE_ORDERS: &str = "WITH gone AS (DELETE FROM orders_order o \
     WHERE o.id = ANY($1::int8[]) RETURNING o.id) SELECT count(*)::int8 AS affected FROM gone";

/// The foreign keys that reference `orders_order`, other than the reservations' own
/// (`orders_inventoryreservation.order_id`, whose rows go with their order): each one's name,
/// referencing table and columns, and the referenced columns, every identifier quoted by the
/// server (`format('%I')`). A partition's copy of its parent's key is left out (the parent's
/// covers it). Reads the catalogue; locks nothing.
pub const FOREIGN_KEYS_TO_ORDERS: &str = "SELECT c.conname::text AS name, \
     format('%I.%I', n.nspname, t.relname) AS referencing_table, \
     ARRAY(SELECT format('%I', a.attname) FROM unnest(c.conkey) WITH ORDINALITY k(attnum, i) \
           JOIN pg_attribute a ON a.attrelid = c.conrelid AND a.attnum = k.attnum \
           ORDER BY k.i) AS columns, \
     ARRAY(SELECT format('%I', a.attname) FROM unnest(c.confkey) WITH ORDINALITY k(attnum, i) \
           JOIN pg_attribute a ON a.attrelid = c.confrelid AND a.attnum = k.attnum \
           ORDER BY k.i) AS referenced_columns, \
     c.condeferrable AS deferrable \
     FROM pg_constraint c JOIN pg_class t ON t.oid = c.conrelid \
     JOIN pg_namespace n ON n.oid = t.relnamespace \
     WHERE c.contype = 'f' AND c.conparentid = 0 AND c.confrelid = to_regclass('orders_order') \
     AND NOT (c.conrelid = to_regclass('orders_inventoryreservation') \
              AND c.conkey = ARRAY(SELECT a.attnum FROM pg_attribute a \
                                   WHERE a.attrelid = c.conrelid AND a.attname = 'order_id')) \
     ORDER BY 2, 1";

/// A foreign key referencing `orders_order`, as [`FOREIGN_KEYS_TO_ORDERS`] reads it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ForeignKey {
    pub name: String,
    /// `schema.table`, quoted as SQL needs it.
    pub referencing_table: String,
    /// Quoted column names, in the key's order.
    pub columns: Vec<String>,
    pub referenced_columns: Vec<String>,
    pub deferrable: bool,
}

impl ForeignKey {
    /// How an answer names it: `table(column, ...)`.
    pub fn label(&self) -> String {
        format!("{}({})", self.referencing_table, self.columns.join(", "))
    }
}

/// [`FOREIGN_KEYS_TO_ORDERS`].
pub async fn foreign_keys_to_orders(
    client: &(impl GenericClient + Sync),
) -> Result<Vec<ForeignKey>> {
    fetch(
        client,
        FOREIGN_KEYS_TO_ORDERS,
        &[],
        "reading the foreign keys that reference orders",
        |row| {
            Ok(ForeignKey {
                name: row.try_get("name")?,
                referencing_table: row.try_get("referencing_table")?,
                columns: row.try_get("columns")?,
                referenced_columns: row.try_get("referenced_columns")?,
                deferrable: row.try_get("deferrable")?,
            })
        },
    )
    .await
}

/// The statement that tells, for each order in $1 (int8[]), which of `keys` reference it: one
/// `EXISTS` a key (`NOT EXISTS` is what lets an order go), each the key's index in `keys`. Run
/// after the orders' locks were granted, in a statement of its own (its own snapshot): a row
/// committed before sees its order kept; one written after waits for the chunk to commit and
/// then fails its own key check, as it would had the order been deleted by the shop. Every
/// identifier comes quoted from [`FOREIGN_KEYS_TO_ORDERS`]. Reads the referencing tables
/// (through their key columns' indexes, when the shop has them); locks nothing.
pub fn referenced_orders(keys: &[ForeignKey]) -> String {
    let checks: Vec<String> = keys
        .iter()
        .enumerate()
        .map(|(index, key)| {
            let matches: Vec<String> = key
                .columns
                .iter()
                .zip(&key.referenced_columns)
                .map(|(column, referenced)| format!("f.{column} = o.{referenced}"))
                .collect();
            format!(
                "CASE WHEN EXISTS (SELECT 1 FROM {} f WHERE {}) THEN {index} END",
                key.referencing_table,
                matches.join(" AND ")
            )
        })
        .collect();
    format!(
        "SELECT c.id::int8 AS id, array_remove(ARRAY[{}]::int4[], NULL) AS keys \
         FROM unnest($1::int8[]) c(id) JOIN orders_order o ON o.id = c.id ORDER BY c.id",
        checks.join(", ")
    )
}

/// An order and the indexes (in the keys given) of the foreign keys that reference it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Referenced {
    pub id: i64,
    pub keys: Vec<i32>,
}

/// [`referenced_orders`] run on `orders`.
pub async fn references(
    client: &(impl GenericClient + Sync),
    statement: &str,
    orders: &[i64],
) -> Result<Vec<Referenced>> {
    fetch(
        client,
        statement,
        &[&orders],
        "checking what references the orders",
        |row| {
            Ok(Referenced {
                id: row.try_get("id")?,
                keys: row.try_get("keys")?,
            })
        },
    )
    .await
}

/// The streaming replicas the server shows (`pg_stat_replication`): how many, how many of
/// them hide their state (a role without `pg_monitor` sees rows but NULL columns), and the
/// largest replay lag in milliseconds of the visible ones (0 for one caught up). Aurora shows
/// none: its replicas do not stream. Reads a statistics view; locks nothing.
pub const REPLICA_LAG: &str = "SELECT count(*)::int8 AS replicas, \
     count(*) FILTER (WHERE state IS NULL)::int8 AS hidden, \
     COALESCE(max(EXTRACT(EPOCH FROM replay_lag) * 1000), 0)::float8 AS max_replay_lag_ms \
     FROM pg_stat_replication";

/// The row of [`REPLICA_LAG`].
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ReplicaLag {
    pub replicas: i64,
    pub hidden: i64,
    pub max_replay_lag_ms: f64,
}

/// [`REPLICA_LAG`].
pub async fn replica_lag(client: &(impl GenericClient + Sync)) -> Result<ReplicaLag> {
    fetch_one(
        client,
        REPLICA_LAG,
        &[],
        "reading the replicas' lag",
        |row| {
            Ok(ReplicaLag {
                replicas: row.try_get("replicas")?,
                hidden: row.try_get("hidden")?,
                max_replay_lag_ms: row.try_get("max_replay_lag_ms")?,
            })
        },
    )
    .await
}

/// Other sessions at work on this database, read by a purge chunk just before it commits:
/// client sessions running a statement (a session waiting on one of the chunk's locks among
/// them) or in the middle of a transaction (`active`, `idle in transaction`: a shopper checking
/// out, the release). Any makes the purge give way: its next chunk at the controller's floor,
/// after a rest as long as this one took. Needs `pg_monitor` (the purge role has it) to see
/// other roles' sessions; without it they show no state and count as idle. Reads a statistics
/// view; locks nothing.
pub const OTHERS_AT_WORK: &str = "SELECT count(*)::int8 AS at_work FROM pg_stat_activity \
     WHERE backend_type = 'client backend' AND datname = current_database() \
     AND pid <> pg_backend_pid() \
     AND state IN ('active', 'idle in transaction', 'idle in transaction (aborted)')";

/// [`OTHERS_AT_WORK`]: how many.
pub async fn others_at_work(client: &(impl GenericClient + Sync)) -> Result<i64> {
    fetch_one(
        client,
        OTHERS_AT_WORK,
        &[],
        "looking for other sessions at work",
        |row| row.try_get("at_work"),
    )
    .await
}

/// Bytes a row of each table takes on disk, on average, indexes and TOAST included: the
/// table's total size over the planner's row estimate (`reltuples`; NULL before the table was
/// ever analyzed or vacuumed). What a purge's estimate of the space it frees multiplies; the
/// space is reused by the table after `VACUUM`, not given back to the file system. Reads the
/// catalogue; locks nothing.
pub const ROW_BYTES: &str = "SELECT \
     (SELECT pg_total_relation_size(c.oid)::float8 / c.reltuples FROM pg_class c \
      WHERE c.oid = to_regclass('orders_inventoryreservation') AND c.reltuples > 0) \
      AS reservation_bytes, \
     (SELECT pg_total_relation_size(c.oid)::float8 / c.reltuples FROM pg_class c \
      WHERE c.oid = to_regclass('orders_order') AND c.reltuples > 0) AS order_bytes";

/// The row of [`ROW_BYTES`].
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct RowBytes {
    pub reservation: Option<f64>,
    pub order: Option<f64>,
}

/// [`ROW_BYTES`].
pub async fn row_bytes(client: &(impl GenericClient + Sync)) -> Result<RowBytes> {
    fetch_one(client, ROW_BYTES, &[], "estimating row sizes", |row| {
        Ok(RowBytes {
            reservation: row.try_get("reservation_bytes")?,
            order: row.try_get("order_bytes")?,
        })
    })
    .await
}

/// An id range: [`RESERVATION_RANGE`] or [`ORDER_RANGE`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IdRange {
    pub first: Option<i64>,
    pub last: Option<i64>,
}

/// [`RESERVATION_RANGE`].
pub async fn reservation_range(
    client: &(impl GenericClient + Sync),
    days: i32,
    keep_order_lines: bool,
) -> Result<IdRange> {
    range(client, RESERVATION_RANGE, &[&days, &keep_order_lines]).await
}

/// [`ORDER_RANGE`].
pub async fn order_range(client: &(impl GenericClient + Sync), days: i32) -> Result<IdRange> {
    range(client, ORDER_RANGE, &[&days]).await
}

async fn range(
    client: &(impl GenericClient + Sync),
    statement: &str,
    params: &[&(dyn tokio_postgres::types::ToSql + Sync)],
) -> Result<IdRange> {
    fetch_one(
        client,
        statement,
        params,
        "finding the range to purge",
        |row| {
            Ok(IdRange {
                first: row.try_get("first_id")?,
                last: row.try_get("last_id")?,
            })
        },
    )
    .await
}

/// What a chunk's window held (last id None: the window was empty, the range is done).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Window {
    pub last_id: Option<i64>,
    pub scanned: i64,
}

/// A row of [`PURGE_RESERVATION_CHUNK`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReservationChunk {
    pub window: Window,
    pub eligible: i64,
    pub deleted: i64,
}

/// Where a chunk's window starts and ends, and its size.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WindowBounds {
    /// The window holds ids greater than this...
    pub after: i64,
    /// ...up to this (the range's end)...
    pub until: i64,
    /// ...at most this many.
    pub size: i64,
}

/// [`RESERVATION_WINDOW`] or [`ORDER_WINDOW`].
async fn window(
    client: &(impl GenericClient + Sync),
    statement: &str,
    bounds: WindowBounds,
) -> Result<Window> {
    fetch_one(
        client,
        statement,
        &[&bounds.after, &bounds.size, &bounds.until],
        "reading a purge chunk's window",
        |row| {
            Ok(Window {
                last_id: row.try_get("last_id")?,
                scanned: row.try_get("scanned")?,
            })
        },
    )
    .await
}

/// [`RESERVATION_WINDOW`], then [`PURGE_RESERVATION_CHUNK`] in it.
pub async fn purge_reservation_chunk(
    client: &(impl GenericClient + Sync),
    bounds: WindowBounds,
    days: i32,
    keep_order_lines: bool,
    apply: bool,
) -> Result<ReservationChunk> {
    let window = window(client, RESERVATION_WINDOW, bounds).await?;
    let Some(last) = window.last_id else {
        return Ok(ReservationChunk {
            window,
            eligible: 0,
            deleted: 0,
        });
    };
    let (eligible, deleted) = fetch_one(
        client,
        PURGE_RESERVATION_CHUNK,
        &[&bounds.after, &last, &days, &keep_order_lines, &apply],
        "purging a chunk of reservations",
        |row| Ok((row.try_get("eligible")?, row.try_get("deleted")?)),
    )
    .await?;
    Ok(ReservationChunk {
        window,
        eligible,
        deleted,
    })
}

/// A row of [`LOCK_ORDER_CHUNK`], with its window.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OrderChunk {
    pub window: Window,
    pub eligible: Vec<i64>,
    pub locked: Vec<i64>,
}

/// [`ORDER_WINDOW`], then [`LOCK_ORDER_CHUNK`] in it.
pub async fn lock_order_chunk(
    client: &(impl GenericClient + Sync),
    bounds: WindowBounds,
    days: i32,
    apply: bool,
) -> Result<OrderChunk> {
    let window = window(client, ORDER_WINDOW, bounds).await?;
    let Some(last) = window.last_id else {
        return Ok(OrderChunk {
            window,
            eligible: Vec::new(),
            locked: Vec::new(),
        });
    };
    let (eligible, locked) = fetch_one(
        client,
        LOCK_ORDER_CHUNK,
        &[&bounds.after, &last, &days, &apply],
        "locking a chunk of orders",
        |row| Ok((row.try_get("eligible")?, row.try_get("locked")?)),
    )
    .await?;
    Ok(OrderChunk {
        window,
        eligible,
        locked,
    })
}

/// [`LOCK_ORDER_LINES`]: the orders whose every line is now locked.
pub async fn lock_order_lines(
    client: &(impl GenericClient + Sync),
    orders: &[i64],
) -> Result<Vec<i64>> {
    fetch(
        client,
        LOCK_ORDER_LINES,
        &[&orders],
        "locking the lines of the orders",
        |row| row.try_get("id"),
    )
    .await
}

/// [`COUNT_ORDER_LINES`], [`DELETE_ORDER_LINES`] or [`DELETE_ORDERS`] on `orders`: how many
/// rows.
pub async fn order_rows(
    client: &(impl GenericClient + Sync),
    statement: &'static str,
    orders: &[i64],
) -> Result<i64> {
    fetch_one(
        client,
        statement,
        &[&orders],
        "deleting the orders and their lines",
        |row| row.try_get("affected"),
    )
    .await
}

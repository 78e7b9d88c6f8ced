//! Reads around the release: the backlog (each run's end and `status`), paid orders still
//! holding stock, counter drift, and the catalog reads of the preflight (columns, indexes,
//! `deadlock_timeout`). None locks a row.

use tokio_postgres::{GenericClient, Row};

use super::{fetch, fetch_one, Rules, Statements};
use crate::error::Result;

/// Due reservations a run has left (a run's `backlog_remaining`, `status`'s `due_reservations`,
/// and what follow mode compares its count with) and the age in seconds of the oldest, grace
/// included: the rule's `due_rows!`, so paid and untouchable orders and payments in grace are
/// excluded. Reads only; locks nothing. The active rows past their due time, through the
/// partial indexes of `infra/indexes.sql` (`unreserver_active_expiry_idx` up to `now()`,
/// `unreserver_active_legacy_idx` up to `now()` less the timeout), each joined to its order.
///
/// $1 reservation timeout minutes, $2 grace minutes.
pub const BACKLOG: &str = concat!(
    "SELECT count(*)::int8 AS due, max(d.age) AS oldest_age_seconds FROM (",
    due_rows!("$1", "$2"),
    ") d"
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

/// The counter rows the active reservations of orders $1 and cart holds $2 need: what a queue
/// batch must win before it can release them (each row it waits for in its lock queue). Reads
/// only; locks nothing (the queue batch decides on the rows it then locks).
///
/// $1 order ids, $2 cart-hold reservation ids.
pub const COUNTER_ROWS_OF: &str = "SELECT r.order_id::int8 AS order_id, r.id::int8 AS id, \
     r.product_variant_id::int8 AS variant_id, r.drop_product_id::int8 AS drop_id \
     FROM orders_inventoryreservation r WHERE r.status = 'active' \
     AND (r.order_id = ANY($1::int8[]) OR (r.order_id IS NULL AND r.id = ANY($2::int8[])))";

/// A row of [`COUNTER_ROWS_OF`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LineRows {
    pub order_id: Option<i64>,
    pub id: i64,
    pub variant_id: i64,
    pub drop_id: Option<i64>,
}

/// [`COUNTER_ROWS_OF`] (unprepared: a few queue batches a run).
pub async fn counter_rows_of(
    client: &(impl GenericClient + Sync),
    orders: &[i64],
    holds: &[i64],
) -> Result<Vec<LineRows>> {
    fetch(
        client,
        COUNTER_ROWS_OF,
        &[&orders, &holds],
        "reading the counter rows of held-up orders",
        |row: &Row| {
            Ok(LineRows {
                order_id: row.try_get("order_id")?,
                id: row.try_get("id")?,
                variant_id: row.try_get("variant_id")?,
                drop_id: row.try_get("drop_id")?,
            })
        },
    )
    .await
}

/// What the preflight reads of the server, in one round trip: the port it listens on and
/// whether this session came over its Unix socket (a client that connected elsewhere reached it
/// through a pooler or proxy), whether it is a standby (read-only), and `deadlock_timeout` —
/// this session's value, where it came from, the compiled default, and every value a role or
/// database sets for this database (`pg_db_role_setting`, readable by every role), since the
/// shop's sessions may run under another role than the release's. Reads settings and
/// catalogues; locks nothing.
pub const SERVER_FACTS: &str = concat!(
    "SELECT current_setting('port')::int4 AS port, inet_server_addr() IS NULL AS unix_socket, ",
    "pg_is_in_recovery() AS in_recovery, s.setting::int8 AS deadlock_timeout_ms, ",
    "s.source::text AS deadlock_timeout_source, s.boot_val::int8 AS deadlock_timeout_boot_ms, ",
    "coalesce((SELECT array_agg(substr(c, length('deadlock_timeout=') + 1)) ",
    "FROM pg_db_role_setting d, unnest(d.setconfig) AS c ",
    "WHERE d.setdatabase IN (0, (SELECT oid FROM pg_database WHERE datname = current_database())) ",
    "AND c LIKE 'deadlock\\_timeout=%'), '{}'::text[]) AS deadlock_timeouts_set ",
    "FROM pg_settings s WHERE s.name = 'deadlock_timeout'"
);

/// A row of [`SERVER_FACTS`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerFacts {
    pub port: i32,
    pub unix_socket: bool,
    pub in_recovery: bool,
    pub deadlock_timeout_ms: i64,
    pub deadlock_timeout_source: String,
    pub deadlock_timeout_boot_ms: i64,
    /// Values as written by `ALTER ROLE/DATABASE ... SET deadlock_timeout` (`2s`, `500ms`, ...).
    pub deadlock_timeouts_set: Vec<String>,
}

/// [`SERVER_FACTS`].
pub async fn server_facts(client: &(impl GenericClient + Sync)) -> Result<ServerFacts> {
    fetch_one(
        client,
        SERVER_FACTS,
        &[],
        "reading the server's facts",
        |row: &Row| {
            Ok(ServerFacts {
                port: row.try_get("port")?,
                unix_socket: row.try_get("unix_socket")?,
                in_recovery: row.try_get("in_recovery")?,
                deadlock_timeout_ms: row.try_get("deadlock_timeout_ms")?,
                deadlock_timeout_source: row.try_get("deadlock_timeout_source")?,
                deadlock_timeout_boot_ms: row.try_get("deadlock_timeout_boot_ms")?,
                deadlock_timeouts_set: row.try_get("deadlock_timeouts_set")?,
            })
        },
    )
    .await
}

/// The release's tables another session holds with a lock that conflicts with the release's
/// row updates (`SHARE` — a non-concurrent `CREATE INDEX` — and stronger: `ALTER TABLE`, `LOCK
/// TABLE`, a migration). Asked only after a statement ran out of `lock_timeout` or a held row
/// turned out not to be a row: it tells a table lock (the run stops, `table_locked`; nothing
/// is gained by polling rows) from a row lock. The tables are the ones this session's
/// `search_path` resolves (a schema tenant's own: another tenant's migration on its tables of the
/// same names is no lock of ours). Reads `pg_locks` (readable by every role); locks nothing.
///
/// Returns the names of the locked tables.
pub const LOCKED_TABLES: &str = concat!(
    "SELECT DISTINCT c.relname::text AS name FROM pg_locks l JOIN pg_class c ON c.oid = l.relation ",
    "WHERE l.locktype = 'relation' AND l.granted AND l.pid <> pg_backend_pid() ",
    "AND l.database = (SELECT oid FROM pg_database WHERE datname = current_database()) ",
    "AND l.mode IN ('ShareLock', 'ShareRowExclusiveLock', 'ExclusiveLock', 'AccessExclusiveLock') ",
    "AND c.oid IN (to_regclass('orders_inventoryreservation'), to_regclass('orders_order'), ",
    "to_regclass('products_productvariant'), to_regclass('drops_dropproduct')) ORDER BY 1"
);

impl Statements {
    /// [`LOCKED_TABLES`] (unprepared: asked rarely).
    pub async fn locked_tables(&self, client: &(impl GenericClient + Sync)) -> Result<Vec<String>> {
        fetch(
            client,
            LOCKED_TABLES,
            &[],
            "finding the tables another session locks",
            |row| row.try_get("name"),
        )
        .await
    }
}

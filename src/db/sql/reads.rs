//! Reads around the release: the backlog (each run's end and `status`), paid orders still
//! holding stock, counter drift, and the catalog reads of the preflight (columns, indexes,
//! `deadlock_timeout`). None locks a row.

use tokio_postgres::{GenericClient, Row};

use super::{fetch, fetch_one, Rules, Statements};
use crate::error::{Error, Result};

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

/// The columns that exist of the tables named in $1 (resolved through `search_path`), with
/// their positions (what an index's keys name), to check the schema before anything changes.
/// Reads the catalog only.
pub const TABLE_COLUMNS: &str = "SELECT t.name AS table_name, a.attname::text AS column_name, \
     a.attnum AS position, format_type(a.atttypid, NULL) AS data_type \
     FROM unnest($1::text[]) AS t(name) \
     JOIN pg_attribute a ON a.attrelid = to_regclass(t.name) \
     WHERE a.attnum > 0 AND NOT a.attisdropped";

/// A row of [`TABLE_COLUMNS`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TableColumn {
    pub table: String,
    pub column: String,
    /// `pg_attribute.attnum`: what `pg_index.indkey` names the column by.
    pub position: i16,
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
            position: row.try_get("position")?,
            data_type: row.try_get("data_type")?,
        })
    })
    .await
}

/// The valid indexes of the reservation table, as the catalog stores them: access method, the
/// key columns' positions in order (0 for an expression key; `INCLUDE` columns follow the
/// first `key_count`), each key column's sort options, and the predicate as PostgreSQL prints
/// it (NULL for a full index). The positions are named from [`TABLE_COLUMNS`], read in the same
/// round trip ([`IndexRow::definition`]): a join on `pg_attribute` here cost a new session
/// about 0.7 ms more. The preflight decides from the definitions, not from names, whether the
/// release can page through an index (a shop may have an equivalent one under another name).
/// Reads the catalog.
pub const RESERVATION_INDEXES: &str = "SELECT c.relname::text AS name, am.amname::text AS method, \
     i.indkey::int2[] AS keys, i.indoption::int2[] AS options, i.indnkeyatts AS key_count, \
     pg_get_expr(i.indpred, i.indrelid) AS predicate \
     FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid JOIN pg_am am ON am.oid = c.relam \
     WHERE i.indrelid = to_regclass('orders_inventoryreservation') AND i.indisvalid";

/// A row of [`RESERVATION_INDEXES`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IndexRow {
    pub name: String,
    pub method: String,
    /// Every column's position (`pg_index.indkey`): keys, then `INCLUDE` columns.
    pub keys: Vec<i16>,
    /// Each column's `pg_index.indoption`.
    pub options: Vec<i16>,
    /// How many of `keys` are key columns (`pg_index.indnkeyatts`).
    pub key_count: i16,
    pub predicate: Option<String>,
}

impl IndexRow {
    /// The definition, its key columns named from `columns` (the reservation table's rows of
    /// [`TABLE_COLUMNS`]; an expression key, position 0, is an empty name, so the positions
    /// stay).
    pub fn definition(self, columns: &[TableColumn]) -> IndexDefinition {
        let keys = usize::try_from(self.key_count).unwrap_or(0);
        let name_of = |position: &i16| {
            columns
                .iter()
                .find(|c| c.table == RESERVATION_TABLE && c.position == *position)
                .map_or_else(String::new, |c| c.column.clone())
        };
        IndexDefinition {
            name: self.name,
            method: self.method,
            columns: self.keys.iter().take(keys).map(name_of).collect(),
            options: self.options.into_iter().take(keys).collect(),
            predicate: self.predicate,
        }
    }
}

/// The table [`RESERVATION_INDEXES`] reads the indexes of.
pub const RESERVATION_TABLE: &str = "orders_inventoryreservation";

/// An index of the reservation table, as the preflight judges it.
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
pub async fn reservation_indexes(client: &(impl GenericClient + Sync)) -> Result<Vec<IndexRow>> {
    fetch(client, RESERVATION_INDEXES, &[], "index check", |row| {
        Ok(IndexRow {
            name: row.try_get("name")?,
            method: row.try_get("method")?,
            keys: row.try_get("keys")?,
            options: row.try_get("options")?,
            key_count: row.try_get("key_count")?,
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
/// through a pooler or proxy), whether it is a standby (read-only), this session's
/// `deadlock_timeout` as the server shows it (`1s`, `200ms`), and — one row each — the settings
/// every role or database sets for this database (`pg_db_role_setting`, readable by every
/// role), since the shop's sessions may run under another role than the release's, each marked
/// when it is this session's login role's own. One row with NULLs when none is set. Not
/// `pg_settings` (a view computing every setting of the server) nor an aggregate over the
/// settings: on a new session those cost about 1.5 ms more than these plain reads. Reads
/// settings and catalogues; locks nothing.
pub const SERVER_FACTS: &str = concat!(
    "SELECT current_setting('port')::int4 AS port, inet_server_addr() IS NULL AS unix_socket, ",
    "pg_is_in_recovery() AS in_recovery, current_setting('deadlock_timeout') AS deadlock_timeout, ",
    "d.setrole = to_regrole(quote_ident(session_user)) AS own_role, d.setconfig AS settings ",
    "FROM (SELECT) AS one LEFT JOIN pg_db_role_setting d ON d.setdatabase IN ",
    "(0, (SELECT oid FROM pg_database WHERE datname = current_database()))"
);

/// What [`SERVER_FACTS`] read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerFacts {
    pub port: i32,
    pub unix_socket: bool,
    pub in_recovery: bool,
    /// This session's `deadlock_timeout`, as `current_setting` shows it (`1s`, `200ms`).
    pub deadlock_timeout: String,
    /// The settings roles and the database set for this database.
    pub role_settings: Vec<RoleSettings>,
}

/// The settings one role (or the database, or a role in the database) sets for this database.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RoleSettings {
    /// The role is this session's login role.
    pub own_role: bool,
    /// `name=value` each (`deadlock_timeout=400ms`), as `ALTER ROLE ... SET` stored them.
    pub settings: Vec<String>,
}

/// [`SERVER_FACTS`].
pub async fn server_facts(client: &(impl GenericClient + Sync)) -> Result<ServerFacts> {
    type Settings = Option<RoleSettings>;
    let rows: Vec<(ServerFacts, Settings)> = fetch(
        client,
        SERVER_FACTS,
        &[],
        "reading the server's facts",
        |row: &Row| {
            let settings: Option<Vec<String>> = row.try_get("settings")?;
            let own_role: Option<bool> = row.try_get("own_role")?;
            let facts = ServerFacts {
                port: row.try_get("port")?,
                unix_socket: row.try_get("unix_socket")?,
                in_recovery: row.try_get("in_recovery")?,
                deadlock_timeout: row.try_get("deadlock_timeout")?,
                role_settings: Vec::new(),
            };
            let set = settings.map(|settings| RoleSettings {
                own_role: own_role.unwrap_or(false),
                settings,
            });
            Ok((facts, set))
        },
    )
    .await?;
    let mut rows = rows.into_iter();
    let Some((mut facts, first)) = rows.next() else {
        return Err(Error::Schema(
            "the server returned no row of its facts (one row always comes back)".into(),
        ));
    };
    facts.role_settings = first
        .into_iter()
        .chain(rows.filter_map(|(_, s)| s))
        .collect();
    Ok(facts)
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

//! The statements around a batch's transaction: the session pinned once per connection, the
//! batch's own timeouts, and the savepoint a release step rolls back to.

use tokio_postgres::{Client, GenericClient};

use super::{fetch, Statements};
use crate::error::{Error, Result};

/// Pins the session settings every statement's meaning may depend on, once per connection,
/// whatever the server's, the database's or the role's defaults (`ALTER ROLE ... SET`): dates
/// and intervals are read and written the same way, and every transaction is a read-write
/// `READ COMMITTED` one — each statement of a batch sees the rows committed before it and
/// decides on the rows it locks, as the release is built to; under `REPEATABLE READ` or
/// `SERIALIZABLE` (some shops set them role- or database-wide) a batch that updates a counter a
/// checkout committed since its first statement fails with a serialization error every time,
/// and under `default_transaction_read_only` nothing is released at all. A role's
/// `synchronous_commit = off` is raised to `on`: a batch's commit must be durable before its
/// events go out and its answer is given (a crash must not lose a release the shop was told
/// of); `local`, `remote_write` and `remote_apply` are kept (each at least flushes locally).
/// `plan_cache_mode` is `force_custom_plan` (PostgreSQL 12+; older servers have no such
/// setting and plan as 12's `auto` does): the release's statements are prepared once and run
/// with a new array of ids each batch, and after five runs the server's `auto` mode may switch
/// to a generic plan, in which `id = ANY($1)` is a Param — no hashed lookup, every row compared
/// with every id of the array, a batch's cost growing with the square of its size (measured: a
/// drain of 100,000 took 5.0 s with `auto` and 2.3 s with custom plans, and a role set to
/// `force_generic_plan` would make it worse). A custom plan costs each statement a planning
/// of about a millisecond. `max_parallel_workers_per_gather` is 0: a release statement never
/// takes parallel workers (the shop's CPU, on a drop day), and the page it reads through its
/// index is never turned into a parallel scan of the whole table when the statistics lag
/// behind a large drain (seen: 200 ms pages, a drain of 1,000,000 41 % slower). The timeouts
/// are the session defaults' and the batch's own.
/// `search_path` stays the role's, except for a schema tenant's session ([`pin_session`]).
/// Locks nothing.
pub const PIN_SESSION: &str = concat!(
    "SET TimeZone = 'UTC'; SET DateStyle = 'ISO, YMD'; SET IntervalStyle = 'postgres'; ",
    "SET default_transaction_isolation = 'read committed'; ",
    "SET default_transaction_read_only = off; ",
    "SELECT set_config('synchronous_commit', 'on', false) ",
    "WHERE current_setting('synchronous_commit') = 'off'; ",
    "SELECT set_config('plan_cache_mode', 'force_custom_plan', false) ",
    "WHERE current_setting('server_version_num')::int >= 120000; ",
    "SET max_parallel_workers_per_gather = 0"
);

/// [`PIN_SESSION`], and the session defaults given (`name`, `value`: fixed settings of
/// `connect::SESSION_DEFAULTS`, never input), in one round trip; with `schema` (a schema
/// tenant's, a checked name: `tenant::check_name`), `search_path` set to that schema alone,
/// quoted as an identifier — not `public` after it, where a table missing from the tenant's
/// schema would resolve to another shop's. Locks nothing.
pub async fn pin_session(
    client: &Client,
    defaults: &[(&str, &str)],
    schema: Option<&str>,
) -> Result<()> {
    let mut statements = PIN_SESSION.to_string();
    for (name, value) in defaults {
        statements.push_str(&format!("; SET {name} = '{value}'"));
    }
    if let Some(schema) = schema {
        statements.push_str(&format!("; SET search_path = {}", quote_ident(schema)));
    }
    client
        .batch_execute(&statements)
        .await
        .map_err(Error::db("pinning the session settings"))
}

/// `name` as a PostgreSQL identifier: in double quotes, each double quote doubled.
pub fn quote_ident(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

/// The session's backend process id: what [`CANCEL_BACKEND`] names when the cancel protocol
/// cannot reach the server. Locks nothing.
pub const BACKEND_PID: &str = "SELECT pg_backend_pid() AS pid";

/// [`BACKEND_PID`].
pub async fn backend_pid(client: &Client) -> Result<i32> {
    super::fetch_one(
        client,
        BACKEND_PID,
        &[],
        "reading the session's backend pid",
        |row| row.try_get("pid"),
    )
    .await
}

/// Cancels the statement backend $1 is running, from another session of the same role (a
/// role may cancel its own backends: "the calling role is a member of the role whose backend
/// is being canceled"): the way to cut a batch when the cancel protocol's own connection is
/// refused (a proxy that does not forward cancel requests). Locks nothing; whether the signal
/// was sent.
///
/// $1 backend pid.
pub const CANCEL_BACKEND: &str = "SELECT pg_cancel_backend($1::int4) AS cancelled";

/// [`CANCEL_BACKEND`].
pub async fn cancel_backend(client: &Client, pid: i32) -> Result<bool> {
    super::fetch_one(
        client,
        CANCEL_BACKEND,
        &[&pid],
        "cancelling a batch through SQL",
        |row| row.try_get("cancelled"),
    )
    .await
}

/// A named prepared statement run three times, each in a transaction of its own: through a
/// pooler in transaction mode the later runs usually reach another server connection, which
/// does not know the statement (SQLSTATE 26000): the session is refused before it sets or
/// changes anything. Locks nothing.
pub const POOLING_PROBE: &str = "SELECT 1 AS one";

/// [`POOLING_PROBE`].
pub async fn probe_pooling(client: &Client) -> Result<()> {
    let statement = client
        .prepare(POOLING_PROBE)
        .await
        .map_err(Error::db("probing for a pooler"))?;
    for _ in 0..3 {
        client
            .query(&statement, &[])
            .await
            .map_err(Error::db("probing for a pooler"))?;
    }
    Ok(())
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

/// Marks the point a round returns to when a counter row (a variant or drop) is held: the
/// reservations it expired and the orders it cancelled stay (with their row locks, which no
/// checkout needs), the counter updates after it are undone, giving back every hot row they
/// took. Nested in [`SAVEPOINT`]. Locks nothing.
pub const COUNTERS_SAVEPOINT: &str = "SAVEPOINT unreserver_counters";

/// Undoes the counter updates since [`COUNTERS_SAVEPOINT`], keeping it for the next try.
pub const ROLLBACK_TO_COUNTERS_SAVEPOINT: &str = "ROLLBACK TO SAVEPOINT unreserver_counters";

/// [`COUNTERS_SAVEPOINT`] or [`ROLLBACK_TO_COUNTERS_SAVEPOINT`].
pub async fn counters_savepoint(
    client: &(impl GenericClient + Sync),
    rollback: bool,
) -> Result<()> {
    let (statement, context) = if rollback {
        (
            ROLLBACK_TO_COUNTERS_SAVEPOINT,
            "rolling back to the counters' savepoint",
        )
    } else {
        (COUNTERS_SAVEPOINT, "setting the counters' savepoint")
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

//! The statements of a deployment with tenants: listing the tenants with the operator's own
//! query (`TENANTS_QUERY`), and a schema tenant's backlog read on a session shared by the
//! sweep's probe (the one rule of what is due: [`super::BACKLOG`]).

use tokio_postgres::Client;

use super::{quote_ident, Backlog, Rules, BACKLOG};
use crate::error::{Error, Result};

/// Opens the read-only transaction the operator's `TENANTS_QUERY` runs in, with a short
/// statement timeout: the query is the operator's (django-tenants: `SELECT schema_name FROM
/// public.customers_client`), so it may read anything the role may read, but it can change
/// nothing and hold no lock past its transaction. Locks what the query's reads lock (an
/// `ACCESS SHARE` on the tables it reads), until [`END_TENANTS_QUERY`].
pub const BEGIN_TENANTS_QUERY: &str =
    "BEGIN READ ONLY; SET LOCAL statement_timeout = '10s'; SET LOCAL lock_timeout = '2s'";

/// Ends the transaction of [`BEGIN_TENANTS_QUERY`]: nothing to keep. Releases its locks.
pub const END_TENANTS_QUERY: &str = "ROLLBACK";

/// The tenants' names `query` returns in its first column (text, varchar or name), each once
/// in the order returned, read-only ([`BEGIN_TENANTS_QUERY`]).
pub async fn tenants_by_query(client: &Client, query: &str) -> Result<Vec<String>> {
    client
        .batch_execute(BEGIN_TENANTS_QUERY)
        .await
        .map_err(Error::db("starting the tenants query (TENANTS_QUERY)"))?;
    let rows = client.query(query, &[]).await;
    let ended = client.batch_execute(END_TENANTS_QUERY).await;
    let rows = rows.map_err(Error::db("running the tenants query (TENANTS_QUERY)"))?;
    ended.map_err(Error::db("ending the tenants query (TENANTS_QUERY)"))?;
    let mut names: Vec<String> = Vec::with_capacity(rows.len());
    for row in rows {
        let name: Option<String> = row.try_get(0).map_err(Error::db(
            "reading the tenants query's first column as text",
        ))?;
        if let Some(name) = name.filter(|n| !names.contains(n)) {
            names.push(name);
        }
    }
    Ok(names)
}

/// The probe session's bounds: a migration holding a tenant's table must cost that tenant a
/// second, not the sweep its budget; the backlog read is one indexed count. Locks nothing.
pub const PROBE_SESSION: &str =
    "SET lock_timeout = '1s'; SET statement_timeout = '10s'; SET TimeZone = 'UTC'";

/// Confines a probe session to one schema tenant's tables (`search_path` that schema alone,
/// the name quoted as an identifier), before [`backlog_of_schema`]. Locks nothing.
pub fn set_search_path(schema: &str) -> String {
    format!("SET search_path = {}", quote_ident(schema))
}

/// [`BACKLOG`] of schema `schema` on a session shared by the probe of many schemas: the
/// session's `search_path` is set to the schema first ([`set_search_path`]). Reads only; locks
/// nothing.
pub async fn backlog_of_schema(client: &Client, schema: &str, rules: Rules) -> Result<Backlog> {
    client
        .batch_execute(&set_search_path(schema))
        .await
        .map_err(Error::db("confining the probe to a tenant's schema"))?;
    backlog_on(client, rules).await
}

/// [`BACKLOG`] on a probe session, as its `search_path` resolves the tables; not prepared (a
/// probe session reads it once per tenant, and the tables differ by schema). Reads only; locks
/// nothing (a wait past the probe's `lock_timeout` is a table lock: `TableLocked`).
pub async fn backlog_on(client: &Client, rules: Rules) -> Result<Backlog> {
    let row = client
        .query_one(BACKLOG, &[&rules.timeout_minutes, &rules.grace_minutes])
        .await
        .map_err(|e| Error::db("counting a tenant's backlog")(e).when_opening())?;
    Ok(Backlog {
        due: row.try_get("due").map_err(Error::db("reading due"))?,
        oldest_age_seconds: row
            .try_get("oldest_age_seconds")
            .map_err(Error::db("reading oldest_age_seconds"))?,
    })
}

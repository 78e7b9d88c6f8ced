//! The retention horizon: how far back a purge has deleted, kept in the database itself so that
//! every front-end and role reads the same answer. `infra/purge-role.sql` creates the one-row
//! table `unreserver_purge_horizon`; the purge role writes it in each chunk that deleted rows
//! (in that chunk's transaction, with that chunk's clock), the release role only reads it. A
//! database where no purge ever deleted anything (or where the table is missing or unreadable)
//! has no horizon: nothing was purged.

use std::time::SystemTime;

use tokio_postgres::GenericClient;

use super::{fetch, fetch_one};
use crate::error::{Error, Result};

/// Whether this role may read the horizon: the table exists (`infra/purge-role.sql` creates it)
/// and the role holds `SELECT` on it. Locks nothing; asked first so that a database without the
/// table (never purged) answers "no horizon" rather than an error.
pub const HORIZON_READABLE: &str = "SELECT COALESCE(to_regclass('unreserver_purge_horizon') \
     IS NOT NULL AND has_table_privilege(to_regclass('unreserver_purge_horizon'), 'SELECT'), \
     false) AS readable";

/// The horizon, when a purge ever deleted rows: rows released (orders cancelled) before
/// `purged_before` may be gone; `purged_day` is its UTC day; `max_order_id` is the highest id
/// of an order a purge deleted (NULL: none). Zero or one row. Reads one row, locks nothing (a
/// purge writing it never blocks this read).
pub const READ_HORIZON: &str = "SELECT purged_before, \
     to_char(purged_before AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS\"Z\"') AS purged_before_utc, \
     to_char(purged_before AT TIME ZONE 'UTC', 'YYYY-MM-DD') AS purged_day, \
     max_order_id::int8 AS max_order_id FROM unreserver_purge_horizon";

/// Records, in a purge chunk's transaction that deleted rows, that rows older than `$1` days
/// before this transaction's clock (the chunk's own rule) may be gone, and that orders up to id
/// `$2` (NULL: no order in this chunk) were deleted. Never moves the horizon back. Locks the
/// table's one row until the chunk commits: only a purge writes it, readers never wait.
pub const MARK_PURGED: &str = "INSERT INTO unreserver_purge_horizon AS h \
     (id, purged_before, max_order_id, updated_at) \
     VALUES (true, now() - make_interval(days => $1::int4), $2::int8, now()) \
     ON CONFLICT (id) DO UPDATE SET \
     purged_before = GREATEST(h.purged_before, EXCLUDED.purged_before), \
     max_order_id = GREATEST(h.max_order_id, EXCLUDED.max_order_id), updated_at = now()";

/// How far back purges have deleted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Horizon {
    /// Rows released (orders cancelled) before this may be gone.
    pub purged_before: SystemTime,
    /// The same instant, `YYYY-MM-DDTHH:MM:SSZ`.
    pub purged_before_utc: String,
    /// Its UTC day, `YYYY-MM-DD`: the days before it are wholly purged.
    pub purged_day: String,
    /// The highest id of an order a purge deleted, if any.
    pub max_order_id: Option<i64>,
}

/// The horizon, or None when nothing was ever purged or this role may not read it.
pub async fn horizon(client: &(impl GenericClient + Sync)) -> Result<Option<Horizon>> {
    let readable = fetch_one(
        client,
        HORIZON_READABLE,
        &[],
        "checking for the purge's horizon",
        |row| row.try_get::<_, bool>("readable"),
    )
    .await?;
    if !readable {
        return Ok(None);
    }
    let rows = fetch(
        client,
        READ_HORIZON,
        &[],
        "reading the purge's horizon",
        |row| {
            Ok(Horizon {
                purged_before: row.try_get("purged_before")?,
                purged_before_utc: row.try_get("purged_before_utc")?,
                purged_day: row.try_get("purged_day")?,
                max_order_id: row.try_get("max_order_id")?,
            })
        },
    )
    .await?;
    Ok(rows.into_iter().next())
}

/// [`MARK_PURGED`], in the chunk's transaction.
pub async fn mark_purged(
    client: &(impl GenericClient + Sync),
    days: i32,
    max_order_id: Option<i64>,
) -> Result<()> {
    client
        .execute(MARK_PURGED, &[&days, &max_order_id])
        .await
        .map_err(Error::db("recording the purge's horizon"))?;
    Ok(())
}

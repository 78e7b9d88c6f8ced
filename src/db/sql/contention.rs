//! What a run reads of the server's sessions: how many connections it has free for a run's
//! workers. Reads the activity view; locks no row.

use tokio_postgres::GenericClient;

use super::fetch_one;
use crate::error::Result;

/// The connections this role may still open: the least of every limit the server shows — its
/// `max_connections` less the superuser reserve, the reserve for `pg_use_reserved_connections`
/// (`reserved_connections`, PostgreSQL 16 and later) and the sessions open now; the database's
/// `CONNECTION LIMIT` less its sessions; the role's less its own. A role without
/// `pg_read_all_stats` sees no `backend_type` of other roles' sessions (nor of the server's
/// own processes): those are counted as open client sessions, which errs towards fewer
/// workers. Read before a run opens a worker's connection and again after (two runs may count
/// the same free ones). Locks nothing.
///
/// Returns one row: free.
pub const FREE_CONNECTIONS: &str = concat!(
    "SELECT least(",
    "current_setting('max_connections')::int8 ",
    "- current_setting('superuser_reserved_connections')::int8 ",
    "- coalesce(current_setting('reserved_connections', true)::int8, 0) ",
    "- (SELECT count(*) FROM pg_stat_activity WHERE backend_type IS NULL OR backend_type = 'client backend'), ",
    "(SELECT CASE WHEN r.rolconnlimit < 0 THEN NULL ELSE r.rolconnlimit::int8 - ",
    "(SELECT count(*) FROM pg_stat_activity s WHERE s.usesysid = r.oid) END ",
    "FROM pg_roles r WHERE r.rolname = current_user), ",
    "(SELECT CASE WHEN d.datconnlimit < 0 THEN NULL ELSE d.datconnlimit::int8 - ",
    "(SELECT count(*) FROM pg_stat_activity s WHERE s.datid = d.oid) END ",
    "FROM pg_database d WHERE d.datname = current_database())",
    ")::int8 AS free"
);

/// [`FREE_CONNECTIONS`] (unprepared: read when a run may open workers).
pub async fn free_connections(client: &(impl GenericClient + Sync)) -> Result<i64> {
    fetch_one(
        client,
        FREE_CONNECTIONS,
        &[],
        "counting the free connections",
        |row| row.try_get("free"),
    )
    .await
}

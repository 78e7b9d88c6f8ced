//! What the batch controller reads of the shop's sessions: who is waiting for a row the batch
//! holds (a shopper the batch is in the way of), and how many connections the server has free
//! for a run's workers. Both read the server's activity views; neither locks a row.

use tokio_postgres::GenericClient;

use super::{fetch_one, Statements};
use crate::error::Result;

/// Sessions waiting in a lock queue behind this session (a checkout waiting for a variant or
/// drop row the batch updated): asked just before a batch commits, while it holds its hot rows,
/// so that a shopper who never holds a row when the batch polls — one that only ever queues
/// behind it — still tells the controller that shoppers compete. A session waiting for a row
/// lock waits on the transaction (or subtransaction: the counter updates run after a
/// savepoint) that holds it, a `transactionid` lock this backend holds; later waiters queue
/// behind the first on the row's tuple lock, so at least one is counted whenever any wait.
/// Reads `pg_locks`, which every role may read (`pg_stat_activity` hides other roles' wait
/// states from a role without `pg_read_all_stats`); locks no row.
///
/// Returns the number of waiting sessions.
pub const WAITING_BEHIND: &str = concat!(
    "SELECT count(*)::int8 AS waiting FROM pg_locks w JOIN pg_locks h ",
    "ON h.locktype = 'transactionid' AND h.transactionid = w.transactionid ",
    "AND h.granted AND h.pid = pg_backend_pid() ",
    "WHERE w.locktype = 'transactionid' AND NOT w.granted"
);

impl Statements {
    /// [`WAITING_BEHIND`].
    pub async fn waiting_behind(&self, client: &(impl GenericClient + Sync)) -> Result<i64> {
        fetch_one(
            client,
            &self.waiting_behind,
            &[],
            "counting the sessions waiting behind a batch",
            |row| row.try_get("waiting"),
        )
        .await
    }
}

/// The connections this role may still open: the server's `max_connections` less the
/// superuser reserve and the sessions open now, and within the role's own connection limit
/// when it has one. A role without `pg_read_all_stats` sees no `backend_type` of other roles'
/// sessions (nor of the server's own processes): those are counted as open client sessions,
/// which errs towards fewer workers. Read once a run, before it opens workers. Locks nothing.
///
/// Returns one row: free.
pub const FREE_CONNECTIONS: &str = concat!(
    "SELECT least(",
    "current_setting('max_connections')::int8 ",
    "- current_setting('superuser_reserved_connections')::int8 ",
    "- (SELECT count(*) FROM pg_stat_activity WHERE backend_type IS NULL OR backend_type = 'client backend'), ",
    "(SELECT CASE WHEN r.rolconnlimit < 0 THEN NULL ELSE r.rolconnlimit::int8 - ",
    "(SELECT count(*) FROM pg_stat_activity s WHERE s.usesysid = r.oid) END ",
    "FROM pg_roles r WHERE r.rolname = current_user)",
    ")::int8 AS free"
);

/// [`FREE_CONNECTIONS`] (unprepared: read once a run).
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

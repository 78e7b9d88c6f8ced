//! Follow mode's one statement between passes: when the next reservation falls due. Reads only;
//! locks nothing.

use tokio_postgres::GenericClient;

use super::{fetch_one, PgTimestamp, Rules};
use crate::error::Result;

/// The database's `now()`, and the seconds from it to the earliest moment after `$1` (the
/// `now()` read before the last pass) at which a reservation falls due by the release's rules:
/// the next `expires_at`; the next legacy row's `created_at` plus the timeout; the end of the
/// grace of an order whose payment is `processing`, among reservations already past their
/// `expires_at` (those past `$1` are found by the first). NULL when nothing will fall due.
///
/// Rows that stay due on purpose — a paid order's, a payment in grace, an order deferred for a
/// held row — fell due before `$1`, so they never make follow mode wake at once again (it
/// retries deferred work on its own clock). Each part is one lookup in a partial index of
/// `infra/indexes.sql` (`(expires_at, id) WHERE status = 'active'`, `(created_at, id) WHERE
/// status = 'active' AND expires_at IS NULL`), the grace part a range of the first bounded by
/// the grace.
///
/// $1 the last pass's `now()`, $2 reservation timeout minutes, $3 grace minutes.
pub const NEXT_DUE: &str = concat!(
    "SELECT now() AS checked_at, EXTRACT(EPOCH FROM LEAST(",
    "(SELECT min(r.expires_at) FROM orders_inventoryreservation r ",
    "WHERE r.status = 'active' AND r.expires_at > $1::timestamptz), ",
    "(SELECT min(r.created_at) FROM orders_inventoryreservation r ",
    "WHERE r.status = 'active' AND r.expires_at IS NULL ",
    "AND r.created_at > $1::timestamptz - make_interval(mins => $2::int4)) ",
    "+ make_interval(mins => $2::int4), ",
    "(SELECT min(r.expires_at) FROM orders_inventoryreservation r ",
    "JOIN orders_order o ON o.id = r.order_id WHERE r.status = 'active' ",
    "AND r.expires_at > $1::timestamptz - make_interval(mins => $3::int4) ",
    "AND r.expires_at <= $1::timestamptz AND o.payment_status = 'processing') ",
    "+ make_interval(mins => $3::int4)) - now())::float8 AS wait_seconds"
);

/// A row of [`NEXT_DUE`].
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct NextDue {
    /// The database's `now()` when asked.
    pub checked_at: PgTimestamp,
    /// Seconds until the next reservation falls due (0 or less: due now); None: none will.
    pub wait_seconds: Option<f64>,
}

/// [`NEXT_DUE`].
pub async fn next_due(
    client: &(impl GenericClient + Sync),
    after: PgTimestamp,
    rules: Rules,
) -> Result<NextDue> {
    fetch_one(
        client,
        NEXT_DUE,
        &[&after, &rules.timeout_minutes, &rules.grace_minutes],
        "finding when the next reservation falls due",
        |row| {
            Ok(NextDue {
                checked_at: row.try_get("checked_at")?,
                wait_seconds: row.try_get("wait_seconds")?,
            })
        },
    )
    .await
}

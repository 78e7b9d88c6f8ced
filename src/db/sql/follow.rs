//! Follow mode's one statement between passes: what is due now, and when the clock next makes a
//! reservation due. Reads only; locks nothing.

use tokio_postgres::GenericClient;

use super::{fetch_one, PgTimestamp, Rules};
use crate::error::Result;

/// The database's `now()`; how many reservations are due now by the release's rule, counted up
/// to `$4` (enough to tell whether more are due than the last pass left); and the seconds from
/// `now()` to the earliest instant after `$1` (the `now()` read before the last pass) at which
/// the clock alone makes a reservation due by the rule, NULL when none will (Infinity: at
/// `infinity`, never). Both parts are the rule of `rules.rs`: the count is `due_rows!` (as the
/// run's backlog counts it), the instant `next_due_after!`.
///
/// The count finds what the clock cannot foretell — a payment that failed after its line
/// expired, a hold the shop cut back to a time before the last pass, a row written already
/// due — and rows that stay due on purpose are not in it (a paid order's, a payment in grace)
/// or were left by the last pass (a row someone holds), so they never make follow mode wake at
/// once again. It reads the active rows past their due time: `unreserver_active_expiry_idx` up
/// to `now()` and `unreserver_active_legacy_idx` up to `now()` less the timeout, each joined to
/// its order, stopping at the `$4`th due row. The instant is four lookups of the same two
/// partial indexes (`infra/indexes.sql`): each one's first entry past `$1`, and two ranges one
/// grace long before `$1` for the ends of grace.
///
/// $1 the last pass's `now()`, $2 reservation timeout minutes, $3 grace minutes, $4 the most
/// due reservations to count.
pub const NEXT_DUE: &str = concat!(
    "SELECT now() AS checked_at, (SELECT count(*) FROM (SELECT 1 FROM (",
    due_rows!("$2", "$3"),
    ") d LIMIT $4::int8) counted)::int8 AS due, (",
    next_due_after!("$1::timestamptz", "$2", "$3"),
    " - ",
    epoch!("now()"),
    ")::float8 AS wait_seconds"
);

/// A row of [`NEXT_DUE`].
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct NextDue {
    /// The database's `now()` when asked.
    pub checked_at: PgTimestamp,
    /// Reservations due now by the rule (at most the count asked for).
    pub due: i64,
    /// Seconds until the clock next makes a reservation due (0 or less: due now); None: it
    /// never will (nothing is pending, or only at `infinity`).
    pub wait_seconds: Option<f64>,
}

/// [`NEXT_DUE`], counting at most `count_up_to` due reservations.
pub async fn next_due(
    client: &(impl GenericClient + Sync),
    after: PgTimestamp,
    rules: Rules,
    count_up_to: i64,
) -> Result<NextDue> {
    fetch_one(
        client,
        NEXT_DUE,
        &[
            &after,
            &rules.timeout_minutes,
            &rules.grace_minutes,
            &count_up_to,
        ],
        "finding what is due and when the next reservation falls due",
        |row| {
            let wait: Option<f64> = row.try_get("wait_seconds")?;
            Ok(NextDue {
                checked_at: row.try_get("checked_at")?,
                due: row.try_get("due")?,
                wait_seconds: wait.filter(|s| *s < f64::INFINITY),
            })
        },
    )
    .await
}

/// The class of follow mode's advisory locks, the first key of the two-`int4` form ("unrv"):
/// it never meets an advisory lock the shop takes with one `bigint` key, and names ours in
/// `pg_locks` (`classid`).
pub const FOLLOW_LOCK_CLASS: i32 = 0x756e_7276;

/// Takes the session advisory lock of one scheduled follow minute without waiting: `locked`
/// is true when this session now holds it, false when another session does — the same
/// minute's event delivered twice, or retried, while its first delivery still follows. Locks
/// no row and no table; the lock is held by the follow's session until the session ends (its
/// connection closes when the follow ends), so a duplicate never waits for it. The second key
/// is the minute mixed (`#`, exclusive or) with a hash of the session's schema: the followers of
/// two schema tenants of one database (each session's `search_path` its tenant's schema) follow
/// the same minute side by side, never as each other's duplicate (two schemas' keys could only
/// meet for minutes whose difference matches their hashes': a follow minute skipped, never a
/// row released twice).
///
/// $1 [`FOLLOW_LOCK_CLASS`], $2 the scheduled minute (minutes since the Unix epoch).
pub const TRY_LOCK_MINUTE: &str = concat!(
    "SELECT pg_try_advisory_lock(",
    minute_lock_key!(),
    ") AS locked"
);

/// The key of a minute's follow lock, written once for [`TRY_LOCK_MINUTE`] and
/// [`LOCK_MINUTE`]: $1 the class, $2 the minute mixed with the session's schema.
macro_rules! minute_lock_key {
    () => {
        "$1::int4, $2::int4 # hashtext(current_schema())"
    };
}
use minute_lock_key;

/// [`TRY_LOCK_MINUTE`]'s lock, waited for: taken by a follower's new session when its old one
/// (which held the minute) was replaced after a cut batch — the old backend gives the lock up
/// as it exits, and this session, queued for it, gets it before any duplicate's try. Waits at
/// most the session's `lock_timeout` (then `lock_not_available`: another follower took the
/// minute in between). Locks no row and no table.
///
/// $1 [`FOLLOW_LOCK_CLASS`], $2 the scheduled minute.
pub const LOCK_MINUTE: &str = concat!(
    "SELECT pg_advisory_lock(",
    minute_lock_key!(),
    ")::text AS locked"
);

/// [`LOCK_MINUTE`] for `minute`.
pub async fn lock_minute(client: &(impl GenericClient + Sync), minute: i32) -> Result<()> {
    client
        .execute(LOCK_MINUTE, &[&FOLLOW_LOCK_CLASS, &minute])
        .await
        .map(|_| ())
        .map_err(crate::error::Error::db(
            "taking the scheduled minute's follow lock again on a new session",
        ))
}

/// Whether the session of backend $1 waits in the queue of a follow minute's lock (its
/// [`LOCK_MINUTE`] sent and not yet granted): asked by a follower's old session before it closes,
/// so that the minute passes straight to the new session, never free for a moment in which a
/// duplicate's [`TRY_LOCK_MINUTE`] could take it. Reads `pg_locks`; locks nothing.
///
/// $1 the new session's backend pid, $2 [`FOLLOW_LOCK_CLASS`].
pub const QUEUED_FOR_MINUTE: &str = "SELECT EXISTS (SELECT FROM pg_locks \
     WHERE pid = $1 AND locktype = 'advisory' AND NOT granted AND classid = $2::int4::oid) \
     AS queued";

/// [`QUEUED_FOR_MINUTE`] for the backend `pid`.
pub async fn queued_for_minute(client: &(impl GenericClient + Sync), pid: i32) -> Result<bool> {
    fetch_one(
        client,
        QUEUED_FOR_MINUTE,
        &[&pid, &FOLLOW_LOCK_CLASS],
        "seeing the new session queued for the follow minute",
        |row| row.try_get("queued"),
    )
    .await
}

/// [`TRY_LOCK_MINUTE`] for `minute`: whether this session now holds that minute.
pub async fn try_lock_minute(client: &(impl GenericClient + Sync), minute: i32) -> Result<bool> {
    fetch_one(
        client,
        TRY_LOCK_MINUTE,
        &[&FOLLOW_LOCK_CLASS, &minute],
        "taking the scheduled minute's follow lock",
        |row| row.try_get("locked"),
    )
    .await
}

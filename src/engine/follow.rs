//! Follow mode: release as reservations fall due instead of once per schedule. A pass (one run)
//! releases what is due; then [`Follower`] looks (one statement,
//! [`crate::db::sql::follow::NEXT_DUE`], built from the release's one due rule) and passes again
//! as soon as the rule has made a reservation due since the last pass:
//! - by the clock: it sleeps until the earliest instant after the `now()` read before the last
//!   pass at which a reservation falls due (an `expires_at`, a legacy row's `created_at` plus the
//!   timeout, the end of a payment's grace), and passes when that instant has come;
//! - by a change the clock cannot foretell — a payment that failed after its line expired, a
//!   hold the shop cut back to a time before the last pass, a row written already due: the look
//!   counts the reservations due by the rule, and passes when there are more than the last pass
//!   left (its `backlog_remaining`, counted by the same rule at its end). It looks at least
//!   every [`REREAD`], since the shop commits such changes at any moment.
//!
//! What the last pass left — an order someone held, a row held for long, an order too large —
//! is looked at again like deferred work, [`RETRY_DEFERRED`] after that pass. So rows that stay
//! due on purpose never make it spin: a paid order's and a payment in grace are not due by the
//! rule, a held one was left. The front-end drives it: the passes go through the events layer,
//! which publishes their events.

use std::time::{Duration, Instant};

use super::batch;
use super::run_report::{RunReport, StopReason};
use crate::config::ReleaseSettings;
use crate::db::session::Database;
use crate::db::sql::follow::next_due;
use crate::db::sql::PgTimestamp;
use crate::error::Result;
use tokio_postgres::GenericClient;

/// The longest follow mode sleeps without looking again at what is due: how soon it sees a
/// reservation the shop made due (a failed payment, a hold cut back).
pub const REREAD: Duration = Duration::from_secs(1);
/// How long after a pass that left due work (deferred, held, too large) or backed off the next
/// pass tries it again.
pub const RETRY_DEFERRED: Duration = Duration::from_secs(5);
/// How often follow mode publishes the expiry warnings (each looks this far beyond the lead
/// time, so that none falls between two checks).
pub const WARNING_TICK: Duration = Duration::from_secs(30);
/// Added to each sleep until a due time: the wake-up finds the row due on the database clock.
const PAST_DUE: Duration = Duration::from_millis(5);

/// What follow mode does next.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Next {
    /// Run a pass now.
    Pass,
    /// Sleep this long, then ask again.
    Sleep(Duration),
    /// The time is up.
    Done,
}

/// Follow mode's clock between passes.
#[derive(Debug)]
pub struct Follower {
    until: Instant,
    rules: crate::db::sql::Rules,
    /// The database's `now()` read before the last pass (`-infinity` before the first).
    after: PgTimestamp,
    /// Reservations due by the rule that the last pass left: a look that counts more passes at
    /// once. None before the first pass, and after a pass that backed off (retries exhausted, a
    /// table locked): then only its retry passes.
    left: Option<u64>,
    passes: u64,
    wakeups: u64,
    retry_at: Option<Instant>,
}

impl Follower {
    /// Follows until `until`.
    pub fn new(settings: &ReleaseSettings, until: Instant) -> Self {
        Follower {
            until,
            rules: batch::rules(settings),
            after: PgTimestamp::MIN,
            left: None,
            passes: 0,
            wakeups: 0,
            retry_at: None,
        }
    }

    /// Looks at what is due and when the next reservation falls due (one statement) and says
    /// what to do.
    pub async fn next(&mut self, db: &Database) -> Result<Next> {
        self.next_on(&db.client).await
    }

    /// [`Follower::next`] on any session whose `search_path` resolves the tenant's tables (a
    /// follower of many tenants looks at each on one shared session).
    pub async fn next_on(&mut self, client: &(impl GenericClient + Sync)) -> Result<Next> {
        let now = Instant::now();
        if now >= self.until {
            return Ok(Next::Done);
        }
        // One more than the last pass left is enough to tell that more are due.
        let count_up_to = self.left.map_or(0, |left| {
            i64::try_from(left).unwrap_or(i64::MAX).saturating_add(1)
        });
        let look = next_due(client, self.after, self.rules, count_up_to).await?;
        self.wakeups += 1;
        let retry_now = self.retry_at.is_some_and(|at| now >= at);
        let due_by_clock = look.wait_seconds.is_some_and(|s| s <= 0.0);
        let made_due = self
            .left
            .is_some_and(|left| u64::try_from(look.due).unwrap_or(0) > left);
        if self.passes == 0 || due_by_clock || made_due || retry_now {
            self.after = look.checked_at;
            self.retry_at = None;
            self.passes += 1;
            return Ok(Next::Pass);
        }
        let mut sleep = REREAD.min(self.until - now);
        if let Some(wait) = look.wait_seconds {
            // Positive here; capped before it becomes a `Duration`, so that a time at the far
            // end of the calendar is only a longer wait.
            let wait = Duration::from_secs_f64(wait.min(REREAD.as_secs_f64()));
            sleep = sleep.min(wait + PAST_DUE);
        }
        if let Some(at) = self.retry_at {
            sleep = sleep.min(at - now);
        }
        Ok(Next::Sleep(sleep))
    }

    /// Takes note of how a pass ended: more was due than it could take (pass again at once),
    /// it left due work — deferred, held by a shopper, too large — (try again after
    /// [`RETRY_DEFERRED`], and meanwhile pass only for more), or it backed off (try again after
    /// [`RETRY_DEFERRED`], whatever falls due meanwhile).
    pub fn passed(&mut self, report: &RunReport) {
        let later = Instant::now() + RETRY_DEFERRED;
        let left = report.backlog_remaining;
        (self.left, self.retry_at) = match report.stopped_reason {
            StopReason::MaxBatches => (Some(left), Some(Instant::now())),
            StopReason::RetriesExhausted | StopReason::TableLocked => (None, Some(later)),
            _ if left > 0 || report.deferred > 0 || report.large_orders_left > 0 => {
                (Some(left), Some(later))
            }
            _ => (Some(left), None),
        };
    }

    /// Passes run and wake-ups (looks at what is due) so far.
    pub fn counts(&self) -> (u64, u64) {
        (self.passes, self.wakeups)
    }
}

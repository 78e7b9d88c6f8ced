//! Follow mode: release as reservations fall due instead of once per schedule. A pass (one run)
//! releases what is due; then [`Follower`] sleeps until the next reservation falls due by the
//! release's rules ([`crate::db::sql::follow::NEXT_DUE`], counted from the `now()` read before
//! the pass, so that rows staying due on purpose never wake it), looking again at least every
//! [`REREAD`] so that a hold shortened meanwhile is not missed, and passes again. Deferred work
//! (a row someone held for long) is tried again [`RETRY_DEFERRED`] after the pass that left it.
//! The front-end drives it: the passes go through the events layer, which publishes their
//! events.

use std::time::{Duration, Instant};

use super::batch;
use super::run_report::{RunReport, StopReason};
use crate::config::ReleaseSettings;
use crate::db::session::Database;
use crate::db::sql::follow::next_due;
use crate::db::sql::PgTimestamp;
use crate::error::Result;

/// The longest follow mode sleeps without looking again when the next reservation falls due.
pub const REREAD: Duration = Duration::from_secs(1);
/// How long after a pass that left deferred work (or backed off) the next pass tries it again.
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
            passes: 0,
            wakeups: 0,
            retry_at: None,
        }
    }

    /// Looks when the next reservation falls due (one statement) and says what to do.
    pub async fn next(&mut self, db: &Database) -> Result<Next> {
        let now = Instant::now();
        if now >= self.until {
            return Ok(Next::Done);
        }
        let due = next_due(&db.client, self.after, self.rules).await?;
        self.wakeups += 1;
        let retry_now = self.retry_at.is_some_and(|at| now >= at);
        let due_now = due.wait_seconds.is_some_and(|s| s <= 0.0);
        if self.passes == 0 || due_now || retry_now {
            self.after = due.checked_at;
            self.retry_at = None;
            self.passes += 1;
            return Ok(Next::Pass);
        }
        let mut sleep = REREAD.min(self.until - now);
        if let Some(wait) = due.wait_seconds {
            sleep = sleep.min(Duration::from_secs_f64(wait) + PAST_DUE);
        }
        if let Some(at) = self.retry_at {
            sleep = sleep.min(at - now);
        }
        Ok(Next::Sleep(sleep))
    }

    /// Takes note of how a pass ended: more was due than it could take (pass again at once),
    /// or it left work a held row kept (try again after [`RETRY_DEFERRED`]).
    pub fn passed(&mut self, report: &RunReport) {
        self.retry_at = match report.stopped_reason {
            StopReason::MaxBatches => Some(Instant::now()),
            StopReason::RetriesExhausted | StopReason::TableLocked => {
                Some(Instant::now() + RETRY_DEFERRED)
            }
            _ if report.deferred > 0 || report.large_orders_left > 0 => {
                Some(Instant::now() + RETRY_DEFERRED)
            }
            _ => None,
        };
    }

    /// Passes run and wake-ups (lookups of the next due time) so far.
    pub fn counts(&self) -> (u64, u64) {
        (self.passes, self.wakeups)
    }
}

//! When the purge's next chunk may start: its pace beside the shop, one rule each.
//!
//! - **After a chunk that met others** (a row found held, or other sessions at work on the
//!   database as it was about to commit: a shopper checking out, the release), the purge rests
//!   `PURGE_REST_RATIO` times as long as it worked since its last rest ([`rest`]; pt-archiver's
//!   `--sleep-coef`): the chunk and the looks below, so that beside the shop it works at most
//!   `1 / (1 + ratio)` of the time. A chunk slowed by a busy server (its time includes the
//!   waits for the CPU and the WAL flush it shares with the shoppers) rests the longer for it.
//!   After a quiet chunk, no rest.
//! - **Before a chunk**, at most every [`LOOK_EVERY`] (pt-archiver's `--check-interval`), it
//!   looks at the streaming replicas' replay lag and the release's backlog, and waits while the
//!   lag exceeds `max_lag` or the release has due work (the release always goes first),
//!   looking again every [`LOOK_EVERY`]. Measured: looking before every chunk cost more than
//!   the chunks beside the shoppers (the backlog count took 19 ms, a 100-row chunk 5 ms) and
//!   was not rested for.
//! - It stops before a chunk that could not finish before the deadline, and never rests past
//!   the last instant one could start.

use std::time::{Duration, Instant};

use super::{past, Purge};
use crate::db::session::Database;
use crate::db::sql::purge as sql;
use crate::engine::batch;
use crate::error::Result;

/// How often the purge looks at the replicas' lag and the release's backlog: before a chunk
/// when this long has passed since the last look, and while paused.
pub const LOOK_EVERY: Duration = Duration::from_millis(250);
/// Without a deadline (a command line without `TIME_BUDGET_SECONDS`), the longest a purge
/// waits in one pause before it stops and leaves the rest to the next one.
const LONGEST_PAUSE: Duration = Duration::from_secs(600);
/// The shortest and the longest rest after a chunk that met others.
pub const SHORTEST_REST: Duration = Duration::from_millis(10);
pub const LONGEST_REST: Duration = Duration::from_secs(2);

/// The rest after `worked` (a chunk and the looks before it) that met others: `ratio` times as
/// long, within [`SHORTEST_REST`]..=[`LONGEST_REST`].
pub fn rest(ratio: u32, worked: Duration) -> Duration {
    worked
        .saturating_mul(ratio)
        .clamp(SHORTEST_REST, LONGEST_REST)
}

/// What the pace remembers between chunks.
#[derive(Debug, Default)]
pub(super) struct Pace {
    /// When the purge last looked at the replicas and the release.
    looked: Option<Instant>,
    /// Time its looks took since the last rest.
    looking: Duration,
}

impl Purge<'_> {
    /// After a chunk that took `took`: rests when it met others ([`rest`] of the chunk and the
    /// looks since the last rest), never past the last instant a chunk could start before the
    /// deadline.
    pub(super) async fn rest_after(&mut self, took: Duration, met_others: bool) {
        let worked = took + std::mem::take(&mut self.pace.looking);
        if !met_others {
            return;
        }
        let mut rest = rest(self.settings.purge_rest_ratio, worked);
        if let Some(deadline) = self.options.deadline {
            rest = rest.min(deadline.saturating_duration_since(Instant::now() + self.budget));
        }
        tokio::time::sleep(rest).await;
        self.report.rested_ms += rest.as_millis() as u64;
    }

    /// Checks that a chunk can finish before the deadline and, when [`LOOK_EVERY`] has passed
    /// since the last look, waits while a replica lags past the bound or the release has due
    /// work. False: stop (the report says why).
    pub(super) async fn may_go_on(&mut self, db: &Database) -> Result<bool> {
        let paused = Instant::now();
        let mut pausing: Option<&'static str> = None;
        loop {
            if past(self.options.deadline, self.budget) {
                self.report.stopped = pausing.unwrap_or("time_budget");
                break Ok(false);
            }
            if pausing.is_none() && self.pace.looked.is_some_and(|at| at.elapsed() < LOOK_EVERY) {
                break Ok(true);
            }
            let looking = Instant::now();
            let why = self.why_wait(db).await?;
            self.pace.looked = Some(Instant::now());
            self.pace.looking += looking.elapsed();
            let Some(why) = why else {
                break Ok(true);
            };
            if pausing != Some(why) {
                match why {
                    "replica_lag" => self.report.lag_pauses += 1,
                    _ => self.report.release_yields += 1,
                }
                pausing = Some(why);
            }
            if self.options.deadline.is_none() && paused.elapsed() >= LONGEST_PAUSE {
                self.report.stopped = why;
                break Ok(false);
            }
            tokio::time::sleep(LOOK_EVERY).await;
            self.report.paused_ms += LOOK_EVERY.as_millis() as u64;
        }
    }

    /// Why the next chunk must wait: `replica_lag`, `release_due_work`, or None.
    async fn why_wait(&mut self, db: &Database) -> Result<Option<&'static str>> {
        let lag = sql::replica_lag(&db.client).await?;
        let seen = &mut self.report.replicas;
        seen.visible = seen.visible.max(lag.replicas - lag.hidden);
        seen.lag_hidden = seen.lag_hidden.max(lag.hidden);
        seen.max_replay_lag_ms = seen.max_replay_lag_ms.max(lag.max_replay_lag_ms);
        seen.note = if seen.lag_hidden > 0 {
            Some("a replica's lag is hidden from this role: grant it pg_monitor".into())
        } else if seen.visible == 0 {
            Some("no streaming replica visible (as on Aurora): replay lag not watched".into())
        } else {
            None
        };
        if lag.replicas > lag.hidden
            && lag.max_replay_lag_ms > self.options.max_lag.as_secs_f64() * 1000.0
        {
            return Ok(Some("replica_lag"));
        }
        let backlog = db
            .statements
            .backlog(&db.client, batch::rules(self.settings))
            .await?;
        Ok((backlog.due > 0).then_some("release_due_work"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_chunk_that_met_others_rests_ratio_times_its_work_within_bounds() {
        let ms = Duration::from_millis;
        assert_eq!(rest(4, ms(12)), ms(48));
        assert_eq!(rest(1, ms(30)), ms(30));
        assert_eq!(rest(0, ms(30)), SHORTEST_REST);
        assert_eq!(rest(4, ms(1)), SHORTEST_REST);
        assert_eq!(rest(100, ms(900)), LONGEST_REST);
    }
}

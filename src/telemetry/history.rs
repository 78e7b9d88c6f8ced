//! A follower's last hour, kept in memory for its page ([`super::page`]): per minute, what its
//! passes released and how late (the chart), and its last [`LAST_PASSES`] passes (the table).
//! Bounded whatever the load: at most [`MINUTES`] minutes and [`LAST_PASSES`] passes, each a
//! few numbers; nothing is kept across a restart (Prometheus keeps the long history).

use std::collections::VecDeque;
use std::time::{SystemTime, UNIX_EPOCH};

use crate::engine::run_report::RunReport;

/// How many minutes the chart covers: the last hour.
pub const MINUTES: u64 = 60;
/// How many passes the page lists.
pub const LAST_PASSES: usize = 20;

/// What the passes of one minute did.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Minute {
    /// Whole minutes since the Unix epoch.
    pub minute: u64,
    pub passes: u64,
    pub failed_passes: u64,
    pub reservations_released: u64,
    pub units_released: u64,
    /// The longest release delay of the reservations released in this minute, in seconds
    /// (from due to released); None when nothing was released.
    pub delay_max_seconds: Option<f64>,
}

/// One pass, as the page lists it.
#[derive(Debug, Clone, PartialEq)]
pub struct Pass {
    /// When it ended, in seconds since the Unix epoch.
    pub ended_at: f64,
    /// Why it stopped (`drained`, `failed`, ...).
    pub outcome: &'static str,
    pub failed: bool,
    pub reservations_released: u64,
    pub units_released: u64,
    pub delay_max_seconds: Option<f64>,
    /// Due reservations it left, and the age of the oldest, in seconds.
    pub backlog_remaining: u64,
    pub oldest_due_age_seconds: Option<f64>,
    pub duration_ms: u64,
}

/// The follower's last hour.
#[derive(Debug, Default)]
pub struct History {
    /// Oldest first; at most [`MINUTES`], none older than an hour.
    minutes: VecDeque<Minute>,
    /// Oldest first; at most [`LAST_PASSES`].
    passes: VecDeque<Pass>,
}

/// Seconds since the Unix epoch.
pub fn unix_now() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64())
}

impl History {
    /// Records a pass that ended at `now` (seconds since the epoch); `failed`: it ended in an
    /// error (`report` is what it did before).
    pub fn record(&mut self, report: &RunReport, failed: bool, now: f64) {
        let minute = (now.max(0.0) / 60.0) as u64;
        let delay_max = report.delays.iter().copied().reduce(f64::max);
        let pass = Pass {
            ended_at: now,
            outcome: if failed {
                "failed"
            } else {
                report.stopped_reason.as_str()
            },
            failed,
            reservations_released: report.counts.reservations_released,
            units_released: report.counts.units_released,
            delay_max_seconds: delay_max,
            backlog_remaining: report.backlog_remaining,
            oldest_due_age_seconds: report.oldest_due_age_seconds,
            duration_ms: report.duration_ms,
        };
        if self.minutes.back().is_none_or(|m| m.minute != minute) {
            self.minutes.push_back(Minute {
                minute,
                ..Minute::default()
            });
        }
        if let Some(m) = self.minutes.back_mut() {
            m.passes += 1;
            m.failed_passes += u64::from(failed);
            m.reservations_released += pass.reservations_released;
            m.units_released += pass.units_released;
            m.delay_max_seconds = match (m.delay_max_seconds, delay_max) {
                (Some(a), Some(b)) => Some(a.max(b)),
                (a, b) => a.or(b),
            };
        }
        self.passes.push_back(pass);
        while self.passes.len() > LAST_PASSES {
            self.passes.pop_front();
        }
        self.forget_before(minute);
    }

    /// Drops the minutes more than an hour before `minute`.
    fn forget_before(&mut self, minute: u64) {
        let first = minute.saturating_sub(MINUTES - 1);
        while self.minutes.front().is_some_and(|m| m.minute < first) {
            self.minutes.pop_front();
        }
    }

    /// The last hour's [`MINUTES`] minutes up to the one of `now`, oldest first, with the
    /// minutes without a pass filled in as empty.
    pub fn last_hour(&self, now: f64) -> Vec<Minute> {
        let last = (now.max(0.0) / 60.0) as u64;
        let first = last.saturating_sub(MINUTES - 1);
        (first..=last)
            .map(|minute| {
                self.minutes
                    .iter()
                    .find(|m| m.minute == minute)
                    .copied()
                    .unwrap_or(Minute {
                        minute,
                        ..Minute::default()
                    })
            })
            .collect()
    }

    /// The last passes, newest first.
    pub fn last_passes(&self) -> impl Iterator<Item = &Pass> {
        self.passes.iter().rev()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn released(reservations: u64, units: u64, delays: &[f64]) -> RunReport {
        let mut report = RunReport::new(false);
        report.counts.reservations_released = reservations;
        report.counts.units_released = units;
        report.delays = delays.to_vec();
        report
    }

    #[test]
    fn a_minute_sums_its_passes_and_keeps_the_longest_delay() {
        let mut history = History::default();
        let now = 600.0 * 60.0 + 5.0;
        history.record(&released(2, 5, &[0.4, 1.5]), false, now);
        history.record(&released(1, 1, &[0.2]), false, now + 10.0);
        history.record(&released(0, 0, &[]), true, now + 20.0);
        let hour = history.last_hour(now + 30.0);
        assert_eq!(hour.len(), MINUTES as usize);
        let last = hour.last().copied().unwrap_or_default();
        assert_eq!(
            (last.passes, last.failed_passes, last.reservations_released),
            (3, 1, 3)
        );
        assert_eq!(
            (last.units_released, last.delay_max_seconds),
            (6, Some(1.5))
        );
        assert!(hour[..hour.len() - 1].iter().all(|m| m.passes == 0));
        let outcomes: Vec<_> = history.last_passes().map(|p| p.outcome).collect();
        assert_eq!(outcomes, ["failed", "drained", "drained"]);
    }

    /// However long it follows and however many passes, it keeps an hour and 20 passes.
    #[test]
    fn it_keeps_the_last_hour_and_the_last_passes_only() {
        let mut history = History::default();
        for second in 0..3 * 3600 {
            history.record(&released(1, 1, &[1.0]), false, f64::from(second));
        }
        assert_eq!(history.minutes.len(), MINUTES as usize);
        assert_eq!(history.passes.len(), LAST_PASSES);
        let hour = history.last_hour(f64::from(3 * 3600 - 1));
        assert!(hour.iter().all(|m| m.units_released == 60), "{hour:?}");
        // An hour later with no pass: the chart is empty.
        let later = history.last_hour(f64::from(4 * 3600 + 60));
        assert!(later.iter().all(|m| m.passes == 0));
    }
}

//! `follow`: release as reservations fall due, for a while — pass after pass, sleeping until
//! the next reservation falls due (see [`crate::engine::follow`]) — and answer with the passes'
//! reports summed, as `run` does (one summary line, one metrics document). It ends when its
//! seconds are up (never past the invocation's deadline) or when asked to stop (SIGTERM or
//! SIGINT on the command line): the batch in flight finishes, no other starts. With `--listen
//! ADDR` (the command line only) it serves its metrics, probes and status over HTTP
//! ([`crate::listen`]).
//!
//! A scheduled follow carries its scheduled time (`scheduled_time`, EventBridge Scheduler's
//! `<aws.scheduler.scheduled-time>`), so that late or repeated events never pile up: it ends at
//! that time plus its seconds, whenever it started; one whose end has passed is answered at
//! once, `stale`, without connecting; one whose minute another session already follows (a
//! duplicate delivery, a retry) is answered at once, `duplicate` (a session advisory lock on
//! the minute, `sql::follow::TRY_LOCK_MINUTE`). Both are logged and counted (`StaleFollows`,
//! `DuplicateFollows`).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use tokio::sync::watch;
use tracing::Instrument;

use crate::action::{
    open, run_context, summarized, Action, AppState, Failure, Front, Invocation, Metrics, Source,
};
use crate::db::sql::follow::try_lock_minute;
use crate::engine::follow::{Follower, Next, WARNING_TICK};
use crate::engine::run::{RunFailure, RunOptions};
use crate::engine::run_report::{FollowStats, RunReport, FOLLOW_DUPLICATE, FOLLOW_STALE};
use crate::error::{Error, Result};
use crate::events;
use crate::listen::Monitor;
use crate::telemetry;
use crate::telemetry::metrics::Observation;

/// The longest a follow may be asked to last, in seconds (a Lambda function's longest timeout).
pub const MAX_SECONDS: u32 = 900;
/// Following with no end: until a signal.
const FOREVER: Duration = Duration::from_secs(10 * 365 * 24 * 3600);

/// Keep releasing as reservations fall due (sleeping until the next one, looking again
/// every second), until --for runs out or SIGTERM/SIGINT (the batch in flight finishes);
/// then print the run report, summed over the passes.
///
/// How long to follow, and who asked: `unreserver follow [--for SECONDS]` (without it, until
/// a signal), or the payload `{"action": "follow", "seconds": 60}` (`seconds` optional, 60 by
/// default: the schedule's minute; never past the invocation's deadline less its margin).
#[derive(Debug, Clone, Default, PartialEq, Eq, clap::Args, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Follow {
    /// Follow this many seconds (1 to 900); without it, until a signal.
    #[arg(long = "for", value_name = "SECONDS")]
    pub seconds: Option<u32>,
    /// Serve the page (/), /metrics, /healthz, /readyz and /status on this address (e.g.
    /// 0.0.0.0:9187).
    #[arg(long, value_name = "ADDR")]
    #[serde(skip)]
    pub listen: Option<SocketAddr>,
    /// Who asked.
    #[arg(skip)]
    pub source: Option<Source>,
    /// When the schedule meant this follow to start (payload only): it ends at this time plus
    /// its seconds, is `stale` when that has passed, `duplicate` when its minute is followed.
    #[arg(skip)]
    #[serde(default)]
    pub scheduled_time: Option<ScheduledTime>,
}

/// A scheduled follow's start, as EventBridge Scheduler writes `<aws.scheduler.scheduled-time>`
/// ("The time you specified for the schedule to invoke its target, for example,
/// 2022-03-22T18:59:43Z", EventBridge Scheduler User Guide, "Adding context attributes"), and
/// its minute since the Unix epoch: the key of the follow lock.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ScheduledTime {
    pub at: SystemTime,
    pub minute: i32,
}

impl<'de> serde::Deserialize<'de> for ScheduledTime {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        let text = String::deserialize(d)?;
        let invalid = || {
            serde::de::Error::custom(
                "must be an RFC 3339 UTC time after 1970, such as 2026-12-07T10:15:00Z",
            )
        };
        let at = humantime::parse_rfc3339(&text).map_err(|_| invalid())?;
        let minutes = at
            .duration_since(UNIX_EPOCH)
            .map_err(|_| invalid())?
            .as_secs()
            / 60;
        let minute = i32::try_from(minutes).map_err(|_| invalid())?;
        Ok(ScheduledTime { at, minute })
    }
}

/// How long a `follow` payload without `seconds` follows: the schedule's minute.
pub const DEFAULT_PAYLOAD_SECONDS: u32 = 60;

impl Action for Follow {
    const NAME: &'static str = "follow";
    const METRICS: Metrics = Metrics::Run;
    type Answer = RunReport;

    /// The seconds range-checked under the name the front-end gave them; a payload without
    /// them follows [`DEFAULT_PAYLOAD_SECONDS`].
    fn check(self, front: Front) -> Result<Self> {
        let seconds = match front {
            Front::Payload => Some(self.seconds.unwrap_or(DEFAULT_PAYLOAD_SECONDS)),
            Front::Cli => self.seconds,
        };
        if seconds.is_some_and(|s| s == 0 || s > MAX_SECONDS) {
            return Err(Error::Setting {
                name: front.name("--for", "seconds").into(),
                reason: format!("must be 1 to {MAX_SECONDS} seconds"),
            });
        }
        Ok(Follow {
            seconds,
            listen: self.listen,
            source: Some(Source::or_default(self.source, front)),
            scheduled_time: self.scheduled_time,
        })
    }
}

impl Follow {
    /// Who asked.
    pub fn source(&self) -> &str {
        Source::name(&self.source)
    }

    pub async fn execute(
        self,
        state: &AppState,
        invocation: &Invocation<'_>,
    ) -> std::result::Result<RunReport, Failure> {
        let ctx = run_context(state, invocation, self.source(), false);
        let monitor = self.listen.map(|_| Arc::new(Monitor::default()));
        let server = match (self.listen, &monitor) {
            (Some(addr), Some(monitor)) => {
                let stop = invocation.stop.clone();
                Some(crate::listen::serve(addr, monitor.clone(), stop).await?)
            }
            _ => None,
        };
        if let Some(monitor) = &monitor {
            monitor.set_alive(true);
        }
        let outcome = self
            .passes(state, invocation, monitor.as_deref())
            .instrument(telemetry::run_span(&ctx))
            .await;
        if let Some(monitor) = &monitor {
            monitor.set_alive(false);
        }
        if let Some(server) = server {
            server.abort();
        }
        summarized(&ctx, outcome)
    }

    /// How long following may last from `now`: its seconds, counted from its scheduled time
    /// when it has one — None when that end has passed (a stale event) — else without end.
    pub(crate) fn length(&self, now: SystemTime) -> Option<Duration> {
        let seconds = self.seconds.map(|s| Duration::from_secs(u64::from(s)));
        match (self.scheduled_time, seconds) {
            (Some(scheduled), Some(seconds)) => (scheduled.at + seconds)
                .duration_since(now)
                .ok()
                .filter(|left| !left.is_zero()),
            _ => Some(seconds.unwrap_or(FOREVER)),
        }
    }

    /// Logs a follow event answered at once, without following: `ended` says why.
    fn answered_at_once(&self, ended: &'static str) {
        let scheduled = self.scheduled_time.map(|s| humantime::format_rfc3339(s.at));
        tracing::warn!(
            ended,
            scheduled_time = scheduled.map(|t| t.to_string()),
            "follow event answered at once: {ended}"
        );
    }

    /// The answer to a stale event: its report, no pass, no look, no connection.
    pub(crate) fn stale(&self, run_id: &str) -> RunReport {
        self.answered_at_once(FOLLOW_STALE);
        let mut report = RunReport::new(false);
        report.run_id = run_id.to_string();
        report.follow = Some(FollowStats {
            passes: 0,
            wakeups: 0,
            ended: FOLLOW_STALE,
        });
        report
    }

    /// Whether this session may follow: it now holds its scheduled minute's lock (always,
    /// without a scheduled time); false for a duplicate, which is logged.
    pub(crate) async fn takes_its_minute(
        &self,
        client: &(impl tokio_postgres::GenericClient + Sync),
    ) -> Result<bool> {
        let Some(scheduled) = self.scheduled_time else {
            return Ok(true);
        };
        let taken = try_lock_minute(client, scheduled.minute).await?;
        if !taken {
            self.answered_at_once(FOLLOW_DUPLICATE);
        }
        Ok(taken)
    }

    /// Pass after pass until the time is up or a stop is asked; the summed report, or the
    /// error with what the passes before it did.
    async fn passes(
        &self,
        state: &AppState,
        invocation: &Invocation<'_>,
        monitor: Option<&Monitor>,
    ) -> std::result::Result<RunReport, RunFailure> {
        let started = Instant::now();
        let Some(length) = self.length(SystemTime::now()) else {
            return Ok(self.stale(invocation.run_id));
        };
        let mut total = RunReport::new(false);
        total.run_id = invocation.run_id.to_string();
        let end = started + length;
        let until = invocation.deadline.map_or(end, |d| d.min(end));
        let mut stop = invocation.stop.clone();
        let mut follower = Follower::new(&state.config.release, until);
        let mut ended = "time";
        let result = async {
            let mut db = open(state).await?;
            if !self.takes_its_minute(&db.client).await? {
                ended = FOLLOW_DUPLICATE;
                return Ok(());
            }
            if let Some(scheduled) = self.scheduled_time {
                db.keeps_follow_minute(scheduled.minute);
            }
            let mut warned: Option<Instant> = None;
            loop {
                if stop.as_ref().is_some_and(|s| *s.borrow()) {
                    ended = "signal";
                    return Ok(());
                }
                if warned.is_none_or(|at| at.elapsed() >= WARNING_TICK) {
                    warned = Some(Instant::now());
                    warn(&db, state, invocation, &mut total).await;
                }
                match look(&mut follower, &db, state, monitor).await? {
                    Next::Done => return Ok(()),
                    Next::Sleep(pause) => sleep_or_stop(pause, stop.as_mut()).await,
                    Next::Pass => {
                        let stop = stop.clone();
                        match observed_pass(&mut db, state, invocation, stop, monitor).await {
                            Ok(report) => {
                                follower.passed(&report);
                                total.add_pass(report);
                            }
                            Err(failure) => {
                                total.add_pass(*failure.report);
                                return Err(failure.error);
                            }
                        }
                    }
                }
            }
        }
        .await;
        let follow = FollowStats {
            passes: follower.counts().0,
            wakeups: follower.counts().1,
            ended,
        };
        finished(total, follow, started, result)
    }
}

/// The follow's report — its passes summed, with what follow mode did — or the error with it.
fn finished(
    mut total: RunReport,
    follow: FollowStats,
    started: Instant,
    result: Result<()>,
) -> std::result::Result<RunReport, RunFailure> {
    total.follow = Some(follow);
    total.duration_ms = started.elapsed().as_millis() as u64;
    match result {
        Ok(()) => Ok(total),
        Err(error) => {
            total.stopped_reason = crate::engine::run_report::StopReason::Failed;
            Err(RunFailure {
                error,
                report: Box::new(total),
            })
        }
    }
}

/// A look at what is due (with the status `/status` asked for first), recorded for the
/// endpoints: a round trip, and a success when nothing is due now.
async fn look(
    follower: &mut Follower,
    db: &crate::db::session::Database,
    state: &AppState,
    monitor: Option<&Monitor>,
) -> Result<Next> {
    if let Some(monitor) = monitor.filter(|m| m.status_wanted()) {
        read_status(db, state, monitor).await;
    }
    let next = follower.next(db).await?;
    if let Some(monitor) = monitor {
        monitor.round_trip(matches!(next, Next::Sleep(_)));
    }
    Ok(next)
}

/// One pass, with its metrics and round trip recorded for the endpoints.
async fn observed_pass(
    db: &mut crate::db::session::Database,
    state: &AppState,
    invocation: &Invocation<'_>,
    stop: Option<watch::Receiver<bool>>,
    monitor: Option<&Monitor>,
) -> std::result::Result<RunReport, RunFailure> {
    let Some(monitor) = monitor else {
        return pass(db, state, invocation, stop).await;
    };
    monitor.pass_started();
    let report = pass(db, state, invocation, stop).await;
    let (observed, failed) = match &report {
        Ok(report) => (report, false),
        Err(failure) => (failure.report.as_ref(), true),
    };
    monitor.pass_ended(&observation(invocation, observed, failed));
    report
}

/// What one pass contributes to the metrics.
fn observation<'a>(
    invocation: &Invocation<'a>,
    report: &'a RunReport,
    failed: bool,
) -> Observation<'a> {
    Observation {
        reconcile: None,
        purge: None,
        run_id: invocation.run_id,
        tenant: None,
        report: Some(report),
        failed,
        dry_run: false,
        cold_start: false,
        duration_ms: report.duration_ms,
    }
}

/// Reads `status` on the follower's connection for `/status` (an error is answered as
/// `{"error": ...}`: the follower goes on, and its next look tells whether the database is
/// there).
async fn read_status(db: &crate::db::session::Database, state: &AppState, monitor: &Monitor) {
    let read = crate::engine::status::status(db, &state.config.release).await;
    let json = match read {
        Ok(status) => serde_json::to_value(status).unwrap_or_default(),
        Err(error) => serde_json::json!({ "error": error.to_string() }),
    };
    monitor.set_status(json);
}

/// The expiry warnings of the next [`WARNING_TICK`] beyond their lead time, when configured.
async fn warn(
    db: &crate::db::session::Database,
    state: &AppState,
    invocation: &Invocation<'_>,
    total: &mut RunReport,
) {
    if let (Some(publisher), Some(lead)) = (&state.publisher, state.config.events.warning_lead) {
        let window = lead + WARNING_TICK;
        let rules = crate::engine::batch::rules(&state.config.release);
        events::warnings::publish(db, publisher, window, rules, invocation.run_id, total).await;
    }
}

/// One pass: a run over what is due now, its events published.
pub(crate) async fn pass(
    db: &mut crate::db::session::Database,
    state: &AppState,
    invocation: &Invocation<'_>,
    stop: Option<watch::Receiver<bool>>,
) -> std::result::Result<RunReport, crate::engine::run::RunFailure> {
    let options = RunOptions {
        deadline: invocation.deadline,
        run_id: invocation.run_id.to_string(),
        stop,
        ..RunOptions::default()
    };
    let (publisher, grace) = (state.publisher.as_ref(), invocation.publish_grace);
    events::run::run_publishing(db, &state.config.release, options, publisher, grace).await
}

/// Sleeps `pause`, or less if a stop is asked meanwhile.
pub(crate) async fn sleep_or_stop(pause: Duration, stop: Option<&mut watch::Receiver<bool>>) {
    match stop {
        Some(stop) => {
            tokio::select! {
                () = tokio::time::sleep(pause) => {}
                _ = stop.changed() => {}
            }
        }
        None => tokio::time::sleep(pause).await,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scheduled(now: SystemTime, seconds_ago: u64, seconds: u32) -> Follow {
        let at = now - Duration::from_secs(seconds_ago);
        Follow {
            seconds: Some(seconds),
            listen: None,
            source: None,
            scheduled_time: Some(ScheduledTime { at, minute: 0 }),
        }
    }

    #[test]
    fn a_scheduled_follow_ends_at_its_minute_plus_its_seconds_whenever_it_starts() {
        let now = SystemTime::now();
        // Started 20 s late: 40 s left of its 60, not 60.
        let left = scheduled(now, 20, 60).length(now);
        assert_eq!(left, Some(Duration::from_secs(40)));
        // Its minute is over: stale, answered at once.
        assert_eq!(scheduled(now, 61, 60).length(now), None);
        assert_eq!(scheduled(now, 60, 60).length(now), None);
        // Without a scheduled time: its seconds from now, or without end.
        let manual = Follow {
            seconds: Some(60),
            ..Follow::default()
        };
        assert_eq!(manual.length(now), Some(Duration::from_secs(60)));
        assert_eq!(Follow::default().length(now), Some(FOREVER));
    }
}

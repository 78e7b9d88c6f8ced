//! `follow`: release as reservations fall due, for a while — pass after pass, sleeping until
//! the next reservation falls due (see [`crate::engine::follow`]) — and answer with the passes'
//! reports summed, as `run` does (one summary line, one metrics document). It ends when its
//! seconds are up (never past the invocation's deadline) or when asked to stop (SIGTERM or
//! SIGINT on the command line): the batch in flight finishes, no other starts. With `--listen
//! ADDR` (the command line only) it serves its metrics, probes and status over HTTP
//! ([`crate::listen`]).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::watch;
use tracing::Instrument;

use crate::action::{
    open, run_context, summarized, Action, AppState, Failure, Front, Invocation, Metrics, Source,
};
use crate::engine::follow::{Follower, Next, WARNING_TICK};
use crate::engine::run::{RunFailure, RunOptions};
use crate::engine::run_report::{FollowStats, RunReport};
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
    /// Serve /metrics, /healthz, /readyz and /status on this address (e.g. 0.0.0.0:9187).
    #[arg(long, value_name = "ADDR")]
    #[serde(skip)]
    pub listen: Option<SocketAddr>,
    /// Who asked.
    #[arg(skip)]
    pub source: Option<Source>,
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

    /// When following ends: its seconds after `started`, never past the invocation's deadline.
    fn until(&self, started: Instant, invocation: &Invocation<'_>) -> Instant {
        let seconds = self.seconds.map(|s| Duration::from_secs(u64::from(s)));
        let end = started + seconds.unwrap_or(FOREVER);
        invocation.deadline.map_or(end, |d| d.min(end))
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
        let until = self.until(started, invocation);
        let mut total = RunReport::new(false);
        total.run_id = invocation.run_id.to_string();
        let mut stop = invocation.stop.clone();
        let mut follower = Follower::new(&state.config.release, until);
        let mut ended = "time";
        let result = async {
            let mut db = open(state).await?;
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
        let (passes, wakeups) = follower.counts();
        total.follow = Some(FollowStats {
            passes,
            wakeups,
            ended,
        });
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
async fn pass(
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
async fn sleep_or_stop(pause: Duration, stop: Option<&mut watch::Receiver<bool>>) {
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

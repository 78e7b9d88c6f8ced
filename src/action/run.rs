//! `run`: release the due reservations in batches, publishing their expiry events, and answer
//! with the run report. One summary line is logged for every run that started.

use std::time::{Duration, Instant};

use tracing::Instrument;

use crate::action::{
    open, run_context, summarized, Action, AppState, Failure, Front, Invocation, Metrics, Observed,
    Reply, Source,
};
use crate::config::ReleaseSettings;
use crate::engine::run::RunOptions;
use crate::engine::run_report::RunReport;
use crate::error::Result;
use crate::events;
use crate::telemetry;

/// Release due reservations and print the run report.
///
/// A run, and what it overrides of the settings: `unreserver run [--dry-run] [--batch-size N]
/// [--max-batches N]`, or the payload `{"dry_run": true, "batch_size": 50, "max_batches": 10,
/// "source": "..."}` (every field optional; the schedule's `{"source": "schedule"}`).
#[derive(Debug, Clone, Default, PartialEq, Eq, clap::Args, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Run {
    /// Run every statement, roll each batch back, and report what would happen.
    #[arg(long)]
    #[serde(default)]
    pub dry_run: bool,
    /// Pins the batch size for this run (as BATCH_SIZE does); unset: adaptive batches.
    #[arg(long)]
    pub batch_size: Option<u32>,
    /// Overrides MAX_BATCHES for this run.
    #[arg(long)]
    pub max_batches: Option<u32>,
    /// Who asked: "schedule", "manual", "cli", or what the payload's `source` said.
    #[arg(skip)]
    pub source: Option<Source>,
    /// The connections this run may drain with, when a sweep across tenants shares `WORKERS`
    /// among the tenants it runs at once (`action::sweep`); neither a flag nor a payload field.
    #[arg(skip)]
    #[serde(skip)]
    pub workers: Option<u32>,
}

impl Action for Run {
    const NAME: &'static str = "run";
    const METRICS: Metrics = Metrics::Run;
    type Answer = RunReport;

    /// Each override range-checked under the name the front-end gave it.
    fn check(self, front: Front) -> Result<Self> {
        ReleaseSettings::check_overrides(
            self.batch_size
                .map(|n| (front.name("--batch-size", "batch_size"), n)),
            self.max_batches
                .map(|n| (front.name("--max-batches", "max_batches"), n)),
        )?;
        Ok(Run {
            source: Some(Source::or_default(self.source, front)),
            ..self
        })
    }

    fn dry_run(&self) -> bool {
        self.dry_run
    }
}

impl Run {
    /// The run the schedule asks for (its `{"source": "schedule"}`, or an EventBridge
    /// "Scheduled Event"), or a payload of none (`null`): the configured settings.
    pub fn scheduled(source: &str) -> Self {
        Run {
            source: Some(Source(source.into())),
            ..Run::default()
        }
    }

    /// Who asked.
    pub fn source(&self) -> &str {
        Source::name(&self.source)
    }

    /// The instant this run stops starting batches by, started at `started`: the invocation's
    /// `deadline`; for a scheduled run, at the latest the next schedule
    /// ([`by_the_next_schedule`]).
    pub fn deadline(
        &self,
        deadline: Option<Instant>,
        started: Instant,
        interval: Duration,
    ) -> Option<Instant> {
        if self.source() == Source::SCHEDULE {
            Some(by_the_next_schedule(deadline, started, interval))
        } else {
            deadline
        }
    }

    /// Opens the connection and runs the release with its events; the run logs its summary
    /// line (a run that could not connect never started: the front-end reports that error).
    pub async fn execute(
        self,
        state: &AppState,
        invocation: &Invocation<'_>,
    ) -> std::result::Result<RunReport, Failure> {
        let mut settings = state.config.release.clone().with_overrides(
            self.batch_size.map(|n| ("batch_size", n)),
            self.max_batches.map(|n| ("max_batches", n)),
        )?;
        if let Some(workers) = self.workers {
            settings.workers = workers.clamp(1, settings.workers);
        }
        let deadline = self.deadline(
            invocation.deadline,
            Instant::now(),
            state.config.events.run_interval,
        );
        let options = RunOptions {
            dry_run: self.dry_run,
            deadline,
            run_id: invocation.run_id.to_string(),
            stop: invocation.stop.clone(),
            ..RunOptions::default()
        };
        let ctx = run_context(state, invocation, self.source(), self.dry_run);
        let mut db = open(state).await?;
        let publisher = state.publisher.as_ref();
        let grace = invocation.publish_grace;
        let span = telemetry::run_span(&ctx);
        let outcome = async {
            let mut outcome =
                events::run::run_publishing(&mut db, &settings, options, publisher, grace).await;
            if let (Some(publisher), Some(lead), false) =
                (publisher, state.config.events.warning_lead, self.dry_run)
            {
                let window = lead + state.config.events.run_interval;
                let report = match &mut outcome {
                    Ok(report) => report,
                    Err(failure) => failure.report.as_mut(),
                };
                let rules = crate::engine::batch::rules(&settings);
                let run_id = invocation.run_id;
                events::warnings::publish(&db, publisher, window, rules, run_id, report).await;
            }
            outcome
        }
        .instrument(span)
        .await;
        summarized(&ctx, outcome)
    }
}

impl Reply for RunReport {
    fn to_json(&self) -> serde_json::Value {
        // Serializing the report cannot fail; fall back to null regardless.
        serde_json::to_value(self).unwrap_or_default()
    }

    fn observed(&self) -> Observed<'_> {
        Observed::Run(self)
    }
}

/// The instant a scheduled run stops starting batches by: its invocation's deadline, and at the
/// latest one `RUN_INTERVAL_SECONDS` after it began, when the next scheduled run starts. Two runs
/// at once each take the rows the other has locked for a shopper's and keep to a busy shop's
/// pace (BENCHMARKS.md, "Runs at once over one backlog": two runs drained 100,000 in 3.6 times
/// one run's time), so a scheduled run leaves what is left to the next one instead of draining
/// beside it.
pub fn by_the_next_schedule(
    deadline: Option<Instant>,
    started: Instant,
    interval: Duration,
) -> Instant {
    let next = started + interval;
    deadline.map_or(next, |deadline| deadline.min(next))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_scheduled_run_stops_by_the_next_schedule_or_its_deadline_whichever_is_first() {
        let started = Instant::now();
        let minute = Duration::from_secs(60);
        // Lambda's 120 s timeout with runs a minute apart: the next run's start.
        let timeout = started + Duration::from_secs(115);
        assert_eq!(
            by_the_next_schedule(Some(timeout), started, minute),
            started + minute
        );
        // A deadline before the next schedule is kept.
        let early = started + Duration::from_secs(30);
        assert_eq!(by_the_next_schedule(Some(early), started, minute), early);
        // No deadline (the command line without a budget): the next schedule.
        assert_eq!(
            by_the_next_schedule(None, started, minute),
            started + minute
        );
        // The schedule's runs only; a manual or command-line run keeps its deadline.
        let scheduled = Run::scheduled(Source::SCHEDULE);
        assert_eq!(
            scheduled.deadline(Some(timeout), started, minute),
            Some(started + minute)
        );
        for source in ["manual", "cli"] {
            let run = Run::scheduled(source);
            assert_eq!(run.deadline(Some(timeout), started, minute), Some(timeout));
            assert_eq!(run.deadline(None, started, minute), None);
        }
    }
}

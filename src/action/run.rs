//! `run`: release the due reservations in batches, publishing their expiry events, and answer
//! with the run report. One summary line is logged for every run that started.

use tracing::Instrument;

use crate::action::{open, run_context, summarized, AppState, Failure, Invocation};
use crate::config::ReleaseSettings;
use crate::engine::report::RunReport;
use crate::engine::run::RunOptions;
use crate::error::Result;
use crate::events;
use crate::telemetry;

/// A run, and what it overrides of the settings.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Run {
    /// Run every statement, roll each batch back, and report what would happen.
    pub dry_run: bool,
    pub batch_size: Option<u32>,
    pub max_batches: Option<u32>,
    /// Who asked: "schedule", "manual", "cli", or what the payload's `source` said.
    pub source: String,
}

impl Run {
    /// A run with these overrides, each range-checked under the name the front-end gave it
    /// (a flag, a payload field).
    pub fn new(
        source: &str,
        dry_run: bool,
        batch_size: Option<(&str, u32)>,
        max_batches: Option<(&str, u32)>,
    ) -> Result<Self> {
        ReleaseSettings::check_overrides(batch_size, max_batches)?;
        Ok(Run {
            dry_run,
            batch_size: batch_size.map(|(_, n)| n),
            max_batches: max_batches.map(|(_, n)| n),
            source: source.into(),
        })
    }

    /// Opens the connection and runs the release with its events; the run logs its summary
    /// line (a run that could not connect never started: the front-end reports that error).
    pub async fn execute(
        self,
        state: &AppState,
        invocation: &Invocation<'_>,
    ) -> std::result::Result<Box<RunReport>, Failure> {
        let settings = state.config.release.clone().with_overrides(
            self.batch_size.map(|n| ("batch_size", n)),
            self.max_batches.map(|n| ("max_batches", n)),
        )?;
        let options = RunOptions {
            dry_run: self.dry_run,
            deadline: invocation.deadline,
            run_id: invocation.run_id.to_string(),
            stop: invocation.stop.clone(),
            ..RunOptions::default()
        };
        let ctx = run_context(state, invocation, &self.source, self.dry_run);
        let mut db = open(state).await?;
        let publisher = state.publisher.as_ref();
        let grace = invocation.publish_grace;
        let span = telemetry::run_span(&ctx);
        let outcome = async {
            let mut outcome = events::run::run(&mut db, &settings, options, publisher, grace).await;
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

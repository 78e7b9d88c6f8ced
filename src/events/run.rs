//! A release run with its expiry events published: the publisher task starts before the run,
//! each committed batch hands it its events, and the run's report gets the counts once the
//! task is done or out of time. Both front-ends run the release through here.

use std::time::{Duration, Instant};

use super::publisher::{Published, Publisher};
use super::{model, sink};
use crate::config::ReleaseSettings;
use crate::db::session::Database;
use crate::engine::report::RunReport;
use crate::engine::run::{self, OnCommit, RunFailure, RunOptions};

/// How long the events may still take after a run without a deadline (the CLI without a time
/// budget).
const WAIT_WITHOUT_DEADLINE: Duration = Duration::from_secs(30);

/// Runs the release on `db`; with a `publisher` (and not a dry run), publishes each committed
/// batch's events, waiting for them at the end until the run's deadline plus `grace` at most.
pub async fn run(
    db: &mut Database,
    settings: &ReleaseSettings,
    mut options: RunOptions,
    publisher: Option<&Publisher>,
    grace: Duration,
) -> Result<RunReport, RunFailure> {
    let Some(publisher) = publisher.filter(|_| !options.dry_run) else {
        return run::run(db, settings, &options).await;
    };
    let (events, task) = sink::spawn(publisher.clone());
    options.on_commit = Some(OnCommit::new(move |batch| {
        events.send(model::from_batch(
            batch.released,
            batch.cancelled,
            batch.run_id,
        ));
    }));
    let outcome = run::run(db, settings, &options).await;
    options.on_commit = None;
    let wait = options.deadline.map_or(WAIT_WITHOUT_DEADLINE, |d| {
        d.saturating_duration_since(Instant::now())
    }) + grace;
    let published = task.finish(wait).await;
    match outcome {
        Ok(mut report) => {
            count(&mut report, published);
            Ok(report)
        }
        Err(mut failure) => {
            count(&mut failure.report, published);
            Err(failure)
        }
    }
}

fn count(report: &mut RunReport, published: Published) {
    report.events_published = published.published;
    report.events_failed = published.failed;
}

//! A release run with its expiry events published: the publisher task starts before the run,
//! each committed batch hands it its events, and the run's report gets the counts once the
//! task is done or out of time. Both front-ends run the release through here.

use std::future::Future;
use std::time::{Duration, Instant};

use super::publisher::{Published, Publisher};
use super::{model, sink, stock};
use crate::config::ReleaseSettings;
use crate::db::session::Database;
use crate::engine::hooks::OnCommit;
use crate::engine::on_request::{self, OnRequestOutcome};
use crate::engine::run::{self, RunFailure, RunOptions};
use crate::engine::run_report::RunReport;
use crate::error::Result as AppResult;

/// How long the events may still take after a run without a deadline (the CLI without a time
/// budget).
const WAIT_WITHOUT_DEADLINE: Duration = Duration::from_secs(30);

/// Runs the release on `db`; with a `publisher` (and not a dry run), publishes each committed
/// batch's events, waiting for them at the end until the run's deadline plus `grace` at most.
pub async fn run_publishing(
    db: &mut Database,
    settings: &ReleaseSettings,
    mut options: RunOptions,
    publisher: Option<&Publisher>,
    grace: Duration,
) -> Result<RunReport, RunFailure> {
    let publisher = publisher.filter(|_| !options.dry_run);
    let wait = events_wait(options.deadline, grace);
    let (outcome, published) = publishing(publisher, wait, |hook| {
        options.on_commit = hook;
        async move { run::run(db, settings, &options).await }
    })
    .await;
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

/// Releases one order on request ([`on_request::release_on_request`]), publishing its events,
/// waiting for them as a run does (until `deadline` plus `grace`).
pub async fn release_on_request(
    db: &mut Database,
    settings: &ReleaseSettings,
    order_id: i64,
    publisher: Option<&Publisher>,
    run_id: &str,
    (deadline, grace): (Option<Instant>, Duration),
) -> AppResult<OnRequestOutcome> {
    let (outcome, published) =
        publishing(publisher, events_wait(deadline, grace), |hook| async move {
            let hook = hook.as_ref().map(|h| (h, run_id));
            on_request::release_on_request(db, settings, order_id, hook).await
        })
        .await;
    let mut outcome = outcome?;
    outcome.events_published = published.published;
    outcome.events_failed = published.failed;
    Ok(outcome)
}

/// How long the events may still take once the work is done: until the deadline, plus the
/// grace ([`WAIT_WITHOUT_DEADLINE`] without one).
fn events_wait(deadline: Option<Instant>, grace: Duration) -> impl FnOnce() -> Duration {
    move || {
        deadline.map_or(WAIT_WITHOUT_DEADLINE, |d| {
            d.saturating_duration_since(Instant::now())
        }) + grace
    }
}

/// Runs `work` with an on-commit hook that hands each committed batch's events to a publisher
/// task (without a publisher, one that logs its `Stock Released` events), then waits for the task, `wait()` at most (measured once
/// the work is done).
async fn publishing<T, F, Fut>(
    publisher: Option<&Publisher>,
    wait: impl FnOnce() -> Duration,
    work: F,
) -> (T, Published)
where
    F: FnOnce(Option<OnCommit>) -> Fut,
    Fut: Future<Output = T>,
{
    let Some(publisher) = publisher else {
        // No bus: the `Stock Released` events go to the log (stderr), for a shop outside AWS.
        let hook = OnCommit::new(|batch| stock::log(&model::stock_released(&batch)));
        return (work(Some(hook)).await, Published::default());
    };
    let (events, task) = sink::spawn(publisher.clone());
    let hook = OnCommit::new(move |batch| events.send(model::from_batch(&batch)));
    let outcome = work(Some(hook)).await;
    (outcome, task.finish(wait()).await)
}

fn count(report: &mut RunReport, published: Published) {
    report.events_published = published.published;
    report.events_failed = published.failed;
}

//! The actions, one module each (mini-redis's `cmd/` is the model): each holds its input, its
//! answer and its `execute`. [`Request`] is the one vocabulary both front-ends translate into —
//! the CLI from its arguments, the Lambda handler from its payload — and [`Answer`] what they
//! translate back into stdout and an exit code, or a response.
//!
//! Adding an action: one module here, one arm in [`Request`] and [`Answer`], and one arm in each
//! front-end that offers it.

pub mod events;
pub mod follow;
pub mod reconcile;
pub mod release;
pub mod report;
pub mod revive;
pub mod run;
mod state;
pub mod status;

use std::time::{Duration, Instant};

use serde_json::Value;

pub use state::{AppState, InitTimings};

use crate::db::session::Database;
use crate::engine::report::RunReport;
use crate::error::{Error, Result};

/// What a front-end asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Request {
    Run(run::Run),
    Follow(follow::Follow),
    Status(status::Status),
    Revive(revive::Revive),
    Release(release::Release),
    Report(report::Report),
    Events(events::Events),
    Reconcile(reconcile::Reconcile),
}

/// What an action answered.
#[derive(Debug, Clone)]
pub enum Answer {
    Run(Box<RunReport>),
    Status(Box<crate::engine::status::StatusReport>),
    Revive(crate::engine::revive::ReviveOutcome),
    Release(crate::engine::on_request::RequestOutcome),
    Report(crate::engine::release_delay::DelayReport),
    Events(events::EventsAnswer),
    Reconcile(Box<crate::engine::reconcile::ReconcileReport>),
}

/// An action that failed: the error, and for a run what its committed batches did.
#[derive(Debug)]
pub struct Failure {
    pub error: Error,
    pub report: Option<Box<RunReport>>,
}

impl From<Error> for Failure {
    fn from(error: Error) -> Self {
        Failure {
            error,
            report: None,
        }
    }
}

/// One invocation's particulars, beside the state built once.
#[derive(Debug, Clone)]
pub struct Invocation<'a> {
    /// The Lambda request id; empty on the command line.
    pub request_id: &'a str,
    /// The first invocation of this execution environment.
    pub cold_start: bool,
    /// The id of the run this invocation starts, if it is a run (a fresh UUID), in its report,
    /// logs and metrics.
    pub run_id: &'a str,
    /// No batch starts unless it can finish before it: the Lambda deadline less its margin, or
    /// the CLI's `TIME_BUDGET_SECONDS` from now.
    pub deadline: Option<Instant>,
    /// How long a run's events may still take after the deadline.
    pub publish_grace: Duration,
    /// Set to true when the process is asked to stop (SIGTERM, SIGINT): a run or follow
    /// finishes the batch in flight and starts no other. None in Lambda.
    pub stop: Option<tokio::sync::watch::Receiver<bool>>,
}

impl Request {
    /// The action's name, as the payload's `action` field spells it.
    pub fn name(&self) -> &'static str {
        match self {
            Request::Run(_) => "run",
            Request::Follow(_) => "follow",
            Request::Status(_) => "status",
            Request::Revive(_) => "revive",
            Request::Release(_) => "release",
            Request::Report(_) => "report",
            Request::Events(_) => "events",
            Request::Reconcile(_) => "reconcile",
        }
    }

    /// Runs the action: its input is checked first, then a checked connection is opened.
    pub async fn execute(
        self,
        state: &AppState,
        invocation: &Invocation<'_>,
    ) -> std::result::Result<Answer, Failure> {
        match self {
            Request::Run(run) => run.execute(state, invocation).await.map(Answer::Run),
            Request::Follow(follow) => follow.execute(state, invocation).await.map(Answer::Run),
            Request::Status(status) => Ok(Answer::Status(Box::new(status.execute(state).await?))),
            Request::Revive(revive) => Ok(Answer::Revive(revive.execute(state).await?)),
            Request::Release(release) => {
                Ok(Answer::Release(release.execute(state, invocation).await?))
            }
            Request::Report(report) => Ok(Answer::Report(report.execute(state).await?)),
            Request::Events(events) => Ok(Answer::Events(events.execute(state).await?)),
            Request::Reconcile(reconcile) => {
                Ok(Answer::Reconcile(Box::new(reconcile.execute(state).await?)))
            }
        }
    }
}

impl Answer {
    /// The answer as one JSON value (the Lambda response; the CLI's stdout).
    pub fn to_json(&self) -> Value {
        let value = match self {
            Answer::Run(report) => serde_json::to_value(report),
            Answer::Status(status) => serde_json::to_value(status),
            Answer::Revive(outcome) => serde_json::to_value(outcome),
            Answer::Release(outcome) => serde_json::to_value(outcome),
            Answer::Report(report) => serde_json::to_value(report),
            Answer::Events(events) => return events.to_json(),
            Answer::Reconcile(report) => serde_json::to_value(report),
        };
        // Serializing these plain structs cannot fail; fall back to null regardless.
        value.unwrap_or(Value::Null)
    }

    /// Whether the action did what it was asked (the CLI exits 3 when not: an order that
    /// cannot be revived or released, counters that still disagree).
    pub fn done(&self) -> bool {
        match self {
            Answer::Revive(outcome) => outcome.revived,
            Answer::Release(outcome) => outcome.released,
            Answer::Reconcile(report) => !report.drift_remains(),
            _ => true,
        }
    }
}

/// An order id given as input (`field` names it), checked: positive.
fn order_id(field: &str, order_id: i64) -> Result<i64> {
    if order_id <= 0 {
        return Err(Error::Setting {
            name: field.into(),
            reason: "must be a positive order id".into(),
        });
    }
    Ok(order_id)
}

/// The context of a run's (or follow's) span and summary line.
fn run_context<'a>(
    state: &AppState,
    invocation: &Invocation<'a>,
    source: &'a str,
    dry_run: bool,
) -> crate::telemetry::RunContext<'a> {
    crate::telemetry::RunContext {
        request_id: invocation.request_id,
        run_id: invocation.run_id,
        source,
        dry_run,
        cold_start: invocation.cold_start,
        tls: !state.config.database.tls_disabled(),
    }
}

/// Logs a run's summary line (with its error, if it failed part-way) and turns its outcome
/// into the action's.
fn summarized(
    ctx: &crate::telemetry::RunContext<'_>,
    outcome: std::result::Result<RunReport, crate::engine::run::RunFailure>,
) -> std::result::Result<Box<RunReport>, Failure> {
    match outcome {
        Ok(report) => {
            crate::telemetry::log_run(ctx, Some(&report), None);
            Ok(Box::new(report))
        }
        Err(failure) => {
            crate::telemetry::log_run(ctx, Some(&failure.report), Some(&failure.error));
            Err(Failure {
                error: failure.error,
                report: Some(failure.report),
            })
        }
    }
}

/// Opens a checked connection with the state's credentials.
async fn open(state: &AppState) -> Result<Database> {
    state
        .credentials
        .open(&state.tls, state.config.release.lock_timeout_ms)
        .await
}

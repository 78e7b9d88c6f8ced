//! The Lambda front-end: a thin adapter that turns the payload into an action's [`Request`]
//! (`payload`), runs it with the state built once per execution environment within the
//! invocation's deadline, and turns its answer into the response, its error into Lambda's
//! `errorType`; a run also writes one metrics document.

use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use lambda_runtime::{Diagnostic, LambdaEvent};
use serde_json::Value;
use tracing::Instrument;

use super::metrics::{self, Observation};
use super::payload;
use crate::action::{tenancy, Answer, AppState, Failure, Invocation, Metrics, Observed};
use crate::engine::run::new_run_id;
use crate::error::Error;

/// An error as Lambda reports it: `errorType` is the error's kind (`InvalidPayload`,
/// `DatabaseUnreachable`, ...), `errorMessage` its cause chain, never a secret value.
pub struct HandlerError(pub Error);

impl std::fmt::Debug for HandlerError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.0.kind(), self.0.chain())
    }
}

impl From<HandlerError> for Diagnostic {
    fn from(error: HandlerError) -> Diagnostic {
        Diagnostic {
            error_type: error.0.kind().into(),
            error_message: error.0.chain(),
        }
    }
}

/// Handles one invocation: the payload becomes a [`Request`], its answer the response; a run
/// also writes one metrics document.
pub async fn handle(
    state: &AppState,
    event: LambdaEvent<Value>,
) -> std::result::Result<Value, HandlerError> {
    let cold_start = state.take_cold_start();
    let request_id = event.context.request_id.clone();
    let door = state.config.lambda.shop_door;
    let (request, tenant) = payload::parse_scoped(&event.payload, door).map_err(|error| {
        tracing::error!(request_id, error_type = error.kind(), error = %error.chain(), "rejected the payload");
        HandlerError(error)
    })?;
    let run_id = new_run_id();
    let invocation = Invocation {
        request_id: &request_id,
        cold_start,
        run_id: &run_id,
        deadline: deadline(event.context.deadline, state.config.lambda.deadline_margin),
        publish_grace: state.config.lambda.deadline_margin / 2,
        stop: None,
    };
    let action = request.name();
    let dry_run = request.dry_run();
    let metrics = request.metrics();
    let started = Instant::now();
    let span = tracing::info_span!("action", action, request_id);
    let outcome = tenancy::execute(request, tenant, state, &invocation)
        .instrument(span)
        .await;
    emit_metrics(state, &invocation, metrics, &outcome, dry_run, started);
    match outcome {
        Ok(answer) => Ok(answer.to_json()),
        Err(failure) => {
            if failure.report.is_none() {
                let error = &failure.error;
                tracing::error!(action, request_id, error_type = error.kind(), error = %error.chain(), "failed");
            }
            Err(HandlerError(failure.error))
        }
    }
}

/// The metrics document of a run (partial report when it failed part-way, none when it never
/// started) or of a reconcile or purge that answered (a failed one is in the log and Lambda's `Errors`).
fn emit_metrics(
    state: &AppState,
    invocation: &Invocation<'_>,
    metrics: Metrics,
    outcome: &std::result::Result<Answer, Failure>,
    dry_run: bool,
    started: Instant,
) {
    let answered_only = matches!(metrics, Metrics::Reconcile | Metrics::Purge);
    if metrics == Metrics::None || (answered_only && outcome.is_err()) {
        return;
    }
    let tenant = match outcome {
        Ok(answer) => answer.tenant(),
        Err(failure) => failure.tenant.as_deref(),
    };
    if metrics == Metrics::Run
        && outcome
            .as_ref()
            .is_ok_and(|a| matches!(a.observed(), Observed::Nothing))
    {
        // A sweep across tenants: each tenant's run is in the sweep's answer and log.
        return;
    }
    let (report, reconcile, purge) = match outcome {
        Ok(answer) => match answer.observed() {
            Observed::Run(report) => (Some(report), None, None),
            Observed::Reconcile(report) => (None, Some(report), None),
            Observed::Purge(report) => (None, None, Some(report)),
            Observed::Nothing => (None, None, None),
        },
        Err(failure) => (failure.report.as_deref(), None, None),
    };
    metrics::emit(&metrics::document(
        &state.config.metrics,
        &Observation {
            reconcile,
            purge,
            run_id: invocation.run_id,
            tenant,
            report,
            failed: outcome.is_err(),
            dry_run,
            cold_start: invocation.cold_start,
            duration_ms: started.elapsed().as_millis() as u64,
        },
    ));
}

/// The instant by which the run must stop starting batches: the invocation's deadline less the
/// margin — at most a third of the time left, so that a short function timeout still leaves
/// room to work. Lambda sends the deadline in milliseconds since the epoch; `cargo lambda
/// watch` sends the timeout itself (600000), so a value too small to be a timestamp (before
/// 2001) is read as milliseconds from now. Without one (0) the run has no deadline.
pub fn deadline(deadline_ms: u64, margin: Duration) -> Option<Instant> {
    const EPOCH_MS_2001: u64 = 1_000_000_000_000;
    if deadline_ms == 0 {
        return None;
    }
    let remaining = if deadline_ms < EPOCH_MS_2001 {
        Duration::from_millis(deadline_ms)
    } else {
        let now_ms = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as u64);
        Duration::from_millis(deadline_ms.saturating_sub(now_ms))
    };
    let margin = margin.min(remaining / 3);
    Some(Instant::now() + remaining.saturating_sub(margin))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn budget(deadline_ms: u64, margin_ms: u64) -> u64 {
        deadline(deadline_ms, Duration::from_millis(margin_ms))
            .map(|d| d.saturating_duration_since(Instant::now()).as_millis() as u64)
            .unwrap()
    }

    fn epoch_ms_in(ms: u64) -> u64 {
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_millis() as u64
            + ms
    }

    #[test]
    fn the_budget_is_the_deadline_less_the_margin() {
        let b = budget(epoch_ms_in(60_000), 5_000);
        assert!((54_000..=55_000).contains(&b), "{b}");
        // A 3 s function keeps two thirds of its time.
        let b = budget(epoch_ms_in(3_000), 5_000);
        assert!((1_900..=2_000).contains(&b), "{b}");
        // A deadline already passed leaves nothing.
        assert_eq!(budget(epoch_ms_in(0) - 10_000, 5_000), 0);
        // cargo lambda watch's relative deadline.
        let b = budget(600_000, 5_000);
        assert!((594_000..=595_000).contains(&b), "{b}");
        assert!(deadline(0, Duration::from_secs(5)).is_none());
    }
}

//! The Lambda function: state built once per execution environment (settings, TLS connector,
//! credential source, the EventBridge publisher), and the handler that parses the payload,
//! opens a checked connection (credentials from Secrets Manager, retried once on a rotated
//! password, or an RDS IAM token), and runs the release (publishing its expiry events), the
//! status, a revive or the release-delay report within the invocation's deadline; a run logs
//! one summary line and writes one metrics document.

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use lambda_runtime::{Diagnostic, LambdaEvent};
use postgres_native_tls::MakeTlsConnector;
use serde_json::Value;
use tracing::Instrument;

use super::metrics::{self, Observation};
use super::payload::{self, Request, RunRequest};
use crate::config::Config;
use crate::db::credentials::CredentialSource;
use crate::engine::release_delay::{self, DelayReport};
use crate::engine::report::RunReport;
use crate::engine::revive::{revive, ReviveOutcome};
use crate::engine::run::RunOptions;
use crate::engine::status;
use crate::error::{Error, Result};
use crate::events::{self, Publisher};
use crate::telemetry::{self, RunContext};

/// Everything an invocation needs that can be built once per execution environment.
pub struct AppState {
    pub config: Config,
    pub credentials: CredentialSource,
    pub tls: MakeTlsConnector,
    /// The EventBridge publisher of the expiry events, when `EVENT_BUS_NAME` is set.
    pub publisher: Option<Publisher>,
    /// What the init's parts took.
    pub init: InitTimings,
    cold_start: AtomicBool,
}

impl AppState {
    /// Builds the state from the environment ([`Config::from_env`]): every setting is checked
    /// before anything is contacted.
    pub async fn from_env() -> Result<Self> {
        AppState::from_config(Config::from_env()?).await
    }

    /// Builds the state from a configuration. The TLS connector (OpenSSL loading the system
    /// store and the RDS CAs: CPU work) is built on a blocking thread while the AWS SDK
    /// configuration loads and, with `PREFETCH_CREDENTIALS`, the credentials are fetched
    /// (mostly network waits): Lambda's init has the CPU for both.
    pub async fn from_config(config: Config) -> Result<Self> {
        let database = config.database.clone();
        let tls = tokio::task::spawn_blocking(move || {
            let started = Instant::now();
            database
                .tls_connector()
                .map(|tls| (tls, elapsed_ms(started)))
        });
        let started = Instant::now();
        let credentials = CredentialSource::from_config(&config.database).await?;
        if config.lambda.prefetch_credentials {
            credentials.prefetch(Duration::from_secs(3)).await;
        }
        let publisher = match &config.events.bus_name {
            Some(bus) => Some(Publisher::from_env(bus.clone()).await),
            None => None,
        };
        let aws_ms = elapsed_ms(started);
        let (tls, tls_ms) = tls
            .await
            .map_err(|e| Error::Tls(format!("building the TLS connector failed: {e}")))??;
        if config.database.tls_disabled() {
            tracing::warn!(
                "TLS to the database is DISABLED (sslmode disable): credentials and data cross \
                 the network in the clear; set DB_SSLMODE=require"
            );
        }
        Ok(AppState {
            config,
            credentials,
            tls,
            publisher,
            init: InitTimings { tls_ms, aws_ms },
            cold_start: AtomicBool::new(true),
        })
    }
}

/// What the parts of the init took, side by side: they run at the same time.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct InitTimings {
    /// Building the TLS connector.
    pub tls_ms: f64,
    /// Loading the AWS SDK configuration, building the clients, prefetching the credentials.
    pub aws_ms: f64,
}

fn elapsed_ms(started: Instant) -> f64 {
    started.elapsed().as_secs_f64() * 1000.0
}

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

/// Handles one invocation.
pub async fn handle(
    state: &AppState,
    event: LambdaEvent<Value>,
) -> std::result::Result<Value, HandlerError> {
    let cold_start = state.cold_start.swap(false, Ordering::SeqCst);
    let request_id = event.context.request_id.clone();
    let request = payload::parse(&event.payload).map_err(|error| {
        tracing::error!(request_id, error_type = error.kind(), error = %error.chain(), "rejected the payload");
        HandlerError(error)
    })?;
    match request {
        Request::Status => {
            let span = tracing::info_span!("status", request_id);
            handle_status(state, &request_id).instrument(span).await
        }
        Request::Revive { order_id } => {
            let span = tracing::info_span!("revive", request_id, order_id);
            answer("revive", handle_revive(state, order_id))
                .instrument(span)
                .await
        }
        Request::Report { days } => {
            let span = tracing::info_span!("report", request_id, days);
            answer("report", handle_report(state, days))
                .instrument(span)
                .await
        }
        Request::Run(run) => {
            let options = RunOptions {
                dry_run: run.dry_run,
                deadline: deadline(event.context.deadline, state.config.lambda.deadline_margin),
                ..RunOptions::default()
            };
            let ctx = RunContext {
                request_id: &request_id,
                run_id: &options.run_id,
                source: &run.source,
                dry_run: run.dry_run,
                cold_start,
                tls: !state.config.database.tls_disabled(),
            };
            let span = telemetry::run_span(&ctx);
            handle_run(state, &run, &options, &ctx)
                .instrument(span)
                .await
        }
    }
}

async fn handle_status(
    state: &AppState,
    request_id: &str,
) -> std::result::Result<Value, HandlerError> {
    let result = async {
        let db = state
            .credentials
            .open(&state.tls, state.config.release.lock_timeout_ms)
            .await?;
        status::status(&db, &state.config.release).await
    }
    .await;
    match result {
        Ok(report) => {
            tracing::info!(
                request_id,
                due_reservations = report.due_reservations,
                oldest_due_age_seconds = report.oldest_due_age_seconds,
                paid_orders_with_active_reservations = report.paid_orders_with_active_reservations,
                variants_out_of_sync = report.variants_out_of_sync_count,
                drops_out_of_sync = report.drops_out_of_sync_count,
                missing_indexes = ?report.missing_indexes,
                "status read"
            );
            Ok(serde_json::to_value(&report).unwrap_or(Value::Null))
        }
        Err(error) => {
            tracing::error!(request_id, error_type = error.kind(), error = %error.chain(), "status failed");
            Err(HandlerError(error))
        }
    }
}

/// Answers with `work`'s JSON, or logs and returns its error.
async fn answer<T: serde::Serialize>(
    action: &'static str,
    work: impl std::future::Future<Output = Result<T>>,
) -> std::result::Result<Value, HandlerError> {
    match work.await {
        Ok(value) => Ok(serde_json::to_value(&value).unwrap_or(Value::Null)),
        Err(error) => {
            tracing::error!(action, error_type = error.kind(), error = %error.chain(), "failed");
            Err(HandlerError(error))
        }
    }
}

async fn handle_revive(state: &AppState, order_id: i64) -> Result<ReviveOutcome> {
    let release = &state.config.release;
    let mut db = state
        .credentials
        .open(&state.tls, release.lock_timeout_ms)
        .await?;
    let outcome = revive(&mut db, release, state.config.revive.hold_minutes, order_id).await?;
    tracing::info!(order_id, revived = outcome.revived, reason = ?outcome.reason, "revive");
    Ok(outcome)
}

async fn handle_report(state: &AppState, days: u32) -> Result<DelayReport> {
    let release = &state.config.release;
    let db = state
        .credentials
        .open(&state.tls, release.lock_timeout_ms)
        .await?;
    release_delay::report(&db, release, days).await
}

async fn handle_run(
    state: &AppState,
    run: &RunRequest,
    options: &RunOptions,
    ctx: &RunContext<'_>,
) -> std::result::Result<Value, HandlerError> {
    let started = Instant::now();
    tracing::debug!(
        time_budget_ms = options
            .deadline
            .map(|d| d.saturating_duration_since(Instant::now()).as_millis() as u64),
        "starting the run"
    );
    let outcome = run_release(state, run, options).await;
    let (report, error) = match &outcome {
        Ok(report) => (Some(report), None),
        Err((error, partial)) => (partial.as_deref(), Some(error)),
    };
    metrics::emit(&metrics::document(
        &state.config.metrics,
        &Observation {
            run_id: ctx.run_id,
            report,
            failed: error.is_some(),
            dry_run: run.dry_run,
            cold_start: ctx.cold_start,
            duration_ms: started.elapsed().as_millis() as u64,
        },
    ));
    telemetry::log_run(ctx, report, error);
    match outcome {
        Ok(report) => Ok(serde_json::to_value(&report).unwrap_or(Value::Null)),
        Err((error, _)) => Err(HandlerError(error)),
    }
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

type RunOutcome = std::result::Result<RunReport, (Error, Option<Box<RunReport>>)>;

async fn run_release(state: &AppState, run: &RunRequest, options: &RunOptions) -> RunOutcome {
    let settings = state.config.release.clone().with_overrides(
        run.batch_size.map(|n| ("batch_size", n)),
        run.max_batches.map(|n| ("max_batches", n)),
    );
    let settings = settings.map_err(|e| (e, None))?;
    let mut db = state
        .credentials
        .open(&state.tls, settings.lock_timeout_ms)
        .await
        .map_err(|e| (e, None))?;
    let grace = state.config.lambda.deadline_margin / 2;
    let publisher = state.publisher.as_ref();
    events::run::run(&mut db, &settings, options.clone(), publisher, grace)
        .await
        .map_err(|failure| (failure.error, Some(failure.report)))
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

//! The Lambda function: state built once per execution environment, and the handler that parses
//! the payload, opens a checked connection (credentials from Secrets Manager, retried once on a
//! rotated password), runs the release or the status within the invocation's deadline, logs one
//! summary line, and writes one metrics document.

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use lambda_runtime::{Diagnostic, LambdaEvent};
use postgres_native_tls::MakeTlsConnector;
use serde_json::Value;

use crate::credentials::{ConnectionDefaults, CredentialSource};
use crate::error::{Error, Result};
use crate::metrics::{self, MetricsConfig, Observation};
use crate::payload::{self, Request, RunRequest};
use crate::release::{self, RunOptions};
use crate::report::RunReport;
use crate::secrets::SecretSource;
use crate::settings::{parse_u32, Settings};
use crate::telemetry::{self, RunContext};
use crate::{connect, status, tls};

/// Everything an invocation needs that can be built once per execution environment.
pub struct AppState {
    pub settings: Settings,
    pub credentials: CredentialSource,
    pub tls: MakeTlsConnector,
    pub metrics: MetricsConfig,
    /// Time kept free before the invocation's deadline: no batch starts inside it.
    pub deadline_margin: Duration,
    cold_start: AtomicBool,
}

impl AppState {
    pub fn new(
        settings: Settings,
        credentials: CredentialSource,
        tls: MakeTlsConnector,
        metrics: MetricsConfig,
        deadline_margin: Duration,
    ) -> Self {
        AppState {
            settings,
            credentials,
            tls,
            metrics,
            deadline_margin,
            cold_start: AtomicBool::new(true),
        }
    }

    /// Builds the state from the environment: the release settings, `DB_SECRET_ID` (or
    /// `DATABASE_URL` for local runs), `DB_HOST`/`DB_PORT`/`DB_NAME`/`DB_SSLMODE`,
    /// `DB_CA_BUNDLE`, `SECRET_CACHE_TTL_SECONDS` (900), `DEADLINE_MARGIN_MS` (5000), and the
    /// metrics names. Every setting is checked before anything is contacted.
    pub async fn from_env() -> Result<Self> {
        let lookup = |name: &str| std::env::var(name).ok().filter(|v| !v.is_empty());
        let settings = Settings::from_lookup(lookup)?;
        let metrics = MetricsConfig::from_lookup(&lookup)?;
        let margin_ms = parse_u32(&lookup, "DEADLINE_MARGIN_MS", 5_000, 500, 60_000)?;
        let ttl = parse_u32(&lookup, "SECRET_CACHE_TTL_SECONDS", 900, 0, 86_400)?;
        let ca_bundle = lookup("DB_CA_BUNDLE").map(std::path::PathBuf::from);
        let tls = tls::connector(ca_bundle.as_deref())?;
        let credentials = match (lookup("DB_SECRET_ID"), lookup("DATABASE_URL")) {
            (Some(secret_id), _) => {
                let defaults = ConnectionDefaults::from_lookup(&lookup)?;
                let sdk = aws_config::defaults(aws_config::BehaviorVersion::latest())
                    .timeout_config(
                        aws_config::timeout::TimeoutConfig::builder()
                            .connect_timeout(Duration::from_secs(3))
                            .operation_timeout(Duration::from_secs(10))
                            .build(),
                    )
                    .load()
                    .await;
                let client = aws_sdk_secretsmanager::Client::new(&sdk);
                CredentialSource::Secret {
                    source: Box::new(SecretSource::new(
                        client,
                        secret_id,
                        Duration::from_secs(ttl.into()),
                    )),
                    defaults,
                }
            }
            (None, Some(url)) => {
                CredentialSource::Url(Box::new(connect::config_from_url("DATABASE_URL", &url)?))
            }
            (None, None) => {
                return Err(Error::Setting {
                    name: "DB_SECRET_ID".into(),
                    reason: "not set (set it to the secret's name or ARN, or DATABASE_URL for \
                             local runs)"
                        .into(),
                })
            }
        };
        if credentials.tls_disabled() {
            tracing::warn!(
                "TLS to the database is DISABLED (sslmode disable): credentials and data cross \
                 the network in the clear; set DB_SSLMODE=require"
            );
        }
        Ok(AppState::new(
            settings,
            credentials,
            tls,
            metrics,
            Duration::from_millis(margin_ms.into()),
        ))
    }
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
    let started = Instant::now();
    let cold_start = state.cold_start.swap(false, Ordering::SeqCst);
    let request_id = event.context.request_id.clone();
    let request = payload::parse(&event.payload).map_err(|error| {
        tracing::error!(request_id, error_type = error.kind(), error = %error.chain(), "rejected the payload");
        HandlerError(error)
    })?;
    match request {
        Request::Status => {
            let result = async {
                let db = state
                    .credentials
                    .open(&state.tls, state.settings.lock_timeout_ms)
                    .await?;
                status::status(&db, &state.settings).await
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
        Request::Run(run) => {
            let deadline = deadline(event.context.deadline, state.deadline_margin);
            tracing::debug!(
                request_id,
                deadline_ms = event.context.deadline,
                time_budget_ms = deadline
                    .map(|d| d.saturating_duration_since(Instant::now()).as_millis() as u64),
                "starting the run"
            );
            let outcome = run_release(state, &run, deadline).await;
            let duration_ms = started.elapsed().as_millis() as u64;
            let (report, error) = match &outcome {
                Ok(report) => (Some(report), None),
                Err((error, partial)) => (partial.as_deref(), Some(error)),
            };
            metrics::emit(&metrics::document(
                &state.metrics,
                &Observation {
                    report,
                    failed: error.is_some(),
                    dry_run: run.dry_run,
                    cold_start,
                    duration_ms,
                },
            ));
            telemetry::log_run(
                &RunContext {
                    request_id: &request_id,
                    source: &run.source,
                    dry_run: run.dry_run,
                    cold_start,
                    tls: !state.credentials.tls_disabled(),
                },
                report,
                error,
            );
            match outcome {
                Ok(report) => Ok(serde_json::to_value(&report).unwrap_or(Value::Null)),
                Err((error, _)) => Err(HandlerError(error)),
            }
        }
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

async fn run_release(state: &AppState, run: &RunRequest, deadline: Option<Instant>) -> RunOutcome {
    let mut settings = state.settings.clone();
    if let Some(n) = run.batch_size {
        settings.batch_size = n;
    }
    if let Some(n) = run.max_batches {
        settings.max_batches = n;
    }
    let mut db = state
        .credentials
        .open(&state.tls, settings.lock_timeout_ms)
        .await
        .map_err(|e| (e, None))?;
    let options = RunOptions {
        dry_run: run.dry_run,
        deadline,
    };
    release::run(&mut db, &settings, &options)
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

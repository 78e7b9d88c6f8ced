//! Logging set-up, done once per process: `tracing` events to stderr (stdout is kept for the
//! command's JSON output and, in Lambda, for the metrics documents), as JSON or text.

use tracing_subscriber::EnvFilter;

use crate::error::Error;
use crate::report::RunReport;

/// How log lines look.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    Json,
    Text,
}

impl LogFormat {
    /// `LOG_FORMAT=json|text`, else `default`.
    pub fn from_env(default: LogFormat) -> LogFormat {
        match std::env::var("LOG_FORMAT").ok().as_deref() {
            Some("json") | Some("JSON") => LogFormat::Json,
            Some("text") | Some("TEXT") => LogFormat::Text,
            _ => default,
        }
    }
}

/// Installs the global subscriber. The level comes from `RUST_LOG` (or Lambda's
/// `AWS_LAMBDA_LOG_LEVEL`), `info` by default. A second call does nothing.
pub fn init(format: LogFormat) {
    let filter = EnvFilter::try_from_default_env()
        .or_else(|_| {
            std::env::var("AWS_LAMBDA_LOG_LEVEL")
                .map_err(|_| ())
                .and_then(|level| EnvFilter::try_new(level.to_lowercase()).map_err(|_| ()))
        })
        .unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_target(false);
    let _ = match format {
        LogFormat::Json => builder
            .json()
            .flatten_event(true)
            .with_current_span(false)
            .try_init(),
        LogFormat::Text => builder.try_init(),
    };
}

/// Who ran, for the summary line.
#[derive(Debug, Clone)]
pub struct RunContext<'a> {
    /// The Lambda request id; empty on the command line.
    pub request_id: &'a str,
    /// "schedule", "manual", "cli", ...
    pub source: &'a str,
    pub dry_run: bool,
    pub cold_start: bool,
    /// Whether the connection is encrypted.
    pub tls: bool,
}

/// The one summary line of a run, the same for both front-ends: `run finished` at info, or
/// `run failed` at error with the error's kind, whether a retry can help, and its cause chain.
/// `report` is what the run did (partial when it failed part-way; None when it never started).
pub fn log_run(ctx: &RunContext<'_>, report: Option<&RunReport>, error: Option<&Error>) {
    let empty = RunReport::new(ctx.dry_run);
    let r = report.unwrap_or(&empty);
    macro_rules! summary {
        ($level:ident, $($extra:tt)*) => {
            tracing::$level!(
                request_id = ctx.request_id,
                source = ctx.source,
                mode = if ctx.dry_run { "dry_run" } else { "run" },
                dry_run = ctx.dry_run,
                reservations_released = r.reservations_released,
                units_released = r.units_released,
                orders_cancelled = r.orders_cancelled,
                holds_released = r.holds_released,
                batches = r.batches,
                batch_retries = r.batch_retries,
                skipped_locked = r.skipped_locked,
                clamped_variants = r.clamped_variants,
                clamped_drops = r.clamped_drops,
                paid_orders_with_due_reservations = r.paid_orders_with_due_reservations,
                stopped_reason = r.stopped_reason.as_str(),
                backlog_remaining = r.backlog_remaining,
                oldest_due_age_seconds = r.oldest_due_age_seconds,
                batch_ms_p50 = r.batch_ms_p50,
                batch_ms_p99 = r.batch_ms_p99,
                duration_ms = r.duration_ms,
                cold_start = ctx.cold_start,
                tls = ctx.tls,
                $($extra)*
            )
        };
    }
    match error {
        None => summary!(info, "run finished"),
        Some(e) => summary!(
            error,
            error_type = e.kind(),
            retryable = e.is_retryable(),
            error = %e.chain(),
            "run failed"
        ),
    }
}

//! Logging set-up, done once per process: `tracing` events to stderr (stdout is kept for the
//! command's JSON output and, in Lambda, for the metrics documents), as JSON or text; the span
//! of a run (request id, run id, mode, source) that every line of the run carries, and the one
//! summary line of a run.
//!
//! Level and format follow the Lambda runtime's own rule: Lambda's `AWS_LAMBDA_LOG_LEVEL` and
//! `AWS_LAMBDA_LOG_FORMAT` (set from the function's logging configuration) win when present;
//! otherwise `RUST_LOG` and `LOG_FORMAT`; otherwise `info` and the front-end's default format.

pub mod history;
pub mod metrics;
pub mod page;
pub mod prometheus;
pub mod push;

use tracing_subscriber::EnvFilter;

use crate::engine::run_report::RunReport;
use crate::error::Error;
use crate::settings::{LOG_FORMAT, RUST_LOG};

/// How log lines look.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    Json,
    Text,
}

/// The level filter and format of the process's logs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogSettings {
    /// An `EnvFilter` directive (`info`, `debug`, `unreserver=debug,warn`, ...).
    pub filter: String,
    pub format: LogFormat,
}

impl LogSettings {
    /// Reads the settings through `lookup`; `default` is the front-end's format.
    pub fn from_lookup(lookup: impl Fn(&str) -> Option<String>, default: LogFormat) -> Self {
        let lookup = |name: &str| lookup(name).filter(|v| !v.trim().is_empty());
        let filter = match lookup("AWS_LAMBDA_LOG_LEVEL") {
            Some(level) => lambda_level(&level).to_string(),
            None => lookup(RUST_LOG.name).unwrap_or_else(|| RUST_LOG.default_text()),
        };
        let format = lookup("AWS_LAMBDA_LOG_FORMAT")
            .or_else(|| lookup(LOG_FORMAT.name))
            .and_then(|f| match f.trim().to_ascii_lowercase().as_str() {
                "json" => Some(LogFormat::Json),
                "text" => Some(LogFormat::Text),
                _ => None,
            })
            .unwrap_or(default);
        LogSettings { filter, format }
    }
}

/// Lambda's log levels as `tracing` levels: `FATAL` (which `tracing` lacks) is `error`; an
/// unknown value keeps `info`.
fn lambda_level(level: &str) -> &'static str {
    match level.trim().to_ascii_uppercase().as_str() {
        "TRACE" => "trace",
        "DEBUG" => "debug",
        "WARN" => "warn",
        "ERROR" | "FATAL" => "error",
        _ => "info",
    }
}

/// Installs the global subscriber from the process environment. A second call does nothing.
pub fn init(default: LogFormat) {
    let settings = LogSettings::from_lookup(|name| std::env::var(name).ok(), default);
    let filter = EnvFilter::try_new(&settings.filter).unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_target(false);
    let _ = match settings.format {
        // Span fields are nested under "spans"; the summary line repeats what the saved
        // queries read at the top level.
        LogFormat::Json => builder
            .json()
            .flatten_event(true)
            .with_current_span(false)
            .with_span_list(true)
            .try_init(),
        LogFormat::Text => builder.try_init(),
    };
}

/// Who ran, for the summary line.
#[derive(Debug, Clone)]
pub struct RunContext<'a> {
    /// The Lambda request id; empty on the command line.
    pub request_id: &'a str,
    /// The run's id (a UUID).
    pub run_id: &'a str,
    /// "schedule", "manual", "cli", ...
    pub source: &'a str,
    pub dry_run: bool,
    pub cold_start: bool,
    /// Whether the connection is encrypted.
    pub tls: bool,
}

/// The span of one run: every line logged inside it carries these fields.
pub fn run_span(ctx: &RunContext<'_>) -> tracing::Span {
    tracing::info_span!(
        "run",
        request_id = ctx.request_id,
        run_id = ctx.run_id,
        mode = mode(ctx.dry_run),
        source = ctx.source,
    )
}

fn mode(dry_run: bool) -> &'static str {
    if dry_run {
        "dry_run"
    } else {
        "run"
    }
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
                run_id = ctx.run_id,
                source = ctx.source,
                mode = mode(ctx.dry_run),
                dry_run = ctx.dry_run,
                reservations_released = r.counts.reservations_released,
                units_released = r.counts.units_released,
                orders_cancelled = r.counts.orders_cancelled,
                holds_released = r.counts.holds_released,
                batches = r.batches,
                batch_retries = r.batch_retries,
                skipped_locked = r.counts.skipped_locked,
                deferred = r.deferred,
                oldest_deferred_age_seconds = r.oldest_deferred_age_seconds,
                no_longer_due = r.counts.no_longer_due,
                pass_scans = r.pass_scans,
                missing_indexes = r.missing_indexes.len(),
                clamped_variants = r.counts.clamped_variants,
                clamped_drops = r.counts.clamped_drops,
                paid_orders_with_due_reservations = r.paid_orders_with_due_reservations,
                stopped_reason = r.stopped_reason.as_str(),
                follow_ended = r.follow.as_ref().map(|f| f.ended),
                backlog_remaining = r.backlog_remaining,
                oldest_due_age_seconds = r.oldest_due_age_seconds,
                batch_ms_p50 = r.batch_ms_p50,
                batch_ms_p99 = r.batch_ms_p99,
                hot_hold_ms_max = r.hot_hold_ms_max,
                batch_mode = r.controller.mode,
                batch_rows_min = r.controller.batch_rows_min,
                batch_rows_max = r.controller.batch_rows_max,
                workers = r.controller.workers,
                contended_batches = r.controller.contended_batches,
                shrinks_for_shoppers = r.controller.shrinks_for_shoppers,
                shrinks_for_cuts = r.controller.shrinks_for_cuts,
                shrinks_for_time = r.controller.shrinks_for_time,
                counters_written_by_others = r.counts.counters_written_by_others,
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

#[cfg(test)]
mod tests {
    use super::*;

    fn settings(pairs: &[(&str, &str)], default: LogFormat) -> LogSettings {
        LogSettings::from_lookup(
            |name| {
                pairs
                    .iter()
                    .find(|(k, _)| *k == name)
                    .map(|(_, v)| v.to_string())
            },
            default,
        )
    }

    #[test]
    fn lambda_settings_win_over_rust_log_and_log_format() {
        let s = settings(
            &[
                ("AWS_LAMBDA_LOG_LEVEL", "WARN"),
                ("RUST_LOG", "debug"),
                ("AWS_LAMBDA_LOG_FORMAT", "Text"),
                ("LOG_FORMAT", "json"),
            ],
            LogFormat::Json,
        );
        assert_eq!(s.filter, "warn");
        assert_eq!(s.format, LogFormat::Text);
    }

    #[test]
    fn fatal_is_error_and_unknown_is_info() {
        let level = |v| settings(&[("AWS_LAMBDA_LOG_LEVEL", v)], LogFormat::Json).filter;
        assert_eq!(level("FATAL"), "error");
        assert_eq!(level("debug"), "debug");
        assert_eq!(level("LOUD"), "info");
        assert!(EnvFilter::try_new(level("FATAL")).is_ok());
    }

    #[test]
    fn without_lambda_settings_rust_log_and_log_format_apply() {
        let s = settings(
            &[("RUST_LOG", "debug"), ("LOG_FORMAT", "JSON")],
            LogFormat::Text,
        );
        assert_eq!((s.filter.as_str(), s.format), ("debug", LogFormat::Json));
        let s = settings(&[], LogFormat::Text);
        assert_eq!((s.filter.as_str(), s.format), ("info", LogFormat::Text));
    }
}

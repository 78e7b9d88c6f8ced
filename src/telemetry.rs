//! Logging set-up, done once per process: `tracing` events to stderr (stdout is kept for the
//! command's JSON output and, in Lambda, for the metrics documents), as JSON or text.

use tracing_subscriber::EnvFilter;

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

//! The `unreserver` command line, for local runs, cron hosts and Kubernetes CronJobs:
//! `run` prints the run report, `status` the status, `revive` the revive outcome and `report`
//! the release-delay report, each as one JSON object on stdout; `events` prints one event a
//! line (or publishes them). Logs go to stderr; a failure prints one line naming the problem.
//! Exit codes: 0 done, 1 a failure, 2 bad input (before any connection), 3 an order that cannot
//! be revived.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, Instant, SystemTime};

use clap::{Parser, Subcommand};
use secrecy::{ExposeSecret, SecretString};
use tracing::Instrument;

use crate::config::{Config, ReleaseSettings};
use crate::db::credentials::CredentialSource;
use crate::db::session::Database;
use crate::db::sql::outbox;
use crate::engine::release_delay::{self, MAX_DAYS};
use crate::engine::revive::revive;
use crate::engine::run::RunOptions;
use crate::engine::status;
use crate::error::{Error, Result};
use crate::events::{self, model, Publisher};
use crate::telemetry::{self, LogFormat, RunContext};

/// Gives back the stock held by expired reservations of unpaid orders.
///
/// Settings come from the environment (BATCH_SIZE, MAX_BATCHES, RESERVATION_TIMEOUT_MINUTES,
/// PAYMENT_PROCESSING_GRACE_MINUTES, LOCK_TIMEOUT_MS, STATEMENT_TIMEOUT_MS, BATCH_MAX_ATTEMPTS,
/// RETRY_BACKOFF_MS, TIME_BUDGET_SECONDS; DB_SECRET_ID and DB_* for a Secrets Manager secret
/// instead of a URL); flags override them.
#[derive(Debug, Parser)]
#[command(name = "unreserver", version)]
pub struct Cli {
    /// PostgreSQL connection string (libpq URL or key=value), e.g.
    /// postgres://user:pass@host/db?sslmode=require
    #[arg(long, env = "DATABASE_URL", hide_env_values = true, global = true,
          value_parser = parse_secret)]
    database_url: Option<SecretString>,

    /// PEM file of CA certificates to trust for the database's TLS certificate.
    #[arg(long, env = "DB_CA_BUNDLE", global = true)]
    ca_bundle: Option<PathBuf>,

    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Release due reservations and print the run report.
    Run {
        /// Run every statement, roll each batch back, and report what would happen.
        #[arg(long)]
        dry_run: bool,
        /// Orders (or cart holds) per batch transaction [env: BATCH_SIZE].
        #[arg(long)]
        batch_size: Option<u32>,
        /// Stop after this many batches [env: MAX_BATCHES].
        #[arg(long)]
        max_batches: Option<u32>,
    },
    /// Print the backlog, anomalies and counter drift.
    Status,
    /// Revive an order the release cancelled, if its stock is still there (a late payment).
    Revive {
        /// The order's id (`orders_order.id`).
        order_id: i64,
    },
    /// Print the expiry events of a window as the database holds them now, one JSON object a
    /// line, or publish them again to EVENT_BUS_NAME.
    Events {
        /// Start of the window (RFC 3339, e.g. 2026-11-25T10:00:00Z), included.
        #[arg(long, value_parser = parse_time)]
        since: SystemTime,
        /// End of the window, excluded (default: now, on the database clock).
        #[arg(long, value_parser = parse_time)]
        until: Option<SystemTime>,
        /// Publish them to EVENT_BUS_NAME instead of printing them.
        #[arg(long)]
        publish: bool,
    },
    /// Print the release-delay report: per UTC day, what the release expired and how late.
    Report {
        /// Days to cover, today (UTC) included.
        #[arg(long, default_value_t = 7,
              value_parser = clap::value_parser!(u32).range(1..=i64::from(MAX_DAYS)))]
        days: u32,
    },
}

/// What a command printed and the exit code it ends with.
struct Output {
    text: String,
    code: u8,
}

impl Output {
    fn ok(text: String) -> Self {
        Output { text, code: 0 }
    }
}

fn parse_time(value: &str) -> std::result::Result<SystemTime, String> {
    humantime::parse_rfc3339_weak(value)
        .map_err(|e| format!("{e}: expected RFC 3339, e.g. 2026-11-25T10:00:00Z"))
}

/// Parses the arguments, runs the command, and returns the process exit code.
pub async fn main() -> ExitCode {
    let cli = Cli::parse();
    telemetry::init(LogFormat::Text);
    match execute(cli).await {
        Ok(output) => {
            if !output.text.is_empty() {
                println!("{}", output.text);
            }
            ExitCode::from(output.code)
        }
        Err(error) => {
            eprintln!("unreserver: error [{}]: {}", error.kind(), error.chain());
            ExitCode::from(if matches!(error, Error::Setting { .. }) {
                2
            } else {
                1
            })
        }
    }
}

/// How long a run's events may still take after its time budget.
const PUBLISH_GRACE: Duration = Duration::from_secs(5);

fn parse_secret(value: &str) -> std::result::Result<SecretString, std::convert::Infallible> {
    Ok(SecretString::from(value))
}

/// The configuration tree from the environment, with this command line's flags over it: a
/// `--database-url` (or `DATABASE_URL`) wins over `DB_SECRET_ID`.
fn config(cli: &Cli) -> Result<Config> {
    let url = cli.database_url.as_ref();
    let ca_bundle = cli.ca_bundle.as_ref();
    Config::from_lookup(|name| match name {
        "DATABASE_URL" => url.map(|u| u.expose_secret().to_string()),
        "DB_SECRET_ID" if url.is_some() => None,
        "DB_CA_BUNDLE" => ca_bundle.map(|p| p.display().to_string()),
        _ => std::env::var(name).ok(),
    })
}

/// The release settings with the `run` flags over them.
fn release_settings(cli: &Cli, config: &Config) -> Result<(ReleaseSettings, bool)> {
    match &cli.command {
        Command::Run {
            dry_run,
            batch_size,
            max_batches,
        } => {
            let settings = config.release.clone().with_overrides(
                batch_size.map(|n| ("--batch-size", n)),
                max_batches.map(|n| ("--max-batches", n)),
            )?;
            Ok((settings, *dry_run))
        }
        _ => Ok((config.release.clone(), false)),
    }
}

async fn execute(cli: Cli) -> Result<Output> {
    let config = config(&cli)?;
    let (settings, dry_run) = release_settings(&cli, &config)?;
    if config.database.tls_disabled() {
        tracing::warn!("TLS is disabled (sslmode=disable): credentials and data cross the network in the clear");
    }
    let tls = config.database.tls_connector()?;
    let credentials = CredentialSource::from_config(&config.database).await?;
    let mut db = credentials.open(&tls, settings.lock_timeout_ms).await?;
    match cli.command {
        Command::Run { .. } => {
            let options = RunOptions {
                dry_run,
                deadline: settings.time_budget.map(|b| Instant::now() + b),
                ..RunOptions::default()
            };
            let run_id = options.run_id.clone();
            let ctx = RunContext {
                request_id: "",
                run_id: &run_id,
                source: "cli",
                dry_run,
                cold_start: false,
                tls: !config.database.tls_disabled(),
            };
            let publisher = publisher(&config, dry_run).await;
            run_command(&mut db, &settings, options, publisher.as_ref(), &ctx)
                .await
                .map(Output::ok)
        }
        Command::Status => Ok(Output::ok(to_json(&status::status(&db, &settings).await?))),
        Command::Revive { order_id } => {
            let outcome = revive(&mut db, &settings, config.revive.hold_minutes, order_id).await?;
            let code = if outcome.revived { 0 } else { 3 };
            tracing::info!(order_id, revived = outcome.revived, reason = ?outcome.reason, "revive");
            Ok(Output {
                text: to_json(&outcome),
                code,
            })
        }
        Command::Events {
            since,
            until,
            publish,
        } => events_command(&db, &config, since, until, publish).await,
        Command::Report { days } => Ok(Output::ok(to_json(
            &release_delay::report(&db, &settings, days).await?,
        ))),
    }
}

/// The EventBridge publisher of a real run, when `EVENT_BUS_NAME` is set.
async fn publisher(config: &Config, dry_run: bool) -> Option<Publisher> {
    match (&config.events.bus_name, dry_run) {
        (Some(bus), false) => Some(Publisher::from_env(bus.clone()).await),
        _ => None,
    }
}

/// `events`: the window's events, printed one a line, or published again.
async fn events_command(
    db: &Database,
    config: &Config,
    since: SystemTime,
    until: Option<SystemTime>,
    publish: bool,
) -> Result<Output> {
    let bus = match (&config.events.bus_name, publish) {
        (None, true) => {
            return Err(Error::Setting {
                name: "EVENT_BUS_NAME".into(),
                reason: "events --publish needs the bus to publish to".into(),
            })
        }
        (bus, _) => bus.clone(),
    };
    let rows = outbox::expired_in_window(&db.client, since, until).await?;
    let events = model::from_rows(&rows, None);
    let Some(bus) = bus.filter(|_| publish) else {
        let lines: Vec<String> = events.iter().map(to_json).collect();
        return Ok(Output::ok(lines.join("\n")));
    };
    let published = Publisher::from_env(bus).await.publish(events).await;
    if published.failed > 0 {
        return Err(Error::Publish(format!(
            "{} of {} events not published (see the log for their order ids)",
            published.failed,
            published.failed + published.published
        )));
    }
    Ok(Output::ok(to_json(&published)))
}

async fn run_command(
    db: &mut Database,
    settings: &ReleaseSettings,
    options: RunOptions,
    publisher: Option<&Publisher>,
    ctx: &RunContext<'_>,
) -> Result<String> {
    let result = events::run::run(db, settings, options, publisher, PUBLISH_GRACE)
        .instrument(telemetry::run_span(ctx))
        .await;
    match result {
        Ok(report) => {
            telemetry::log_run(ctx, Some(&report), None);
            Ok(to_json(&report))
        }
        Err(failure) => {
            telemetry::log_run(ctx, Some(&failure.report), Some(&failure.error));
            Err(failure.error)
        }
    }
}

fn to_json<T: serde::Serialize>(value: &T) -> String {
    // Serializing these plain structs cannot fail; fall back to an empty object regardless.
    serde_json::to_string(value).unwrap_or_else(|_| "{}".into())
}

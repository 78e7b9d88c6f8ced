//! The `unreserver` command line, for local runs, cron hosts and Kubernetes CronJobs:
//! `run` prints the run report and `status` the status, each as one JSON object on stdout;
//! logs go to stderr; a failure prints one line naming the problem and exits non-zero.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Instant;

use clap::{Parser, Subcommand};
use secrecy::{ExposeSecret, SecretString};
use tracing::Instrument;

use crate::config::{Config, ReleaseSettings};
use crate::db::credentials::CredentialSource;
use crate::db::session::Database;
use crate::db::tls;
use crate::engine::run::{self, RunOptions};
use crate::engine::status;
use crate::error::{Error, Result};
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
}

/// Parses the arguments, runs the command, and returns the process exit code.
pub async fn main() -> ExitCode {
    let cli = Cli::parse();
    telemetry::init(LogFormat::Text);
    match execute(cli).await {
        Ok(json) => {
            println!("{json}");
            ExitCode::SUCCESS
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
        Command::Status => Ok((config.release.clone(), false)),
    }
}

async fn execute(cli: Cli) -> Result<String> {
    let config = config(&cli)?;
    let (settings, dry_run) = release_settings(&cli, &config)?;
    if config.database.tls_disabled() {
        tracing::warn!("TLS is disabled (sslmode=disable): credentials and data cross the network in the clear");
    }
    let tls = tls::connector(config.database.ca_bundle.as_deref())?;
    let credentials = CredentialSource::from_config(&config.database).await?;
    let mut db = credentials.open(&tls, settings.lock_timeout_ms).await?;
    match cli.command {
        Command::Run { .. } => {
            let options = RunOptions {
                dry_run,
                deadline: settings.time_budget.map(|b| Instant::now() + b),
                ..RunOptions::default()
            };
            let ctx = RunContext {
                request_id: "",
                run_id: &options.run_id,
                source: "cli",
                dry_run,
                cold_start: false,
                tls: !config.database.tls_disabled(),
            };
            run_command(&mut db, &settings, &options, &ctx).await
        }
        Command::Status => Ok(to_json(&status::status(&db, &settings).await?)),
    }
}

async fn run_command(
    db: &mut Database,
    settings: &ReleaseSettings,
    options: &RunOptions,
    ctx: &RunContext<'_>,
) -> Result<String> {
    let result = run::run(db, settings, options)
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

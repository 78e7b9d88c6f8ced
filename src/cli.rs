//! The `unreserver` command line, for local runs, cron hosts and Kubernetes CronJobs:
//! `run` prints the run report and `status` the status, each as one JSON object on stdout;
//! logs go to stderr; a failure prints one line naming the problem and exits non-zero.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Instant;

use clap::{Parser, Subcommand};

use crate::database::Database;
use crate::error::{Error, Result};
use crate::release::{self, RunOptions};
use crate::settings::{check_range, Settings};
use crate::telemetry::{self, LogFormat, RunContext};
use crate::{connect, status, tls};

/// Gives back the stock held by expired reservations of unpaid orders.
///
/// Settings come from the environment (BATCH_SIZE, MAX_BATCHES, RESERVATION_TIMEOUT_MINUTES,
/// PAYMENT_PROCESSING_GRACE_MINUTES, LOCK_TIMEOUT_MS, STATEMENT_TIMEOUT_MS, BATCH_MAX_ATTEMPTS,
/// RETRY_BACKOFF_MS, TIME_BUDGET_SECONDS); flags override them.
#[derive(Debug, Parser)]
#[command(name = "unreserver", version)]
pub struct Cli {
    /// PostgreSQL connection string (libpq URL or key=value), e.g.
    /// postgres://user:pass@host/db?sslmode=require
    #[arg(long, env = "DATABASE_URL", hide_env_values = true, global = true)]
    database_url: Option<String>,

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
    telemetry::init(LogFormat::from_env(LogFormat::Text));
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

async fn execute(cli: Cli) -> Result<String> {
    let mut settings = Settings::from_env()?;
    let dry_run = match &cli.command {
        Command::Run {
            dry_run,
            batch_size,
            max_batches,
        } => {
            if let Some(n) = *batch_size {
                check_range("--batch-size", n, 1, 10_000)?;
                settings.batch_size = n;
            }
            if let Some(n) = *max_batches {
                check_range("--max-batches", n, 1, 1_000_000)?;
                settings.max_batches = n;
            }
            *dry_run
        }
        Command::Status => false,
    };
    let url = cli.database_url.as_deref().ok_or_else(|| Error::Setting {
        name: "DATABASE_URL".into(),
        reason: "not set (nor --database-url)".into(),
    })?;
    let config = connect::config_from_url("DATABASE_URL", url)?;
    if connect::tls_disabled(&config) {
        tracing::warn!("TLS is disabled (sslmode=disable): credentials and data cross the network in the clear");
    }
    let tls = tls::connector(cli.ca_bundle.as_deref())?;
    let mut db = Database::open(&config, &tls, settings.lock_timeout_ms).await?;
    let json = match cli.command {
        Command::Run { .. } => {
            let options = RunOptions {
                dry_run,
                deadline: settings.time_budget.map(|b| Instant::now() + b),
            };
            let ctx = RunContext {
                request_id: "",
                source: "cli",
                dry_run,
                cold_start: false,
                tls: !connect::tls_disabled(&config),
            };
            match release::run(&mut db, &settings, &options).await {
                Ok(report) => {
                    telemetry::log_run(&ctx, Some(&report), None);
                    to_json(&report)
                }
                Err(failure) => {
                    telemetry::log_run(&ctx, Some(&failure.report), Some(&failure.error));
                    return Err(failure.error);
                }
            }
        }
        Command::Status => to_json(&status::status(&db, &settings).await?),
    };
    Ok(json)
}

fn to_json<T: serde::Serialize>(value: &T) -> String {
    // Serializing these plain structs cannot fail; fall back to an empty object regardless.
    serde_json::to_string(value).unwrap_or_else(|_| "{}".into())
}

//! The `unreserver` command line, for local runs, cron hosts and Kubernetes CronJobs: a thin
//! adapter that turns the arguments into an action's [`Request`] and its answer into stdout
//! and an exit code. `run` prints the run report, `status` the status, `revive` and `release`
//! their outcome and `report` the release-delay report, each as one JSON object on stdout;
//! `events` prints one event a line (or publishes them). Logs go to stderr; a failure prints one
//! line naming the problem. Exit codes: 0 done, 1 a failure, 2 bad input (before any
//! connection), 3 an order that cannot be revived or released, or counters that still disagree
//! after `reconcile`.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, Instant, SystemTime};

use clap::{CommandFactory, FromArgMatches, Parser, Subcommand};
use secrecy::{ExposeSecret, SecretString};

use crate::action::events::{Events, EventsAnswer};
use crate::action::follow::Follow;
use crate::action::reconcile::Reconcile;
use crate::action::release::Release;
use crate::action::report::Report;
use crate::action::revive::Revive;
use crate::action::run::Run;
use crate::action::status::Status;
use crate::action::{Answer, AppState, Invocation, Request};
use crate::config::Config;
use crate::engine::release_delay::MAX_DAYS;
use crate::engine::run::new_run_id;
use crate::error::{Error, Result};
use crate::settings;
use crate::telemetry::{self, LogFormat};

/// Gives back the stock held by expired reservations of unpaid orders.
///
/// Settings come from the environment (listed below `--help`, from the settings table); flags
/// override them.
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
        /// Pins the batch size for this run (as BATCH_SIZE does); unset: adaptive batches.
        #[arg(long)]
        batch_size: Option<u32>,
        /// Overrides MAX_BATCHES for this run.
        #[arg(long)]
        max_batches: Option<u32>,
    },
    /// Keep releasing as reservations fall due (sleeping until the next one, looking again
    /// every second), until --for runs out or SIGTERM/SIGINT (the batch in flight finishes);
    /// then print the run report, summed over the passes.
    Follow {
        /// Follow this many seconds (1 to 900); without it, until a signal.
        #[arg(long = "for", value_name = "SECONDS")]
        for_seconds: Option<u32>,
    },
    /// Print the backlog, anomalies and counter drift.
    Status,
    /// Revive an order the release cancelled, if its stock is still there (a late payment).
    Revive {
        /// The order's id (`orders_order.id`).
        order_id: i64,
    },
    /// Release one order's active reservations now, due or not (the shop's abandon or
    /// payment-failed webhook), by the release's rules otherwise: never a paid order. Exit 3
    /// when the order is not released (see "reason").
    Release {
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
    /// Compare every variant's and drop's reserved_quantity with its active reservations and,
    /// with --apply, set the drifted ones right (never waiting behind a shopper). Exit 3 while
    /// drift remains.
    Reconcile {
        /// Repair the counters that disagree (without it, nothing changes).
        #[arg(long)]
        apply: bool,
        /// Only this variant (repeatable).
        #[arg(long = "variant", value_name = "ID")]
        variants: Vec<i64>,
        /// Only this drop product (repeatable).
        #[arg(long = "drop", value_name = "ID")]
        drops: Vec<i64>,
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

fn parse_time(value: &str) -> std::result::Result<SystemTime, String> {
    humantime::parse_rfc3339_weak(value)
        .map_err(|e| format!("{e}: expected RFC 3339, e.g. 2026-11-25T10:00:00Z"))
}

/// Parses the arguments, runs the command, and returns the process exit code.
pub async fn main() -> ExitCode {
    let matches = Cli::command()
        .after_long_help(settings::help())
        .get_matches();
    let cli = match Cli::from_arg_matches(&matches) {
        Ok(cli) => cli,
        Err(error) => error.exit(),
    };
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

/// The action the arguments ask for, its input checked under the flags' names.
fn request(command: Command) -> Result<Request> {
    Ok(match command {
        Command::Run {
            dry_run,
            batch_size,
            max_batches,
        } => Request::Run(Run::new(
            "cli",
            dry_run,
            batch_size.map(|n| ("--batch-size", n)),
            max_batches.map(|n| ("--max-batches", n)),
        )?),
        Command::Follow { for_seconds } => {
            Request::Follow(Follow::new("cli", "--for", for_seconds)?)
        }
        Command::Status => Request::Status(Status),
        Command::Revive { order_id } => Request::Revive(Revive::new("ORDER_ID", order_id)?),
        Command::Release { order_id } => Request::Release(Release::new("ORDER_ID", order_id)?),
        Command::Events {
            since,
            until,
            publish,
        } => Request::Events(Events {
            since,
            until,
            publish,
        }),
        Command::Report { days } => Request::Report(Report::new("--days", Some(days))?),
        Command::Reconcile {
            apply,
            variants,
            drops,
        } => Request::Reconcile(Reconcile::new("--variant/--drop", apply, variants, drops)?),
    })
}

async fn execute(cli: Cli) -> Result<Output> {
    let mut config = config(&cli)?;
    let request = request(cli.command)?;
    // One command, one connection: nothing to gain from fetching the credentials ahead.
    config.lambda.prefetch_credentials = false;
    let deadline = config.release.time_budget.map(|b| Instant::now() + b);
    let state = AppState::from_config(config).await?;
    let run_id = new_run_id();
    let stop = matches!(request, Request::Run(_) | Request::Follow(_)).then(stop_on_signal);
    let invocation = Invocation {
        request_id: "",
        cold_start: false,
        run_id: &run_id,
        deadline,
        publish_grace: PUBLISH_GRACE,
        stop,
    };
    let answer = request
        .execute(&state, &invocation)
        .await
        .map_err(|failure| failure.error)?;
    Ok(Output {
        text: text(&answer),
        code: if answer.done() { 0 } else { 3 },
    })
}

/// A stop flag raised by the first SIGTERM or SIGINT (the run finishes the batch in flight,
/// then prints its report); a second one ends the process at once (exit 130).
fn stop_on_signal() -> tokio::sync::watch::Receiver<bool> {
    let (tx, rx) = tokio::sync::watch::channel(false);
    tokio::spawn(async move {
        let Ok(mut term) =
            tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        else {
            return;
        };
        for n in 0..2 {
            tokio::select! {
                _ = tokio::signal::ctrl_c() => {}
                _ = term.recv() => {}
            }
            if n == 0 {
                tracing::warn!("asked to stop: finishing the batch in flight");
                tx.send_replace(true);
            }
        }
        std::process::exit(130);
    });
    rx
}

/// What the CLI prints of an answer: one JSON object, or one event a line.
fn text(answer: &Answer) -> String {
    match answer {
        Answer::Events(EventsAnswer::Listed(events)) => {
            let lines: Vec<String> = events.iter().map(to_json).collect();
            lines.join("\n")
        }
        other => other.to_json().to_string(),
    }
}

fn to_json<T: serde::Serialize>(value: &T) -> String {
    // Serializing these plain structs cannot fail; fall back to an empty object regardless.
    serde_json::to_string(value).unwrap_or_else(|_| "{}".into())
}

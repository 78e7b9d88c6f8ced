//! The `unreserver` command line, for local runs, cron hosts and Kubernetes CronJobs: a thin
//! adapter that turns the arguments into an action's [`Request`] and its answer into stdout
//! and an exit code. `run` prints the run report, `status` the status, `revive` and `release`
//! their outcome and `report` the release-delay report, each as one JSON object on stdout;
//! `events` prints one event a line (or publishes them). Logs go to stderr; a failure prints one
//! line naming the problem. Exit codes: 0 done, 1 a failure (or a sweep of tenants in which
//! one failed: its answer is printed), 2 bad input (before any connection), 3 an order that
//! cannot be revived or released, counters that still disagree after `reconcile`, or rows
//! `purge` could still take.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use clap::{CommandFactory, FromArgMatches, Parser};
use secrecy::{ExposeSecret, SecretString};

use crate::action::tenancy::{self, TenantChoice};
use crate::action::Observed;
use crate::action::{AppState, Command, Invocation, Request};
use crate::config::Config;
use crate::engine::run::new_run_id;
use crate::error::{Error, Result};
use crate::settings;
use crate::telemetry::push::Action;
use crate::telemetry::{self, LogFormat};

/// Gives back the stock held by expired reservations of unpaid orders.
///
/// Settings come from the environment (listed below `--help`, from the settings table); flags
/// override them.
#[derive(Debug, Parser)]
#[command(name = "unreserver", version = VERSION)]
pub struct Cli {
    /// PostgreSQL connection string (libpq URL or key=value), e.g.
    /// postgres://user:pass@host/db?sslmode=require
    #[arg(long, env = "DATABASE_URL", hide_env_values = true, global = true,
          value_parser = parse_secret)]
    database_url: Option<SecretString>,

    /// PEM file of CA certificates to trust for the database's TLS certificate.
    #[arg(long, env = "DB_CA_BUNDLE", global = true)]
    ca_bundle: Option<PathBuf>,

    /// The tenant to act on, when the deployment serves several (TENANTS, TENANTS_QUERY or
    /// TENANT_SECRET_PREFIX).
    #[arg(long, global = true, conflicts_with_all = ["tenant_index", "all_tenants"])]
    tenant: Option<String>,

    /// The tenant at this place (from 0) in `unreserver tenants`' list, sorted by name: a
    /// Kubernetes Indexed Job's $JOB_COMPLETION_INDEX.
    #[arg(long, global = true, conflicts_with = "all_tenants")]
    tenant_index: Option<u32>,

    /// Every tenant: `run` sweeps them, the oldest due first, TENANT_CONCURRENCY at a time (a
    /// run that names no tenant while tenants are configured does the same); `status` and
    /// `report` answer for each.
    #[arg(long, global = true)]
    all_tenants: bool,

    #[command(subcommand)]
    command: Command,
}

impl Cli {
    /// The tenant these flags choose.
    fn tenant_choice(&self) -> Result<TenantChoice> {
        Ok(match (&self.tenant, self.tenant_index, self.all_tenants) {
            (Some(name), _, _) => {
                crate::tenant::check_name(name).map_err(|e| match e {
                    Error::Setting { reason, .. } => Error::Setting {
                        name: "--tenant".into(),
                        reason,
                    },
                    other => other,
                })?;
                TenantChoice::Named(name.clone())
            }
            (None, Some(index), _) => TenantChoice::Index(index),
            (None, None, true) => TenantChoice::All,
            (None, None, false) => TenantChoice::Unnamed,
        })
    }
}

/// What `--version` says: the crate's version, or what the build set in `UNRESERVER_VERSION`
/// (`scripts/dist.sh`: the version and the commit it was built from).
pub const VERSION: &str = match option_env!("UNRESERVER_VERSION") {
    Some(version) => version,
    None => env!("CARGO_PKG_VERSION"),
};

/// What a command printed and the exit code it ends with.
struct Output {
    text: String,
    code: u8,
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

async fn execute(cli: Cli) -> Result<Output> {
    let mut config = config(&cli)?;
    let tenant = cli.tenant_choice()?;
    let request = cli.command.into_request()?;
    // One command, one connection: nothing to gain from fetching the credentials ahead.
    config.lambda.prefetch_credentials = false;
    // TIME_BUDGET_SECONDS bounds a command that runs once; a follower runs until its --for or
    // a signal (on a host or in a container, until SIGTERM).
    let budget = config.release.time_budget;
    let deadline = match request {
        Request::Follow(_) => None,
        _ => budget.map(|b| Instant::now() + b),
    };
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
    let pushed = match &request {
        Request::Run(run) => Some((Action::Run, run.dry_run)),
        Request::Reconcile(_) => Some((Action::Reconcile, false)),
        _ => None,
    };
    let outcome = tenancy::execute(request, tenant, &state, &invocation).await;
    if let Some((action, dry_run)) = pushed {
        report_metrics(action, &run_id, dry_run, &outcome).await;
    }
    let answer = outcome.map_err(|failure| failure.error)?;
    Ok(Output {
        text: answer.to_text(),
        code: if answer.failed() {
            1
        } else if answer.done() {
            0
        } else {
            3
        },
    })
}

/// Pushes or writes a run's or a reconcile's metrics (PUSHGATEWAY_URL, TEXTFILE_PATH), from
/// its answer; a run's also when it failed part-way.
async fn report_metrics(
    action: Action,
    run_id: &str,
    dry_run: bool,
    outcome: &std::result::Result<crate::action::Answer, crate::action::Failure>,
) {
    let (observed, failed) = match outcome {
        Ok(answer) => (answer.observed(), false),
        Err(failure) => match failure.report.as_deref() {
            Some(report) => (Observed::Run(report), true),
            None => (Observed::Nothing, true),
        },
    };
    let (report, reconcile) = match observed {
        Observed::Run(report) => (Some(report), None),
        Observed::Reconcile(reconcile) => (None, Some(reconcile)),
        _ => (None, None),
    };
    if action == Action::Reconcile && reconcile.is_none() {
        // A reconcile that failed writes no metrics (as in Lambda): its error is in the log.
        return;
    }
    let obs = telemetry::metrics::Observation {
        reconcile,
        purge: None,
        run_id,
        tenant: None,
        report,
        failed,
        dry_run,
        cold_start: false,
        duration_ms: report.map_or(0, |r| r.duration_ms),
    };
    telemetry::push::report(action, |name| std::env::var(name).ok(), &obs).await;
}

/// A stop flag raised by the first SIGTERM or SIGINT (Ctrl-C or Ctrl-Break on Windows): the
/// run finishes the batch in flight, then prints its report; a second one ends the process at
/// once (exit 130).
fn stop_on_signal() -> tokio::sync::watch::Receiver<bool> {
    let (tx, rx) = tokio::sync::watch::channel(false);
    tokio::spawn(async move {
        let Some(mut signals) = Signals::new() else {
            return;
        };
        for n in 0..2 {
            signals.next().await;
            if n == 0 {
                tracing::warn!("asked to stop: finishing the batch in flight");
                tx.send_replace(true);
            }
        }
        std::process::exit(130);
    });
    rx
}

/// The signals that ask the process to stop: SIGTERM and SIGINT.
#[cfg(unix)]
struct Signals(tokio::signal::unix::Signal);

#[cfg(unix)]
impl Signals {
    fn new() -> Option<Self> {
        use tokio::signal::unix::{signal, SignalKind};
        signal(SignalKind::terminate()).ok().map(Signals)
    }

    async fn next(&mut self) {
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = self.0.recv() => {}
        }
    }
}

/// The signals that ask the process to stop on Windows: Ctrl-C and Ctrl-Break (Task Scheduler
/// ends a task hard, without either: every batch is one transaction, so nothing is left
/// half-done).
#[cfg(windows)]
struct Signals(tokio::signal::windows::CtrlBreak);

#[cfg(windows)]
impl Signals {
    fn new() -> Option<Self> {
        tokio::signal::windows::ctrl_break().ok().map(Signals)
    }

    async fn next(&mut self) {
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = self.0.recv() => {}
        }
    }
}

//! The actions, one module each (mini-redis's `cmd/` is the model). Each declares itself: its
//! type is its input — both its command-line arguments (`clap::Args`) and its payload
//! (`serde::Deserialize`, unknown fields refused) — checked by [`Action::check`] under the
//! names the front-end gave its fields, with its `execute`, its answer ([`Action::Answer`], a
//! [`Reply`]) and the metrics it emits ([`Action::METRICS`]). The front-ends only route: the
//! CLI parses a [`Command`], the Lambda handler picks the payload's `action` and calls
//! [`Request::from_payload`]; both then run [`Request::execute`].
//!
//! Adding an action: one module here and one line in the [`actions!`] list below.

pub mod each;
pub mod events;
pub mod follow;
pub mod follow_tenants;
pub mod purge;
pub mod reconcile;
pub mod release;
pub mod report;
pub mod revive;
pub mod run;
mod state;
pub mod status;
pub mod sweep;
pub mod tenancy;
pub mod tenants;

use std::time::{Duration, Instant};

use serde::de::DeserializeOwned;
use serde_json::Value;

pub use state::{AppState, InitTimings};

use crate::db::session::Database;
use crate::engine::purge::PurgeReport;
use crate::engine::reconcile::ReconcileReport;
use crate::engine::run_report::RunReport;
use crate::error::{Error, Result};

/// Which front-end gave an input: its checks name each field as that front-end spells it (a
/// flag, a payload field).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Front {
    Cli,
    Payload,
}

impl Front {
    /// The name of a field on this front-end: `cli` on the command line, `payload` in a payload.
    pub fn name<'a>(self, cli: &'a str, payload: &'a str) -> &'a str {
        match self {
            Front::Cli => cli,
            Front::Payload => payload,
        }
    }
}

/// The metrics document an action writes in Lambda (see `lambda::metrics`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Metrics {
    /// None.
    None,
    /// A run's: from its report, also when it failed part-way.
    Run,
    /// A reconcile's: only when it answered (a failure is in the log and Lambda's `Errors`).
    Reconcile,
    /// A purge's: only when it answered, like a reconcile's.
    Purge,
}

/// What the metrics of an answer read.
#[derive(Debug, Clone, Copy)]
pub enum Observed<'a> {
    Nothing,
    Run(&'a RunReport),
    Reconcile(&'a ReconcileReport),
    Purge(&'a PurgeReport),
}

/// An action's answer, as the front-ends give it back.
pub trait Reply: std::fmt::Debug + Send + Sync {
    /// The answer as one JSON value (the Lambda response; the CLI's stdout).
    fn to_json(&self) -> Value;
    /// What the CLI prints (one JSON object by default).
    fn to_text(&self) -> String {
        self.to_json().to_string()
    }
    /// Whether the action did what it was asked (the CLI exits 3 when not: an order that
    /// cannot be revived or released, counters that still disagree).
    fn done(&self) -> bool {
        true
    }
    /// What the metrics document reads of it.
    fn observed(&self) -> Observed<'_> {
        Observed::Nothing
    }
    /// Whether part of it failed though it answered (a sweep with a failed tenant: the CLI
    /// prints the answer and exits 1).
    fn failed(&self) -> bool {
        false
    }
    /// The tenant it served, when it served one.
    fn tenant(&self) -> Option<&str> {
        None
    }
}

/// One action: its type is its input, for both front-ends.
pub trait Action: clap::Args + DeserializeOwned + Sized {
    /// Its name: the subcommand, and the payload's `action` field.
    const NAME: &'static str;
    /// Whether a payload may ask for it (false: the command line only).
    const PAYLOAD: bool = true;
    /// The metrics document it writes in Lambda.
    const METRICS: Metrics = Metrics::None;
    /// Its answer.
    type Answer: Reply + 'static;
    /// The input, checked (ranges, defaults that differ by front-end); an error names the field
    /// as `front` spells it.
    fn check(self, front: Front) -> Result<Self>;
    /// A dry run changes nothing (its metrics carry `mode = dry_run`).
    fn dry_run(&self) -> bool {
        false
    }
}

/// The list of actions: each line generates its subcommand, its payload route, its name and
/// metrics, and its arm in [`Request::execute`]. Every action's `execute` takes the state and
/// the invocation and answers its [`Action::Answer`] or a [`Failure`].
macro_rules! actions {
    ($($module:ident :: $Type:ident),* $(,)?) => {
        /// What a front-end asks for: one variant an action, each holding its checked input.
        #[derive(Debug, Clone, PartialEq, Eq)]
        pub enum Request {
            $($Type($module::$Type)),*
        }

        /// The actions as the CLI's subcommands: each action's input is its arguments.
        #[derive(Debug, clap::Subcommand)]
        pub enum Command {
            $($Type($module::$Type)),*
        }

        /// Every action's name, in the list's order.
        pub const NAMES: &[&str] = &[$(<$module::$Type as Action>::NAME),*];

        impl Command {
            /// The request of these arguments, checked under the flags' names.
            pub fn into_request(self) -> Result<Request> {
                Ok(match self {
                    $(Command::$Type(input) => Request::$Type(input.check(Front::Cli)?)),*
                })
            }
        }

        impl Request {
            /// The action's name, as the payload's `action` field spells it.
            pub fn name(&self) -> &'static str {
                match self {
                    $(Request::$Type(_) => <$module::$Type as Action>::NAME),*
                }
            }

            /// The metrics document it writes in Lambda.
            pub fn metrics(&self) -> Metrics {
                match self {
                    $(Request::$Type(_) => <$module::$Type as Action>::METRICS),*
                }
            }

            /// Whether it is a dry run.
            pub fn dry_run(&self) -> bool {
                match self {
                    $(Request::$Type(input) => input.dry_run()),*
                }
            }

            /// The request of action `name` with its fields in `fields` (an object, the
            /// `action` field taken out), checked under the payload's field names.
            pub fn from_payload(name: &str, fields: &Value) -> Result<Request> {
                $(
                    if name == <$module::$Type as Action>::NAME
                        && <$module::$Type as Action>::PAYLOAD
                    {
                        let input: $module::$Type = strict(fields)?;
                        return Ok(Request::$Type(input.check(Front::Payload)?));
                    }
                )*
                Err(Error::Payload(format!(
                    "field action: unknown action {name:?}, expected one of {}",
                    payload_actions().join(", ")
                )))
            }

            /// Runs the action: its input was checked; it opens a checked connection.
            pub async fn execute(
                self,
                state: &AppState,
                invocation: &Invocation<'_>,
            ) -> std::result::Result<Answer, Failure> {
                match self {
                    $(Request::$Type(input) => input
                        .execute(state, invocation)
                        .await
                        .map(|answer| Box::new(answer) as Answer)),*
                }
            }
        }

        /// The names of the actions a payload may ask for.
        fn payload_actions() -> Vec<&'static str> {
            let mut names = Vec::new();
            $(
                if <$module::$Type as Action>::PAYLOAD {
                    names.push(<$module::$Type as Action>::NAME);
                }
            )*
            names
        }
    };
}

actions! {
    run::Run,
    follow::Follow,
    status::Status,
    revive::Revive,
    release::Release,
    report::Report,
    events::Events,
    reconcile::Reconcile,
    purge::Purge,
    tenants::Tenants,
}

/// The actions the shop's door (a function deployed with `SHOP_DOOR=1`) accepts: the
/// synchronous calls of the shop's webhooks, each on one order. Any other is refused by name
/// before a connection is opened: the shop's principal, allowed to invoke the door, can never
/// run a reconcile, a run with overrides or a follow through it.
pub const DOOR_ACTIONS: &[&str] = &[
    <release::Release as Action>::NAME,
    <revive::Revive as Action>::NAME,
];

/// What an action answered.
pub type Answer = Box<dyn Reply>;

/// Deserializes an input with the path of the offending field in the error (a payload's
/// fields, each action's own: unknown ones are refused).
pub(crate) fn strict<T: DeserializeOwned>(fields: &Value) -> Result<T> {
    serde_path_to_error::deserialize(fields).map_err(|e| {
        let path = e.path().to_string();
        let inner = e.into_inner().to_string();
        if path.is_empty() || path == "." {
            Error::Payload(inner)
        } else {
            Error::Payload(format!("field {path}: {inner}"))
        }
    })
}

/// Who asked for a run or a follow, as a payload's `source` says (1 to 64 characters): it
/// reaches the run's logs and summary line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Source(pub String);

/// The longest `source` a payload may give.
pub const MAX_SOURCE_LEN: usize = 64;

impl<'de> serde::Deserialize<'de> for Source {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        let text = String::deserialize(d)?;
        if text.is_empty() || text.len() > MAX_SOURCE_LEN {
            return Err(serde::de::Error::custom(format!(
                "must be 1 to {MAX_SOURCE_LEN} characters"
            )));
        }
        Ok(Source(text))
    }
}

impl Source {
    /// The source of the schedule's runs: its payload's `{"source": "schedule"}`, or an
    /// EventBridge "Scheduled Event".
    pub const SCHEDULE: &'static str = "schedule";

    /// The source of an input: the payload's, else `manual` (a payload without one) or `cli`.
    pub fn or_default(source: Option<Source>, front: Front) -> Source {
        source.unwrap_or_else(|| Source(front.name("cli", "manual").into()))
    }

    /// Who asked, as a run's logs name it (`manual` for an input not yet checked).
    pub fn name(source: &Option<Source>) -> &str {
        source.as_ref().map_or("manual", |s| s.0.as_str())
    }
}

/// An action that failed: the error, and for a run what its committed batches did.
#[derive(Debug)]
pub struct Failure {
    pub error: Error,
    pub report: Option<Box<RunReport>>,
    /// The tenant it served, when it served one (its metrics carry it).
    pub tenant: Option<String>,
}

impl From<Error> for Failure {
    fn from(error: Error) -> Self {
        Failure {
            error,
            report: None,
            tenant: None,
        }
    }
}

/// One invocation's particulars, beside the state built once.
#[derive(Debug, Clone)]
pub struct Invocation<'a> {
    /// The Lambda request id; empty on the command line.
    pub request_id: &'a str,
    /// The first invocation of this execution environment.
    pub cold_start: bool,
    /// The id of the run this invocation starts, if it is a run (a fresh UUID), in its report,
    /// logs and metrics.
    pub run_id: &'a str,
    /// No batch starts unless it can finish before it: the Lambda deadline less its margin, or
    /// the CLI's `TIME_BUDGET_SECONDS` from now.
    pub deadline: Option<Instant>,
    /// How long a run's events may still take after the deadline.
    pub publish_grace: Duration,
    /// Set to true when the process is asked to stop (SIGTERM, SIGINT): a run or follow
    /// finishes the batch in flight and starts no other. None in Lambda.
    pub stop: Option<tokio::sync::watch::Receiver<bool>>,
}

/// An order id given as input (`field` names it), checked: positive.
fn order_id(field: &str, order_id: i64) -> Result<i64> {
    if order_id <= 0 {
        return Err(Error::Setting {
            name: field.into(),
            reason: "must be a positive order id".into(),
        });
    }
    Ok(order_id)
}

/// The context of a run's (or follow's) span and summary line.
fn run_context<'a>(
    state: &AppState,
    invocation: &Invocation<'a>,
    source: &'a str,
    dry_run: bool,
) -> crate::telemetry::RunContext<'a> {
    crate::telemetry::RunContext {
        request_id: invocation.request_id,
        run_id: invocation.run_id,
        source,
        dry_run,
        cold_start: invocation.cold_start,
        tls: !state.config.database.tls_disabled(),
    }
}

/// Logs a run's summary line (with its error, if it failed part-way) and turns its outcome
/// into the action's.
fn summarized(
    ctx: &crate::telemetry::RunContext<'_>,
    outcome: std::result::Result<RunReport, crate::engine::run::RunFailure>,
) -> std::result::Result<RunReport, Failure> {
    match outcome {
        Ok(report) => {
            crate::telemetry::log_run(ctx, Some(&report), None);
            Ok(report)
        }
        Err(failure) => {
            crate::telemetry::log_run(ctx, Some(&failure.report), Some(&failure.error));
            Err(Failure {
                error: failure.error,
                report: Some(failure.report),
                tenant: None,
            })
        }
    }
}

/// Opens a checked connection with the state's credentials (a tenant's state: its database,
/// or the one database confined to its schema).
async fn open(state: &AppState) -> Result<Database> {
    let lock_timeout_ms = state.config.release.lock_timeout_ms;
    let schema = state.schema.as_deref();
    state
        .credentials
        .open(&state.tls, lock_timeout_ms, schema)
        .await
}

//! unreserver gives back the stock held by expired reservations of unpaid orders in a shop's
//! PostgreSQL database, in short batches that never make a shopper's transaction fail or wait
//! long.
//!
//! # Layout
//!
//! - [`config`]: the one configuration tree (release, database, Lambda, metrics), read and
//!   range-checked by one function from one lookup.
//! - `db`: the database layer — `connect` (timeouts, keepalives, `application_name`), `tls`
//!   (verified TLS, CA bundles), `secrets` and `credentials` (Secrets Manager, cached, re-read on
//!   rotation), `preflight` (schema, `deadlock_timeout`, indexes), `session` (a checked, prepared
//!   connection) and [`db::sql`] (every statement of the release with what it locks and why, and
//!   its typed wrapper; `outbox`, `revive` and `delay_report` hold the statements around it).
//! - `engine`: the release — `run` (the batch loop, retries, workers, deferred work, the
//!   ledger), `budget` (a batch's time budget and its cut), `hooks`, `batch` (one batch
//!   transaction, step by step), `run_report` (the run report) and `status`; around it, `revive`
//!   (an order whose payment came late), `release_delay` (the per-day report) and `purge`
//!   (deleting what the release left behind, in small chunks).
//! - [`events`]: the expiry events — `model` (the events, from batch or replayed rows),
//!   `publisher` (EventBridge `PutEvents`, chunked, retried) and `sink` (publishing in the
//!   background while the run goes on).
//! - [`action`]: one module per action (run, status, revive, report, events), each with its
//!   input, answer and `execute`; [`action::Request`] is the one vocabulary of both front-ends,
//!   and [`action::AppState`] the state built once.
//! - `aws`: the AWS SDK configuration every client shares.
//! - `lambda`: the Lambda front-end — `handler` (payload in, response out), `payload` (the
//!   accepted payloads, as a `Request`) and `metrics` (CloudWatch EMF).
//! - [`cli`]: the `unreserver` command line. It and the Lambda handler live in the library, not
//!   in `src/bin`, so that tests can drive them in-process; `src/bin` holds only the two thin
//!   `main`s (`unreserver`, `bootstrap`).
//! - [`settings`]: the table of every setting, each declared once (name, range, default, unit,
//!   doc, and the field of its group, with its typed parse): it drives parsing, `--help` and
//!   `docs/configuration.md`.
//! - [`telemetry`]: logging set-up, the run span and the run's summary line; `metrics`, every
//!   metric as one backend-neutral row (name, unit, kind, help) the EMF document is written from;
//!   `prometheus`, the same rows for Prometheus; `push`, a run's metrics to a Pushgateway or a
//!   node_exporter textfile.
//! - `listen`: a follower's HTTP endpoints (`/metrics`, `/healthz`, `/readyz`, `/status`).
//! - [`tenant`]: many shops from one deployment — what a tenant's name may be and how a
//!   database tenant's connection settings derive from the deployment's (listing and connecting
//!   are `action::tenancy`'s, the sweep across tenants `action::sweep`'s).
//! - [`error`]: typed errors that say whether a retry can help.
//!
//! Modules are private; what the binaries, tests and benchmark need is re-exported below.

#![warn(clippy::too_many_lines)]

pub mod action;
pub(crate) mod aws;
pub mod cli;
pub mod config;
pub mod db;
pub(crate) mod engine;
pub mod error;
pub mod events;
pub(crate) mod lambda;
pub(crate) mod listen;
pub mod settings;
pub mod telemetry;
pub mod tenant;

pub use action::{AppState, Request};
pub use config::{Config, ReleaseSettings};
pub use db::connect::{apply_defaults, config_from_url, connect, APPLICATION_NAME};
pub use db::credentials::{CredentialSource, IamSource};
pub use db::iam::{auth_token as rds_iam_token, TokenTarget};
pub use db::secrets::SecretSource;
pub use db::session::{CancelledBy, Database};
pub use db::tls::{
    certificates as tls_certificates, connector as tls_connector, RdsCaRegions, Tls,
};
pub use engine::hooks::OnCommit;
pub use engine::on_request::{OnRequestOutcome, Reason as OnRequestReason};
pub use engine::purge::{purge, Options as PurgeOptions, PurgeReport};
pub use engine::reconcile::{reconcile, ReconcileReport, Scope as ReconcileScope};
pub use engine::release_delay::{report as release_delay_report, DelayReport};
pub use engine::revive::{revive, Reason as ReviveReason, ReviveOutcome};
pub use engine::run::{run, RunFailure, RunOptions};
pub use engine::run_report::{RunReport, StopReason, CONTRACT_FIELDS};
pub use engine::status::{status, StatusReport};
pub use error::{Error, Result};
pub use lambda::handler::{handle, HandlerError};
pub use lambda::metrics::{METRICS, SERVICE_DIMENSION};
pub use lambda::payload::parse as parse_payload;

//! A run across every tenant in one invocation (`unreserver run --all-tenants`, a payload's
//! `"tenant": "*"`, or a run that names none while tenants are configured). First a probe
//! reads each tenant's backlog with the one rule of what is due (`sql::BACKLOG`) — the schema
//! tenants on one shared session, each database tenant on a short connection of its own —
//! then the tenants with due work run, the oldest due first, `TENANT_CONCURRENCY` at a time,
//! each on its own connections and within the invocation's one deadline. A tenant whose probe
//! or run fails (a locked table, a missing column, a rejected password, a timeout) fails alone
//! and is named; the others finish. Fairness across sweeps: a tenant the deadline left out keeps
//! its oldest due work, which puts it ahead of those just served at the next sweep.
//!
//! Input: the run's own (`run::Run`, applied to each tenant). Answer: [`SweepReport`], one
//! entry a tenant. Metrics: each tenant's run writes its own (with its tenant).

use std::cmp::Ordering;

use futures_util::stream::{self, StreamExt};
use serde::Serialize;
use serde_json::Value;
use tracing::Instrument;

use super::run::Run;
use super::tenancy;
use super::{AppState, Failure, Invocation, Reply, Request};
use crate::db::connect;
use crate::db::sql::{self, Backlog};
use crate::engine::batch::rules;
use crate::error::{Error, Result};
use crate::tenant::TenantKind;

/// What happened to one tenant in a sweep.
#[derive(Debug, Clone, Serialize)]
pub struct TenantOutcome {
    pub tenant: String,
    /// `quiet` (nothing due), `released` (its run ended), `failed` (its probe or run failed:
    /// see `error`), `not_started` (the deadline or a stop came first).
    pub outcome: &'static str,
    /// Reservations due when probed.
    pub due: i64,
    /// Seconds since its oldest due reservation became due, when probed.
    pub oldest_due_age_seconds: Option<f64>,
    /// Reservations its run released.
    pub released: u64,
    /// Why its run stopped, as a run report says it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub stopped_reason: Option<Value>,
    /// Its error: kind, whether a retry can help, the cause chain.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<Value>,
    /// What its run report says in short (a tenant's whole report is in its run's summary
    /// log line): the keys of [`REPORT_KEYS`].
    #[serde(skip_serializing_if = "Option::is_none")]
    pub report: Option<Value>,
}

/// What a sweep's answer keeps of each tenant's run report.
pub const REPORT_KEYS: &[&str] = &[
    "units_released",
    "orders_cancelled",
    "batches",
    "deferred",
    "backlog_remaining",
    "release_delay_max_seconds",
    "events_failed",
    "duration_ms",
];

/// The answer of a sweep.
#[derive(Debug, Clone, Serialize)]
pub struct SweepReport {
    pub run_id: String,
    pub dry_run: bool,
    /// Tenants run at once, and the connections each run drained with ([`connections`]).
    pub tenants_at_once: u32,
    pub workers_each: u32,
    /// One entry a tenant: those that ran in the order they started, then the quiet, failed
    /// and not started ones by name.
    pub tenants: Vec<TenantOutcome>,
    /// Reservations released across the tenants.
    pub released: u64,
    /// The tenants that failed, sorted by name.
    pub failed: Vec<String>,
    pub duration_ms: u64,
}

impl Reply for SweepReport {
    fn to_json(&self) -> Value {
        serde_json::to_value(self).unwrap_or_default()
    }
    fn failed(&self) -> bool {
        !self.failed.is_empty()
    }
}

impl TenantOutcome {
    fn probed(tenant: String, backlog: Backlog) -> Self {
        TenantOutcome {
            tenant,
            outcome: if backlog.due > 0 {
                "not_started"
            } else {
                "quiet"
            },
            due: backlog.due,
            oldest_due_age_seconds: backlog.oldest_age_seconds,
            released: 0,
            stopped_reason: None,
            error: None,
            report: None,
        }
    }

    fn failed(tenant: String, error: &Error) -> Self {
        TenantOutcome {
            tenant,
            outcome: "failed",
            due: 0,
            oldest_due_age_seconds: None,
            released: 0,
            stopped_reason: None,
            error: Some(error.summary()),
            report: None,
        }
    }
}

/// Sweeps every tenant with `run`'s input (see the module's documentation).
pub async fn sweep(
    run: Run,
    state: &AppState,
    invocation: &Invocation<'_>,
) -> std::result::Result<SweepReport, Failure> {
    let started = std::time::Instant::now();
    let names = tenancy::list(state).await?;
    let (concurrency, workers) = connections(state);
    let run = Run {
        workers: Some(workers),
        ..run
    };
    let mut probed = probe(state, names, concurrency as usize).await;
    // The oldest due first; ties by name.
    probed.sort_by(|a, b| {
        let age = |o: &TenantOutcome| o.oldest_due_age_seconds.unwrap_or(-1.0);
        age(b)
            .partial_cmp(&age(a))
            .unwrap_or(Ordering::Equal)
            .then_with(|| a.tenant.cmp(&b.tenant))
    });
    let (due, rest): (Vec<_>, Vec<_>) =
        probed.into_iter().partition(|o| o.outcome == "not_started");
    let ran: Vec<TenantOutcome> = stream::iter(due)
        .map(|outcome| run_tenant(outcome, &run, state, invocation))
        .buffered(concurrency as usize)
        .collect()
        .await;
    let mut rest = rest;
    rest.sort_by(|a, b| a.tenant.cmp(&b.tenant));
    let tenants: Vec<TenantOutcome> = ran.into_iter().chain(rest).collect();
    let mut failed: Vec<String> = tenants
        .iter()
        .filter(|o| o.outcome == "failed")
        .map(|o| o.tenant.clone())
        .collect();
    failed.sort();
    let report = SweepReport {
        run_id: invocation.run_id.to_string(),
        dry_run: run.dry_run,
        tenants_at_once: concurrency,
        workers_each: workers,
        released: tenants.iter().map(|o| o.released).sum(),
        tenants,
        failed,
        duration_ms: started.elapsed().as_millis() as u64,
    };
    tracing::info!(
        tenants = report.tenants.len(),
        released = report.released,
        failed = ?report.failed,
        duration_ms = report.duration_ms,
        "tenants swept"
    );
    Ok(report)
}

/// The one rule of a sweep's connections: it holds no more than one run would — `WORKERS`
/// (the probe's session aside, closed before the runs) — whatever `TENANT_CONCURRENCY` says:
/// `min(TENANT_CONCURRENCY, WORKERS)` tenants at once, each run draining with its share of
/// `WORKERS` (at least one). So the role's `CONNECTION LIMIT`, sized for one run an
/// invocation, holds for a sweep too. Answers (tenants at once, workers each).
pub fn connections(state: &AppState) -> (u32, u32) {
    let wanted = state.config.tenants.as_ref().map_or(1, |t| t.concurrency);
    share(state.config.release.workers, wanted)
}

/// [`connections`]' arithmetic: `workers` shared among `wanted` tenants at once.
fn share(workers: u32, wanted: u32) -> (u32, u32) {
    let workers = workers.max(1);
    let at_once = wanted.clamp(1, workers);
    (at_once, (workers / at_once).max(1))
}

/// One tenant's run, unless the deadline passed or a stop was asked before it started.
async fn run_tenant(
    mut outcome: TenantOutcome,
    run: &Run,
    state: &AppState,
    invocation: &Invocation<'_>,
) -> TenantOutcome {
    let past_deadline = invocation
        .deadline
        .is_some_and(|deadline| std::time::Instant::now() >= deadline);
    let stopped = invocation.stop.as_ref().is_some_and(|stop| *stop.borrow());
    if past_deadline || stopped {
        return outcome;
    }
    let span = tracing::info_span!("tenant", tenant = %outcome.tenant);
    let ran = async {
        let tenant = state.for_tenant(&outcome.tenant).await?;
        Request::Run(run.clone()).execute(&tenant, invocation).await
    }
    .instrument(span)
    .await;
    let report = match &ran {
        Ok(answer) => answer.to_json(),
        Err(failure) => failure.report.as_ref().map_or(Value::Null, |r| r.to_json()),
    };
    outcome.released = report["reservations_released"].as_u64().unwrap_or(0);
    outcome.stopped_reason = report.get("stopped_reason").cloned();
    if let Value::Object(all) = report {
        let short = all
            .into_iter()
            .filter(|(key, _)| REPORT_KEYS.contains(&key.as_str()))
            .collect();
        outcome.report = Some(Value::Object(short));
    }
    match ran {
        Ok(_) => outcome.outcome = "released",
        Err(failure) => {
            outcome.outcome = "failed";
            outcome.error = Some(failure.error.summary());
        }
    }
    outcome
}

/// Each tenant's backlog, or its failure: the schema tenants one after another on one shared
/// session (a failed read is that tenant's; a broken session is opened again), each database
/// tenant on a connection of its own, `concurrency` at a time.
async fn probe(state: &AppState, names: Vec<String>, concurrency: usize) -> Vec<TenantOutcome> {
    let rules = rules(&state.config.release);
    let schema = state
        .config
        .tenants
        .as_ref()
        .is_some_and(|t| t.kind == TenantKind::Schema);
    if schema {
        let mut client = None;
        let mut outcomes = Vec::with_capacity(names.len());
        for name in names {
            if client
                .as_ref()
                .is_none_or(|c: &tokio_postgres::Client| c.is_closed())
            {
                match probe_session(state).await {
                    Ok(opened) => client = Some(opened),
                    Err(error) => {
                        outcomes.push(TenantOutcome::failed(name, &error));
                        continue;
                    }
                }
            }
            let Some(session) = &client else { continue };
            let checked = crate::tenant::check_name(&name);
            let backlog = match checked {
                Ok(()) => sql::tenants::backlog_of_schema(session, &name, rules).await,
                Err(error) => Err(error),
            };
            outcomes.push(match backlog {
                Ok(backlog) => TenantOutcome::probed(name, backlog),
                Err(error) => TenantOutcome::failed(name, &error),
            });
        }
        return outcomes;
    }
    stream::iter(names)
        .map(|name| async move {
            let backlog = async {
                let tenant = state.for_tenant(&name).await?;
                let client = probe_session(&tenant).await?;
                sql::tenants::backlog_on(&client, rules).await
            }
            .await;
            match backlog {
                Ok(backlog) => TenantOutcome::probed(name, backlog),
                Err(error) => TenantOutcome::failed(name, &error),
            }
        })
        .buffered(concurrency)
        .collect()
        .await
}

/// A session for the probe: connected with `state`'s credentials, its waits bounded
/// ([`sql::tenants::PROBE_SESSION`]).
pub(crate) async fn probe_session(state: &AppState) -> Result<tokio_postgres::Client> {
    let config = state.credentials.config(false).await?;
    let client = connect::connect(&config, &state.tls).await?;
    client
        .batch_execute(sql::tenants::PROBE_SESSION)
        .await
        .map_err(Error::db("setting the probe session's timeouts"))?;
    Ok(client)
}

#[cfg(test)]
mod tests {
    use super::share;

    #[test]
    fn a_sweep_never_holds_more_connections_than_one_run() {
        for workers in 1..=16 {
            for wanted in 1..=64 {
                let (at_once, each) = share(workers, wanted);
                assert!(at_once * each <= workers, "{workers} {wanted}");
                assert!(at_once >= 1 && each >= 1);
            }
        }
        assert_eq!(share(2, 4), (2, 1));
        assert_eq!(share(8, 2), (2, 4));
        assert_eq!(share(16, 4), (4, 4));
    }
}

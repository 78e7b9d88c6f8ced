//! Which tenant an invocation serves: the tenants listed (`TENANTS`, `TENANTS_QUERY` or
//! `TENANT_SECRET_PREFIX`, see `crate::tenant`), the choice a front-end made (`--tenant NAME`,
//! `--tenant-index N`, `--all-tenants`; a payload's `tenant` field, `"*"` for all), and the
//! one routing rule: a tenant's action runs on that tenant's state alone, and its answer names
//! it. A deployment's tenants are one trust domain (whoever may invoke the function may name
//! any of them: IAM cannot restrict a payload field); shops that must not reach each other get a
//! deployment each (`docs/tenants.md`).

use std::sync::Arc;

use serde_json::Value;

use super::{Answer, AppState, Failure, Invocation, Observed, Reply, Request};
use crate::db::connect;
use crate::db::sql;
use crate::error::{Error, Result};
use crate::tenant::{TenantKind, TenantList};

/// What a front-end asked about tenants.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum TenantChoice {
    /// Nothing: the deployment's own database; with tenants configured, a `run` sweeps them
    /// all (the schedule's payload names none) and every other action must name one.
    #[default]
    Unnamed,
    /// One tenant by name.
    Named(String),
    /// The N-th tenant (from 0) in name order: a Kubernetes Indexed Job's completion index.
    Index(u32),
    /// Every tenant (`run` only).
    All,
}

/// The payload field that names a tenant (`"*"`: all).
pub const TENANT_FIELD: &str = "tenant";

impl TenantChoice {
    /// The choice of a payload's `tenant` field: a name, or `"*"` for all.
    pub fn from_payload(value: &Value) -> Result<TenantChoice> {
        match value {
            Value::String(all) if all == "*" => Ok(TenantChoice::All),
            Value::String(name) => {
                crate::tenant::check_name(name)
                    .map_err(|e| Error::Payload(format!("field {TENANT_FIELD}: {e}")))?;
                Ok(TenantChoice::Named(name.clone()))
            }
            _ => Err(Error::Payload(format!(
                "field {TENANT_FIELD}: expected a tenant's name, or \"*\" for all"
            ))),
        }
    }
}

/// The error of a tenant named where none is configured.
pub fn not_configured() -> Error {
    Error::Setting {
        name: TENANT_FIELD.into(),
        reason: "names a tenant, but no tenants are configured (set TENANTS, TENANTS_QUERY or \
                 TENANT_SECRET_PREFIX)"
            .into(),
    }
}

/// The tenants' names, sorted, each once: the setting's, the query's (run read-only on the
/// deployment's database), or the secrets' under the prefix (`ListSecrets`).
pub async fn list(state: &AppState) -> Result<Vec<String>> {
    let Some(tenants) = &state.config.tenants else {
        return Err(not_configured());
    };
    let mut names = match &tenants.list {
        TenantList::Names(names) => names.clone(),
        TenantList::Query(query) => {
            let config = state.credentials.config(false).await?;
            let client = connect::connect(&config, &state.tls).await?;
            sql::tenants::tenants_by_query(&client, query).await?
        }
        TenantList::SecretPrefix(prefix) => secrets_under(prefix).await?,
    };
    names.sort();
    names.dedup();
    Ok(names)
}

/// The names of the secrets whose names start with `prefix`, less the prefix (the `name`
/// filter of `ListSecrets` matches a prefix; every page read).
async fn secrets_under(prefix: &str) -> Result<Vec<String>> {
    use aws_sdk_secretsmanager::types::{Filter, FilterNameStringType};
    let sdk = crate::aws::sdk_config().await;
    let client = aws_sdk_secretsmanager::Client::new(&sdk);
    let filter = Filter::builder()
        .key(FilterNameStringType::Name)
        .values(prefix)
        .build();
    let mut pages = client
        .list_secrets()
        .filters(filter)
        .max_results(100)
        .into_paginator()
        .send();
    let mut names = Vec::new();
    while let Some(page) = pages.next().await {
        let page = page.map_err(|e| Error::Secret {
            secret_id: format!("{prefix}*"),
            reason: format!(
                "cannot be listed (secretsmanager:ListSecrets): {}",
                aws_sdk_secretsmanager::error::DisplayErrorContext(e)
            ),
            retryable: true,
        })?;
        for secret in page.secret_list() {
            if let Some(rest) = secret.name().and_then(|n| n.strip_prefix(prefix)) {
                if !rest.is_empty() {
                    names.push(rest.to_string());
                }
            }
        }
    }
    Ok(names)
}

/// The state of the tenant `choice` names, checked against the list (a name not listed is
/// refused by name: a schema tenant's session could otherwise reach any schema the role can).
/// A tenant under `TENANT_SECRET_PREFIX` is its own secret: it is not listed first (its name
/// can reach nothing but a secret under the prefix, which the IAM policy bounds).
pub async fn state_of(state: &AppState, choice: &TenantChoice) -> Result<Arc<AppState>> {
    let Some(tenants) = &state.config.tenants else {
        return Err(not_configured());
    };
    let name = match choice {
        TenantChoice::Named(name) => {
            let under_prefix = matches!(tenants.list, TenantList::SecretPrefix(_));
            if !under_prefix && !list(state).await?.contains(name) {
                return Err(Error::Setting {
                    name: TENANT_FIELD.into(),
                    reason: format!("{name:?} is not one of the tenants listed"),
                });
            }
            name.clone()
        }
        TenantChoice::Index(index) => {
            let names = list(state).await?;
            match names.get(*index as usize) {
                Some(name) => name.clone(),
                None => {
                    return Err(Error::Setting {
                        name: "tenant-index".into(),
                        reason: format!(
                            "{index} is past the last of the {} tenants (they count from 0)",
                            names.len()
                        ),
                    })
                }
            }
        }
        TenantChoice::Unnamed | TenantChoice::All => {
            return Err(Error::Setting {
                name: TENANT_FIELD.into(),
                reason: "tenants are configured: name one (--tenant NAME, a payload's tenant \
                         field)"
                    .into(),
            })
        }
    };
    state.for_tenant(&name).await
}

/// Runs `request` as `choice` says: on the deployment's own state without tenants; on one
/// tenant's state (its answer names it); for a `run` with all tenants (or none named while
/// tenants are configured), a sweep of them all (`super::sweep`); for a `follow` likewise, one
/// follower of them all (`super::follow_tenants`); for `status` or `report` with all, every
/// tenant's answer (`super::each`).
pub async fn execute(
    request: Request,
    choice: TenantChoice,
    state: &AppState,
    invocation: &Invocation<'_>,
) -> std::result::Result<Answer, Failure> {
    let configured = state.config.tenants.is_some();
    match (&choice, configured) {
        (TenantChoice::Unnamed, false) => return request.execute(state, invocation).await,
        (_, false) => return Err(not_configured().into()),
        (TenantChoice::Unnamed, true) if matches!(request, Request::Tenants(_)) => {
            return request.execute(state, invocation).await
        }
        _ => {}
    }
    // All tenants: asked for, or a run or follow that names none (the schedule's payloads).
    let all = matches!(choice, TenantChoice::All)
        || (choice == TenantChoice::Unnamed
            && matches!(request, Request::Run(_) | Request::Follow(_)));
    if all {
        return match request {
            Request::Run(run) => super::sweep::sweep(run, state, invocation)
                .await
                .map(|answer| Box::new(answer) as Answer),
            Request::Follow(follow) => super::follow_tenants::follow_all(follow, state, invocation)
                .await
                .map(|answer| Box::new(answer) as Answer),
            request if super::each::read_only(&request) => {
                super::each::each(request, state, invocation)
                    .await
                    .map(|answer| Box::new(answer) as Answer)
            }
            request => Err(Error::Setting {
                name: TENANT_FIELD.into(),
                reason: format!(
                    "all tenants at once answers run, follow, status and report, not {}",
                    request.name()
                ),
            }
            .into()),
        };
    }
    let tenant = state_of(state, &choice).await?;
    let name = tenant.tenant.clone().unwrap_or_default();
    let span = tracing::info_span!("tenant", tenant = %name);
    let outcome = tracing::Instrument::instrument(request.execute(&tenant, invocation), span).await;
    match outcome {
        Ok(answer) => Ok(Box::new(Tenanted {
            tenant: name,
            answer,
        }) as Answer),
        Err(failure) => Err(Failure {
            tenant: Some(name),
            ..failure
        }),
    }
}

/// A tenant's answer: the action's, with the tenant's name in it.
#[derive(Debug)]
pub struct Tenanted {
    pub tenant: String,
    pub answer: Answer,
}

impl Reply for Tenanted {
    fn to_json(&self) -> Value {
        let mut json = self.answer.to_json();
        if let Value::Object(map) = &mut json {
            map.insert(TENANT_FIELD.into(), Value::String(self.tenant.clone()));
        }
        json
    }
    /// The answer's JSON with the tenant in it; a text of its own (`events`' lines) as it is.
    fn to_text(&self) -> String {
        let text = self.answer.to_text();
        let plain = self.answer.to_json().to_string();
        if text == plain {
            self.to_json().to_string()
        } else {
            text
        }
    }
    fn done(&self) -> bool {
        self.answer.done()
    }
    fn observed(&self) -> Observed<'_> {
        self.answer.observed()
    }
    fn tenant(&self) -> Option<&str> {
        Some(&self.tenant)
    }
}

/// Whether a tenant's sessions read one schema of a shared database.
pub fn is_schema(state: &AppState) -> bool {
    state
        .config
        .tenants
        .as_ref()
        .is_some_and(|t| t.kind == TenantKind::Schema)
}

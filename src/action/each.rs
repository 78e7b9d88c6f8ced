//! A read-only action (`status`, `report`) answered for every tenant at once (`--all-tenants`,
//! a payload's `"tenant": "*"`): each tenant's answer as that action gives it, with its name;
//! a tenant that cannot answer (a locked table, a missing column, a rejected password) is named
//! with its error, and the others still answer. As many tenants at once as a sweep runs, one
//! connection each (`sweep::connections`).
//!
//! Input: the action's own. Answer: [`EachTenant`]. Metrics: none.

use futures_util::stream::{self, StreamExt};
use serde_json::{json, Value};

use super::{tenancy, AppState, Failure, Invocation, Reply, Request};

/// Every tenant's answer to one read-only action.
#[derive(Debug)]
pub struct EachTenant {
    /// Each tenant's answer (with `tenant`), or `{tenant, error}`, by name.
    pub tenants: Vec<Value>,
    /// The tenants that could not answer, by name.
    pub failed: Vec<String>,
}

impl Reply for EachTenant {
    fn to_json(&self) -> Value {
        json!({"tenants": self.tenants, "failed": self.failed, "count": self.tenants.len()})
    }
    fn failed(&self) -> bool {
        !self.failed.is_empty()
    }
}

/// Whether `request` may be asked of every tenant at once: it only reads.
pub fn read_only(request: &Request) -> bool {
    matches!(request, Request::Status(_) | Request::Report(_))
}

/// `request` answered by every tenant listed.
pub async fn each(
    request: Request,
    state: &AppState,
    invocation: &Invocation<'_>,
) -> std::result::Result<EachTenant, Failure> {
    let names = tenancy::list(state).await?;
    let (at_once, _) = super::sweep::connections(state);
    let answers: Vec<(String, Result<Value, Value>)> = stream::iter(names)
        .map(|name| {
            let request = request.clone();
            async move {
                let answer = async {
                    let tenant = state.for_tenant(&name).await?;
                    request.execute(&tenant, invocation).await
                }
                .await;
                let answer = match answer {
                    Ok(answer) => {
                        let mut json = answer.to_json();
                        if let Value::Object(map) = &mut json {
                            map.insert(tenancy::TENANT_FIELD.into(), json!(name));
                        }
                        Ok(json)
                    }
                    Err(failure) => Err(json!({"tenant": name, "error": failure.error.summary()})),
                };
                (name, answer)
            }
        })
        .buffered(at_once as usize)
        .collect()
        .await;
    let failed = answers
        .iter()
        .filter(|(_, a)| a.is_err())
        .map(|(name, _)| name.clone())
        .collect();
    let tenants = answers
        .into_iter()
        .map(|(_, answer)| answer.unwrap_or_else(|error| error))
        .collect();
    Ok(EachTenant { tenants, failed })
}

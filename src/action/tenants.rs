//! `tenants`: the tenants this deployment serves, by name — what a fan-out engine (a Step
//! Functions Map state, a Kubernetes Indexed Job) hands out, one worker a tenant.

use serde::Serialize;

use crate::action::{tenancy, Action, AppState, Failure, Front, Invocation, Reply, Source};
use crate::error::Result;

/// List the tenants.
///
/// Takes no input: `unreserver tenants`, or the payload `{"action": "tenants"}`; answers
/// `{"tenants": ["a", "b"], "count": 2}`, the names sorted (a tenant's `--tenant-index` is its
/// place in this list).
#[derive(Debug, Clone, Default, PartialEq, Eq, clap::Args, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Tenants {
    /// Who asked, as a payload may say.
    #[arg(skip)]
    #[serde(default)]
    pub source: Option<Source>,
}

/// The tenants, sorted by name.
#[derive(Debug, Clone, Serialize)]
pub struct TenantList {
    pub tenants: Vec<String>,
    pub count: usize,
}

impl Reply for TenantList {
    fn to_json(&self) -> serde_json::Value {
        serde_json::to_value(self).unwrap_or_default()
    }
}

impl Action for Tenants {
    const NAME: &'static str = "tenants";
    type Answer = TenantList;

    fn check(self, _front: Front) -> Result<Self> {
        Ok(self)
    }
}

impl Tenants {
    pub async fn execute(
        self,
        state: &AppState,
        _invocation: &Invocation<'_>,
    ) -> std::result::Result<TenantList, Failure> {
        let tenants = tenancy::list(state).await?;
        tracing::info!(count = tenants.len(), "tenants listed");
        Ok(TenantList {
            count: tenants.len(),
            tenants,
        })
    }
}

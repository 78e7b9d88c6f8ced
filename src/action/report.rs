//! `report`: the release-delay report, per UTC day.

use crate::action::{open, Action, AppState, Failure, Front, Invocation, Reply, Source};
use crate::engine::release_delay::{report, DelayReport, MAX_DAYS};
use crate::error::Result;
use crate::settings::check_range;

/// Print the release-delay report: per UTC day, what the release expired and how late.
///
/// How many days to cover, today (UTC) included: `unreserver report [--days N]`, or the payload
/// `{"action": "report", "days": 7}` (`days` optional).
#[derive(Debug, Clone, PartialEq, Eq, clap::Args, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Report {
    /// Days to cover, today (UTC) included (1 to 366).
    #[arg(long, default_value_t = DEFAULT_DAYS)]
    #[serde(default = "default_days")]
    pub days: u32,
    /// Who asked, as a payload may say (accepted by every action; a run logs it).
    #[arg(skip)]
    #[serde(default)]
    pub source: Option<Source>,
}

/// Days covered when none are asked for.
pub const DEFAULT_DAYS: u32 = 7;

fn default_days() -> u32 {
    DEFAULT_DAYS
}

impl Action for Report {
    const NAME: &'static str = "report";
    type Answer = DelayReport;

    fn check(self, front: Front) -> Result<Self> {
        check_range(front.name("--days", "days"), self.days, 1, MAX_DAYS)?;
        Ok(self)
    }
}

impl Reply for DelayReport {
    fn to_json(&self) -> serde_json::Value {
        serde_json::to_value(self).unwrap_or_default()
    }
}

impl Report {
    pub async fn execute(
        self,
        state: &AppState,
        _invocation: &Invocation<'_>,
    ) -> std::result::Result<DelayReport, Failure> {
        let db = open(state).await?;
        Ok(report(&db, &state.config.release, self.days).await?)
    }
}

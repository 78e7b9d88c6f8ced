//! `report`: the release-delay report, per UTC day.

use crate::action::{open, AppState};
use crate::engine::release_delay::{report, DelayReport, MAX_DAYS};
use crate::error::Result;
use crate::settings::check_range;

/// How many days to cover, today (UTC) included.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Report {
    pub days: u32,
}

/// Days covered when none are asked for.
pub const DEFAULT_DAYS: u32 = 7;

impl Report {
    /// The input, checked: `field` is the name the front-end gave the days.
    pub fn new(field: &str, days: Option<u32>) -> Result<Self> {
        let days = days.unwrap_or(DEFAULT_DAYS);
        check_range(field, days, 1, MAX_DAYS)?;
        Ok(Report { days })
    }

    pub async fn execute(self, state: &AppState) -> Result<DelayReport> {
        let db = open(state).await?;
        report(&db, &state.config.release, self.days).await
    }
}

//! `purge`: deletes the `expired` reservations released more than DAYS ago and, with
//! `--orders`, the unpaid orders the release cancelled with their lines — dry by default, in
//! small committed chunks that never wait behind a shopper, pausing for lagging replicas and
//! for the release's own due work. Run it as the role of `infra/purge-role.sql`: the release's
//! role may not delete.

use std::time::Duration;

use crate::action::{
    open, report, Action, AppState, Failure, Front, Invocation, Metrics, Observed, Reply, Source,
};
use crate::engine::purge::{purge, Options, PurgeReport};
use crate::error::{Error, Result};
use crate::settings::check_range;

/// Delete expired reservations released more than --older-than days ago (and, with --orders,
/// the unpaid orders the release cancelled, with their lines), in small chunks; without
/// --apply, count what would go. Exit 3 while rows it could take remain.
///
/// What to purge: `unreserver purge [--older-than DAYS] [--apply] [--orders] [--max-lag MS]`, or
/// the payload `{"action": "purge", "older_than_days": 60, "apply": false, "orders": false,
/// "max_lag_ms": 1000}` (all optional).
#[derive(Debug, Clone, PartialEq, Eq, clap::Args, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Purge {
    /// Rows released (orders cancelled) more than this many days ago (8 to 36500).
    #[arg(long = "older-than", value_name = "DAYS", default_value_t = DEFAULT_DAYS)]
    #[serde(default = "default_days")]
    pub older_than_days: u32,
    /// Delete (without it, nothing changes: the answer counts what would go).
    #[arg(long)]
    #[serde(default)]
    pub apply: bool,
    /// Also the orders the release cancelled, unpaid and referenced by no other table, with
    /// their lines.
    #[arg(long)]
    #[serde(default)]
    pub orders: bool,
    /// Pause while a streaming replica's replay lag exceeds this many milliseconds (1 to
    /// 3600000).
    #[arg(long = "max-lag", value_name = "MS", default_value_t = DEFAULT_MAX_LAG_MS)]
    #[serde(default = "default_max_lag_ms")]
    pub max_lag_ms: u32,
    /// Who asked, as a payload may say (accepted by every action; a run logs it).
    #[arg(skip)]
    #[serde(default)]
    pub source: Option<Source>,
}

/// Days kept when none are asked for (Saleor's default delay, too).
pub const DEFAULT_DAYS: u32 = 60;
/// The fewest days a purge keeps: more than the week `report` covers by default.
pub const MIN_DAYS: u32 = report::DEFAULT_DAYS + 1;
/// The most days one may ask for (a hundred years).
pub const MAX_DAYS: u32 = 36_500;
/// The replay lag a purge pauses at when none is asked for (pt-archiver's `--max-lag`).
pub const DEFAULT_MAX_LAG_MS: u32 = 1000;

fn default_days() -> u32 {
    DEFAULT_DAYS
}

fn default_max_lag_ms() -> u32 {
    DEFAULT_MAX_LAG_MS
}

impl Action for Purge {
    const NAME: &'static str = "purge";
    const METRICS: Metrics = Metrics::Purge;
    type Answer = PurgeReport;

    /// At least [`MIN_DAYS`]: a purge must never take what `report`'s default week reads.
    fn check(self, front: Front) -> Result<Self> {
        let days = front.name("--older-than", "older_than_days");
        if self.older_than_days < MIN_DAYS {
            return Err(Error::Setting {
                name: days.into(),
                reason: format!(
                    "{} is too few: at least {MIN_DAYS} days are kept, more than the {} days \
                     `report` covers by default",
                    self.older_than_days,
                    report::DEFAULT_DAYS
                ),
            });
        }
        check_range(days, self.older_than_days, MIN_DAYS, MAX_DAYS)?;
        check_range(
            front.name("--max-lag", "max_lag_ms"),
            self.max_lag_ms,
            1,
            3_600_000,
        )?;
        Ok(self)
    }

    fn dry_run(&self) -> bool {
        !self.apply
    }
}

impl Reply for PurgeReport {
    fn to_json(&self) -> serde_json::Value {
        serde_json::to_value(self).unwrap_or_default()
    }

    fn done(&self) -> bool {
        !self.work_remains()
    }

    fn observed(&self) -> Observed<'_> {
        Observed::Purge(self)
    }
}

impl Purge {
    pub async fn execute(
        self,
        state: &AppState,
        invocation: &Invocation<'_>,
    ) -> std::result::Result<PurgeReport, Failure> {
        let mut db = open(state).await?;
        let options = Options {
            apply: self.apply,
            orders: self.orders,
            older_than_days: self.older_than_days,
            max_lag: Duration::from_millis(u64::from(self.max_lag_ms)),
            deadline: invocation.deadline,
        };
        Ok(purge(&mut db, &state.config.release, &options).await?)
    }
}

//! The one configuration tree of the process — release, database, Lambda and metrics settings —
//! read by one function ([`Config::from_lookup`]) from one name → value lookup (the environment,
//! or the CLI's flags over it). Every value is checked against its range before any connection
//! is made, and every error names its setting. Secrets are held as `SecretString`s or in a
//! [`tokio_postgres::Config`], whose `Debug` redacts the password.

use std::time::Duration;

pub use crate::db::settings::{DatabaseConfig, DatabaseSource, IamSettings, SecretSettings};
use crate::error::{Error, Result};
pub use crate::settings::{check_range, SETTINGS};
use crate::settings::{
    Setting, BATCH_MAX_ATTEMPTS, BATCH_SIZE, BATCH_SIZE_MAX, BATCH_SIZE_MIN, BATCH_TARGET_MS,
    DEADLINE_MARGIN_MS, EVENT_BUS_NAME, EXPIRY_WARNING_SECONDS, LOCK_TIMEOUT_MS, MAX_BATCHES,
    PASS_SIZE, PAYMENT_PROCESSING_GRACE_MINUTES, POWERTOOLS_METRICS_NAMESPACE,
    POWERTOOLS_SERVICE_NAME, PREFETCH_CREDENTIALS, RESERVATION_TIMEOUT_MINUTES, RETRY_BACKOFF_MS,
    REVIVE_HOLD_MINUTES, RUN_INTERVAL_SECONDS, SHOP_DEADLOCK_TIMEOUT_MS, STATEMENT_TIMEOUT_MS,
    TIME_BUDGET_SECONDS, WORKERS,
};

/// Everything a front-end needs, read once at start.
#[derive(Debug, Clone)]
pub struct Config {
    pub release: ReleaseSettings,
    pub database: DatabaseConfig,
    pub lambda: LambdaConfig,
    pub metrics: MetricsConfig,
    pub events: EventsConfig,
    pub revive: ReviveSettings,
}

impl Config {
    /// Reads the whole tree from the process environment (empty values count as unset).
    pub fn from_env() -> Result<Config> {
        Config::from_lookup(|name| std::env::var(name).ok())
    }

    /// Reads the whole tree through `lookup` (name → value); unset or empty names keep their
    /// defaults. Fails on the first bad value, naming it.
    pub fn from_lookup(lookup: impl Fn(&str) -> Option<String>) -> Result<Config> {
        let lookup = |name: &str| lookup(name).filter(|v| !v.trim().is_empty());
        Ok(Config {
            release: ReleaseSettings::from_lookup(&lookup)?,
            database: DatabaseConfig::from_lookup(&lookup)?,
            lambda: LambdaConfig::from_lookup(&lookup)?,
            metrics: MetricsConfig::from_lookup(&lookup)?,
            events: EventsConfig::from_lookup(&lookup)?,
            revive: ReviveSettings::from_lookup(&lookup)?,
        })
    }
}

/// How a run releases: batch shape, time rules, and how long it may wait on a lock.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReleaseSettings {
    /// `BATCH_SIZE`: due reservations paged per batch transaction, pinned; None: adaptive (see
    /// `engine::controller`).
    pub batch_size: Option<u32>,
    /// `BATCH_SIZE_MIN`, `BATCH_SIZE_MAX`: the adaptive batch's bounds (rows).
    pub batch_size_min: u32,
    pub batch_size_max: u32,
    /// `BATCH_TARGET_MS`: the time an adaptive batch is sized to take while nothing competes.
    pub batch_target_ms: u32,
    /// `WORKERS`: connections one run drains with at once while nothing competes.
    pub workers: u32,
    /// Batches after which a run stops even if more is due.
    pub max_batches: u32,
    /// Age after which a legacy reservation (NULL `expires_at`) is due.
    pub reservation_timeout_minutes: u32,
    /// Extra time an order whose payment is `processing` gets before it is due.
    pub payment_processing_grace_minutes: u32,
    /// `lock_timeout` of a batch: the longest a batch waits on one row lock held by a shopper.
    pub lock_timeout_ms: u32,
    /// `statement_timeout` of a batch's statements.
    pub statement_timeout_ms: u32,
    /// Tries of one batch on lock timeout, deadlock or serialization failure before the run
    /// stops and leaves the rest for the next run.
    pub batch_max_attempts: u32,
    /// Base of the jittered exponential backoff between tries of a batch.
    pub retry_backoff_ms: u32,
    /// Longest a run may take (CLI). The Lambda front-end derives it from the deadline instead.
    pub time_budget: Option<Duration>,
    /// `SHOP_DEADLOCK_TIMEOUT_MS`: the lowest `deadlock_timeout` the shop's own sessions use,
    /// when they set one below the server's (which the preflight reads; None: use that). A
    /// batch never outlives half of it, and `LOCK_TIMEOUT_MS` must be at most half of it.
    pub shop_deadlock_timeout_ms: Option<u32>,
    /// `PASS_SIZE`: due rows one pass reads when no index serves the keyset page (see
    /// `engine::pass`): about 40 bytes of memory each.
    pub pass_size: u32,
}

impl Default for ReleaseSettings {
    fn default() -> Self {
        let n = |s: Setting| s.default_number();
        ReleaseSettings {
            batch_size: None,
            batch_size_min: n(BATCH_SIZE_MIN),
            batch_size_max: n(BATCH_SIZE_MAX),
            batch_target_ms: n(BATCH_TARGET_MS),
            workers: n(WORKERS),
            max_batches: n(MAX_BATCHES),
            reservation_timeout_minutes: n(RESERVATION_TIMEOUT_MINUTES),
            payment_processing_grace_minutes: n(PAYMENT_PROCESSING_GRACE_MINUTES),
            lock_timeout_ms: n(LOCK_TIMEOUT_MS),
            statement_timeout_ms: n(STATEMENT_TIMEOUT_MS),
            batch_max_attempts: n(BATCH_MAX_ATTEMPTS),
            retry_backoff_ms: n(RETRY_BACKOFF_MS),
            time_budget: seconds(n(TIME_BUDGET_SECONDS)),
            shop_deadlock_timeout_ms: Some(n(SHOP_DEADLOCK_TIMEOUT_MS)).filter(|&ms| ms > 0),
            pass_size: n(PASS_SIZE),
        }
    }
}

/// 0 means none.
fn seconds(n: u32) -> Option<Duration> {
    (n > 0).then(|| Duration::from_secs(u64::from(n)))
}

impl ReleaseSettings {
    /// Reads the release settings through `lookup`; unset names keep their defaults.
    pub fn from_lookup(lookup: &impl Fn(&str) -> Option<String>) -> Result<ReleaseSettings> {
        let settings = ReleaseSettings {
            batch_size: BATCH_SIZE.optional_number(lookup)?,
            batch_size_min: BATCH_SIZE_MIN.number(lookup)?,
            batch_size_max: BATCH_SIZE_MAX.number(lookup)?,
            batch_target_ms: BATCH_TARGET_MS.number(lookup)?,
            workers: WORKERS.number(lookup)?,
            max_batches: MAX_BATCHES.number(lookup)?,
            reservation_timeout_minutes: RESERVATION_TIMEOUT_MINUTES.number(lookup)?,
            payment_processing_grace_minutes: PAYMENT_PROCESSING_GRACE_MINUTES.number(lookup)?,
            lock_timeout_ms: LOCK_TIMEOUT_MS.number(lookup)?,
            statement_timeout_ms: STATEMENT_TIMEOUT_MS.number(lookup)?,
            batch_max_attempts: BATCH_MAX_ATTEMPTS.number(lookup)?,
            retry_backoff_ms: RETRY_BACKOFF_MS.number(lookup)?,
            time_budget: seconds(TIME_BUDGET_SECONDS.number(lookup)?),
            shop_deadlock_timeout_ms: Some(SHOP_DEADLOCK_TIMEOUT_MS.number(lookup)?)
                .filter(|&ms| ms > 0),
            pass_size: PASS_SIZE.number(lookup)?,
        };
        settings.validate()?;
        Ok(settings)
    }

    /// Applies a front-end's overrides (a flag, a payload field), each range-checked under the
    /// name the caller gave it.
    pub fn with_overrides(
        mut self,
        batch_size: Option<(&str, u32)>,
        max_batches: Option<(&str, u32)>,
    ) -> Result<ReleaseSettings> {
        ReleaseSettings::check_overrides(batch_size, max_batches)?;
        if let Some((_, n)) = batch_size {
            self.batch_size = Some(n);
        }
        if let Some((_, n)) = max_batches {
            self.max_batches = n;
        }
        Ok(self)
    }

    /// Range-checks a front-end's overrides, each under the name the caller gave it.
    pub fn check_overrides(
        batch_size: Option<(&str, u32)>,
        max_batches: Option<(&str, u32)>,
    ) -> Result<()> {
        if let Some((name, n)) = batch_size {
            BATCH_SIZE.check(name, n)?;
        }
        if let Some((name, n)) = max_batches {
            MAX_BATCHES.check(name, n)?;
        }
        Ok(())
    }

    /// Checks the relations between settings (each one alone is range-checked on parse).
    pub fn validate(&self) -> Result<()> {
        if let Some(n) = self.batch_size {
            BATCH_SIZE.check(BATCH_SIZE.name, n)?;
        }
        if self.batch_size_min > self.batch_size_max {
            return Err(Error::Setting {
                name: BATCH_SIZE_MIN.name.into(),
                reason: format!(
                    "{} must be at most BATCH_SIZE_MAX ({})",
                    self.batch_size_min, self.batch_size_max
                ),
            });
        }
        MAX_BATCHES.check(MAX_BATCHES.name, self.max_batches)?;
        if self.lock_timeout_ms >= self.statement_timeout_ms {
            return Err(Error::Setting {
                name: LOCK_TIMEOUT_MS.name.into(),
                reason: format!(
                    "{} must be below STATEMENT_TIMEOUT_MS ({})",
                    self.lock_timeout_ms, self.statement_timeout_ms
                ),
            });
        }
        Ok(())
    }
}

/// What only the Lambda front-end uses.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LambdaConfig {
    /// `DEADLINE_MARGIN_MS` (5000): time kept free before the invocation's deadline.
    pub deadline_margin: Duration,
    /// `PREFETCH_CREDENTIALS` (1): fetch the database credentials during init.
    pub prefetch_credentials: bool,
}

impl LambdaConfig {
    pub fn from_lookup(lookup: &impl Fn(&str) -> Option<String>) -> Result<LambdaConfig> {
        let margin_ms = DEADLINE_MARGIN_MS.number(lookup)?;
        let prefetch = PREFETCH_CREDENTIALS.number(lookup)?;
        Ok(LambdaConfig {
            deadline_margin: Duration::from_millis(margin_ms.into()),
            prefetch_credentials: prefetch == 1,
        })
    }
}

/// Where expiry events go.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EventsConfig {
    /// `EVENT_BUS_NAME`: the EventBridge bus (name or ARN) each run publishes its expiry events
    /// to; unset, no events are published.
    pub bus_name: Option<String>,
    /// `EXPIRY_WARNING_SECONDS` (0: None): the lead time of the `Order Expiring Soon` events.
    pub warning_lead: Option<Duration>,
    /// `RUN_INTERVAL_SECONDS` (300): the time between two scheduled runs.
    pub run_interval: Duration,
}

impl EventsConfig {
    pub fn from_lookup(lookup: &impl Fn(&str) -> Option<String>) -> Result<Self> {
        let lead = EXPIRY_WARNING_SECONDS.number(lookup)?;
        let interval = RUN_INTERVAL_SECONDS.number(lookup)?;
        let timing = EventsConfig {
            bus_name: None,
            warning_lead: (lead > 0).then(|| Duration::from_secs(lead.into())),
            run_interval: Duration::from_secs(interval.into()),
        };
        let Some(bus) = EVENT_BUS_NAME.get(lookup) else {
            return Ok(timing);
        };
        let ok = bus.len() <= 1600
            && bus
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || "._-/:".contains(c));
        if !ok {
            return Err(Error::Setting {
                name: EVENT_BUS_NAME.name.into(),
                reason: "must be an event bus name or ARN (letters, digits and . _ - / :)".into(),
            });
        }
        Ok(EventsConfig {
            bus_name: Some(bus),
            ..timing
        })
    }
}

/// How a late payment revives an order.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReviveSettings {
    /// `REVIVE_HOLD_MINUTES` (15): how long the revived reservations hold the stock again.
    pub hold_minutes: u32,
}

impl ReviveSettings {
    pub fn from_lookup(lookup: &impl Fn(&str) -> Option<String>) -> Result<Self> {
        Ok(ReviveSettings {
            hold_minutes: REVIVE_HOLD_MINUTES.number(lookup)?,
        })
    }
}

/// The CloudWatch namespace and service dimension of the metrics.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MetricsConfig {
    pub namespace: String,
    pub service: String,
}

impl MetricsConfig {
    /// `POWERTOOLS_METRICS_NAMESPACE` (default `Unreserver`) and `POWERTOOLS_SERVICE_NAME`
    /// (default `unreserver`).
    pub fn from_lookup(lookup: &impl Fn(&str) -> Option<String>) -> Result<Self> {
        let namespace = metric_name(lookup, POWERTOOLS_METRICS_NAMESPACE, 255)?;
        if namespace.starts_with("AWS/") {
            return Err(Error::Setting {
                name: POWERTOOLS_METRICS_NAMESPACE.name.into(),
                reason: "namespaces starting with AWS/ are reserved for AWS services".into(),
            });
        }
        let service = metric_name(lookup, POWERTOOLS_SERVICE_NAME, 250)?;
        Ok(MetricsConfig { namespace, service })
    }
}

fn metric_name(
    lookup: &impl Fn(&str) -> Option<String>,
    setting: Setting,
    max: usize,
) -> Result<String> {
    let name = setting.name;
    let value = setting
        .get(lookup)
        .unwrap_or_else(|| setting.default_text());
    let ok = value.len() <= max
        && value
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "._-/#:".contains(c))
        && !value.starts_with(':');
    if ok {
        Ok(value)
    } else {
        Err(Error::Setting {
            name: name.into(),
            reason: format!("must be 1 to {max} characters of A-Z a-z 0-9 . _ - / # :"),
        })
    }
}

#[cfg(test)]
mod tests {
    use tokio_postgres::config::SslMode;

    use super::*;
    use crate::db::tls::RdsCaRegions;

    fn lookup(pairs: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> {
        let pairs: Vec<(String, String)> = pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        move |name| {
            pairs
                .iter()
                .find(|(k, _)| k == name)
                .map(|(_, v)| v.clone())
        }
    }

    const URL: (&str, &str) = ("DATABASE_URL", "postgres://app:hunter2@db.example/shop");

    #[test]
    fn defaults_when_unset() {
        let c = Config::from_lookup(lookup(&[URL])).unwrap();
        assert_eq!(c.release, ReleaseSettings::default());
        assert_eq!(c.lambda.deadline_margin, Duration::from_secs(5));
        assert_eq!(c.metrics.namespace, "Unreserver");
        assert!(matches!(c.database.source, DatabaseSource::Url(_)));
        assert!(!format!("{c:?}").contains("hunter2"));
    }

    #[test]
    fn reads_values() {
        let s = ReleaseSettings::from_lookup(&lookup(&[
            ("BATCH_SIZE", "50"),
            ("MAX_BATCHES", "3"),
            ("RESERVATION_TIMEOUT_MINUTES", "30"),
            ("PAYMENT_PROCESSING_GRACE_MINUTES", "0"),
            ("TIME_BUDGET_SECONDS", "0"),
        ]))
        .unwrap();
        assert_eq!(s.batch_size, Some(50));
        assert_eq!(s.max_batches, 3);
        assert_eq!(s.reservation_timeout_minutes, 30);
        assert_eq!(s.payment_processing_grace_minutes, 0);
        assert_eq!(s.time_budget, None);
    }

    #[test]
    fn the_secret_wins_and_its_settings_are_read() {
        let c = Config::from_lookup(lookup(&[
            URL,
            ("DB_SECRET_ID", "prod/db"),
            ("DB_HOST", "fallback.example"),
            ("DB_PORT", "6432"),
            ("SECRET_CACHE_TTL_SECONDS", "60"),
        ]))
        .unwrap();
        let DatabaseSource::Secret(s) = c.database.source else {
            panic!("expected the secret")
        };
        assert_eq!(s.secret_id, "prod/db");
        assert_eq!(
            (s.host.as_deref(), s.port),
            (Some("fallback.example"), 6432)
        );
        assert_eq!(s.ssl_mode, SslMode::Require);
        assert_eq!(s.cache_ttl, Duration::from_secs(60));
    }

    #[test]
    fn every_bad_value_names_its_setting() {
        let cases: &[(&str, &str)] = &[
            ("BATCH_SIZE", "0"),
            ("BATCH_SIZE", "ten"),
            ("BATCH_SIZE", "-5"),
            ("BATCH_SIZE", "10001"),
            ("MAX_BATCHES", "0"),
            ("RESERVATION_TIMEOUT_MINUTES", "0"),
            ("PAYMENT_PROCESSING_GRACE_MINUTES", "1.5"),
            ("LOCK_TIMEOUT_MS", "0"),
            ("LOCK_TIMEOUT_MS", "9000"),
            ("STATEMENT_TIMEOUT_MS", "5"),
            ("BATCH_MAX_ATTEMPTS", "0"),
            ("RETRY_BACKOFF_MS", "x"),
            ("TIME_BUDGET_SECONDS", "99999999999"),
            ("SHOP_DEADLOCK_TIMEOUT_MS", "x"),
            ("PASS_SIZE", "10"),
            ("DEADLINE_MARGIN_MS", "10"),
            ("SECRET_CACHE_TTL_SECONDS", "-1"),
            ("DB_PORT", "0"),
            ("DB_PORT", "x"),
            ("DB_SSLMODE", "verify-ca"),
            ("DB_SSLMODE", "prefer"),
            ("POWERTOOLS_METRICS_NAMESPACE", "bad name"),
            ("POWERTOOLS_METRICS_NAMESPACE", "AWS/Lambda"),
            ("POWERTOOLS_SERVICE_NAME", ":x"),
            ("DB_RDS_CA_REGIONS", "eu-west-1;us-east-1"),
        ];
        for (name, value) in cases {
            let pairs = [URL, ("DB_SECRET_ID", "s"), (*name, *value)];
            let err = Config::from_lookup(lookup(&pairs)).unwrap_err();
            assert!(
                matches!(&err, Error::Setting { name: n, .. } if n == name),
                "{name}={value} gave {err}"
            );
            assert!(err.to_string().contains(name));
            assert!(!err.is_retryable());
        }
    }

    #[test]
    fn iam_authentication_needs_its_settings_and_tls() {
        let iam = [
            ("DB_AUTH", "iam"),
            ("DB_HOST", "db.example"),
            ("DB_NAME", "shop"),
            ("DB_USER", "unreserver"),
        ];
        let c = Config::from_lookup(lookup(&iam)).unwrap();
        let DatabaseSource::Iam(s) = &c.database.source else {
            panic!("expected IAM")
        };
        assert_eq!(
            (s.host.as_str(), s.port, s.user.as_str()),
            ("db.example", 5432, "unreserver")
        );
        assert!(!c.database.tls_disabled());
        for missing in ["DB_HOST", "DB_NAME", "DB_USER"] {
            let pairs: Vec<(&str, &str)> =
                iam.iter().copied().filter(|(k, _)| *k != missing).collect();
            let err = Config::from_lookup(lookup(&pairs)).unwrap_err();
            assert!(err.to_string().contains(missing), "{err}");
        }
        let mut clear = iam.to_vec();
        clear.push(("DB_SSLMODE", "disable"));
        let err = Config::from_lookup(lookup(&clear)).unwrap_err();
        assert!(err.to_string().contains("DB_SSLMODE"), "{err}");
        let err = Config::from_lookup(lookup(&[("DB_AUTH", "kerberos")])).unwrap_err();
        assert!(err.to_string().contains("DB_AUTH"), "{err}");
    }

    #[test]
    fn the_rds_cas_trusted_are_those_of_the_database_and_the_function_regions() {
        let regions = |pairs: &[(&str, &str)]| {
            Config::from_lookup(lookup(pairs))
                .unwrap()
                .database
                .rds_ca_regions
        };
        use crate::db::tls::tests::only;
        let rds_url = (
            "DATABASE_URL",
            "postgres://app:pw@shop.abc.us-east-2.rds.amazonaws.com/shop",
        );
        assert_eq!(regions(&[URL]), RdsCaRegions::All);
        assert_eq!(
            regions(&[URL, ("AWS_REGION", "eu-west-1")]),
            only(&["eu-west-1"])
        );
        assert_eq!(regions(&[rds_url]), only(&["us-east-2"]));
        assert_eq!(
            regions(&[rds_url, ("AWS_REGION", "eu-west-1")]),
            only(&["us-east-2", "eu-west-1"])
        );
        let secret_host = [
            ("DB_SECRET_ID", "s"),
            ("DB_HOST", "shop.abc.eu-central-1.rds.amazonaws.com"),
            ("AWS_DEFAULT_REGION", "eu-central-1"),
        ];
        assert_eq!(regions(&secret_host), only(&["eu-central-1"]));
        assert_eq!(
            regions(&[
                rds_url,
                ("AWS_REGION", "eu-west-1"),
                ("DB_RDS_CA_REGIONS", "all")
            ]),
            RdsCaRegions::All
        );
    }

    #[test]
    fn no_database_names_both_ways_to_give_one() {
        let err = Config::from_lookup(lookup(&[])).unwrap_err();
        let text = err.to_string();
        assert!(text.contains("DATABASE_URL") && text.contains("DB_SECRET_ID"));
    }

    #[test]
    fn lock_timeout_must_stay_below_statement_timeout() {
        let err = ReleaseSettings::from_lookup(&lookup(&[
            ("LOCK_TIMEOUT_MS", "2000"),
            ("STATEMENT_TIMEOUT_MS", "1000"),
        ]))
        .unwrap_err();
        assert!(err.to_string().contains("LOCK_TIMEOUT_MS"), "{err}");
    }

    #[test]
    fn overrides_are_range_checked_under_their_own_name() {
        let s = ReleaseSettings::default()
            .with_overrides(Some(("--batch-size", 7)), None)
            .unwrap();
        assert_eq!(s.batch_size, Some(7));
        let err = ReleaseSettings::default()
            .with_overrides(None, Some(("max_batches", 0)))
            .unwrap_err();
        assert!(err.to_string().contains("max_batches"), "{err}");
    }
}

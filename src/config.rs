//! The one configuration tree of the process — release, database, Lambda, metrics, events and
//! revive settings — read by one function ([`Config::from_lookup`]) from one name → value
//! lookup (the environment, or the CLI's flags over it). Every value is checked against its
//! range before any connection is made, and every error names its setting. The groups are
//! declared with their settings, once, in the settings table (`crate::settings`); here are the
//! rules across settings, each group's [`Validate`], and what the rest of the process derives
//! from them (the first batch's size, a batch's budget). Secrets are held as `SecretString`s or
//! in a [`tokio_postgres::Config`], whose `Debug` redacts the password.

use std::time::Duration;

pub use crate::db::settings::{DatabaseConfig, DatabaseSource, IamSettings, SecretSettings};
use crate::error::{Error, Result};
use crate::settings::{
    check_lock_timeout, Setting, BATCH_SIZE, BATCH_SIZE_MIN, EVENT_BUS_NAME,
    EXPIRY_WARNING_SECONDS, LOCK_TIMEOUT_MS, MAX_BATCHES, POWERTOOLS_METRICS_NAMESPACE,
    POWERTOOLS_SERVICE_NAME, SHOP_DEADLOCK_TIMEOUT_MS,
};
pub use crate::settings::{
    check_range, EventsConfig, LambdaConfig, MetricsConfig, ReleaseSettings, ReviveSettings,
    Validate, SETTINGS,
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
    /// The tenants, when one deployment serves several shops (`crate::tenant`).
    pub tenants: Option<crate::tenant::TenantConfig>,
}

impl Config {
    /// Reads the whole tree from the process environment (empty values count as unset).
    pub fn from_env() -> Result<Config> {
        Config::from_lookup(|name| std::env::var(name).ok())
    }

    /// Reads the whole tree through `lookup` (name → value); unset or empty names keep their
    /// defaults. Each group is checked with its rules as it is read. Fails on the first bad
    /// value, naming it.
    pub fn from_lookup(lookup: impl Fn(&str) -> Option<String>) -> Result<Config> {
        let lookup = |name: &str| lookup(name).filter(|v| !v.trim().is_empty());
        Ok(Config {
            release: ReleaseSettings::from_lookup(&lookup)?,
            database: DatabaseConfig::from_lookup(&lookup)?,
            lambda: LambdaConfig::from_lookup(&lookup)?,
            metrics: MetricsConfig::from_lookup(&lookup)?,
            events: EventsConfig::from_lookup(&lookup)?,
            revive: ReviveSettings::from_lookup(&lookup)?,
            tenants: crate::tenant::TenantConfig::from_lookup(&lookup)?,
        })
    }
}

impl ReleaseSettings {
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

    /// The smallest batch (rows): `BATCH_SIZE_MIN`, at least 1 and at most `BATCH_SIZE_MAX`.
    /// Adaptive batches start there and fall back to it when shoppers compete.
    pub fn batch_floor(&self) -> u32 {
        self.batch_size_min.min(self.batch_size_max).max(1)
    }

    /// The largest adaptive batch (rows): `BATCH_SIZE_MAX`, at least the floor.
    pub fn batch_ceiling(&self) -> u32 {
        self.batch_size_max.max(self.batch_floor())
    }

    /// The rows the first batch of a run pages: `BATCH_SIZE` when it pins the size, else the
    /// adaptive floor.
    pub fn initial_batch_size(&self) -> u32 {
        self.batch_size.unwrap_or(self.batch_floor())
    }

    /// `LOCK_TIMEOUT_MS` as a time.
    pub fn lock_timeout(&self) -> Duration {
        Duration::from_millis(self.lock_timeout_ms.into())
    }

    /// `STATEMENT_TIMEOUT_MS` as a time.
    pub fn statement_timeout(&self) -> Duration {
        Duration::from_millis(self.statement_timeout_ms.into())
    }

    /// `RETRY_BACKOFF_MS` as a time.
    pub fn retry_backoff(&self) -> Duration {
        Duration::from_millis(self.retry_backoff_ms.into())
    }

    /// The shop's `deadlock_timeout` (ms): `SHOP_DEADLOCK_TIMEOUT_MS` when set, else the
    /// server's (`server_ms`, which the preflight read).
    pub fn deadlock_timeout_ms(&self, server_ms: i64) -> i64 {
        self.shop_deadlock_timeout_ms.map_or(server_ms, i64::from)
    }

    /// `LOCK_TIMEOUT_MS` against the shop's `deadlock_timeout` (see
    /// [`ReleaseSettings::deadlock_timeout_ms`]), after connecting: the rule
    /// [`check_lock_timeout`].
    pub fn check_lock_timeout(&self, server_deadlock_timeout_ms: i64) -> Result<()> {
        let whose = match self.shop_deadlock_timeout_ms {
            Some(_) => SHOP_DEADLOCK_TIMEOUT_MS.name,
            None => "the server's",
        };
        let deadlock_ms = self.deadlock_timeout_ms(server_deadlock_timeout_ms);
        check_lock_timeout(self.lock_timeout_ms, deadlock_ms, whose)
    }

    /// The longest a batch may take: half the shop's `deadlock_timeout`, which must leave room
    /// for `LOCK_TIMEOUT_MS` ([`ReleaseSettings::check_lock_timeout`]).
    pub fn batch_budget(&self, server_deadlock_timeout_ms: i64) -> Result<Duration> {
        self.check_lock_timeout(server_deadlock_timeout_ms)?;
        let deadlock_ms = self.deadlock_timeout_ms(server_deadlock_timeout_ms);
        Ok(Duration::from_millis((deadlock_ms / 2).max(1) as u64))
    }
}

/// Every rule across the release's settings (each one alone is range-checked on parse).
impl Validate for ReleaseSettings {
    fn validate(&self) -> Result<()> {
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
        if let Some(shop_ms) = self.shop_deadlock_timeout_ms {
            let whose = SHOP_DEADLOCK_TIMEOUT_MS.name;
            check_lock_timeout(self.lock_timeout_ms, shop_ms.into(), whose)?;
        }
        Ok(())
    }
}

/// The bus is a name or an ARN; the expiry warnings are events, so they need a bus.
impl Validate for EventsConfig {
    fn validate(&self) -> Result<()> {
        if let Some(bus) = &self.bus_name {
            let ok = bus.len() <= 1600
                && bus
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || "._-/:".contains(c));
            if !ok {
                return Err(Error::Setting {
                    name: EVENT_BUS_NAME.name.into(),
                    reason: "must be an event bus name or ARN (letters, digits and . _ - / :)"
                        .into(),
                });
            }
        }
        if let (Some(lead), None) = (self.warning_lead, &self.bus_name) {
            return Err(Error::Setting {
                name: EXPIRY_WARNING_SECONDS.name.into(),
                reason: format!(
                    "is {} seconds, but EVENT_BUS_NAME is not set: the warnings are events on \
                     that bus (set EVENT_BUS_NAME, or EXPIRY_WARNING_SECONDS to 0)",
                    lead.as_secs()
                ),
            });
        }
        Ok(())
    }
}

/// The namespace and the service dimension are names CloudWatch accepts.
impl Validate for MetricsConfig {
    fn validate(&self) -> Result<()> {
        metric_name(&self.namespace, POWERTOOLS_METRICS_NAMESPACE, 255)?;
        if self.namespace.starts_with("AWS/") {
            return Err(Error::Setting {
                name: POWERTOOLS_METRICS_NAMESPACE.name.into(),
                reason: "namespaces starting with AWS/ are reserved for AWS services".into(),
            });
        }
        metric_name(&self.service, POWERTOOLS_SERVICE_NAME, 250)
    }
}

impl Validate for LambdaConfig {}

impl Validate for ReviveSettings {}

/// `value` of `setting`: 1 to `max` of A-Z a-z 0-9 . _ - / # :, not starting with a colon.
fn metric_name(value: &str, setting: Setting, max: usize) -> Result<()> {
    let ok = value.len() <= max
        && value
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "._-/#:".contains(c))
        && !value.starts_with(':');
    if ok {
        Ok(())
    } else {
        Err(Error::Setting {
            name: setting.name.into(),
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

    #[test]
    fn lock_timeout_must_leave_room_in_the_shops_deadlock_timeout() {
        let err = ReleaseSettings::from_lookup(&lookup(&[
            ("LOCK_TIMEOUT_MS", "300"),
            ("SHOP_DEADLOCK_TIMEOUT_MS", "500"),
        ]))
        .unwrap_err();
        assert!(
            matches!(&err, Error::Setting { name, .. } if name == "LOCK_TIMEOUT_MS"),
            "{err}"
        );
        assert!(
            err.to_string().contains("SHOP_DEADLOCK_TIMEOUT_MS"),
            "{err}"
        );
        let fits = ReleaseSettings::from_lookup(&lookup(&[
            ("LOCK_TIMEOUT_MS", "250"),
            ("SHOP_DEADLOCK_TIMEOUT_MS", "500"),
        ]))
        .unwrap();
        assert_eq!(fits.batch_budget(1000).unwrap(), Duration::from_millis(250));
        // After connecting, against the server's value when the shop's is not set.
        let server = ReleaseSettings {
            lock_timeout_ms: 600,
            ..ReleaseSettings::default()
        };
        let err = server.check_lock_timeout(1000).unwrap_err();
        assert!(err.to_string().contains("the server's"), "{err}");
        assert_eq!(server.batch_budget(2000).unwrap(), Duration::from_secs(1));
    }

    #[test]
    fn expiry_warnings_without_a_bus_are_refused_naming_both() {
        let err =
            Config::from_lookup(lookup(&[URL, ("EXPIRY_WARNING_SECONDS", "180")])).unwrap_err();
        assert!(
            matches!(&err, Error::Setting { name, .. } if name == "EXPIRY_WARNING_SECONDS"),
            "{err}"
        );
        assert!(err.to_string().contains("EVENT_BUS_NAME"), "{err}");
        let events = EventsConfig::from_lookup(&lookup(&[
            ("EXPIRY_WARNING_SECONDS", "180"),
            ("EVENT_BUS_NAME", "shop-events"),
        ]))
        .unwrap();
        assert_eq!(events.warning_lead, Some(Duration::from_secs(180)));
        let none = EventsConfig::from_lookup(&lookup(&[("EXPIRY_WARNING_SECONDS", "0")])).unwrap();
        assert_eq!((none.warning_lead, none.bus_name), (None, None));
    }

    #[test]
    fn times_are_read_in_their_units() {
        let s = ReleaseSettings::default();
        assert_eq!(s.batch_target, Duration::from_millis(150));
        assert_eq!(s.time_budget, Some(Duration::from_secs(240)));
        assert_eq!(s.shop_deadlock_timeout_ms, None);
        assert_eq!(s.lock_timeout(), Duration::from_millis(100));
        let s = ReleaseSettings::from_lookup(&lookup(&[
            ("BATCH_TARGET_MS", "40"),
            ("SHOP_DEADLOCK_TIMEOUT_MS", "2000"),
        ]))
        .unwrap();
        assert_eq!(s.batch_target, Duration::from_millis(40));
        assert_eq!(s.shop_deadlock_timeout_ms, Some(2000));
        let events = EventsConfig::default();
        assert_eq!(events.run_interval, Duration::from_secs(300));
        let lambda = LambdaConfig::from_lookup(&lookup(&[("PREFETCH_CREDENTIALS", "0")])).unwrap();
        assert!(!lambda.prefetch_credentials);
        assert_eq!(ReviveSettings::default().hold_minutes, 15);
    }

    #[test]
    fn the_first_batch_is_the_pinned_size_or_the_adaptive_floor() {
        let adaptive = ReleaseSettings::default();
        assert_eq!(adaptive.initial_batch_size(), 100);
        let pinned = ReleaseSettings {
            batch_size: Some(7),
            ..ReleaseSettings::default()
        };
        assert_eq!(pinned.initial_batch_size(), 7);
        // Not validated (a test's struct): the floor stays within 1..=BATCH_SIZE_MAX.
        let odd = ReleaseSettings {
            batch_size_min: 500,
            batch_size_max: 50,
            ..ReleaseSettings::default()
        };
        assert_eq!((odd.initial_batch_size(), odd.batch_ceiling()), (50, 50));
    }
}

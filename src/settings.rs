//! The release's settings: read from the environment (or any name → value lookup), each checked
//! against its range before any connection is made, with errors that name the setting.

use std::time::Duration;

use crate::error::{Error, Result};

/// How a run releases: batch shape, time rules, and how long it may wait on a lock.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Settings {
    /// Units of work (orders, or cart holds without an order) claimed per batch transaction.
    pub batch_size: u32,
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
    /// skips that page and leaves it as backlog for the next run.
    pub batch_max_attempts: u32,
    /// Base of the jittered exponential backoff between tries of a batch.
    pub retry_backoff_ms: u32,
    /// Longest a run may take (CLI). The Lambda front-end derives it from the deadline instead.
    pub time_budget: Option<Duration>,
}

/// Default units of work per batch, chosen from the benchmark (see BENCHMARKS.md).
pub const DEFAULT_BATCH_SIZE: u32 = 500;

impl Default for Settings {
    fn default() -> Self {
        Settings {
            batch_size: DEFAULT_BATCH_SIZE,
            max_batches: 1000,
            reservation_timeout_minutes: 15,
            payment_processing_grace_minutes: 15,
            lock_timeout_ms: 100,
            statement_timeout_ms: 5000,
            batch_max_attempts: 5,
            retry_backoff_ms: 50,
            time_budget: Some(Duration::from_secs(240)),
        }
    }
}

impl Settings {
    /// Reads the settings from the process environment.
    pub fn from_env() -> Result<Settings> {
        Settings::from_lookup(|name| std::env::var(name).ok())
    }

    /// Reads the settings through `lookup` (name → value); unset names keep their defaults.
    pub fn from_lookup(lookup: impl Fn(&str) -> Option<String>) -> Result<Settings> {
        let d = Settings::default();
        let budget_default = d.time_budget.map_or(0, |b| b.as_secs() as u32);
        let budget = parse_u32(&lookup, "TIME_BUDGET_SECONDS", budget_default, 0, 86_400)?;
        let settings = Settings {
            batch_size: parse_u32(&lookup, "BATCH_SIZE", d.batch_size, 1, 10_000)?,
            max_batches: parse_u32(&lookup, "MAX_BATCHES", d.max_batches, 1, 1_000_000)?,
            reservation_timeout_minutes: parse_u32(
                &lookup,
                "RESERVATION_TIMEOUT_MINUTES",
                d.reservation_timeout_minutes,
                1,
                10_080,
            )?,
            payment_processing_grace_minutes: parse_u32(
                &lookup,
                "PAYMENT_PROCESSING_GRACE_MINUTES",
                d.payment_processing_grace_minutes,
                0,
                10_080,
            )?,
            lock_timeout_ms: parse_u32(&lookup, "LOCK_TIMEOUT_MS", d.lock_timeout_ms, 1, 5_000)?,
            statement_timeout_ms: parse_u32(
                &lookup,
                "STATEMENT_TIMEOUT_MS",
                d.statement_timeout_ms,
                100,
                600_000,
            )?,
            batch_max_attempts: parse_u32(
                &lookup,
                "BATCH_MAX_ATTEMPTS",
                d.batch_max_attempts,
                1,
                20,
            )?,
            retry_backoff_ms: parse_u32(
                &lookup,
                "RETRY_BACKOFF_MS",
                d.retry_backoff_ms,
                1,
                10_000,
            )?,
            // 0 means no budget: the run stops only when drained or at MAX_BATCHES.
            time_budget: (budget > 0).then(|| Duration::from_secs(u64::from(budget))),
        };
        settings.validate()?;
        Ok(settings)
    }

    /// Checks the relations between settings (each one alone is range-checked on parse).
    pub fn validate(&self) -> Result<()> {
        check_range("BATCH_SIZE", self.batch_size, 1, 10_000)?;
        check_range("MAX_BATCHES", self.max_batches, 1, 1_000_000)?;
        if self.lock_timeout_ms >= self.statement_timeout_ms {
            return Err(Error::Setting {
                name: "LOCK_TIMEOUT_MS".into(),
                reason: format!(
                    "{} must be below STATEMENT_TIMEOUT_MS ({})",
                    self.lock_timeout_ms, self.statement_timeout_ms
                ),
            });
        }
        Ok(())
    }
}

/// Reads setting `name` through `lookup` as a whole number in `min..=max`; unset or empty
/// keeps `default`. Errors name the setting.
pub fn parse_u32(
    lookup: &impl Fn(&str) -> Option<String>,
    name: &str,
    default: u32,
    min: u32,
    max: u32,
) -> Result<u32> {
    let Some(raw) = lookup(name) else {
        return Ok(default);
    };
    let raw = raw.trim();
    if raw.is_empty() {
        return Ok(default);
    }
    let value: u32 = raw.parse().map_err(|_| Error::Setting {
        name: name.into(),
        reason: format!("{raw:?} is not a whole number"),
    })?;
    check_range(name, value, min, max)?;
    Ok(value)
}

/// Fails with an error naming `name` unless `min <= value <= max`.
pub fn check_range(name: &str, value: u32, min: u32, max: u32) -> Result<()> {
    if (min..=max).contains(&value) {
        Ok(())
    } else {
        Err(Error::Setting {
            name: name.into(),
            reason: format!("{value} is out of range ({min} to {max})"),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lookup(pairs: &'static [(&'static str, &'static str)]) -> impl Fn(&str) -> Option<String> {
        move |name| {
            pairs
                .iter()
                .find(|(k, _)| *k == name)
                .map(|(_, v)| v.to_string())
        }
    }

    #[test]
    fn defaults_when_unset() {
        assert_eq!(
            Settings::from_lookup(lookup(&[])).unwrap(),
            Settings::default()
        );
    }

    #[test]
    fn reads_values() {
        let s = Settings::from_lookup(lookup(&[
            ("BATCH_SIZE", "50"),
            ("MAX_BATCHES", "3"),
            ("RESERVATION_TIMEOUT_MINUTES", "30"),
            ("PAYMENT_PROCESSING_GRACE_MINUTES", "0"),
            ("TIME_BUDGET_SECONDS", "0"),
        ]))
        .unwrap();
        assert_eq!(s.batch_size, 50);
        assert_eq!(s.max_batches, 3);
        assert_eq!(s.reservation_timeout_minutes, 30);
        assert_eq!(s.payment_processing_grace_minutes, 0);
        assert_eq!(s.time_budget, None);
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
        ];
        for (name, value) in cases {
            let pairs: &'static [(&'static str, &'static str)] =
                Box::leak(vec![(*name, *value)].into_boxed_slice());
            let err = Settings::from_lookup(lookup(pairs)).unwrap_err();
            assert!(
                matches!(&err, Error::Setting { name: n, .. } if n == name),
                "{name}={value} gave {err}"
            );
            assert!(err.to_string().contains(name));
            assert!(!err.is_retryable());
        }
    }

    #[test]
    fn lock_timeout_must_stay_below_statement_timeout() {
        let err = Settings::from_lookup(lookup(&[
            ("LOCK_TIMEOUT_MS", "2000"),
            ("STATEMENT_TIMEOUT_MS", "1000"),
        ]))
        .unwrap_err();
        assert!(err.to_string().contains("LOCK_TIMEOUT_MS"), "{err}");
    }
}

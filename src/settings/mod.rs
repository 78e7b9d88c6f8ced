//! Every setting the process reads, in one table: its name, kind and range, default, unit,
//! which front-ends read it, and one line of documentation. Each setting is declared once, in
//! [`table`] (the form: [`declare`]); a setting of a group (`ReleaseSettings`, `EventsConfig`,
//! ...) is also that group's field, with its default and its typed parse. The table drives the
//! parsing and range checks ([`Setting::number`]), the CLI's `--help`, `docs/configuration.md`
//! (generated, checked by a test) and the tests that hold `template.yaml` to it. The bottom
//! layer: every other layer may use it, it uses none.

use std::time::Duration;

use crate::error::{Error, Result};

#[macro_use]
mod declare;
mod table;

pub use declare::Validate;
pub use table::*;

/// What a setting holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// A whole number in `min..=max`.
    Number { min: u32, max: u32, default: u32 },
    /// One of a few words (the first is the default when `default` is empty).
    Choice {
        values: &'static [&'static str],
        default: &'static str,
    },
    /// Free text, checked where it is used; `default` empty means unset.
    Text { default: &'static str },
    /// A whole number in `min..=max`, or unset, which means `unset` (a few words: "adaptive";
    /// the doc says more).
    OptionalNumber {
        min: u32,
        max: u32,
        unset: &'static str,
    },
}

/// The unit of a number: a time (read as a `Duration` by a field of that type), or a count.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Unit {
    /// None (a port, a flag).
    Plain,
    Ms,
    Seconds,
    Minutes,
    /// A count of something: "reservations", "rows".
    Count(&'static str),
}

impl Unit {
    /// The unit as the documentation shows it (empty: none).
    pub const fn label(self) -> &'static str {
        match self {
            Unit::Plain => "",
            Unit::Ms => "ms",
            Unit::Seconds => "seconds",
            Unit::Minutes => "minutes",
            Unit::Count(what) => what,
        }
    }

    pub const fn is_time(self) -> bool {
        matches!(self, Unit::Ms | Unit::Seconds | Unit::Minutes)
    }

    /// `n` of this unit as a time. A count is no time: the table never reads one as a time
    /// (checked when the crate compiles), and it gives zero.
    pub const fn duration(self, n: u32) -> Duration {
        let n = n as u64;
        match self {
            Unit::Ms => Duration::from_millis(n),
            Unit::Seconds => Duration::from_secs(n),
            Unit::Minutes => Duration::from_secs(n * 60),
            Unit::Plain | Unit::Count(_) => Duration::ZERO,
        }
    }
}

/// Which front-ends read a setting.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReadBy {
    Both,
    Lambda,
    Cli,
}

impl ReadBy {
    pub fn lambda(self) -> bool {
        matches!(self, ReadBy::Both | ReadBy::Lambda)
    }

    fn label(self) -> &'static str {
        match self {
            ReadBy::Both => "both",
            ReadBy::Lambda => "Lambda",
            ReadBy::Cli => "CLI",
        }
    }
}

/// One row of the table.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Setting {
    pub name: &'static str,
    pub kind: Kind,
    /// The unit of a number.
    pub unit: Unit,
    pub read_by: ReadBy,
    /// One line of documentation.
    pub doc: &'static str,
}

impl Setting {
    /// The range of a number (`(0, 0)` for any other kind).
    pub const fn range(&self) -> (u32, u32) {
        match self.kind {
            Kind::Number { min, max, .. } | Kind::OptionalNumber { min, max, .. } => (min, max),
            _ => (0, 0),
        }
    }

    /// The default of a number (0 for any other kind).
    pub const fn default_number(&self) -> u32 {
        match self.kind {
            Kind::Number { default, .. } => default,
            _ => 0,
        }
    }

    /// The default as the documentation shows it (empty: unset).
    pub fn default_text(&self) -> String {
        match self.kind {
            Kind::Number { default, .. } => default.to_string(),
            Kind::Choice { default, .. } | Kind::Text { default } => default.to_string(),
            Kind::OptionalNumber { .. } => String::new(),
        }
    }

    /// The value `lookup` gives, None when unset or blank.
    pub fn get(&self, lookup: &impl Fn(&str) -> Option<String>) -> Option<String> {
        lookup(self.name).filter(|v| !v.trim().is_empty())
    }

    /// The whole number `lookup` gives, within the range; the default when unset or blank.
    pub fn number(&self, lookup: &impl Fn(&str) -> Option<String>) -> Result<u32> {
        let (min, max) = self.range();
        parse_u32(lookup, self.name, self.default_number(), min, max)
    }

    /// The whole number `lookup` gives, within the range; None when unset or blank.
    pub fn optional_number(&self, lookup: &impl Fn(&str) -> Option<String>) -> Result<Option<u32>> {
        if self.get(lookup).is_none() {
            return Ok(None);
        }
        self.number(lookup).map(Some)
    }

    /// Checks an override given under another name (a flag, a payload field) against this
    /// setting's range.
    pub fn check(&self, name: &str, value: u32) -> Result<()> {
        let (min, max) = self.range();
        check_range(name, value, min, max)
    }

    /// What the value may be, for the documentation.
    pub fn allowed(&self) -> String {
        match self.kind {
            Kind::Number { min, max, .. } | Kind::OptionalNumber { min, max, .. } => {
                format!("{min} to {max}")
            }
            Kind::Choice { values, .. } => values.join(", "),
            Kind::Text { .. } => "text".into(),
        }
    }
}

/// The table as the CLI's `--help` ends: one setting a line.
pub fn help() -> String {
    let mut out = String::from("Settings (environment variables; flags override them):\n");
    for s in SETTINGS.iter().filter(|s| s.read_by != ReadBy::Lambda) {
        let unit = s.unit.label();
        let values = match s.kind {
            Kind::OptionalNumber { unset, .. } => {
                format!("{}; unset: {unset}", with_unit(s.allowed(), unit))
            }
            _ => {
                let default = s.default_text();
                let default = if default.is_empty() {
                    "unset".into()
                } else {
                    default
                };
                format!("{}; default {}", s.allowed(), with_unit(default, unit))
            }
        };
        out.push_str(&format!("  {} [{values}]\n      {}\n", s.name, s.doc));
    }
    out
}

/// `value unit`, or `value` without a unit.
fn with_unit(value: String, unit: &str) -> String {
    if unit.is_empty() {
        value
    } else {
        format!("{value} {unit}")
    }
}

/// The table as `docs/configuration.md`.
pub fn markdown() -> String {
    let mut out = String::from(
        "# Configuration\n\n\
         Generated from the settings table in `src/settings/table.rs` (a test fails when this \
         page differs from it; `UNRESERVER_BLESS=1 cargo test --test it settings` writes it \
         again).\n\
         Every setting is an environment variable; an empty value counts as unset. Each is \
         checked before any connection is made, and a bad value fails with `InvalidSetting` \
         naming it (exit code 2 on the command line).\n\n\
         | setting | allowed | default | unit | read by | what it does |\n\
         |---|---|---|---|---|---|\n",
    );
    for s in SETTINGS {
        let default = match (s.kind, s.default_text()) {
            (Kind::OptionalNumber { unset, .. }, _) => format!("unset: {unset}"),
            (_, default) if default.is_empty() => "unset".into(),
            (_, default) => format!("`{default}`"),
        };
        out.push_str(&format!(
            "| `{}` | {} | {default} | {} | {} | {} |\n",
            s.name,
            s.allowed(),
            s.unit.label(),
            s.read_by.label(),
            s.doc
        ));
    }
    out
}

/// `LOCK_TIMEOUT_MS` (`lock_timeout_ms`) must be at most half the shop's `deadlock_timeout`
/// (`deadlock_timeout_ms`, `whose`: `SHOP_DEADLOCK_TIMEOUT_MS` or the server's): in a lock
/// cycle with a shopper, the batch must give up well before the shopper's backend runs the
/// deadlock check and aborts the shopper. The one copy of the rule: the configuration checks
/// `SHOP_DEADLOCK_TIMEOUT_MS` with it before connecting, the preflight the server's value
/// after, and a run the value it budgets its batches from.
pub fn check_lock_timeout(
    lock_timeout_ms: u32,
    deadlock_timeout_ms: i64,
    whose: &str,
) -> Result<()> {
    if i64::from(lock_timeout_ms) * 2 <= deadlock_timeout_ms {
        return Ok(());
    }
    Err(Error::Setting {
        name: LOCK_TIMEOUT_MS.name.into(),
        reason: format!(
            "{lock_timeout_ms} ms must be at most half the shop's deadlock_timeout \
             ({deadlock_timeout_ms} ms, {whose}), so that the release, not a shopper, gives up \
             first in a lock cycle"
        ),
    })
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

    #[test]
    fn names_are_unique_and_defaults_within_their_range() {
        for (i, s) in SETTINGS.iter().enumerate() {
            assert!(
                SETTINGS[..i].iter().all(|o| o.name != s.name),
                "{} twice",
                s.name
            );
            if let Kind::Number { min, max, default } = s.kind {
                assert!((min..=max).contains(&default), "{}", s.name);
            }
            if let Kind::Choice { values, default } = s.kind {
                assert!(
                    default.is_empty() || values.contains(&default),
                    "{}",
                    s.name
                );
            }
        }
    }

    #[test]
    fn a_number_is_read_within_its_range() {
        let lookup = |v: &'static str| move |_: &str| Some(v.to_string());
        assert_eq!(BATCH_SIZE.optional_number(&lookup("50")).unwrap(), Some(50));
        assert_eq!(BATCH_SIZE.optional_number(&lookup(" ")).unwrap(), None);
        assert!(BATCH_SIZE.optional_number(&lookup("10001")).is_err());
        assert!(BATCH_SIZE.optional_number(&lookup("0")).is_err());
        assert_eq!(WORKERS.number(&lookup(" ")).unwrap(), 2);
        assert!(BATCH_SIZE
            .check("--batch-size", 0)
            .unwrap_err()
            .to_string()
            .contains("--batch-size"));
    }

    #[test]
    fn each_doc_is_one_line_joined_from_its_declaration() {
        for s in SETTINGS {
            assert!(!s.doc.is_empty() && s.doc == s.doc.trim(), "{}", s.name);
            assert!(!s.doc.contains("  ") && !s.doc.contains('\n'), "{}", s.name);
        }
        assert!(LOCK_TIMEOUT_MS
            .doc
            .starts_with("Longest a batch polls for one row"));
        assert!(LOCK_TIMEOUT_MS
            .doc
            .ends_with("half the shop's deadlock_timeout."));
    }

    #[test]
    fn an_optional_number_says_what_unset_means() {
        let help = help();
        assert!(
            help.contains("  BATCH_SIZE [1 to 10000 reservations; unset: adaptive]\n"),
            "{help}"
        );
        assert!(!help.contains("unset reservations"), "{help}");
        assert!(
            help.contains("  WORKERS [1 to 16; default 2 connections]\n"),
            "{help}"
        );
        assert!(help.contains("  DB_HOST [text; default unset]\n"), "{help}");
        let page = markdown();
        assert!(
            page.contains("| `BATCH_SIZE` | 1 to 10000 | unset: adaptive | reservations | both |"),
            "{page}"
        );
        assert!(page.contains("| `WORKERS` | 1 to 16 | `2` | connections | both |"));
    }

    #[test]
    fn a_time_is_read_in_its_unit() {
        assert_eq!(Unit::Ms.duration(150), Duration::from_millis(150));
        assert_eq!(Unit::Seconds.duration(2), Duration::from_secs(2));
        assert_eq!(Unit::Minutes.duration(2), Duration::from_secs(120));
        assert!(!Unit::Count("rows").is_time());
    }

    #[test]
    fn the_lock_timeout_is_at_most_half_the_deadlock_timeout() {
        assert!(check_lock_timeout(500, 1000, "the server's").is_ok());
        let err = check_lock_timeout(501, 1000, "SHOP_DEADLOCK_TIMEOUT_MS").unwrap_err();
        let text = err.to_string();
        assert!(matches!(&err, Error::Setting { name, .. } if name == "LOCK_TIMEOUT_MS"));
        assert!(
            text.contains("deadlock_timeout (1000 ms, SHOP_DEADLOCK_TIMEOUT_MS)"),
            "{text}"
        );
    }
}

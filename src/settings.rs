//! Every setting the process reads, in one table: its name, kind and range, default, unit,
//! which front-ends read it, and one line of documentation. The table drives the parsing and
//! range checks ([`Setting::number`]), the CLI's `--help`, `docs/configuration.md` (generated,
//! checked by a test) and the tests that hold `template.yaml` to it. The bottom layer: every
//! other layer may use it, it uses none.

use crate::error::{Error, Result};

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
    /// A whole number in `min..=max`, or unset (what unset means, the doc says).
    OptionalNumber { min: u32, max: u32 },
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
    /// The unit of a number ("ms", "minutes", ...); empty for none.
    pub unit: &'static str,
    pub read_by: ReadBy,
    /// One line of documentation.
    pub doc: &'static str,
}

const fn number(
    name: &'static str,
    (min, max): (u32, u32),
    default: u32,
    unit: &'static str,
    read_by: ReadBy,
    doc: &'static str,
) -> Setting {
    Setting {
        name,
        kind: Kind::Number { min, max, default },
        unit,
        read_by,
        doc,
    }
}

const fn optional_number(
    name: &'static str,
    (min, max): (u32, u32),
    unit: &'static str,
    read_by: ReadBy,
    doc: &'static str,
) -> Setting {
    Setting {
        name,
        kind: Kind::OptionalNumber { min, max },
        unit,
        read_by,
        doc,
    }
}

const fn text(
    name: &'static str,
    default: &'static str,
    read_by: ReadBy,
    doc: &'static str,
) -> Setting {
    Setting {
        name,
        kind: Kind::Text { default },
        unit: "",
        read_by,
        doc,
    }
}

const fn choice(
    name: &'static str,
    values: &'static [&'static str],
    default: &'static str,
    read_by: ReadBy,
    doc: &'static str,
) -> Setting {
    Setting {
        name,
        kind: Kind::Choice { values, default },
        unit: "",
        read_by,
        doc,
    }
}

use ReadBy::{Both, Cli, Lambda};

// The release.
pub const BATCH_SIZE: Setting = optional_number("BATCH_SIZE", (1, 10_000), "reservations", Both,
    "Pins the due reservations paged per batch transaction (their orders and cart holds are claimed together); unset: adaptive, each batch sized by the controller between BATCH_SIZE_MIN and BATCH_SIZE_MAX.");
pub const BATCH_SIZE_MIN: Setting = number("BATCH_SIZE_MIN", (1, 10_000), 100, "reservations", Both,
    "Adaptive batches: the size a batch starts at, and falls back to at once when shoppers compete for its rows (chosen from the benchmark).");
pub const BATCH_SIZE_MAX: Setting = number(
    "BATCH_SIZE_MAX",
    (1, 10_000),
    4_000,
    "reservations",
    Both,
    "Adaptive batches: the largest a batch may grow while nothing is in its way.",
);
pub const BATCH_TARGET_MS: Setting = number("BATCH_TARGET_MS", (10, 5_000), 150, "ms", Both,
    "Adaptive batches: the time a batch is sized to take while nothing is in its way (at most a third of the batch budget, which is half the shop's deadlock_timeout).");
pub const WORKERS: Setting = number("WORKERS", (1, 16), 2, "connections", Both,
    "Connections one run drains with at once while nothing competes (one as soon as shoppers do), within the database's free connections less a reserve.");
pub const MAX_BATCHES: Setting = number(
    "MAX_BATCHES",
    (1, 1_000_000),
    1000,
    "batches",
    Both,
    "Batches after which a run stops even if more is due.",
);
pub const RESERVATION_TIMEOUT_MINUTES: Setting = number(
    "RESERVATION_TIMEOUT_MINUTES",
    (1, 10_080),
    15,
    "minutes",
    Both,
    "Age after which a legacy reservation (NULL expires_at) is due.",
);
pub const PAYMENT_PROCESSING_GRACE_MINUTES: Setting = number(
    "PAYMENT_PROCESSING_GRACE_MINUTES",
    (0, 10_080),
    15,
    "minutes",
    Both,
    "Extra time an order whose payment is processing gets before it is due.",
);
pub const LOCK_TIMEOUT_MS: Setting = number("LOCK_TIMEOUT_MS", (1, 5_000), 100, "ms", Both,
    "Longest a batch polls for one row a shopper holds; below STATEMENT_TIMEOUT_MS and half the shop's deadlock_timeout.");
pub const STATEMENT_TIMEOUT_MS: Setting = number(
    "STATEMENT_TIMEOUT_MS",
    (100, 600_000),
    5_000,
    "ms",
    Both,
    "statement_timeout of the release's statements.",
);
pub const BATCH_MAX_ATTEMPTS: Setting = number("BATCH_MAX_ATTEMPTS", (1, 20), 5, "tries", Both,
    "Tries of one batch on a lock timeout, deadlock or serialization failure before the run stops and leaves the rest to the next.");
pub const RETRY_BACKOFF_MS: Setting = number(
    "RETRY_BACKOFF_MS",
    (1, 10_000),
    50,
    "ms",
    Both,
    "Base of the jittered exponential backoff between tries of a batch (or of a revive).",
);
pub const TIME_BUDGET_SECONDS: Setting = number("TIME_BUDGET_SECONDS", (0, 86_400), 240, "seconds", Cli,
    "Longest a CLI run may take; 0 for none. The Lambda function takes its deadline less DEADLINE_MARGIN_MS instead.");
pub const SHOP_DEADLOCK_TIMEOUT_MS: Setting = number("SHOP_DEADLOCK_TIMEOUT_MS", (0, 600_000), 0, "ms", Both,
    "The lowest deadlock_timeout the shop's own sessions set, when below the server's; 0 for the server's. A batch never outlives half of it.");
pub const PASS_SIZE: Setting = number(
    "PASS_SIZE",
    (100, 1_000_000),
    50_000,
    "rows",
    Both,
    "Due rows one scan reads when no index serves the keyset page (about 40 bytes of memory each).",
);
pub const REVIVE_HOLD_MINUTES: Setting = number(
    "REVIVE_HOLD_MINUTES",
    (1, 1_440),
    15,
    "minutes",
    Both,
    "How long the reservations of a revived order hold the stock again.",
);

// The database.
pub const DATABASE_URL: Setting = text("DATABASE_URL", "", Both,
    "libpq URL or key=value connection string (the CLI's --database-url); DB_SECRET_ID wins when both are set.");
pub const DB_AUTH: Setting = choice("DB_AUTH", &["secret", "iam"], "secret", Both,
    "secret: credentials from DB_SECRET_ID (or DATABASE_URL); iam: an RDS IAM token for DB_USER, signed for each connection.");
pub const DB_SECRET_ID: Setting = text("DB_SECRET_ID", "", Both,
    "Name or ARN of the Secrets Manager secret holding the connection (RDS's own secret format or a URL).");
pub const DB_HOST: Setting = text(
    "DB_HOST",
    "",
    Both,
    "Database host, for a secret without one; required with DB_AUTH=iam.",
);
pub const DB_PORT: Setting = number(
    "DB_PORT",
    (1, 65_535),
    5_432,
    "",
    Both,
    "Database port, for a secret without one, or with DB_AUTH=iam.",
);
pub const DB_NAME: Setting = text(
    "DB_NAME",
    "",
    Both,
    "Database name, for a secret without one; required with DB_AUTH=iam.",
);
pub const DB_USER: Setting = text(
    "DB_USER",
    "",
    Both,
    "The role to log in as with DB_AUTH=iam (granted rds_iam).",
);
pub const DB_SSLMODE: Setting = choice("DB_SSLMODE", &["require", "verify-full", "disable"], "require", Both,
    "TLS to the database: require (chain and host name verified; verify-full is the same) or disable, on a network you trust.");
pub const DB_REGION: Setting = text(
    "DB_REGION",
    "",
    Both,
    "The database's AWS region, when its host name is not an RDS endpoint that says it: the RDS IAM token is signed for it, and its RDS CAs are trusted; unset: AWS_REGION.",
);
pub const SECRET_CACHE_TTL_SECONDS: Setting = number(
    "SECRET_CACHE_TTL_SECONDS",
    (0, 86_400),
    900,
    "seconds",
    Both,
    "How long fetched credentials are reused (a rotated password is fetched again at once).",
);
pub const DB_CA_BUNDLE: Setting = text(
    "DB_CA_BUNDLE",
    "",
    Both,
    "Path of a PEM file of CAs to trust besides the system store and the built-in Amazon RDS CAs.",
);
pub const DB_CA_SECRET_ID: Setting = text(
    "DB_CA_SECRET_ID",
    "",
    Both,
    "Name or ARN of a Secrets Manager secret holding PEM CAs to trust as well, read at start: a CA the built-in set lacks, without a rebuild.",
);
pub const DB_RDS_CA_REGIONS: Setting = text("DB_RDS_CA_REGIONS", "", Both,
    "Which built-in Amazon RDS CAs to trust: all, or regions separated by commas; unset: the database's and the function's region.");
pub const AWS_REGION: Setting = text("AWS_REGION", "", Both,
    "The AWS region of the SDK's clients (Lambda sets it); with AWS_DEFAULT_REGION, the default of DB_RDS_CA_REGIONS.");

// Events, metrics, logs, the Lambda function.
pub const EVENT_BUS_NAME: Setting = text(
    "EVENT_BUS_NAME",
    "",
    Both,
    "EventBridge bus (name or ARN) the expiry events go to; unset: none are published.",
);
pub const EXPIRY_WARNING_SECONDS: Setting = number(
    "EXPIRY_WARNING_SECONDS",
    (0, 86_400),
    0,
    "seconds",
    Both,
    "Lead time of the Order Expiring Soon events: each run publishes one per pending order whose earliest active reservation falls due within this plus RUN_INTERVAL_SECONDS; 0: none.",
);
pub const RUN_INTERVAL_SECONDS: Setting = number(
    "RUN_INTERVAL_SECONDS",
    (60, 86_400),
    300,
    "seconds",
    Both,
    "Time between two scheduled runs (the template sets it): how far beyond their lead time the expiry warnings look, so that none falls between two runs.",
);
pub const POWERTOOLS_METRICS_NAMESPACE: Setting = text(
    "POWERTOOLS_METRICS_NAMESPACE",
    "Unreserver",
    Lambda,
    "CloudWatch namespace of the metrics (1 to 255 of A-Z a-z 0-9 . _ - / # :, not starting with : or AWS/).",
);
pub const POWERTOOLS_SERVICE_NAME: Setting = text(
    "POWERTOOLS_SERVICE_NAME",
    "unreserver",
    Lambda,
    "Value of the metrics' service dimension (1 to 250 of A-Z a-z 0-9 . _ - / # :).",
);
pub const DEADLINE_MARGIN_MS: Setting = number(
    "DEADLINE_MARGIN_MS",
    (500, 60_000),
    5_000,
    "ms",
    Lambda,
    "Time kept free before the invocation's deadline (at most a third of the time left).",
);
pub const PREFETCH_CREDENTIALS: Setting = number(
    "PREFETCH_CREDENTIALS",
    (0, 1),
    1,
    "",
    Lambda,
    "1: fetch the database credentials during the function's init; 0: at the first invocation.",
);
pub const RUST_LOG: Setting = text(
    "RUST_LOG",
    "info",
    Both,
    "Log filter (tracing's EnvFilter); Lambda's AWS_LAMBDA_LOG_LEVEL wins when set.",
);
pub const LOG_FORMAT: Setting = choice("LOG_FORMAT", &["json", "text"], "", Both,
    "Log lines as JSON or text (default: JSON in Lambda, text on the command line); Lambda's AWS_LAMBDA_LOG_FORMAT wins when set.");

/// The table, in the order the documentation lists it.
pub const SETTINGS: &[Setting] = &[
    BATCH_SIZE,
    BATCH_SIZE_MIN,
    BATCH_SIZE_MAX,
    BATCH_TARGET_MS,
    WORKERS,
    MAX_BATCHES,
    RESERVATION_TIMEOUT_MINUTES,
    PAYMENT_PROCESSING_GRACE_MINUTES,
    LOCK_TIMEOUT_MS,
    STATEMENT_TIMEOUT_MS,
    BATCH_MAX_ATTEMPTS,
    RETRY_BACKOFF_MS,
    TIME_BUDGET_SECONDS,
    SHOP_DEADLOCK_TIMEOUT_MS,
    PASS_SIZE,
    REVIVE_HOLD_MINUTES,
    DATABASE_URL,
    DB_AUTH,
    DB_SECRET_ID,
    DB_HOST,
    DB_PORT,
    DB_NAME,
    DB_USER,
    DB_SSLMODE,
    DB_REGION,
    SECRET_CACHE_TTL_SECONDS,
    DB_CA_BUNDLE,
    DB_CA_SECRET_ID,
    DB_RDS_CA_REGIONS,
    AWS_REGION,
    EVENT_BUS_NAME,
    EXPIRY_WARNING_SECONDS,
    RUN_INTERVAL_SECONDS,
    POWERTOOLS_METRICS_NAMESPACE,
    POWERTOOLS_SERVICE_NAME,
    DEADLINE_MARGIN_MS,
    PREFETCH_CREDENTIALS,
    RUST_LOG,
    LOG_FORMAT,
];

impl Setting {
    /// The range of a number (`(0, 0)` for any other kind).
    pub const fn range(&self) -> (u32, u32) {
        match self.kind {
            Kind::Number { min, max, .. } | Kind::OptionalNumber { min, max } => (min, max),
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
            Kind::Number { min, max, .. } | Kind::OptionalNumber { min, max } => {
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
        let default = s.default_text();
        let default = if default.is_empty() {
            "unset".into()
        } else {
            default
        };
        out.push_str(&format!(
            "  {} [{}; default {}{}]\n      {}\n",
            s.name,
            s.allowed(),
            default,
            if s.unit.is_empty() {
                String::new()
            } else {
                format!(" {}", s.unit)
            },
            s.doc
        ));
    }
    out
}

/// The table as `docs/configuration.md`.
pub fn markdown() -> String {
    let mut out = String::from(
        "# Configuration\n\n\
         Generated from the settings table in `src/settings.rs` (a test fails when this page \
         differs from it; `UNRESERVER_BLESS=1 cargo test --test it settings` writes it again).\n\
         Every setting is an environment variable; an empty value counts as unset. Each is \
         checked before any connection is made, and a bad value fails with `InvalidSetting` \
         naming it (exit code 2 on the command line).\n\n\
         | setting | allowed | default | unit | read by | what it does |\n\
         |---|---|---|---|---|---|\n",
    );
    for s in SETTINGS {
        let default = s.default_text();
        out.push_str(&format!(
            "| `{}` | {} | {} | {} | {} | {} |\n",
            s.name,
            s.allowed(),
            if default.is_empty() {
                "unset".into()
            } else {
                format!("`{default}`")
            },
            s.unit,
            s.read_by.label(),
            s.doc
        ));
    }
    out
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
}

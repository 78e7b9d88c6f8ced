//! Tenants: many shops served by one deployment. A tenant is a schema of the one database
//! (reached with a `search_path` of that schema alone) or a database of its own (its URL, secret
//! or IAM user); the list comes from one setting — names (`TENANTS`), a query (`TENANTS_QUERY`)
//! or a Secrets Manager name prefix (`TENANT_SECRET_PREFIX`). This module holds the rules of the
//! settings, written once: what a tenant's name may be, and how a database tenant's connection
//! settings are derived from the deployment's (`{tenant}` replaced by its name, or its own
//! secret under the prefix). Listing and connecting are the action layer's (`action::tenancy`).

use std::collections::BTreeMap;

use crate::db::settings::DatabaseConfig;
use crate::error::{Error, Result};
pub use crate::settings::TenantSettings;
use crate::settings::{
    Setting, Validate, AWS_REGION, DATABASE_URL, DB_AUTH, DB_CA_BUNDLE, DB_CA_SECRET_ID, DB_HOST,
    DB_NAME, DB_PORT, DB_RDS_CA_REGIONS, DB_REGION, DB_SECRET_ID, DB_SSLMODE, DB_USER,
    SECRET_CACHE_TTL_SECONDS, TENANTS, TENANTS_QUERY, TENANT_KIND, TENANT_SECRET_PREFIX,
};

/// The placeholder a database tenant's name replaces in the database settings.
pub const PLACEHOLDER: &str = "{tenant}";

/// The longest tenant name: PostgreSQL's identifier limit (a schema's name).
pub const MAX_NAME_LEN: usize = 63;

/// The database settings a database tenant's connection is derived from.
const DATABASE_SETTINGS: [Setting; 14] = [
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
];

/// The settings that may name `{tenant}`.
const TEMPLATED: [Setting; 4] = [DATABASE_URL, DB_SECRET_ID, DB_NAME, DB_USER];

/// What a tenant is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TenantKind {
    /// A schema of the one database.
    Schema,
    /// A database of its own.
    Database,
}

/// Where the list of tenants comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TenantList {
    /// `TENANTS`: names, in the setting's order.
    Names(Vec<String>),
    /// `TENANTS_QUERY`: the names its first column returns.
    Query(String),
    /// `TENANT_SECRET_PREFIX`: the rest of the name of each secret that starts with it.
    SecretPrefix(String),
}

/// The tenants of a deployment, configured.
#[derive(Clone)]
pub struct TenantConfig {
    pub kind: TenantKind,
    pub list: TenantList,
    /// `TENANT_CONCURRENCY`.
    pub concurrency: u32,
    /// The deployment's database settings as given (a database tenant's are derived from them).
    database: BTreeMap<&'static str, String>,
}

/// Never shows the database settings (a URL holds a password).
impl std::fmt::Debug for TenantConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TenantConfig")
            .field("kind", &self.kind)
            .field("list", &self.list)
            .field("concurrency", &self.concurrency)
            .finish_non_exhaustive()
    }
}

impl TenantConfig {
    /// The tenants `lookup` configures, None for one shop without tenants. Fails, naming the
    /// setting, when two sources are set, when a source does not fit the kind, or when a
    /// database tenant's connection could not differ from another's.
    pub fn from_lookup(lookup: &impl Fn(&str) -> Option<String>) -> Result<Option<TenantConfig>> {
        let settings = TenantSettings::from_lookup(lookup)?;
        settings.validate()?;
        let kind = match settings.kind.as_str() {
            "database" => TenantKind::Database,
            _ => TenantKind::Schema,
        };
        let list = match (&settings.names, &settings.query, &settings.secret_prefix) {
            (Some(names), None, None) => TenantList::Names(split_names(names)),
            (None, Some(query), None) => TenantList::Query(query.clone()),
            (None, None, Some(prefix)) => TenantList::SecretPrefix(prefix.clone()),
            _ => return Ok(None),
        };
        let database: BTreeMap<&'static str, String> = DATABASE_SETTINGS
            .iter()
            .filter_map(|s| s.get(lookup).map(|value| (s.name, value)))
            .collect();
        let config = TenantConfig {
            kind,
            list,
            concurrency: settings.concurrency,
            database,
        };
        config.check_kind()?;
        Ok(Some(config))
    }

    /// A source that fits the kind: a query lists schemas (it runs on the one database); a
    /// prefix lists databases; a database tenant's settings name `{tenant}` (or come from the
    /// prefix's secrets).
    fn check_kind(&self) -> Result<()> {
        let fail = |name: &str, reason: &str| {
            Err(Error::Setting {
                name: name.into(),
                reason: reason.into(),
            })
        };
        match (&self.list, self.kind) {
            (TenantList::Query(_), TenantKind::Database) => fail(
                TENANTS_QUERY.name,
                "lists schemas of the one database (TENANT_KIND=schema); list databases in \
                 TENANTS or with TENANT_SECRET_PREFIX",
            ),
            (TenantList::SecretPrefix(_), TenantKind::Schema) => fail(
                TENANT_SECRET_PREFIX.name,
                "lists databases, each in its own secret: set TENANT_KIND=database",
            ),
            (TenantList::Names(_), TenantKind::Database)
                if !TEMPLATED.iter().any(|s| {
                    self.database
                        .get(s.name)
                        .is_some_and(|v| v.contains(PLACEHOLDER))
                }) =>
            {
                fail(
                    TENANT_KIND.name,
                    "database tenants need {tenant} in DATABASE_URL, DB_SECRET_ID, DB_NAME or \
                     DB_USER (each tenant's own database, secret or user)",
                )
            }
            _ => Ok(()),
        }
    }

    /// The database settings of tenant `name` (a database tenant): the deployment's, with
    /// `{tenant}` replaced by the name — or, under `TENANT_SECRET_PREFIX`, its own secret
    /// (the prefix and the name) in place of `DB_SECRET_ID` and `DATABASE_URL`.
    pub fn database_for(&self, name: &str) -> Result<DatabaseConfig> {
        check_name(name)?;
        let own_secret = match &self.list {
            TenantList::SecretPrefix(prefix) => Some(format!("{prefix}{name}")),
            _ => None,
        };
        let lookup = |key: &str| -> Option<String> {
            if let Some(secret) = &own_secret {
                if key == DB_SECRET_ID.name {
                    return Some(secret.clone());
                }
                if key == DATABASE_URL.name {
                    return None;
                }
            }
            self.database
                .get(key)
                .map(|value| value.replace(PLACEHOLDER, name))
        };
        DatabaseConfig::from_lookup(&lookup).map_err(|error| match error {
            Error::Setting {
                name: setting,
                reason,
            } => Error::Setting {
                name: setting,
                reason: format!("for tenant {name}: {reason}"),
            },
            other => other,
        })
    }
}

/// Names separated by commas, trimmed, the empty ones left out, each once (first kept).
fn split_names(names: &str) -> Vec<String> {
    let mut seen = Vec::new();
    for name in names.split(',').map(str::trim).filter(|n| !n.is_empty()) {
        if !seen.iter().any(|s: &String| s == name) {
            seen.push(name.to_string());
        }
    }
    seen
}

/// A tenant's name: 1 to 63 of A-Z a-z 0-9 _ - (a schema's name, a secret name's tail, a
/// metric's dimension), not starting with `pg_` (PostgreSQL's own schemas).
pub fn check_name(name: &str) -> Result<()> {
    let ok = !name.is_empty()
        && name.len() <= MAX_NAME_LEN
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
        && !name.starts_with("pg_");
    if ok {
        Ok(())
    } else {
        Err(Error::Setting {
            name: "tenant".into(),
            reason: format!(
                "{:?} is not a tenant name (1 to {MAX_NAME_LEN} of A-Z a-z 0-9 _ -, not \
                 starting with pg_)",
                name.chars().take(80).collect::<String>()
            ),
        })
    }
}

/// At most one list of tenants.
impl Validate for TenantSettings {
    fn validate(&self) -> Result<()> {
        let set = [
            (TENANTS.name, self.names.is_some()),
            (TENANTS_QUERY.name, self.query.is_some()),
            (TENANT_SECRET_PREFIX.name, self.secret_prefix.is_some()),
        ];
        let named: Vec<&str> = set.iter().filter(|(_, on)| *on).map(|(n, _)| *n).collect();
        if named.len() > 1 {
            return Err(Error::Setting {
                name: named[1].into(),
                reason: format!(
                    "only one list of tenants may be set, and {} is set too",
                    named[0]
                ),
            });
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(pairs: &[(&str, &str)]) -> Result<Option<TenantConfig>> {
        let pairs: Vec<(String, String)> = pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        TenantConfig::from_lookup(&|name: &str| {
            pairs
                .iter()
                .find(|(k, _)| k == name)
                .map(|(_, v)| v.clone())
        })
    }

    #[test]
    fn no_list_is_one_shop() {
        assert!(config(&[("DATABASE_URL", "postgres://u@h/db")])
            .unwrap()
            .is_none());
    }

    #[test]
    fn names_are_trimmed_and_deduplicated() {
        let c = config(&[("TENANTS", " a, b,,a ,c ")]).unwrap().unwrap();
        assert_eq!(
            c.list,
            TenantList::Names(vec!["a".into(), "b".into(), "c".into()])
        );
        assert_eq!(c.kind, TenantKind::Schema);
        assert_eq!(c.concurrency, 4);
    }

    #[test]
    fn two_lists_are_refused_by_name() {
        let err = config(&[("TENANTS", "a"), ("TENANTS_QUERY", "select 1")]).unwrap_err();
        assert!(err.to_string().contains("TENANTS_QUERY"), "{err}");
    }

    #[test]
    fn database_tenants_need_the_placeholder_and_get_their_own_database() {
        let err = config(&[
            ("TENANTS", "a"),
            ("TENANT_KIND", "database"),
            ("DATABASE_URL", "postgres://u:pw@h/shop"),
        ])
        .unwrap_err();
        assert!(err.to_string().contains("{tenant}"), "{err}");
        assert!(!err.to_string().contains("pw"), "{err}");
        let c = config(&[
            ("TENANTS", "a,b"),
            ("TENANT_KIND", "database"),
            (
                "DATABASE_URL",
                "postgres://u:pw@h/shop_{tenant}?sslmode=disable",
            ),
        ])
        .unwrap()
        .unwrap();
        let crate::db::settings::DatabaseSource::Url(url) = c.database_for("b").unwrap().source
        else {
            panic!("a URL")
        };
        assert_eq!(url.get_dbname(), Some("shop_b"));
        assert!(!format!("{c:?}").contains("pw"));
    }

    #[test]
    fn a_prefix_gives_each_tenant_its_secret_and_needs_the_database_kind() {
        let err = config(&[("TENANT_SECRET_PREFIX", "shops/")]).unwrap_err();
        assert!(err.to_string().contains("TENANT_KIND=database"), "{err}");
        let c = config(&[
            ("TENANT_SECRET_PREFIX", "shops/"),
            ("TENANT_KIND", "database"),
            ("AWS_REGION", "eu-west-1"),
        ])
        .unwrap()
        .unwrap();
        let crate::db::settings::DatabaseSource::Secret(secret) =
            c.database_for("acme").unwrap().source
        else {
            panic!("a secret")
        };
        assert_eq!(secret.secret_id, "shops/acme");
    }

    #[test]
    fn names_that_are_no_schema_or_dimension_are_refused() {
        for bad in ["", "pg_catalog", "a b", "x\"; drop", &"n".repeat(64)] {
            assert!(check_name(bad).is_err(), "{bad:?}");
        }
        check_name("shop_1-eu").unwrap();
    }
}

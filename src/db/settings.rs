//! The database's settings: where it is (`DATABASE_URL`, a Secrets Manager secret, or RDS IAM
//! authentication), which CAs to trust, read through the configuration's lookup and checked
//! before any connection is made.

use std::path::PathBuf;
use std::time::Duration;

use secrecy::{ExposeSecret, SecretString};
use tokio_postgres::config::{Host, SslMode};

use super::tls::{self, RdsCaRegions, Tls};
use super::{connect, conninfo};
use crate::error::{Error, Result};
use crate::settings::{
    Setting, AWS_REGION, DATABASE_URL, DB_AUTH, DB_CA_BUNDLE, DB_CA_SECRET_ID, DB_HOST, DB_NAME,
    DB_PORT, DB_RDS_CA_REGIONS, DB_REGION, DB_SECRET_ID, DB_SSLMODE, DB_USER,
    SECRET_CACHE_TTL_SECONDS,
};

/// Where the database is and how to reach it.
#[derive(Debug, Clone)]
pub struct DatabaseConfig {
    pub source: DatabaseSource,
    /// `DB_CA_BUNDLE`: a PEM file of CAs to trust besides the system store.
    pub ca_bundle: Option<PathBuf>,
    /// `DB_CA_SECRET_ID`: a Secrets Manager secret holding PEM CAs to trust as well, read at
    /// start (no rebuild needed to trust a CA the built-in set lacks).
    pub ca_secret_id: Option<String>,
    /// `DB_RDS_CA_REGIONS`: which of the built-in RDS CAs to trust.
    pub rds_ca_regions: RdsCaRegions,
}

/// Where the connection settings come from.
#[derive(Debug, Clone)]
pub enum DatabaseSource {
    /// `DATABASE_URL`: a libpq URL or key=value string, parsed and checked (its `Debug` redacts
    /// the password).
    Url(Box<tokio_postgres::Config>),
    /// `DB_SECRET_ID`: a Secrets Manager secret, completed by the settings.
    Secret(SecretSettings),
    /// `DB_AUTH=iam`: RDS IAM database authentication, a token signed for each connection.
    Iam(IamSettings),
}

/// RDS IAM database authentication: where the database is and whom to log in as.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IamSettings {
    /// `DB_HOST`, `DB_PORT` (5432), `DB_NAME`, `DB_USER`, all required but the port.
    pub host: String,
    pub port: u16,
    pub dbname: String,
    pub user: String,
    /// `DB_REGION`: the database's region, when its host is not an RDS endpoint name that says
    /// it (a CNAME, a proxy); unset, `AWS_REGION`. The token is signed for it.
    pub region: Option<String>,
}

/// A Secrets Manager secret and what it may lack.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SecretSettings {
    /// The secret's name or ARN.
    pub secret_id: String,
    /// `DB_HOST`, `DB_PORT` (5432), `DB_NAME`: for secrets that hold only a user and password.
    pub host: Option<String>,
    pub port: u16,
    pub dbname: Option<String>,
    /// `DB_SSLMODE`.
    pub ssl_mode: SslMode,
    /// `SECRET_CACHE_TTL_SECONDS` (900): how long fetched credentials are reused.
    pub cache_ttl: Duration,
}

impl DatabaseConfig {
    /// `DB_SECRET_ID` (with `DB_HOST`, `DB_PORT`, `DB_NAME`, `DB_SSLMODE`,
    /// `SECRET_CACHE_TTL_SECONDS`) or else `DATABASE_URL`; and `DB_CA_BUNDLE`.
    pub fn from_lookup(lookup: &impl Fn(&str) -> Option<String>) -> Result<DatabaseConfig> {
        let source = match DB_AUTH.get(lookup).as_deref().map(str::trim) {
            None | Some("secret") | Some("password") => secret_or_url(lookup)?,
            Some("iam") => DatabaseSource::Iam(iam_settings(lookup)?),
            Some(other) => {
                return Err(Error::Setting {
                    name: DB_AUTH.name.into(),
                    reason: format!("{other:?} is not one of secret (the default) or iam"),
                })
            }
        };
        Ok(DatabaseConfig {
            rds_ca_regions: rds_ca_regions(lookup, &source)?,
            source,
            ca_bundle: DB_CA_BUNDLE.get(lookup).map(PathBuf::from),
            ca_secret_id: DB_CA_SECRET_ID
                .get(lookup)
                .map(|id| in_the_region(DB_CA_SECRET_ID, id, lookup))
                .transpose()?,
        })
    }

    /// The TLS connector every connection of the process uses (see [`tls::connector`]), with
    /// the PEM read from `DB_CA_SECRET_ID` when there is one; [`Tls::disabled`] (no CA store
    /// loaded) when connections go without TLS.
    pub fn tls_connector(&self, ca_secret_pem: Option<&str>) -> Result<Tls> {
        if self.tls_disabled() {
            return Ok(Tls::disabled());
        }
        let extra = self.ca_secret_id.as_deref().zip(ca_secret_pem);
        tls::connector_with(self.ca_bundle.as_deref(), extra, &self.rds_ca_regions)
    }

    /// Whether connections go without TLS.
    pub fn tls_disabled(&self) -> bool {
        match &self.source {
            DatabaseSource::Url(config) => connect::tls_disabled(config),
            DatabaseSource::Secret(secret) => secret.ssl_mode == SslMode::Disable,
            DatabaseSource::Iam(_) => false,
        }
    }
}

/// `DB_RDS_CA_REGIONS`: `all`, or regions separated by commas. By default the regions of the
/// database's host names that are RDS endpoints (when known before a secret is read) and the
/// process's own (`AWS_REGION`, which Lambda always sets); all when neither is known.
fn rds_ca_regions(
    lookup: &impl Fn(&str) -> Option<String>,
    source: &DatabaseSource,
) -> Result<RdsCaRegions> {
    if let Some(value) = DB_RDS_CA_REGIONS.get(lookup) {
        return RdsCaRegions::parse(&value).map_err(|reason| Error::Setting {
            name: DB_RDS_CA_REGIONS.name.into(),
            reason,
        });
    }
    let hosts: Vec<String> = match source {
        DatabaseSource::Url(config) => config
            .get_hosts()
            .iter()
            .filter_map(|host| match host {
                Host::Tcp(name) => Some(name.clone()),
                // A Unix socket (a variant Windows builds do not have).
                #[allow(unreachable_patterns)]
                _ => None,
            })
            .collect(),
        DatabaseSource::Secret(secret) => secret.host.iter().cloned().collect(),
        DatabaseSource::Iam(iam) => vec![iam.host.clone()],
    };
    let mut regions: Vec<String> = Vec::new();
    let own = db_region(lookup)?.into_iter().chain(
        AWS_REGION
            .get(lookup)
            .or_else(|| lookup("AWS_DEFAULT_REGION")),
    );
    let found = hosts
        .iter()
        .filter_map(|h| tls::rds_region(h).map(str::to_owned));
    for region in found.chain(own) {
        if !regions.contains(&region) {
            regions.push(region);
        }
    }
    Ok(match regions.is_empty() {
        true => RdsCaRegions::All,
        false => RdsCaRegions::Only(regions),
    })
}

/// `DB_HOST`, `DB_PORT`, `DB_NAME`, `DB_USER` for IAM authentication; TLS is required (a
/// `DB_SSLMODE` of `disable` is refused: the token must not cross the network in the clear).
fn iam_settings(lookup: &impl Fn(&str) -> Option<String>) -> Result<IamSettings> {
    let required = |setting: Setting| {
        setting.get(lookup).ok_or_else(|| Error::Setting {
            name: setting.name.into(),
            reason: "required with DB_AUTH=iam".into(),
        })
    };
    if conninfo::ssl_mode(DB_SSLMODE.name, DB_SSLMODE.get(lookup).as_deref())? != SslMode::Require {
        return Err(Error::Setting {
            name: DB_SSLMODE.name.into(),
            reason: "IAM authentication requires TLS: the token is a password for 15 minutes"
                .into(),
        });
    }
    Ok(IamSettings {
        host: required(DB_HOST)?,
        port: port(lookup)?,
        dbname: required(DB_NAME)?,
        user: required(DB_USER)?,
        region: db_region(lookup)?,
    })
}

/// `DB_REGION`, checked to be a region's name.
fn db_region(lookup: &impl Fn(&str) -> Option<String>) -> Result<Option<String>> {
    match DB_REGION.get(lookup) {
        Some(region) if !tls::is_region_name(&region) => Err(Error::Setting {
            name: DB_REGION.name.into(),
            reason: format!("{region:?} is not a region name such as eu-west-1"),
        }),
        region => Ok(region),
    }
}

/// `DB_SECRET_ID` (with its settings) or else `DATABASE_URL`.
fn secret_or_url(lookup: &impl Fn(&str) -> Option<String>) -> Result<DatabaseSource> {
    let source = match (DB_SECRET_ID.get(lookup), DATABASE_URL.get(lookup)) {
        (Some(secret_id), _) => DatabaseSource::Secret(SecretSettings {
            secret_id: in_the_region(DB_SECRET_ID, secret_id, lookup)?,
            host: DB_HOST.get(lookup),
            port: port(lookup)?,
            dbname: DB_NAME.get(lookup),
            ssl_mode: conninfo::ssl_mode(DB_SSLMODE.name, DB_SSLMODE.get(lookup).as_deref())?,
            cache_ttl: Duration::from_secs(SECRET_CACHE_TTL_SECONDS.number(lookup)?.into()),
        }),
        (None, Some(url)) => {
            let url = SecretString::from(url);
            DatabaseSource::Url(Box::new(connect::config_from_url(
                DATABASE_URL.name,
                url.expose_secret(),
            )?))
        }
        (None, None) => {
            return Err(Error::Setting {
                name: DATABASE_URL.name.into(),
                reason: "not set, nor DB_SECRET_ID (set DB_SECRET_ID to the secret's name \
                             or ARN, or DATABASE_URL / --database-url to a connection string)"
                    .into(),
            })
        }
    };
    Ok(source)
}

/// A secret's id, refused when it is the ARN of a secret in another region than the process's
/// (`AWS_REGION`): the Secrets Manager client and the role's `kms:ViaService` condition use the
/// function's region, so every run would fail to read it. Said before any call, naming both
/// regions; a name, or an ARN of the same region, passes.
fn in_the_region(
    setting: Setting,
    id: String,
    lookup: &impl Fn(&str) -> Option<String>,
) -> Result<String> {
    let own = AWS_REGION
        .get(lookup)
        .or_else(|| lookup("AWS_DEFAULT_REGION"));
    let secret_region = id
        .strip_prefix("arn:")
        .and_then(|arn| arn.split(':').nth(2))
        .filter(|region| !region.is_empty());
    match (secret_region, own) {
        (Some(theirs), Some(own)) if theirs != own => Err(Error::Setting {
            name: setting.name.into(),
            reason: format!(
                "is a secret in {theirs}, but the function runs in {own}, where Secrets Manager \
                 is asked (and the KMS key's kms:ViaService condition names): replicate the \
                 secret to {own} and give the replica's ARN"
            ),
        }),
        _ => Ok(id),
    }
}

/// `DB_PORT`, 5432 by default.
fn port(lookup: &impl Fn(&str) -> Option<String>) -> Result<u16> {
    // The table's range (1 to 65535) keeps the number within a u16.
    Ok(u16::try_from(DB_PORT.number(lookup)?).unwrap_or(5432))
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

    const ARN: &str = "arn:aws:secretsmanager:eu-west-1:123456789012:secret:prod/db-AbCdEf";

    #[test]
    fn a_secret_in_another_region_is_refused_before_any_call_naming_both() {
        for setting in [DB_SECRET_ID, DB_CA_SECRET_ID] {
            let err = in_the_region(setting, ARN.into(), &lookup(&[("AWS_REGION", "us-east-1")]))
                .unwrap_err();
            let text = err.to_string();
            assert!(text.contains(setting.name), "{text}");
            assert!(
                text.contains("eu-west-1") && text.contains("us-east-1"),
                "{text}"
            );
            assert!(!err.is_retryable());
        }
        // The same region, a name, or no region known: as given.
        for (id, pairs) in [
            (ARN, &[("AWS_REGION", "eu-west-1")][..]),
            ("prod/db", &[("AWS_REGION", "us-east-1")][..]),
            (ARN, &[][..]),
        ] {
            assert_eq!(
                in_the_region(DB_SECRET_ID, id.into(), &lookup(pairs)).unwrap(),
                id
            );
        }
    }
}

//! Where the connection settings come from: `DATABASE_URL` (local runs), or a Secrets Manager
//! secret plus `DB_HOST`/`DB_PORT`/`DB_NAME` for what the secret lacks; and opening a checked
//! connection that re-reads the secret once when the database rejects a rotated password.

use std::time::Duration;

use postgres_native_tls::MakeTlsConnector;
use secrecy::ExposeSecret;
use tokio_postgres::config::SslMode;
use tokio_postgres::Config;

use crate::connect;
use crate::database::Database;
use crate::error::{Error, Result};
use crate::secrets::{DbCredentials, SecretSource};

/// What the secret may lack, from settings; and the TLS mode.
#[derive(Debug, Clone)]
pub struct ConnectionDefaults {
    pub host: Option<String>,
    pub port: u16,
    pub dbname: Option<String>,
    pub ssl_mode: SslMode,
}

impl ConnectionDefaults {
    /// `DB_HOST`, `DB_PORT` (5432), `DB_NAME`, `DB_SSLMODE` (`require`, the default: TLS with
    /// certificate and host name verification; `verify-full` is accepted as its synonym;
    /// `prefer`; `disable`).
    pub fn from_lookup(lookup: &impl Fn(&str) -> Option<String>) -> Result<Self> {
        let port = match lookup("DB_PORT").filter(|p| !p.is_empty()) {
            None => 5432,
            Some(p) => p
                .parse::<u16>()
                .ok()
                .filter(|p| *p > 0)
                .ok_or_else(|| Error::Setting {
                    name: "DB_PORT".into(),
                    reason: format!("{p:?} is not a port number"),
                })?,
        };
        let ssl_mode = parse_ssl_mode(lookup("DB_SSLMODE").as_deref())?;
        Ok(ConnectionDefaults {
            host: lookup("DB_HOST").filter(|h| !h.is_empty()),
            port,
            dbname: lookup("DB_NAME").filter(|d| !d.is_empty()),
            ssl_mode,
        })
    }
}

/// `DB_SSLMODE`: `require` when unset.
pub fn parse_ssl_mode(value: Option<&str>) -> Result<SslMode> {
    match value.unwrap_or("require") {
        "require" | "verify-full" | "" => Ok(SslMode::Require),
        "prefer" => Ok(SslMode::Prefer),
        "disable" => Ok(SslMode::Disable),
        other => Err(Error::Setting {
            name: "DB_SSLMODE".into(),
            reason: format!("{other:?} is not one of require, verify-full, prefer, disable"),
        }),
    }
}

/// The source of the connection settings.
pub enum CredentialSource {
    /// A fixed connection string.
    Url(Box<Config>),
    /// A Secrets Manager secret, completed by the defaults.
    Secret {
        source: Box<SecretSource>,
        defaults: ConnectionDefaults,
    },
}

impl CredentialSource {
    /// The connection settings; `refresh` re-reads the secret instead of using the cache.
    pub async fn config(&self, refresh: bool) -> Result<Config> {
        match self {
            CredentialSource::Url(config) => Ok((**config).clone()),
            CredentialSource::Secret { source, defaults } => {
                let credentials = source.credentials(refresh).await?;
                config_from_credentials(source.secret_id(), &credentials, defaults)
            }
        }
    }

    /// Whether connections go without TLS.
    pub fn tls_disabled(&self) -> bool {
        match self {
            CredentialSource::Url(config) => connect::tls_disabled(config),
            CredentialSource::Secret { defaults, .. } => defaults.ssl_mode == SslMode::Disable,
        }
    }

    /// Connects and runs the preflight. When the database rejects a secret's credentials
    /// (the password was rotated since they were cached), re-reads the secret and tries once
    /// more.
    pub async fn open(&self, tls: &MakeTlsConnector, lock_timeout_ms: u32) -> Result<Database> {
        let config = self.config(false).await?;
        match Database::open(&config, tls, lock_timeout_ms).await {
            Err(Error::Authentication { .. })
                if matches!(self, CredentialSource::Secret { .. }) =>
            {
                tracing::warn!("database rejected the cached credentials; re-reading the secret");
                let config = self.config(true).await?;
                Database::open(&config, tls, lock_timeout_ms).await
            }
            other => other,
        }
    }
}

/// A connection configuration from a secret's credentials and the defaults.
pub fn config_from_credentials(
    secret_id: &str,
    credentials: &DbCredentials,
    defaults: &ConnectionDefaults,
) -> Result<Config> {
    let host = credentials
        .host
        .clone()
        .or_else(|| defaults.host.clone())
        .ok_or_else(|| Error::Secret {
            secret_id: secret_id.into(),
            reason: "field host is missing, and DB_HOST is not set".into(),
            retryable: false,
        })?;
    let dbname = credentials
        .dbname
        .clone()
        .or_else(|| defaults.dbname.clone())
        .ok_or_else(|| Error::Secret {
            secret_id: secret_id.into(),
            reason: "field dbname is missing, and DB_NAME is not set".into(),
            retryable: false,
        })?;
    let mut config = Config::new();
    config
        .host(&host)
        .port(credentials.port.unwrap_or(defaults.port))
        .dbname(&dbname)
        .user(&credentials.username)
        .password(credentials.password.expose_secret())
        .ssl_mode(defaults.ssl_mode)
        .connect_timeout(Duration::from_secs(5));
    connect::apply_defaults(&mut config);
    Ok(config)
}

#[cfg(test)]
mod tests {
    use secrecy::SecretString;

    use super::*;

    fn creds(host: Option<&str>, dbname: Option<&str>) -> DbCredentials {
        DbCredentials {
            username: "app".into(),
            password: SecretString::from("hunter2".to_string()),
            host: host.map(Into::into),
            port: None,
            dbname: dbname.map(Into::into),
        }
    }

    #[test]
    fn secret_values_come_first_settings_fill_the_rest() {
        let lookup = |n: &str| match n {
            "DB_HOST" => Some("fallback.example".to_string()),
            "DB_PORT" => Some("6432".to_string()),
            "DB_NAME" => Some("shop".to_string()),
            _ => None,
        };
        let defaults = ConnectionDefaults::from_lookup(&lookup).unwrap();
        assert_eq!(defaults.ssl_mode, SslMode::Require);
        let c = config_from_credentials("s", &creds(Some("rds.example"), None), &defaults).unwrap();
        assert_eq!(connect::describe(&c), "app@rds.example:6432/shop");
        let c = config_from_credentials("s", &creds(None, Some("other")), &defaults).unwrap();
        assert_eq!(connect::describe(&c), "app@fallback.example:6432/other");
    }

    #[test]
    fn missing_host_names_the_secret_and_the_setting() {
        let defaults = ConnectionDefaults::from_lookup(&|_: &str| None).unwrap();
        let err =
            config_from_credentials("prod/db", &creds(None, Some("shop")), &defaults).unwrap_err();
        assert!(err.to_string().contains("prod/db") && err.to_string().contains("DB_HOST"));
        assert!(!err.to_string().contains("hunter2"));
    }

    #[test]
    fn bad_connection_settings_are_named() {
        for (name, value) in [
            ("DB_PORT", "0"),
            ("DB_PORT", "x"),
            ("DB_SSLMODE", "verify-ca"),
        ] {
            let lookup = |n: &str| (n == name).then(|| value.to_string());
            let err = ConnectionDefaults::from_lookup(&lookup).unwrap_err();
            assert!(err.to_string().contains(name), "{err}");
        }
    }
}

//! Where the connection settings come from at run time: a fixed connection string
//! (`DATABASE_URL`), a Secrets Manager secret completed by `DB_HOST`/`DB_PORT`/`DB_NAME`, or RDS
//! IAM authentication (a token signed for each connection); and opening a checked connection
//! that re-reads the secret once when the database rejects a rotated password.

use std::time::{Duration, SystemTime};

use aws_credential_types::provider::{ProvideCredentials, SharedCredentialsProvider};

use super::tls::Tls;
use secrecy::ExposeSecret;
use tokio_postgres::config::SslMode;
use tokio_postgres::Config;

use super::connect;
use super::iam::{self, token_region, TokenTarget};
use super::secrets::{DbCredentials, SecretSource};
use super::session::Database;
use super::settings::{DatabaseConfig, DatabaseSource, IamSettings, SecretSettings};
use crate::error::{Error, Result};

/// The source of the connection settings.
pub enum CredentialSource {
    /// A fixed connection string.
    Url(Box<Config>),
    /// A Secrets Manager secret, completed by the defaults.
    Secret {
        source: Box<SecretSource>,
        defaults: SecretSettings,
    },
    /// RDS IAM authentication: the role's credentials sign a fresh token for each connection.
    Iam(Box<IamSource>),
}

/// What RDS IAM authentication needs: the endpoint and user, the credentials that sign (the
/// function role's, refreshed by the provider), the region, and the clock the token is dated by.
pub struct IamSource {
    pub settings: IamSettings,
    pub credentials: SharedCredentialsProvider,
    pub region: String,
    pub clock: fn() -> SystemTime,
}

impl CredentialSource {
    /// The source `config` describes. A secret is read through a Secrets Manager client built
    /// from the AWS SDK's default configuration (short timeouts: a run must not hang on it).
    pub async fn from_config(config: &DatabaseConfig) -> Result<CredentialSource> {
        match &config.source {
            DatabaseSource::Url(url) => Ok(CredentialSource::Url(url.clone())),
            DatabaseSource::Iam(settings) => {
                let sdk = crate::aws::sdk_config().await;
                let credentials = sdk.credentials_provider().ok_or_else(|| Error::Setting {
                    name: "DB_AUTH".into(),
                    reason: "iam needs AWS credentials (the function's role), and none were found"
                        .into(),
                })?;
                let own = sdk.region().map(|r| r.as_ref().to_string());
                let region =
                    token_region(&settings.host, settings.region.as_deref(), own.as_deref())
                        .ok_or_else(|| Error::Setting {
                            name: crate::settings::DB_REGION.name.into(),
                            reason:
                                "not set, nor AWS_REGION, and DB_HOST is no RDS endpoint name: \
                                 the IAM token is signed for the database's region"
                                    .into(),
                        })?;
                Ok(CredentialSource::Iam(Box::new(IamSource {
                    settings: settings.clone(),
                    credentials,
                    region,
                    clock: SystemTime::now,
                })))
            }
            DatabaseSource::Secret(settings) => {
                let sdk = crate::aws::sdk_config().await;
                let client = aws_sdk_secretsmanager::Client::new(&sdk);
                Ok(CredentialSource::Secret {
                    source: Box::new(SecretSource::new(
                        client,
                        settings.secret_id.clone(),
                        settings.cache_ttl,
                    )),
                    defaults: settings.clone(),
                })
            }
        }
    }

    /// The connection settings; `refresh` re-reads the secret instead of using the cache.
    pub async fn config(&self, refresh: bool) -> Result<Config> {
        match self {
            CredentialSource::Url(config) => Ok((**config).clone()),
            CredentialSource::Secret { source, defaults } => {
                let credentials = source.credentials(refresh).await?;
                config_from_credentials(source.secret_id(), &credentials, defaults)
            }
            CredentialSource::Iam(source) => source.config().await,
        }
    }

    /// Fetches the credentials ahead of the first invocation (Lambda's init runs with a full
    /// CPU burst, and the first TLS handshake to Secrets Manager is the slow part of a cold
    /// start): the secret is read into the cache, or the role's credentials are resolved. A
    /// failure is only logged: the first invocation tries again and reports it.
    pub async fn prefetch(&self, within: Duration) {
        let started = std::time::Instant::now();
        let fetched = tokio::time::timeout(within, async {
            match self {
                CredentialSource::Url(_) => Ok(()),
                CredentialSource::Secret { source, .. } => {
                    source.credentials(false).await.map(drop)
                }
                CredentialSource::Iam(source) => source.config().await.map(drop),
            }
        })
        .await;
        let elapsed_ms = started.elapsed().as_secs_f64() * 1000.0;
        match fetched {
            Ok(Ok(())) => tracing::info!(elapsed_ms, "database credentials ready before the first invocation"),
            Ok(Err(error)) => tracing::warn!(elapsed_ms, error = %error.chain(),
                "could not fetch the database credentials during init; the first invocation will try again"),
            Err(_) => tracing::warn!(elapsed_ms,
                "fetching the database credentials during init took too long; the first invocation will try again"),
        }
    }

    /// Connects and runs the preflight, the session confined to `schema` when given (a schema
    /// tenant's). When the database rejects a secret's credentials (the password was rotated
    /// since they were cached), re-reads the secret and tries once more.
    pub async fn open(
        &self,
        tls: &Tls,
        lock_timeout_ms: u32,
        schema: Option<&str>,
    ) -> Result<Database> {
        let config = self.config(false).await?;
        match Database::open_in(&config, tls, lock_timeout_ms, schema).await {
            Err(Error::Authentication { .. })
                if matches!(self, CredentialSource::Secret { .. }) =>
            {
                tracing::warn!("database rejected the cached credentials; re-reading the secret");
                let config = self.config(true).await?;
                Database::open_in(&config, tls, lock_timeout_ms, schema).await
            }
            other => other,
        }
    }
}

impl IamSource {
    /// A connection configuration whose password is a fresh token (TLS required).
    pub async fn config(&self) -> Result<Config> {
        let credentials =
            self.credentials
                .provide_credentials()
                .await
                .map_err(|e| Error::Secret {
                    secret_id: "the function role's credentials".into(),
                    reason: format!("cannot be read: {e}"),
                    retryable: true,
                })?;
        let s = &self.settings;
        let target = TokenTarget {
            host: &s.host,
            port: s.port,
            user: &s.user,
            region: &self.region,
        };
        let token = iam::auth_token(&target, credentials, (self.clock)())?;
        let mut config = Config::new();
        config
            .host(&s.host)
            .port(s.port)
            .dbname(&s.dbname)
            .user(&s.user)
            .password(token.expose_secret())
            .ssl_mode(SslMode::Require);
        connect::apply_defaults(&mut config);
        Ok(config)
    }
}

/// A connection configuration from a secret's credentials and the defaults.
pub fn config_from_credentials(
    secret_id: &str,
    credentials: &DbCredentials,
    defaults: &SecretSettings,
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
        .ssl_mode(defaults.ssl_mode);
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

    fn defaults(host: Option<&str>, dbname: Option<&str>) -> SecretSettings {
        SecretSettings {
            secret_id: "s".into(),
            host: host.map(Into::into),
            port: 6432,
            dbname: dbname.map(Into::into),
            ssl_mode: SslMode::Require,
            cache_ttl: Duration::from_secs(900),
        }
    }

    #[test]
    fn secret_values_come_first_settings_fill_the_rest() {
        let defaults = defaults(Some("fallback.example"), Some("shop"));
        let c = config_from_credentials("s", &creds(Some("rds.example"), None), &defaults).unwrap();
        assert_eq!(connect::describe(&c), "app@rds.example:6432/shop");
        let c = config_from_credentials("s", &creds(None, Some("other")), &defaults).unwrap();
        assert_eq!(connect::describe(&c), "app@fallback.example:6432/other");
    }

    #[test]
    fn missing_host_names_the_secret_and_the_setting() {
        let err =
            config_from_credentials("prod/db", &creds(None, Some("shop")), &defaults(None, None))
                .unwrap_err();
        assert!(err.to_string().contains("prod/db") && err.to_string().contains("DB_HOST"));
        assert!(!err.to_string().contains("hunter2"));
    }
}

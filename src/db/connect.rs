//! Opening a database connection: the connection settings (from `DATABASE_URL` or from
//! credentials), timeouts, keepalives and `application_name`, TLS, and errors that tell an
//! unreachable server from rejected credentials without ever showing the password.

use std::time::Duration;

use super::tls::Tls;
use tokio_postgres::config::{Host, SslMode};
use tokio_postgres::error::SqlState;
use tokio_postgres::{Client, Config};

use crate::error::{Error, Result};

/// The `application_name` every connection reports, so a DBA can see the release in
/// `pg_stat_activity`.
pub const APPLICATION_NAME: &str = "unreserver";

/// Parses a libpq-style URL or key=value string (see [`super::conninfo`]: TLS required unless
/// `sslmode=disable` is written), naming `setting` (and never echoing the value, which holds a
/// password) when it is malformed.
pub fn config_from_url(setting: &str, url: &str) -> Result<Config> {
    let mut config = super::conninfo::parse(setting, url)?;
    if config.get_hosts().is_empty() {
        return Err(Error::Setting {
            name: setting.into(),
            reason: "names no host".into(),
        });
    }
    if config.get_user().is_none() {
        return Err(Error::Setting {
            name: setting.into(),
            reason: "names no user".into(),
        });
    }
    apply_defaults(&mut config);
    Ok(config)
}

/// How long a connection may take to open, per host, unless the connection string's
/// `connect_timeout` says: the socket's connect, TLS, authentication and the server's first
/// answers.
const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// The connection's `connect_timeout`, per host: its own, else [`DEFAULT_CONNECT_TIMEOUT`].
pub fn connect_timeout(config: &Config) -> Duration {
    config
        .get_connect_timeout()
        .copied()
        .unwrap_or(DEFAULT_CONNECT_TIMEOUT)
}

/// Session settings every connection gets unless the connection string's `options` set them:
/// a statement timeout for the queries outside batches (preflight, backlog, status), and a
/// guard that ends the session if it ever sits idle inside a transaction (a stalled process
/// must not keep holding rows shoppers need), and a bound on waiting for a lock (a migration or a
/// `LOCK TABLE` holding a table must not keep a run waiting: it fails `TableLocked`, and the next
/// run tries again). Batches set tighter timeouts of their own. They
/// are set after connecting (`SET`), not sent as the `options` startup parameter, which
/// connection poolers such as PgBouncer refuse.
pub const SESSION_DEFAULTS: &[(&str, &str)] = &[
    ("statement_timeout", "60s"),
    ("idle_in_transaction_session_timeout", "10s"),
    ("lock_timeout", "2s"),
];

/// The [`SESSION_DEFAULTS`] a connection still needs: those its connection string's
/// `options` do not set.
pub fn session_defaults(config: &Config) -> Vec<(&'static str, &'static str)> {
    let options = config.get_options().unwrap_or_default();
    SESSION_DEFAULTS
        .iter()
        .filter(|(name, _)| !options.contains(name))
        .copied()
        .collect()
}

/// Timeouts, keepalives and the application name, unless the connection string set them.
pub fn apply_defaults(config: &mut Config) {
    if config.get_connect_timeout().is_none() {
        config.connect_timeout(DEFAULT_CONNECT_TIMEOUT);
    }
    if config.get_application_name().is_none() {
        config.application_name(APPLICATION_NAME);
    }
    config
        .keepalives(true)
        .keepalives_idle(Duration::from_secs(30))
        .keepalives_interval(Duration::from_secs(10))
        .keepalives_retries(3)
        .tcp_user_timeout(Duration::from_secs(30));
}

/// Where a connection goes, for messages: `user@host:port/dbname`, without the password.
pub fn describe(config: &Config) -> String {
    let host = match config.get_hosts().first() {
        Some(Host::Tcp(h)) => h.clone(),
        #[cfg(unix)]
        Some(Host::Unix(p)) => p.display().to_string(),
        None => "?".into(),
    };
    let port = config.get_ports().first().copied().unwrap_or(5432);
    format!(
        "{}@{host}:{port}/{}",
        config.get_user().unwrap_or("?"),
        config.get_dbname().unwrap_or("?")
    )
}

/// Whether this configuration sends data in the clear.
pub fn tls_disabled(config: &Config) -> bool {
    config.get_ssl_mode() == SslMode::Disable
}

/// Connects and spawns the connection's driver task. The client closes when dropped.
pub async fn connect(config: &Config, tls: &Tls) -> Result<Client> {
    // The whole handshake is bounded, as libpq bounds it, not the socket's connect alone (all
    // tokio-postgres bounds): a pooler that accepts and never answers must not hold a run.
    let per_host = connect_timeout(config);
    let hosts = u32::try_from(config.get_hosts().len().max(1)).unwrap_or(u32::MAX);
    let bound = per_host.saturating_mul(hosts);
    let (client, connection) = tokio::time::timeout(bound, config.connect(tls.clone()))
        .await
        .map_err(|_| Error::ConnectTimedOut {
            target: describe(config),
            timeout_ms: bound.as_millis(),
        })?
        .map_err(|source| classify_connect_error(config, source))?;
    tokio::spawn(async move {
        if let Err(error) = connection.await {
            tracing::warn!(error = %error, "database connection closed with an error");
        }
    });
    Ok(client)
}

fn classify_connect_error(config: &Config, source: tokio_postgres::Error) -> Error {
    let rejected = source.code().is_some_and(|code| {
        *code == SqlState::INVALID_PASSWORD
            || *code == SqlState::INVALID_AUTHORIZATION_SPECIFICATION
    });
    if source.code() == Some(&SqlState::TOO_MANY_CONNECTIONS) {
        Error::TooManyConnections {
            target: describe(config),
            source,
        }
    } else if rejected {
        Error::Authentication {
            user: config.get_user().unwrap_or("?").into(),
            source,
        }
    } else if source
        .as_db_error()
        .is_some_and(|e| e.message().contains("unsupported startup parameter"))
    {
        Error::Pooler {
            target: describe(config),
            reason: crate::error::STARTUP_PARAMETER,
            source,
        }
    } else if source.to_string().contains("TLS handshake") {
        // tokio-postgres does not expose its error kinds; its TLS failures all say this.
        Error::TlsHandshake {
            target: describe(config),
            source,
        }
    } else {
        Error::Connect {
            target: describe(config),
            source,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn malformed_url_names_the_setting_not_the_password() {
        let err = config_from_url("DATABASE_URL", "postgres://u:s3cret@h:notaport/db").unwrap_err();
        let text = err.to_string();
        assert!(text.contains("DATABASE_URL"), "{text}");
        assert!(!text.contains("s3cret"), "{text}");
    }

    #[test]
    fn describes_without_password() {
        let config =
            config_from_url("DATABASE_URL", "postgres://app:s3cret@db.example:6432/shop").unwrap();
        assert_eq!(describe(&config), "app@db.example:6432/shop");
        assert_eq!(config.get_application_name(), Some(APPLICATION_NAME));
        // No `options` startup parameter (poolers refuse it): the defaults are SET instead.
        assert_eq!(config.get_options(), None);
        assert_eq!(session_defaults(&config), SESSION_DEFAULTS);
    }

    #[test]
    fn keeps_the_options_a_connection_string_sets() {
        let config = config_from_url(
            "DATABASE_URL",
            "postgres://app@db/shop?options=-c%20statement_timeout%3D5s",
        )
        .unwrap();
        assert_eq!(config.get_options(), Some("-c statement_timeout=5s"));
        assert_eq!(
            session_defaults(&config),
            [
                ("idle_in_transaction_session_timeout", "10s"),
                ("lock_timeout", "2s")
            ]
        );
    }
}

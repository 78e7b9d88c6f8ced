//! Errors of the release, typed so that a caller can tell what went wrong and whether trying
//! again can help ([`Error::is_retryable`]), and so that no secret value ever reaches a message.

use tokio_postgres::error::SqlState;

/// Everything that can make a run, a status query or a credential fetch fail.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A setting (environment variable, flag or payload field) is missing, unparsable or out of
    /// range. Raised before any connection is made.
    #[error("invalid setting {name}: {reason}")]
    Setting { name: String, reason: String },

    /// The invocation payload is not one this function accepts.
    #[error("invalid payload: {0}")]
    Payload(String),

    /// The database schema lacks a table or column the release needs.
    #[error("schema check failed: {0}")]
    Schema(String),

    /// The database could not be reached or the connection was lost.
    #[error("database unreachable ({target}): {source}")]
    Connect {
        target: String,
        #[source]
        source: tokio_postgres::Error,
    },

    /// The server (or a pooler or proxy in front of it) accepted the connection but did not
    /// finish the handshake within the connection's `connect_timeout` (5 s unless the
    /// connection string sets it; per host, as libpq counts it): suspended, overloaded, or not
    /// PostgreSQL. tokio-postgres bounds only the socket's connect.
    #[error(
        "database unreachable ({target}): no answer within the connect timeout of {timeout_ms} ms"
    )]
    ConnectTimedOut { target: String, timeout_ms: u128 },

    /// The server refused the connection for want of room (SQLSTATE 53300): the role's
    /// `CONNECTION LIMIT` (`infra/role.sql`) or the server's `max_connections` is reached —
    /// the bound that keeps the shop's own connections free. A connection closes as soon as
    /// its invocation ends, so trying again shortly can succeed.
    #[error("database refused a connection ({target}): too many connections — the role's CONNECTION LIMIT or the server's max_connections is reached; try again shortly: {source}")]
    TooManyConnections {
        target: String,
        #[source]
        source: tokio_postgres::Error,
    },

    /// The database rejected the credentials (wrong password, unknown role).
    #[error("database rejected the credentials for user {user}: {source}")]
    Authentication {
        user: String,
        #[source]
        source: tokio_postgres::Error,
    },

    /// The server's certificate could not be verified (unknown CA, wrong host name) or TLS
    /// was refused.
    #[error("TLS handshake with {target} failed (is the server's CA trusted — in DB_CA_SECRET_ID, a Secrets Manager secret holding its PEM, read at start without a rebuild, or in DB_CA_BUNDLE; for RDS in another region than AWS_REGION, named in DB_RDS_CA_REGIONS — and does its certificate name this host?): {source}")]
    TlsHandshake {
        target: String,
        #[source]
        source: tokio_postgres::Error,
    },

    /// TLS could not be set up (CA bundle unreadable or invalid).
    #[error("TLS setup failed: {0}")]
    Tls(String),

    /// A statement failed.
    /// A connection pooler in the way: one that refused a startup parameter, or one in
    /// transaction mode (a prepared statement missing on the next server connection).
    #[error("connection pooler in the way ({target}): {reason}: {source}")]
    Pooler {
        target: String,
        reason: &'static str,
        #[source]
        source: tokio_postgres::Error,
    },
    /// A table the tool needs is locked by another session (a migration, a `LOCK TABLE`) past
    /// the session's `lock_timeout`: nothing was changed; the next run tries again.
    #[error("a table is locked by another session (a migration, a LOCK TABLE) while {context}; nothing was changed, the next run tries again: {source}")]
    TableLocked {
        context: &'static str,
        #[source]
        source: tokio_postgres::Error,
    },
    #[error("database error during {context}: {source}")]
    Database {
        context: &'static str,
        #[source]
        source: tokio_postgres::Error,
    },

    /// A statement or a whole batch is too slow even when small: a slow plan (an index
    /// missing on a big table) or an overloaded server, not a lock conflict. Retrying the same
    /// work unchanged does not help.
    #[error("{what} is too slow: {why}{hint}")]
    TooSlow {
        /// The statement (or step) that was running.
        what: &'static str,
        why: String,
        /// What may help, e.g. the recommended indexes that are missing; empty or starting
        /// with "; ".
        hint: String,
    },

    /// The server is a standby (in recovery, read-only): a replica's address given where the
    /// primary's belongs, or a failover under way. Trying the same address again helps only
    /// once it is promoted; point the tool at the primary (or the cluster's writer endpoint).
    #[error("{target} is a read-only standby (pg_is_in_recovery() is true): the release must write; give the primary's address (on RDS/Aurora, the cluster's writer endpoint, not a reader)")]
    ReadOnlyServer { target: String },

    /// A row another transaction holds stayed held through every bounded try (revive): the
    /// caller may try again shortly.
    #[error("{what}: {why}")]
    Busy { what: &'static str, why: String },

    /// Events could not be published to EventBridge (`unreserver events --publish`; a run
    /// never fails for this: it counts them in `events_failed`).
    #[error("publishing events to EventBridge: {0}")]
    Publish(String),

    /// The role may not do what was asked (a purge as a role without the grants of
    /// `infra/purge-role.sql`, such as the release's own): granting is the fix, not a retry.
    #[error("the database role may not do this while {context}: connect as the role of {hint} (the release's role never deletes): {source}")]
    Privilege {
        context: &'static str,
        hint: &'static str,
        #[source]
        source: tokio_postgres::Error,
    },

    /// The credentials could not be read from AWS Secrets Manager.
    #[error("secret {secret_id}: {reason}")]
    Secret {
        secret_id: String,
        reason: String,
        retryable: bool,
    },
}

/// Why a pooler in transaction mode cannot carry the tool's sessions.
pub const TRANSACTION_POOLING: &str = "the connection goes through a pooler in transaction mode \
     (PgBouncer pool_mode = transaction, or an equivalent), which hands each transaction another \
     server connection: prepared statements and session settings do not follow; connect \
     directly, or through a pool in session mode";

/// Why a pooler refused the connection's startup parameters.
pub const STARTUP_PARAMETER: &str = "the pooler refused a startup parameter (PgBouncer accepts \
     only a few; remove options= from the connection string, or list the parameter in its \
     ignore_startup_parameters)";

impl Error {
    /// Wraps a database error raised while doing `context`.
    /// For the statements of opening a session (preflight, preparing), which lock no row:
    /// waiting past the session's `lock_timeout` there means a table lock.
    pub fn when_opening(self) -> Error {
        match self {
            Error::Database { context, source }
                if source.code() == Some(&SqlState::LOCK_NOT_AVAILABLE) =>
            {
                Error::TableLocked { context, source }
            }
            other => other,
        }
    }

    /// A prepared statement the server does not know (SQLSTATE 26000), or one it already has
    /// (42P05: another client's, left on a shared server connection), is read as what causes it
    /// here: a pooler in transaction mode handing the session another server connection.
    pub fn db(context: &'static str) -> impl FnOnce(tokio_postgres::Error) -> Error {
        move |source| {
            let pooled = source.code().is_some_and(|code| {
                *code == SqlState::INVALID_SQL_STATEMENT_NAME
                    || *code == SqlState::DUPLICATE_PSTATEMENT
            });
            if pooled {
                Error::Pooler {
                    target: context.to_string(),
                    reason: TRANSACTION_POOLING,
                    source,
                }
            } else {
                Error::Database { context, source }
            }
        }
    }

    /// Whether running the same thing again, unchanged, can succeed: lock and transient
    /// connection problems can pass; a bad setting, payload or schema cannot.
    pub fn is_retryable(&self) -> bool {
        match self {
            Error::Setting { .. }
            | Error::Payload(_)
            | Error::Schema(_)
            | Error::Tls(_)
            | Error::TlsHandshake { .. }
            | Error::Authentication { .. }
            | Error::TooSlow { .. }
            | Error::ReadOnlyServer { .. }
            | Error::Privilege { .. }
            | Error::Pooler { .. } => false,
            Error::Connect { .. }
            | Error::ConnectTimedOut { .. }
            | Error::TooManyConnections { .. }
            | Error::Busy { .. }
            | Error::Publish(_)
            | Error::TableLocked { .. } => true,
            Error::Secret { retryable, .. } => *retryable,
            Error::Database { source, .. } => {
                source.is_closed()
                    || source
                        .code()
                        .is_some_and(|c| is_transient_conflict(c) || is_connection_lost(c))
            }
        }
    }

    /// A stable name for the kind of error, used as the Lambda `errorType` and in logs and
    /// metrics, so that alarms and callers can match on it.
    pub fn kind(&self) -> &'static str {
        match self {
            Error::Setting { .. } => "InvalidSetting",
            Error::Payload(_) => "InvalidPayload",
            Error::Schema(_) => "SchemaMismatch",
            Error::Connect { .. } | Error::ConnectTimedOut { .. } => "DatabaseUnreachable",
            Error::TooManyConnections { .. } => "TooManyConnections",
            Error::Authentication { .. } => "DatabaseAuthentication",
            Error::Tls(_) => "TlsSetup",
            Error::TlsHandshake { .. } => "TlsVerification",
            Error::Database { .. } => "DatabaseError",
            Error::Pooler { .. } => "UnsupportedPooler",
            Error::TableLocked { .. } => "TableLocked",
            Error::TooSlow { .. } => "TooSlow",
            Error::ReadOnlyServer { .. } => "ReadOnlyServer",
            Error::Secret { .. } => "SecretUnavailable",
            Error::Busy { .. } => "LockBusy",
            Error::Privilege { .. } => "InsufficientPrivilege",
            Error::Publish(_) => "EventsUnpublished",
        }
    }

    /// The error as an answer names it beside what went on (a sweep's failed tenant): its kind,
    /// whether a retry can help, and the cause chain.
    pub fn summary(&self) -> serde_json::Value {
        serde_json::json!({
            "kind": self.kind(),
            "retryable": self.is_retryable(),
            "message": self.chain(),
        })
    }

    /// The whole cause chain on one line, for logs and the CLI's error line.
    pub fn chain(&self) -> String {
        let mut out = self.to_string();
        let mut cause = std::error::Error::source(self);
        while let Some(err) = cause {
            let text = err.to_string();
            if !out.contains(&text) {
                out.push_str(": ");
                out.push_str(&text);
            }
            cause = err.source();
        }
        out
    }
}

/// Conflicts with other transactions that a rolled-back batch may win on a later try: lock
/// timeout, deadlock, serialization failure. A cancelled statement (`57014`: a statement
/// timeout, or the batch's own time budget) is not one: slow is not contention.
pub fn is_transient_conflict(code: &SqlState) -> bool {
    [
        SqlState::LOCK_NOT_AVAILABLE,
        SqlState::T_R_DEADLOCK_DETECTED,
        SqlState::T_R_SERIALIZATION_FAILURE,
    ]
    .contains(code)
}

/// Whether `err` is a conflict a retry of the batch may win.
pub fn is_conflict(err: &Error) -> bool {
    sql_state(err).is_some_and(is_transient_conflict)
}

/// Whether `err` is a cancelled statement (`57014`).
pub fn is_cancelled(err: &Error) -> bool {
    sql_state(err) == Some(&SqlState::QUERY_CANCELED)
}

/// The server ended or refused the session (administrator command, crash, restart, connection
/// exception, too many connections): a new connection may succeed.
pub fn is_connection_lost(code: &SqlState) -> bool {
    code.code().starts_with("08")
        || [
            SqlState::ADMIN_SHUTDOWN,
            SqlState::CRASH_SHUTDOWN,
            SqlState::CANNOT_CONNECT_NOW,
            SqlState::TOO_MANY_CONNECTIONS,
        ]
        .contains(code)
}

/// The SQLSTATE of a database error, when it has one.
pub fn sql_state(err: &Error) -> Option<&SqlState> {
    match err {
        Error::Database { source, .. } => source.code(),
        _ => None,
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

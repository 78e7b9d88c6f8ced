//! A checked connection ready to release: the client with its session settings pinned, what
//! the preflight found, the release's statements prepared once per connection, and a way to
//! cancel the statement it is running (the batch's time budget).

use postgres_native_tls::MakeTlsConnector;
use tokio_postgres::{Client, Config};

use super::connect;
use super::preflight::{self, Preflight};
use super::sql::{self, Statements};
use crate::error::{Error, Result};

/// One connection, checked and prepared.
pub struct Database {
    pub client: Client,
    pub statements: Statements,
    pub preflight: Preflight,
    /// `user@host:port/dbname`, for messages (never the password).
    pub target: String,
    /// The connector a cancel request goes through (the same TLS as the connection).
    tls: MakeTlsConnector,
    /// What opened it, to open it again ([`Database::reconnect`]); its `Debug` redacts the
    /// password.
    config: Config,
    lock_timeout_ms: u32,
}

impl Database {
    /// Connects, runs the preflight (schema, `deadlock_timeout`, indexes) and prepares the
    /// statements. Fails before changing anything when the schema does not fit.
    pub async fn open(
        config: &Config,
        tls: &MakeTlsConnector,
        lock_timeout_ms: u32,
    ) -> Result<Self> {
        let client = connect::connect(config, tls).await?;
        sql::probe_pooling(&client).await?;
        sql::pin_session(&client, &connect::session_defaults(config)).await?;
        let preflight = preflight::preflight(&client, lock_timeout_ms)
            .await
            .map_err(Error::when_opening)?;
        let statements = Statements::prepare(&client)
            .await
            .map_err(Error::when_opening)?;
        Ok(Database {
            client,
            statements,
            preflight,
            target: connect::describe(config),
            tls: tls.clone(),
            config: config.clone(),
            lock_timeout_ms,
        })
    }

    /// Replaces the connection with a new one, checked and prepared the same way. After a cut
    /// batch: a cancel request still on its way can only reach the old session, which is gone,
    /// never a statement of the next batch.
    pub async fn reconnect(&mut self) -> Result<()> {
        let fresh = Database::open(&self.config, &self.tls, self.lock_timeout_ms).await?;
        *self = fresh;
        Ok(())
    }

    /// A handle that cancels whatever statement this connection runs when called (from
    /// another task: the connection itself is busy).
    pub fn canceller(&self) -> Canceller {
        Canceller {
            token: self.client.cancel_token(),
            tls: self.tls.clone(),
        }
    }

    /// Whether the connection is gone (killed, server restarted): open a new one.
    pub fn is_closed(&self) -> bool {
        self.client.is_closed()
    }
}

/// Cancels the statement a connection is running, through a separate connection, as
/// PostgreSQL's cancel protocol works.
pub struct Canceller {
    token: tokio_postgres::CancelToken,
    tls: MakeTlsConnector,
}

impl Canceller {
    /// Sends the cancel request; a failure to send it is logged, not raised (the statement
    /// timeout still bounds the statement).
    pub async fn cancel(&self) {
        if let Err(error) = self.token.cancel_query(self.tls.clone()).await {
            tracing::warn!(error = %error, "could not send the cancel request");
        }
    }
}

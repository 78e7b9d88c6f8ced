//! A checked connection ready to release: the client, what the preflight found, and the
//! release's statements prepared once per connection.

use postgres_native_tls::MakeTlsConnector;
use tokio_postgres::{Client, Config};

use super::connect;
use super::preflight::{self, Preflight};
use super::sql::Statements;
use crate::error::Result;

/// One connection, checked and prepared.
pub struct Database {
    pub client: Client,
    pub statements: Statements,
    pub preflight: Preflight,
    /// `user@host:port/dbname`, for messages (never the password).
    pub target: String,
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
        Database::from_client(client, connect::describe(config), lock_timeout_ms).await
    }

    /// Checks and prepares an already open connection.
    pub async fn from_client(client: Client, target: String, lock_timeout_ms: u32) -> Result<Self> {
        let preflight = preflight::preflight(&client, lock_timeout_ms).await?;
        let statements = Statements::prepare(&client).await?;
        Ok(Database {
            client,
            statements,
            preflight,
            target,
        })
    }

    /// Whether the connection is gone (killed, server restarted): open a new one.
    pub fn is_closed(&self) -> bool {
        self.client.is_closed()
    }
}

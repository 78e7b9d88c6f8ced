//! A checked connection ready to release: the client, the preflight result, and the release's
//! statements prepared once per connection (each batch then costs one round trip a statement).

use postgres_native_tls::MakeTlsConnector;
use tokio_postgres::{Client, Config, Statement};

use crate::connect;
use crate::error::{Error, Result};
use crate::schema::{self, Preflight};
use crate::sql;

/// The release's prepared statements.
pub struct Statements {
    pub set_batch_timeouts: Statement,
    pub page: Statement,
    pub claim_orders: Statement,
    pub classify_unclaimed: Statement,
    pub claim_holds: Statement,
    pub release_reservations: Statement,
    pub cancel_orders: Statement,
    pub return_variant_units: Statement,
    pub return_drop_units: Statement,
    pub backlog: Statement,
}

/// One connection, checked and prepared.
pub struct Database {
    pub client: Client,
    pub statements: Statements,
    pub preflight: Preflight,
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
        let preflight = schema::preflight(&client, lock_timeout_ms).await?;
        let prepare = |text: &'static str| {
            let client = &client;
            async move {
                client
                    .prepare(text)
                    .await
                    .map_err(Error::db("preparing the release statements"))
            }
        };
        let statements = Statements {
            set_batch_timeouts: prepare(sql::SET_BATCH_TIMEOUTS).await?,
            page: prepare(sql::PAGE).await?,
            claim_orders: prepare(sql::CLAIM_ORDERS).await?,
            classify_unclaimed: prepare(sql::CLASSIFY_UNCLAIMED).await?,
            claim_holds: prepare(sql::CLAIM_HOLDS).await?,
            release_reservations: prepare(sql::RELEASE_RESERVATIONS).await?,
            cancel_orders: prepare(sql::CANCEL_ORDERS).await?,
            return_variant_units: prepare(sql::RETURN_VARIANT_UNITS).await?,
            return_drop_units: prepare(sql::RETURN_DROP_UNITS).await?,
            backlog: prepare(sql::BACKLOG).await?,
        };
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

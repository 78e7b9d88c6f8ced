//! The state built once per process (the Lambda execution environment, or one CLI command):
//! the configuration, the TLS connector, the credential source and the EventBridge publisher.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::db::tls::Tls;

use crate::config::Config;
use crate::db::credentials::CredentialSource;
use crate::db::secrets::SecretSource;
use crate::error::{Error, Result};
use crate::events::Publisher;

/// Everything an invocation needs that can be built once per execution environment.
pub struct AppState {
    pub config: Config,
    /// Shared by the states of a deployment's schema tenants (one database, one secret cache).
    pub credentials: Arc<CredentialSource>,
    pub tls: Tls,
    /// The tenant this state serves (`crate::tenant`), None for a deployment's own.
    pub tenant: Option<String>,
    /// A schema tenant's schema: its sessions' `search_path`.
    pub schema: Option<String>,
    /// The tenants' states built so far (credentials and their cache kept across invocations).
    tenant_states: tokio::sync::Mutex<HashMap<String, Arc<AppState>>>,
    /// The EventBridge publisher of the expiry events, when `EVENT_BUS_NAME` is set.
    pub publisher: Option<Publisher>,
    /// What the init's parts took.
    pub init: InitTimings,
    cold_start: AtomicBool,
}

impl AppState {
    /// Builds the state from the environment ([`Config::from_env`]): every setting is checked
    /// before anything is contacted.
    pub async fn from_env() -> Result<Self> {
        AppState::from_config(Config::from_env()?).await
    }

    /// Builds the state from a configuration. The TLS connector (OpenSSL loading the system
    /// store and the RDS CAs: CPU work; nothing at all with `sslmode=disable`) is built on a
    /// blocking thread while the AWS SDK configuration loads and, with `PREFETCH_CREDENTIALS`,
    /// the credentials are fetched (mostly network waits): Lambda's init has the CPU for both.
    /// The AWS SDK is loaded only for what uses it: a secret, IAM authentication, an event bus.
    pub async fn from_config(config: Config) -> Result<Self> {
        // A CA held in a secret is read first: the connector needs it (not without TLS).
        let ca_pem = match &config.database.ca_secret_id {
            Some(id) if !config.database.tls_disabled() => Some(ca_secret(id).await?),
            _ => None,
        };
        let database = config.database.clone();
        let tls = tokio::task::spawn_blocking(move || {
            let started = Instant::now();
            database
                .tls_connector(ca_pem.as_deref())
                .map(|tls| (tls, elapsed_ms(started)))
        });
        let started = Instant::now();
        let credentials = CredentialSource::from_config(&config.database).await?;
        if config.lambda.prefetch_credentials {
            credentials.prefetch(Duration::from_secs(3)).await;
        }
        let publisher = match &config.events.bus_name {
            Some(bus) => Some(Publisher::from_env(bus.clone()).await),
            None => None,
        };
        let aws_ms = elapsed_ms(started);
        let (tls, tls_ms) = tls
            .await
            .map_err(|e| Error::Tls(format!("building the TLS connector failed: {e}")))??;
        if config.database.tls_disabled() {
            tracing::warn!(
                "TLS to the database is DISABLED (sslmode disable): credentials and data cross \
                 the network in the clear; set DB_SSLMODE=require"
            );
        }
        Ok(AppState {
            config,
            credentials: Arc::new(credentials),
            tls,
            tenant: None,
            schema: None,
            tenant_states: Default::default(),
            publisher,
            init: InitTimings { tls_ms, aws_ms },
            cold_start: AtomicBool::new(true),
        })
    }

    /// The state of tenant `name` (a checked name): for a schema tenant, this deployment's
    /// credentials with the sessions confined to its schema; for a database tenant, its own
    /// credentials (`TenantConfig::database_for`), the same TLS connector and publisher. Built
    /// once per process and kept (a secret's cache lives as long as the execution
    /// environment). Whether the tenant is listed is the caller's check (`tenancy`).
    pub async fn for_tenant(&self, name: &str) -> Result<Arc<AppState>> {
        crate::tenant::check_name(name)?;
        let Some(tenants) = &self.config.tenants else {
            return Err(crate::action::tenancy::not_configured());
        };
        let mut states = self.tenant_states.lock().await;
        if let Some(state) = states.get(name) {
            return Ok(state.clone());
        }
        let mut config = self.config.clone();
        config.tenants = None;
        let (credentials, schema) = match tenants.kind {
            crate::tenant::TenantKind::Schema => (self.credentials.clone(), Some(name.to_string())),
            crate::tenant::TenantKind::Database => {
                config.database = tenants.database_for(name)?;
                let source = CredentialSource::from_config(&config.database).await?;
                (Arc::new(source), None)
            }
        };
        let state = Arc::new(AppState {
            config,
            credentials,
            tls: self.tls.clone(),
            tenant: Some(name.to_string()),
            schema,
            tenant_states: Default::default(),
            publisher: self.publisher.as_ref().map(|p| p.for_tenant(name)),
            init: self.init,
            cold_start: AtomicBool::new(false),
        });
        states.insert(name.to_string(), state.clone());
        Ok(state)
    }
}

/// The PEM of `DB_CA_SECRET_ID`.
async fn ca_secret(secret_id: &str) -> Result<String> {
    let sdk = crate::aws::sdk_config().await;
    let client = aws_sdk_secretsmanager::Client::new(&sdk);
    SecretSource::new(client, secret_id.to_string(), Duration::ZERO)
        .text("fetched the CA bundle")
        .await
}

/// What the parts of the init took, side by side: they run at the same time.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct InitTimings {
    /// Building the TLS connector.
    pub tls_ms: f64,
    /// Loading the AWS SDK configuration, building the clients, prefetching the credentials.
    pub aws_ms: f64,
}

fn elapsed_ms(started: Instant) -> f64 {
    started.elapsed().as_secs_f64() * 1000.0
}

impl AppState {
    /// True on the first call only: the first invocation of this execution environment.
    pub fn take_cold_start(&self) -> bool {
        self.cold_start.swap(false, Ordering::SeqCst)
    }
}

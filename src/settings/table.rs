//! The table: every setting the process reads, declared once — its documentation, name, kind
//! (range and default, or text), unit, which front-ends read it, and, for a setting read into
//! a group, the group's field and its type. A new setting is one declaration here (see
//! [`settings!`](super::declare) for the form); `UNRESERVER_BLESS=1 cargo test --test it
//! settings` then writes `docs/configuration.md` again.

use std::time::Duration;

use super::Unit::{Count, Minutes, Ms, Plain, Seconds};

settings! {
    // The release.
    /// How a run releases: batch shape, time rules, and how long it may wait on a lock.
    #[derive(Debug, Clone, PartialEq, Eq)]
    pub struct ReleaseSettings {
        /// Pins the due reservations paged per batch transaction (their orders and cart holds are
        /// claimed together); unset: adaptive, each batch sized by the controller between
        /// BATCH_SIZE_MIN and BATCH_SIZE_MAX.
        BATCH_SIZE: optional(1..=10_000, Count("reservations"), "adaptive"), Both
            => batch_size: Option<u32>;
        /// Adaptive batches: the size a batch falls back to at once when shoppers compete for
        /// its rows (chosen from the benchmark).
        BATCH_SIZE_MIN: number(1..=10_000, 100, Count("reservations")), Both
            => batch_size_min: u32;
        /// Adaptive batches: the largest a batch may grow while nothing is in its way.
        BATCH_SIZE_MAX: number(1..=10_000, 4_000, Count("reservations")), Both
            => batch_size_max: u32;
        /// Adaptive batches: the time a batch is sized to take while nothing is in its way (at most
        /// a third of the batch budget, which is half the shop's deadlock_timeout); a run's first
        /// batch, before any rate is measured, pages 3 rows a millisecond of it (450 rows).
        BATCH_TARGET_MS: number(10..=5_000, 150, Ms), Both
            => batch_target: Duration;
        /// Connections one run drains with at once while nothing competes (one as soon as shoppers
        /// do), within the database's free connections less a reserve.
        WORKERS: number(1..=16, 2, Count("connections")), Both
            => workers: u32;
        /// Connections one run may drain with when it reaches the server through a pooler or
        /// proxy (PgBouncer, RDS Proxy), whose pool the role cannot read: 1 unless you know the
        /// pool has room beside the shop's connections (WORKERS still bounds it).
        POOLED_WORKERS: number(1..=16, 1, Count("connections")), Both
            => pooled_workers: u32;
        /// Batches after which a run stops even if more is due.
        MAX_BATCHES: number(1..=1_000_000, 1000, Count("batches")), Both
            => max_batches: u32;
        /// Age after which a legacy reservation (NULL expires_at) is due.
        RESERVATION_TIMEOUT_MINUTES: number(1..=10_080, 15, Minutes), Both
            => reservation_timeout_minutes: u32;
        /// Extra time an order whose payment is processing gets before it is due.
        PAYMENT_PROCESSING_GRACE_MINUTES: number(0..=10_080, 15, Minutes), Both
            => payment_processing_grace_minutes: u32;
        /// Longest a batch polls for one row a shopper holds; below STATEMENT_TIMEOUT_MS and half
        /// the shop's deadlock_timeout.
        LOCK_TIMEOUT_MS: number(1..=5_000, 100, Ms), Both
            => lock_timeout_ms: u32;
        /// statement_timeout of the release's statements.
        STATEMENT_TIMEOUT_MS: number(100..=600_000, 5_000, Ms), Both
            => statement_timeout_ms: u32;
        /// Tries of one batch on a lock timeout, deadlock or serialization failure before the run
        /// stops and leaves the rest to the next.
        BATCH_MAX_ATTEMPTS: number(1..=20, 5, Count("tries")), Both
            => batch_max_attempts: u32;
        /// Base of the jittered exponential backoff between tries of a batch (or of a revive).
        RETRY_BACKOFF_MS: number(1..=10_000, 50, Ms), Both
            => retry_backoff_ms: u32;
        /// Longest a CLI command may take (`follow` runs until its --for or a signal instead); 0
        /// for none. The Lambda function takes its deadline less DEADLINE_MARGIN_MS instead.
        TIME_BUDGET_SECONDS: number(0..=86_400, 240, Seconds), Cli
            => time_budget: Option<Duration>;
        /// The lowest deadlock_timeout the shop's own sessions set, when below the server's; 0 for
        /// the server's. A batch never outlives half of it.
        SHOP_DEADLOCK_TIMEOUT_MS: number(0..=600_000, 0, Ms), Both
            => shop_deadlock_timeout_ms: Option<u32>;
        /// Due rows one scan reads when no index serves the keyset page (about 40 bytes of memory
        /// each).
        PASS_SIZE: number(100..=1_000_000, 50_000, Count("rows")), Both
            => pass_size: u32;
        /// The purge, while other sessions are at work on the database (a shopper checking out):
        /// the rest after each chunk, as a multiple of the time the chunk took (4: the purge works
        /// at most a fifth of the time beside the shop); 0: a rest of 10 ms. Chosen from the
        /// benchmark.
        PURGE_REST_RATIO: number(0..=100, 4, Plain), Both
            => purge_rest_ratio: u32;
    }

    /// How a late payment revives an order.
    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    pub struct ReviveSettings {
        /// How long the reservations of a revived order hold the stock again.
        REVIVE_HOLD_MINUTES: number(1..=1_440, 15, Minutes), Both
            => hold_minutes: u32;
    }

    /// Many shops from one deployment: which tenants there are and how one is reached.
    #[derive(Debug, Clone, PartialEq, Eq)]
    pub struct TenantSettings {
        /// The tenants by name, separated by commas (one of TENANTS, TENANTS_QUERY and
        /// TENANT_SECRET_PREFIX); unset, with the other two: one shop, no tenants.
        TENANTS: text(""), Both
            => names: Option<String>;
        /// A query run read-only on the database that returns the tenants' names in its first
        /// column (schemas: django-tenants keeps them in a table).
        TENANTS_QUERY: text(""), Both
            => query: Option<String>;
        /// A Secrets Manager name prefix: each secret whose name starts with it holds one tenant
        /// database, named by the rest of its name (needs secretsmanager:ListSecrets on *).
        TENANT_SECRET_PREFIX: text(""), Both
            => secret_prefix: Option<String>;
        /// schema: a tenant is a schema of the one database (its search_path is that schema
        /// alone); database: a tenant is a database, {tenant} in DATABASE_URL, DB_SECRET_ID,
        /// DB_NAME or DB_USER standing for its name (or its own secret under
        /// TENANT_SECRET_PREFIX).
        TENANT_KIND: choice(&["schema", "database"], "schema"), Both
            => kind: String;
        /// Tenants one invocation sweeping several releases at once, at most WORKERS: a sweep
        /// holds no more connections than one run, each tenant's run draining with its share.
        TENANT_CONCURRENCY: number(1..=64, 4, Count("tenants")), Both
            => concurrency: u32;
    }

    // The database: read by `db::settings`, which builds `DatabaseConfig` from them.
    read_where_used {
        /// libpq URL or key=value connection string (the CLI's --database-url); DB_SECRET_ID wins
        /// when both are set.
        DATABASE_URL: text(""), Both;
        /// secret: credentials from DB_SECRET_ID (or DATABASE_URL); iam: an RDS IAM token for
        /// DB_USER, signed for each connection.
        DB_AUTH: choice(&["secret", "iam"], "secret"), Both;
        /// Name or ARN of the Secrets Manager secret holding the connection (RDS's own secret
        /// format or a URL).
        DB_SECRET_ID: text(""), Both;
        /// Database host, for a secret without one; required with DB_AUTH=iam.
        DB_HOST: text(""), Both;
        /// Database port, for a secret without one, or with DB_AUTH=iam.
        DB_PORT: number(1..=65_535, 5_432, Plain), Both;
        /// Database name, for a secret without one; required with DB_AUTH=iam.
        DB_NAME: text(""), Both;
        /// The role to log in as with DB_AUTH=iam (granted rds_iam).
        DB_USER: text(""), Both;
        /// TLS to the database: require (chain and host name verified; verify-full is the same) or
        /// disable, on a network you trust.
        DB_SSLMODE: choice(&["require", "verify-full", "disable"], "require"), Both;
        /// The database's AWS region, when its host name is not an RDS endpoint that says it: the
        /// RDS IAM token is signed for it, and its RDS CAs are trusted; unset: AWS_REGION.
        DB_REGION: text(""), Both;
        /// How long fetched credentials are reused (a rotated password is fetched again at once).
        SECRET_CACHE_TTL_SECONDS: number(0..=86_400, 900, Seconds), Both;
        /// Path of a PEM file of CAs to trust besides the system store and the built-in Amazon RDS
        /// CAs.
        DB_CA_BUNDLE: text(""), Both;
        /// Name or ARN of a Secrets Manager secret holding PEM CAs to trust as well, read at start:
        /// a CA the built-in set lacks, without a rebuild.
        DB_CA_SECRET_ID: text(""), Both;
        /// Which built-in Amazon RDS CAs to trust: all, or regions separated by commas; unset: the
        /// database's and the function's region.
        DB_RDS_CA_REGIONS: text(""), Both;
        /// The AWS region of the SDK's clients (Lambda sets it); with AWS_DEFAULT_REGION, the
        /// default of DB_RDS_CA_REGIONS.
        AWS_REGION: text(""), Both;
    }

    // Events, metrics, logs, the Lambda function.
    /// Where expiry events go.
    #[derive(Debug, Clone, PartialEq, Eq)]
    pub struct EventsConfig {
        /// EventBridge bus (name or ARN) the events go to (expiry, Stock Released); unset: none
        /// are published, and the Stock Released events go to the log.
        EVENT_BUS_NAME: text(""), Both
            => bus_name: Option<String>;
        /// Lead time of the Order Expiring Soon events: each run publishes one per pending order
        /// whose earliest active reservation falls due within this plus RUN_INTERVAL_SECONDS; 0:
        /// none.
        EXPIRY_WARNING_SECONDS: number(0..=86_400, 0, Seconds), Both
            => warning_lead: Option<Duration>;
        /// Time between two scheduled runs (the template sets it): how far beyond their lead time
        /// the expiry warnings look, so that none falls between two runs; and a scheduled run
        /// (source `schedule`) starts no batch past it, leaving the rest to the next run.
        RUN_INTERVAL_SECONDS: number(60..=86_400, 300, Seconds), Both
            => run_interval: Duration;
    }

    /// The CloudWatch namespace and service dimension of the metrics.
    #[derive(Debug, Clone, PartialEq, Eq)]
    pub struct MetricsConfig {
        /// CloudWatch namespace of the metrics (1 to 255 of A-Z a-z 0-9 . _ - / # :, not starting
        /// with : or AWS/).
        POWERTOOLS_METRICS_NAMESPACE: text("Unreserver"), Lambda
            => namespace: String;
        /// Value of the metrics' service dimension (1 to 250 of A-Z a-z 0-9 . _ - / # :).
        POWERTOOLS_SERVICE_NAME: text("unreserver"), Lambda
            => service: String;
    }

    /// What only the Lambda front-end uses.
    #[derive(Debug, Clone, PartialEq, Eq)]
    pub struct LambdaConfig {
        /// Time kept free before the invocation's deadline (at most a third of the time left).
        DEADLINE_MARGIN_MS: number(500..=60_000, 5_000, Ms), Lambda
            => deadline_margin: Duration;
        /// 1: fetch the database credentials during the function's init; 0: at the first
        /// invocation.
        PREFETCH_CREDENTIALS: number(0..=1, 1, Plain), Lambda
            => prefetch_credentials: bool;
        /// 1: this function is the shop's door — it takes only the synchronous calls of the
        /// shop's webhooks (`release`, `revive`) and refuses any other action by name; 0: every
        /// payload action.
        SHOP_DOOR: number(0..=1, 0, Plain), Lambda
            => shop_door: bool;
    }

    // Prometheus off AWS: read by `telemetry::push` for `unreserver run` (a follower serves its
    // metrics with `--listen` instead).
    read_where_used {
        /// Pushgateway base URL (http://host:9091) `unreserver run` and `reconcile` push their
        /// metrics to (job "unreserver", action "run" or "reconcile"); unset: none.
        PUSHGATEWAY_URL: text(""), Cli;
        /// File `unreserver run` writes its metrics to for node_exporter's textfile collector (a
        /// name ending in .prom; a reconcile's gets -reconcile before the extension), written
        /// whole, then renamed; unset: none.
        TEXTFILE_PATH: text(""), Cli;
    }

    // The logs: read by `telemetry`, where Lambda's own log settings win.
    read_where_used {
        /// Log filter (tracing's EnvFilter); Lambda's AWS_LAMBDA_LOG_LEVEL wins when set.
        RUST_LOG: text("info"), Both;
        /// Log lines as JSON or text (default: JSON in Lambda, text on the command line); Lambda's
        /// AWS_LAMBDA_LOG_FORMAT wins when set.
        LOG_FORMAT: choice(&["json", "text"], ""), Both;
    }
}

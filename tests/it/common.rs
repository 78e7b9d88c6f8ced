//! Test support: one fresh database per test, cloned from the `unreserver_template` database
//! that `scripts/test.sh` loads with `infra/schema.sql` and `infra/indexes.sql`, on the
//! throwaway PostgreSQL server that script starts; and helpers to seed and inspect it.

use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio_postgres::{Client, Config, NoTls, Row, Transaction};
use unreserver::Database;
use unreserver::ReleaseSettings;
use unreserver::RunOptions;
use unreserver::RunReport;

static COUNTER: AtomicU32 = AtomicU32::new(0);

/// The least-privilege role of `infra/role.sql`, which `scripts/test.sh` grants in the template
/// database: every release in the tests runs as it.
pub const RELEASE_ROLE: &str = "unreserver_test";
pub const RELEASE_PASSWORD: &str = "unreserver-test-password";

/// The admin URL of the test server (a `postgres` superuser over TCP, no TLS).
pub fn admin_url() -> String {
    std::env::var("UNRESERVER_TEST_ADMIN_URL").expect(
        "UNRESERVER_TEST_ADMIN_URL is not set: run the tests with scripts/test.sh, \
         which starts the PostgreSQL server they need",
    )
}

/// The test server's superuser password and port.
pub fn admin_password() -> String {
    let config: Config = admin_url().parse().unwrap();
    String::from_utf8(config.get_password().unwrap().to_vec()).unwrap()
}

pub fn pg_port() -> u16 {
    let config: Config = admin_url().parse().unwrap();
    config.get_ports()[0]
}

/// A required environment variable that `scripts/test.sh` sets.
pub fn test_env(name: &str) -> String {
    std::env::var(name).unwrap_or_else(|_| {
        panic!("{name} is not set: run the tests with scripts/test.sh, which starts what they need")
    })
}

pub async fn connect_url(url: &str) -> Client {
    let (client, connection) = tokio_postgres::connect(url, NoTls)
        .await
        .unwrap_or_else(|e| panic!("cannot connect to the test server: {e}"));
    tokio::spawn(connection);
    client
}

/// A database of its own for one test.
pub struct TestDb {
    pub name: String,
    pub url: String,
    pub client: Client,
}

impl TestDb {
    pub async fn new() -> TestDb {
        TestDb::from_template("unreserver_template").await
    }

    pub async fn from_template(template: &str) -> TestDb {
        let admin = connect_url(&admin_url()).await;
        let name = format!(
            "t_{}_{}_{}",
            std::process::id(),
            COUNTER.fetch_add(1, Ordering::SeqCst),
            fastrand::u32(..)
        );
        admin
            .batch_execute(&format!("CREATE DATABASE {name} TEMPLATE {template}"))
            .await
            .unwrap_or_else(|e| panic!("cannot create database {name}: {e}"));
        let url = admin_url().replacen("/postgres?", &format!("/{name}?"), 1);
        let client = connect_url(&url).await;
        TestDb { name, url, client }
    }

    /// A login role with `password` that may read and write the four tables.
    pub async fn role(&self, password: &str) -> String {
        let role = format!(
            "app_{}_{}",
            std::process::id(),
            COUNTER.fetch_add(1, Ordering::SeqCst)
        );
        self.exec(&format!(
            "CREATE ROLE {role} LOGIN PASSWORD '{password}'; \
             GRANT SELECT, INSERT, UPDATE, DELETE ON ALL TABLES IN SCHEMA public TO {role}"
        ))
        .await;
        role
    }

    pub fn config(&self) -> Config {
        self.url.parse().unwrap()
    }

    /// Connection settings of the least-privilege release role.
    pub fn release_config(&self) -> Config {
        let mut config = self.config();
        config.user(RELEASE_ROLE).password(RELEASE_PASSWORD);
        config
    }

    /// The URL of this database for the least-privilege release role.
    pub fn release_url(&self) -> String {
        self.url.replacen(
            &format!("postgres:{}@", admin_password()),
            &format!("{RELEASE_ROLE}:{RELEASE_PASSWORD}@"),
            1,
        )
    }

    /// Gives this database's sessions a `deadlock_timeout` of 20 s, so that `LOCK_TIMEOUT_MS`
    /// (at most half of it) may be seconds: a test that tells a row kept for a whole poll from
    /// a row kept for one statement polls that long, so that a loaded machine's slow
    /// statements stay far from the bound. Before the release's connection is opened.
    pub async fn allow_long_polls(&self) {
        self.exec(&format!(
            "ALTER DATABASE {} SET deadlock_timeout = '20s'",
            self.name
        ))
        .await;
    }

    /// A checked, prepared connection for the release.
    pub async fn open(&self) -> Database {
        self.open_with(&settings()).await
    }

    pub async fn open_with(&self, settings: &ReleaseSettings) -> Database {
        let tls = unreserver::tls_connector(None, &unreserver::RdsCaRegions::All).unwrap();
        // As the front-ends connect: `application_name` and the connection's timeouts.
        let mut config = self.release_config();
        unreserver::apply_defaults(&mut config);
        Database::open(&config, &tls, settings.lock_timeout_ms)
            .await
            .unwrap_or_else(|e| panic!("cannot open the release connection: {}", e.chain()))
    }

    /// Another plain connection: a shopper's, or an observer's.
    pub async fn connect(&self) -> Client {
        connect_url(&self.url).await
    }

    /// An order row and its reservations as text, to compare before and after.
    pub async fn order_snapshot(&self, order: i64) -> (String, String) {
        let row = self
            .client
            .query_one(
                "SELECT o::text, (SELECT string_agg(r::text, ';' ORDER BY r.id) \
                   FROM orders_inventoryreservation r WHERE r.order_id = o.id) \
                 FROM orders_order o WHERE o.id = $1",
                &[&order],
            )
            .await
            .unwrap();
        (row.get(0), row.get(1))
    }

    pub async fn exec(&self, sql: &str) {
        self.client
            .batch_execute(sql)
            .await
            .unwrap_or_else(|e| panic!("{sql}: {e}"));
    }

    /// Makes every update of a row of `table` take `seconds` (a trigger `slow` running the
    /// function `slow()`, which a test may replace or drop).
    pub async fn slow_updates(&self, table: &str, seconds: f64) {
        self.exec(&format!(
            "CREATE FUNCTION slow() RETURNS trigger LANGUAGE plpgsql SECURITY DEFINER AS $$ \
               BEGIN PERFORM pg_sleep({seconds}); RETURN NEW; END $$; \
             CREATE TRIGGER slow BEFORE UPDATE ON {table} FOR EACH ROW EXECUTE FUNCTION slow()"
        ))
        .await;
    }

    pub async fn i64(&self, sql: &str) -> i64 {
        self.client
            .query_one(sql, &[])
            .await
            .unwrap_or_else(|e| panic!("{sql}: {e}"))
            .get(0)
    }

    pub async fn text(&self, sql: &str) -> String {
        self.client
            .query_one(sql, &[])
            .await
            .unwrap_or_else(|e| panic!("{sql}: {e}"))
            .get(0)
    }

    pub async fn variant(&self, reserved: i32) -> i64 {
        let n = COUNTER.fetch_add(1, Ordering::SeqCst);
        self.client
            .query_one(
                "INSERT INTO products_productvariant (product_id, sku, stock_quantity, reserved_quantity) \
                 VALUES (1, $1, 1000, $2) RETURNING id",
                &[&format!("SKU-{n}"), &reserved],
            )
            .await
            .unwrap()
            .get(0)
    }

    pub async fn drop_product(&self, variant: i64, reserved: i32) -> i64 {
        self.client
            .query_one(
                "INSERT INTO drops_dropproduct (drop_id, product_variant_id, drop_quantity, reserved_quantity) \
                 VALUES (1, $1, 100, $2) RETURNING id",
                &[&variant, &reserved],
            )
            .await
            .unwrap()
            .get(0)
    }

    pub async fn order(&self, status: &str, payment_status: &str) -> i64 {
        let n = COUNTER.fetch_add(1, Ordering::SeqCst);
        self.client
            .query_one(
                "INSERT INTO orders_order (order_number, status, payment_status) VALUES ($1, $2, $3) RETURNING id",
                &[&format!("ORD-{n}-{}", fastrand::u32(..)), &status, &payment_status],
            )
            .await
            .unwrap()
            .get(0)
    }

    /// Inserts a reservation. `expires` is an interval from the database clock ("-1 hour");
    /// None makes a legacy row (NULL `expires_at`). `created` likewise, for `created_at`.
    pub async fn reservation(&self, r: Res) -> i64 {
        self.client
            .query_one(
                "INSERT INTO orders_inventoryreservation \
                 (order_id, product_variant_id, drop_product_id, quantity, status, created_at, expires_at) \
                 VALUES ($1, $2, $3, $4, $5, now() + $6::text::interval, now() + $7::text::interval) \
                 RETURNING id",
                &[&r.order, &r.variant, &r.drop, &r.qty, &r.status, &r.created, &r.expires],
            )
            .await
            .unwrap()
            .get(0)
    }

    /// A variant with `qty` units reserved, a pending order, and its reservation of them, due a
    /// minute ago: (variant, order, reservation).
    pub async fn one_due_order(&self, qty: i32) -> (i64, i64, i64) {
        let v = self.variant(qty).await;
        let order = self.order("pending", "pending").await;
        let r = self
            .reservation(Res::new(Some(order), v, qty, "-1 minute"))
            .await;
        (v, order, r)
    }

    pub async fn reservation_status(&self, id: i64) -> String {
        self.client
            .query_one(
                "SELECT status FROM orders_inventoryreservation WHERE id = $1",
                &[&id],
            )
            .await
            .unwrap()
            .get(0)
    }

    pub async fn order_status(&self, id: i64) -> String {
        self.client
            .query_one("SELECT status FROM orders_order WHERE id = $1", &[&id])
            .await
            .unwrap()
            .get(0)
    }

    pub async fn reserved(&self, variant: i64) -> i32 {
        self.client
            .query_one(
                "SELECT reserved_quantity FROM products_productvariant WHERE id = $1",
                &[&variant],
            )
            .await
            .unwrap()
            .get(0)
    }

    pub async fn drop_reserved(&self, drop: i64) -> i32 {
        self.client
            .query_one(
                "SELECT reserved_quantity FROM drops_dropproduct WHERE id = $1",
                &[&drop],
            )
            .await
            .unwrap()
            .get(0)
    }

    /// A digest of every row of the four tables: equal digests, equal data.
    pub async fn fingerprint(&self) -> String {
        self.text(
            "SELECT COALESCE(md5(string_agg(t, ',' ORDER BY t)), '') FROM ( \
               SELECT row(r.*)::text AS t FROM orders_inventoryreservation r UNION ALL \
               SELECT row(o.*)::text FROM orders_order o UNION ALL \
               SELECT row(v.*)::text FROM products_productvariant v UNION ALL \
               SELECT row(d.*)::text FROM drops_dropproduct d) all_rows",
        )
        .await
    }

    /// Lines of `order` not released with its cancellation: not `expired`, or released at
    /// another instant than the order's `cancelled_at` (the rule that marks an order the
    /// release cancelled, whole).
    pub async fn lines_apart_from_cancellation(&self, order: i64) -> i64 {
        self.i64(&format!(
            "SELECT count(*) FROM orders_inventoryreservation r JOIN orders_order o ON o.id = r.order_id \
             WHERE o.id = {order} AND (r.status <> 'expired' OR r.released_at IS DISTINCT FROM o.cancelled_at)"
        ))
        .await
    }

    /// Variants and drops whose counter differs from the sum of their active reservations.
    pub async fn drifted_counters(&self) -> i64 {
        self.i64(
            "SELECT (SELECT count(*) FROM products_productvariant v WHERE v.reserved_quantity <> \
               COALESCE((SELECT sum(quantity) FROM orders_inventoryreservation r \
                         WHERE r.product_variant_id = v.id AND r.status = 'active'), 0)) + \
             (SELECT count(*) FROM drops_dropproduct d WHERE d.reserved_quantity <> \
               COALESCE((SELECT sum(quantity) FROM orders_inventoryreservation r \
                         WHERE r.drop_product_id = d.id AND r.status = 'active'), 0))",
        )
        .await
    }
}

/// A reservation to insert; see [`TestDb::reservation`].
#[derive(Debug, Clone)]
pub struct Res {
    pub order: Option<i64>,
    pub variant: i64,
    pub drop: Option<i64>,
    pub qty: i32,
    pub status: &'static str,
    pub created: &'static str,
    pub expires: Option<&'static str>,
}

impl Res {
    /// An active reservation of `qty` units of `variant` for `order`, expiring at `expires`.
    pub fn new(order: Option<i64>, variant: i64, qty: i32, expires: &'static str) -> Res {
        Res {
            order,
            variant,
            drop: None,
            qty,
            status: "active",
            created: "-20 minutes",
            expires: Some(expires),
        }
    }
}

/// A transaction of `client` that holds row `id` of `table` (`FOR UPDATE`) until it commits,
/// rolls back or is dropped: a shopper mid-checkout, an import, an admin's open session.
pub async fn hold_row<'c>(client: &'c mut Client, table: &str, id: i64) -> Transaction<'c> {
    let held = client.transaction().await.unwrap();
    held.execute(
        &format!("SELECT 1 FROM {table} WHERE id = $1 FOR UPDATE"),
        &[&id],
    )
    .await
    .unwrap();
    held
}

/// A transaction of `client` that locks order `order` as the shop does when a shopper adds an
/// item or pays (`SELECT ... FOR UPDATE`) with a `lock_timeout` of `timeout`, and what the lock
/// gave: an error when it waited longer.
pub async fn lock_order_as_the_shop<'c>(
    client: &'c mut Client,
    order: i64,
    timeout: &str,
) -> (Transaction<'c>, Result<Vec<Row>, tokio_postgres::Error>) {
    let tx = client.transaction().await.unwrap();
    tx.batch_execute(&format!("SET LOCAL lock_timeout = '{timeout}'"))
        .await
        .unwrap();
    let locked = tx
        .query(
            "SELECT id FROM orders_order WHERE id = $1 FOR UPDATE",
            &[&order],
        )
        .await;
    (tx, locked)
}

/// The backend pid of `client`'s session.
pub async fn backend_pid(client: &Client) -> i32 {
    client
        .query_one("SELECT pg_backend_pid()", &[])
        .await
        .unwrap()
        .get(0)
}

/// Waits (up to 5 s, looking every 2 ms) until `pg_stat_activity` shows the session `pid` in
/// the state `condition` (SQL on that view's columns), and says whether it was seen so.
pub async fn until_seen(watcher: &Client, pid: i32, condition: &str) -> bool {
    let sql =
        format!("SELECT EXISTS (SELECT 1 FROM pg_stat_activity WHERE pid = $1 AND ({condition}))");
    for _ in 0..2500 {
        let seen: bool = watcher.query_one(&sql, &[&pid]).await.unwrap().get(0);
        if seen {
            return true;
        }
        tokio::time::sleep(std::time::Duration::from_millis(2)).await;
    }
    false
}

/// The default settings, without a time budget.
pub fn settings() -> ReleaseSettings {
    ReleaseSettings {
        time_budget: None,
        ..ReleaseSettings::default()
    }
}

pub async fn run(db: &mut Database, settings: &ReleaseSettings, dry_run: bool) -> RunReport {
    let options = RunOptions {
        dry_run,
        deadline: None,
        ..RunOptions::default()
    };
    unreserver::run(db, settings, &options)
        .await
        .unwrap_or_else(|f| panic!("run failed: {}", f.error.chain()))
}

/// Until `stop`, every 5 ms: the longest any shop session of this database was seen waiting
/// for a lock that only release sessions block (they hold it or are queued ahead for it:
/// `pg_blocking_pids` within the release's sessions, found by their `application_name`, so
/// that a session that replaced a cut one counts too) — measured from the first look that saw
/// that wait (`pid`, `waitstart`) blocked by the release alone, so a shopper queued behind a
/// shop transaction and the release counts only from when the shop's lock was gone — in
/// seconds; and how many looks saw such a wait.
pub async fn longest_wait_on_the_release(c: Client, stop: Arc<AtomicBool>) -> (f64, u64) {
    let sql = format!(
        "WITH rel AS (SELECT array_agg(pid) AS pids FROM pg_stat_activity \
           WHERE datname = current_database() AND application_name = '{}') \
         SELECT l.pid, l.waitstart::text AS since \
           FROM pg_locks l, rel \
          WHERE NOT l.granted AND l.waitstart IS NOT NULL AND NOT l.pid = ANY(rel.pids) \
            AND l.pid IN (SELECT pid FROM pg_stat_activity WHERE datname = current_database()) \
            AND cardinality(pg_blocking_pids(l.pid)) > 0 \
            AND pg_blocking_pids(l.pid) <@ rel.pids",
        unreserver::APPLICATION_NAME
    );
    let mut first_seen = std::collections::HashMap::<(i32, String), std::time::Instant>::new();
    let (mut longest, mut seen) = (Duration::ZERO, 0_u64);
    while !stop.load(Ordering::Relaxed) {
        let rows = c.query(&sql, &[]).await.unwrap();
        let now = std::time::Instant::now();
        let waiting: Vec<(i32, String)> = rows.iter().map(|r| (r.get(0), r.get(1))).collect();
        first_seen.retain(|key, _| waiting.contains(key));
        for key in waiting {
            let since = *first_seen.entry(key).or_insert(now);
            longest = longest.max(now - since);
        }
        seen += u64::from(!rows.is_empty());
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    (longest.as_secs_f64(), seen)
}

/// A shopper checking out on the variants `variants` again and again while `running`: each
/// time one transaction updating them with its own `lock_timeout` of `patience`, then 3 ms
/// apart. Ends with how many checkouts were granted, or the first that was not (it waited on
/// something, e.g. the release, longer than `patience`).
pub fn shopper_taking_turns(
    mut c: Client,
    variants: [i64; 2],
    running: Arc<AtomicBool>,
    patience: Duration,
) -> tokio::task::JoinHandle<Result<u32, String>> {
    let [v, v2] = variants;
    let patience = patience.as_millis();
    tokio::spawn(async move {
        let mut granted = 0_u32;
        while running.load(Ordering::Relaxed) {
            let tx = c.transaction().await.unwrap();
            tx.batch_execute(&format!(
                "SET LOCAL lock_timeout = '{patience}ms'; \
                 UPDATE products_productvariant SET reserved_quantity = reserved_quantity \
                  WHERE id IN ({v}, {v2})"
            ))
            .await
            .map_err(|e| format!("a shopper waited: {e}"))?;
            tx.commit().await.unwrap();
            granted += 1;
            tokio::time::sleep(Duration::from_millis(3)).await;
        }
        Ok(granted)
    })
}

/// Until the condition `sql` (a boolean expression) is true on `t`'s database, looking every
/// 5 ms for up to 30 s: whether it became true. What is awaited is a commit, not a time.
pub async fn until_true(t: &TestDb, sql: &str) -> bool {
    for _ in 0..6_000 {
        if t.i64(&format!("SELECT count(*) WHERE ({sql})")).await == 1 {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    false
}

/// Runs a 30 s sleep on `db` and cancels it with its [`Database::canceller`] once `t` sees it
/// running: asserts that the sleep was cancelled, and answers which way the cancel went.
pub async fn cancel_a_sleep(t: &TestDb, db: &Database) -> unreserver::CancelledBy {
    let sleep = "SELECT pg_sleep(30) -- to be cancelled";
    let mut canceller = db.canceller();
    let cancel = async {
        let sleeping = format!(
            "EXISTS (SELECT FROM pg_stat_activity WHERE query = '{sleep}' AND state = 'active')"
        );
        assert!(until_true(t, &sleeping).await, "the statement never ran");
        canceller.cancel().await
    };
    let (slept, by) = tokio::join!(db.client.simple_query(sleep), cancel);
    let err = slept.expect_err("the statement ran to its end");
    assert_eq!(
        err.code(),
        Some(&tokio_postgres::error::SqlState::QUERY_CANCELED),
        "{err}"
    );
    by
}

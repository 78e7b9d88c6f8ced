//! The role's own session defaults (`ALTER ROLE ... SET`, or the database's) never change what
//! the release does: the session pins every setting a statement's meaning depends on.

use unreserver::{Database, ReleaseSettings};

use crate::common::{run, settings, TestDb};

/// A role whose sessions default to `SERIALIZABLE` and read-only transactions, as some shops set
/// role- or database-wide: the release's session is read-write `READ COMMITTED` all the same,
/// and a due order is released (read-only, the old session failed its first batch with "cannot
/// execute UPDATE in a read-only transaction"; serializable, every batch that met a checkout's
/// commit failed with SQLSTATE 40001 until `retries_exhausted`).
#[tokio::test]
async fn a_role_set_to_serializable_and_read_only_still_releases() {
    let t = TestDb::new().await;
    let (variant, order, _) = t.one_due_order(2).await;
    let role = t.role("pinned").await;
    t.exec(&format!(
        "ALTER ROLE {role} SET default_transaction_isolation = 'serializable'; \
         ALTER ROLE {role} SET default_transaction_read_only = on"
    ))
    .await;
    let mut config = t.config();
    config.user(&role).password("pinned");
    unreserver::apply_defaults(&mut config);
    let s = settings();
    let tls = unreserver::tls_connector(None, &unreserver::RdsCaRegions::All).unwrap();
    let mut db = Database::open(&config, &tls, s.lock_timeout_ms)
        .await
        .unwrap_or_else(|e| panic!("cannot open: {}", e.chain()));
    let row = db
        .client
        .query_one(
            "SELECT current_setting('transaction_isolation') AS isolation, \
                    current_setting('transaction_read_only') AS read_only",
            &[],
        )
        .await
        .unwrap();
    let pinned: (String, String) = (row.get("isolation"), row.get("read_only"));
    assert_eq!(pinned, ("read committed".into(), "off".into()));
    let report = run(&mut db, &s, false).await;
    assert_eq!(report.counts.reservations_released, 1, "{report:?}");
    assert_eq!(t.reserved(variant).await, 0);
    assert_eq!(t.order_status(order).await, "cancelled");
}

/// Opens the release's connection as `role` (password `password`), checked and prepared.
async fn open_as(t: &TestDb, role: &str, password: &str) -> Database {
    let mut config = t.config();
    config.user(role).password(password);
    unreserver::apply_defaults(&mut config);
    let tls = unreserver::tls_connector(None, &unreserver::RdsCaRegions::All).unwrap();
    Database::open(&config, &tls, settings().lock_timeout_ms)
        .await
        .unwrap_or_else(|e| panic!("cannot open as {role}: {}", e.chain()))
}

/// A role whose own defaults would change what a batch is: commits that are not durable
/// (`synchronous_commit = off`: a crash could lose a release the shop was already told of),
/// a `statement_timeout`, `lock_timeout` and `idle_in_transaction_session_timeout` far below
/// what a batch needs (the last ends the session between two statements of a batch). The
/// session pins each (the timeouts to the session defaults, `synchronous_commit` to `on`) and
/// a due order is released.
#[tokio::test]
async fn a_role_with_hostile_timeouts_and_lazy_commits_is_pinned_and_releases() {
    let t = TestDb::new().await;
    let (variant, order, _) = t.one_due_order(2).await;
    let role = t.role("hostile").await;
    t.exec(&format!(
        "ALTER ROLE {role} SET synchronous_commit = off; \
         ALTER ROLE {role} SET statement_timeout = '40ms'; \
         ALTER ROLE {role} SET lock_timeout = '1ms'; \
         ALTER ROLE {role} SET idle_in_transaction_session_timeout = '1ms'; \
         ALTER ROLE {role} SET max_parallel_workers_per_gather = 8"
    ))
    .await;
    let mut db = open_as(&t, &role, "hostile").await;
    let row = db
        .client
        .query_one(
            "SELECT current_setting('synchronous_commit') AS sync, \
                    current_setting('statement_timeout') AS statement, \
                    current_setting('lock_timeout') AS lock, \
                    current_setting('idle_in_transaction_session_timeout') AS idle, \
                    current_setting('max_parallel_workers_per_gather') AS parallel",
            &[],
        )
        .await
        .unwrap();
    let pinned: [String; 5] = [
        row.get("sync"),
        row.get("statement"),
        row.get("lock"),
        row.get("idle"),
        row.get("parallel"),
    ];
    assert_eq!(pinned, ["on", "1min", "2s", "10s", "0"].map(String::from));
    let report = run(&mut db, &settings(), false).await;
    assert_eq!(report.counts.reservations_released, 1, "{report:?}");
    assert_eq!(t.reserved(variant).await, 0);
    assert_eq!(t.order_status(order).await, "cancelled");
}

/// A prepared statement run with a new array of ids each batch must be planned for that
/// array: a generic plan compares every row with every id (`= ANY($1)` on a Param is not
/// hashed), and a batch's cost grows with the square of its size. A role set to
/// `force_generic_plan` (as `auto` does by itself after five runs) is pinned to custom plans:
/// after eight batches, the server's count of the session's generic plans is 0.
#[tokio::test]
async fn a_role_that_forces_generic_plans_is_pinned_to_custom_plans() {
    let t = TestDb::new().await;
    for _ in 0..8 {
        t.one_due_order(1).await;
    }
    let role = t.role("generic").await;
    t.exec(&format!(
        "ALTER ROLE {role} SET plan_cache_mode = force_generic_plan"
    ))
    .await;
    let mut db = open_as(&t, &role, "generic").await;
    let one_at_a_time = ReleaseSettings {
        batch_size: Some(1),
        ..settings()
    };
    let report = run(&mut db, &one_at_a_time, false).await;
    assert_eq!(report.counts.reservations_released, 8, "{report:?}");
    assert!(report.batches >= 8, "{report:?}");
    let row = db
        .client
        .query_one(
            "SELECT coalesce(sum(generic_plans), 0)::int8 AS generic, \
                    coalesce(sum(custom_plans), 0)::int8 AS custom \
             FROM pg_prepared_statements \
             WHERE NOT from_sql AND cardinality(parameter_types) > 0",
            &[],
        )
        .await
        .unwrap();
    let (generic, custom): (i64, i64) = (row.get("generic"), row.get("custom"));
    assert_eq!(generic, 0, "generic plans ran ({custom} custom)");
    assert!(custom >= 8 * 3, "custom plans: {custom}");
}

/// The release's bound is half of the SHOP's `deadlock_timeout`: a shop role set to 400 ms
/// (`ALTER ROLE ... SET`) bounds the release even though the server's is 1 s; and a release
/// role set to 20 s for itself cannot widen the bound (its session would read 20 s: the old
/// preflight did, and let a batch keep a shopper waiting 10 s).
#[tokio::test]
async fn the_bound_is_the_lowest_deadlock_timeout_any_role_sets() {
    let t = TestDb::new().await;
    let release = t.role("release").await;
    t.exec(&format!(
        "ALTER ROLE {release} SET deadlock_timeout = '20s'"
    ))
    .await;
    let db = open_as(&t, &release, "release").await;
    assert_eq!(
        db.preflight.deadlock_timeout_ms, 1000,
        "the release role's own 20 s widened the bound"
    );
    let shop = t.role("shop").await;
    t.exec(&format!(
        "ALTER ROLE {shop} IN DATABASE {} SET deadlock_timeout = '400ms'",
        t.name
    ))
    .await;
    let db = open_as(&t, &release, "release").await;
    assert_eq!(db.preflight.deadlock_timeout_ms, 400, "the shop's 400 ms");
    let status = unreserver::status(&db, &settings()).await.unwrap();
    assert_eq!(status.deadlock_timeout_ms, 400);
}

/// A replica's address given where the primary's belongs (a reader endpoint, a failover under
/// way): the connection is refused at once with its own error, `ReadOnlyServer`, naming the
/// cause — before the schema check, and before anything could half-fail on a write. The
/// standby is a real hot standby of the test server (`pg_basebackup -R`, started by
/// `scripts/test.sh`).
#[tokio::test]
async fn a_read_only_standby_is_refused_at_once_by_name() {
    use crate::common::{test_env, RELEASE_PASSWORD, RELEASE_ROLE};
    // The template database and the release role exist on the standby (copied before the
    // tests began).
    let url = format!(
        "postgres://{RELEASE_ROLE}:{RELEASE_PASSWORD}@127.0.0.1:{}/unreserver_template?sslmode=disable",
        test_env("UNRESERVER_TEST_STANDBY_PORT")
    );
    let mut config: tokio_postgres::Config = url.parse().unwrap();
    unreserver::apply_defaults(&mut config);
    let tls = unreserver::tls_connector(None, &unreserver::RdsCaRegions::All).unwrap();
    let error = match Database::open(&config, &tls, settings().lock_timeout_ms).await {
        Ok(_) => panic!("a standby was opened for the release"),
        Err(error) => error,
    };
    assert_eq!(error.kind(), "ReadOnlyServer", "{}", error.chain());
    assert!(!error.is_retryable());
    assert!(error.to_string().contains("primary"), "{error}");
}

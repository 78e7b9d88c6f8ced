//! The release against rows as busy as on the day of a drop: decisions re-checked on the rows
//! locked, a batch that never outlives half of `deadlock_timeout`, and a schema whose time
//! columns the tool cannot interpret refused. (Rows held for a whole run: `concurrency.rs`.)

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use unreserver::{Database, RunOptions};

use crate::common::{
    admin_url, backend_pid, cancel_a_sleep, connect_url, longest_wait_on_the_release, run,
    settings, until_seen, until_true, Res, TestDb, RELEASE_ROLE,
};

/// Waits (up to 5 s) until the release role's session of database `name` polls for a row
/// another transaction holds (it never waits in a lock queue: it probes and rolls back to its
/// savepoint, every few milliseconds).
async fn until_release_polls_for_a_held_row(name: &str) {
    let admin = connect_url(&admin_url()).await;
    for _ in 0..2500 {
        let polling: i64 = admin
            .query_one(
                "SELECT count(*) FROM pg_stat_activity WHERE usename = $1 AND datname = $2 \
                 AND (query LIKE 'ROLLBACK TO SAVEPOINT%' OR query LIKE 'WITH res AS MATERIALIZED%')",
                &[&RELEASE_ROLE, &name],
            )
            .await
            .unwrap()
            .get(0);
        if polling > 0 {
            return;
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    panic!("the release never polled for the held row");
}

/// A shopper extends an order's reservation (back at the checkout) without touching the order
/// row, and commits after the batch claimed the order but before it expires the reservation:
/// the batch decides on the row it locked — the extended one — and releases nothing. The commit
/// comes once the batch is seen polling for the row (so after its claim), and the batch polls
/// for 4 s (`LOCK_TIMEOUT_MS`, which this database's `deadlock_timeout` of 20 s allows): on a
/// loaded machine too the commit lands while it polls, not after it gave the order up.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_extension_committed_after_the_claim_is_respected() {
    let t = TestDb::new().await;
    t.allow_long_polls().await;
    let (v, order, r) = t.one_due_order(1).await;
    let shopper = t.connect().await;
    shopper
        .batch_execute(&format!(
            "BEGIN; UPDATE orders_inventoryreservation \
             SET expires_at = now() + interval '10 minutes' WHERE id = {r}"
        ))
        .await
        .unwrap();
    let mut s = settings();
    s.lock_timeout_ms = 4000;
    let mut db = t.open_with(&s).await;
    let release = async { run(&mut db, &s, false).await };
    let extend = async {
        // The claim saw the old, due version; the batch now polls for the row.
        until_release_polls_for_a_held_row(&t.name).await;
        shopper.batch_execute("COMMIT").await.unwrap();
    };
    let (report, ()) = tokio::join!(release, extend);
    assert_eq!(report.counts.reservations_released, 0, "{report:?}");
    assert_eq!(report.counts.no_longer_due, 1, "{report:?}");
    assert_eq!(t.order_status(order).await, "pending");
    assert_eq!(t.reservation_status(r).await, "active");
    assert_eq!(t.reserved(v).await, 1);
}

/// A batch made slow (a trigger sleeping 3 s, once) while a shopper that holds a variant the
/// batch needs waits on the order the batch claimed — a lock cycle that would close late: the
/// batch is cut at its budget (half of `deadlock_timeout`, told by `SHOP_DEADLOCK_TIMEOUT_MS`:
/// 2 s, a budget of 1 s), rolls back, and is tried again with half the rows; the shopper, who
/// starts waiting once the batch is seen inside the slow statement, waits about the budget and
/// commits. The scenario is asserted first (the shopper did wait on the batch, 500 ms or more);
/// the bound (the budget plus 450 ms for the cancel and the rollback on a loaded CI) fails a
/// doubled budget.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_batch_is_cut_at_its_budget_and_the_shopper_commits() {
    let t = TestDb::new().await;
    let (v, order, _) = t.one_due_order(1).await;
    slow_first_reservation_update(&t).await;
    let shopper = shopper_holding(&t, v).await;
    let mut s = settings();
    s.shop_deadlock_timeout_ms = Some(2000);
    let budget = Duration::from_millis(1000);
    let mut db = t.open_with(&s).await;
    let release_pid = backend_pid(&db.client).await;
    let watcher = t.connect().await;
    let release = async { run(&mut db, &s, false).await };
    let checkout = add_item_once_the_batch_sleeps(&shopper, &watcher, release_pid, (order, v));
    // The torture's watcher of waits on the release, shown here to see this one.
    let stop = Arc::new(AtomicBool::new(false));
    let seen = tokio::spawn(longest_wait_on_the_release(t.connect().await, stop.clone()));
    let (report, (sleeping, waited)) = tokio::join!(release, checkout);
    stop.store(true, Ordering::Relaxed);
    let (longest, _) = seen.await.unwrap();
    eprintln!("the shopper waited {waited:?} on a batch with a budget of {budget:?}");
    assert!(
        (0.5..1.45).contains(&longest),
        "the watcher saw a wait of {longest:.3} s, the shopper waited {waited:?}"
    );
    assert!(sleeping, "the batch was never seen in its slow statement");
    let waited = waited.expect("the shopper's transaction failed");
    assert!(
        waited >= Duration::from_millis(500),
        "the shopper hardly waited on the batch: {waited:?}"
    );
    assert!(
        waited < budget + Duration::from_millis(450),
        "the shopper waited {waited:?}"
    );
    assert!(report.batch_retries >= 1, "{report:?}");
    // The cut batch's session was replaced: a late cancel meant for it reaches nothing.
    assert_ne!(
        backend_pid(&db.client).await,
        release_pid,
        "the run went on in the session of the batch it cut"
    );
    let report2 = run(&mut db, &s, false).await;
    assert_eq!(
        report.counts.reservations_released + report2.counts.reservations_released,
        2,
        "{report:?} {report2:?}"
    );
    assert_eq!(t.drifted_counters().await, 0);
}

/// A shop whose time columns are `timestamp without time zone`: the tool cannot know the
/// shop's zone, so the preflight refuses the schema, naming the column, before any change.
#[tokio::test]
async fn a_timestamp_without_time_zone_column_is_refused() {
    let t = TestDb::new().await;
    t.exec("ALTER TABLE orders_inventoryreservation ALTER COLUMN expires_at TYPE timestamp")
        .await;
    let tls = unreserver::tls_connector(None, &unreserver::RdsCaRegions::All).unwrap();
    let err = match Database::open(&t.release_config(), &tls, 100).await {
        Ok(_) => panic!("a timestamp column was accepted"),
        Err(err) => err,
    };
    assert_eq!(err.kind(), "SchemaMismatch");
    let text = err.to_string();
    assert!(
        text.contains("orders_inventoryreservation.expires_at is timestamp without time zone"),
        "{text}"
    );
    assert!(text.contains("time zone"), "{text}");
}

/// The session is pinned: a role whose defaults are another `TimeZone` (UTC+14) and
/// `DateStyle` (day first) gets the same results — the 30 due rows released through a cursor
/// that crosses several batches (it does not travel as text), the 12 rows due within the next
/// 14 hours left alone, and the released rows' `released_at` the database's now.
#[tokio::test]
async fn the_session_settings_of_the_role_change_nothing() {
    let t = TestDb::new().await;
    t.exec(&format!(
        "ALTER ROLE {RELEASE_ROLE} IN DATABASE {} SET TimeZone = 'Pacific/Kiritimati'; \
         ALTER ROLE {RELEASE_ROLE} IN DATABASE {} SET DateStyle = 'SQL, DMY'",
        t.name, t.name
    ))
    .await;
    let v = t.variant(30).await;
    for i in 0..30 {
        let order = t.order("pending", "pending").await;
        let expires: &'static str = Box::leak(format!("-{} seconds", 10 + i).into_boxed_str());
        t.reservation(Res::new(Some(order), v, 1, expires)).await;
    }
    let later = t.variant(12).await;
    for hours in 1..=12 {
        let order = t.order("pending", "pending").await;
        let expires: &'static str = Box::leak(format!("{hours} hours").into_boxed_str());
        t.reservation(Res::new(Some(order), later, 1, expires))
            .await;
    }
    let mut s = settings();
    s.batch_size = Some(7);
    let mut db = t.open_with(&s).await;
    let row = db
        .client
        .query_one(
            "SELECT current_setting('TimeZone'), current_setting('DateStyle')",
            &[],
        )
        .await
        .unwrap();
    let (timezone, datestyle): (String, String) = (row.get(0), row.get(1));
    assert_eq!((timezone.as_str(), datestyle.as_str()), ("UTC", "ISO, YMD"));
    let report = unreserver::run(&mut db, &s, &RunOptions::default())
        .await
        .unwrap();
    assert!(report.batches >= 5, "{report:?}");
    assert_eq!(report.counts.reservations_released, 30);
    assert_eq!((t.reserved(v).await, t.reserved(later).await), (0, 12));
    assert_eq!(
        t.i64(
            "SELECT count(*) FROM orders_inventoryreservation WHERE status = 'expired' \
               AND released_at NOT BETWEEN now() - interval '1 minute' AND now()"
        )
        .await,
        0,
        "released_at is not the database's now"
    );
}

/// The mechanism: a cancel request meant for a session that was replaced reaches nothing — a
/// statement on the new session goes on. (Without the new session, the same cancel would stop
/// it: checked first, on the old one.) Nothing is timed: the new session's statement waits on
/// an advisory lock the test holds, the late request is sent once it waits and returns once the
/// server has processed it, the statement is seen still waiting after that, and only then is
/// the lock let go.
#[tokio::test]
async fn a_late_cancel_cannot_reach_the_session_that_replaced_its_own() {
    let t = TestDb::new().await;
    let mut db = t.open().await;
    // The cancel reaches the session it was made for.
    let by = cancel_a_sleep(&t, &db).await;
    assert!(by.sent_the_request(), "{by:?}");
    // Made before the session is replaced, it reaches nothing after.
    let mut canceller = db.canceller();
    db.reconnect().await.unwrap();
    let holder = t.connect().await;
    holder
        .execute("SELECT pg_advisory_lock(4242)", &[])
        .await
        .unwrap();
    let waiting = format!(
        "EXISTS (SELECT FROM pg_stat_activity WHERE usename = '{RELEASE_ROLE}' \
           AND datname = current_database() AND wait_event_type = 'Lock')"
    );
    let late = async {
        assert!(
            until_true(&t, &waiting).await,
            "the new session never waited"
        );
        let by = canceller.cancel().await;
        holder.execute("SELECT 1", &[]).await.unwrap();
        assert_eq!(
            t.i64(&format!("SELECT count(*) WHERE {waiting}")).await,
            1,
            "the new session stopped waiting after the late cancel ({by:?})"
        );
        holder
            .execute("SELECT pg_advisory_unlock(4242)", &[])
            .await
            .unwrap();
    };
    let (statement, ()) = tokio::join!(
        db.client
            .simple_query("SET lock_timeout = 0; SELECT pg_advisory_lock(4242)"),
        late
    );
    statement.expect("the cancel of the replaced session stopped the new one");
}

/// The cancel request of a cut batch reaches its statement and is answered over TCP and over
/// the server's Unix socket alike (sent on a connection of its own, to where the session went).
#[tokio::test]
async fn a_cancel_request_is_answered_over_tcp_and_over_the_unix_socket() {
    let t = TestDb::new().await;
    let tcp = t.open().await;
    let by = cancel_a_sleep(&t, &tcp).await;
    assert!(by.sent_the_request(), "TCP: {by:?}");
    let mut config = tokio_postgres::Config::new();
    config
        .host_path(crate::common::test_env("UNRESERVER_TEST_SOCKET_DIR"))
        .port(crate::common::pg_port())
        .user(RELEASE_ROLE)
        .dbname(&t.name)
        .ssl_mode(tokio_postgres::config::SslMode::Disable);
    unreserver::apply_defaults(&mut config);
    let tls = unreserver::tls_connector(None, &unreserver::RdsCaRegions::All).unwrap();
    let socket = Database::open(&config, &tls, settings().lock_timeout_ms)
        .await
        .unwrap_or_else(|e| panic!("{}", e.chain()));
    let over_the_socket: bool = socket
        .client
        .query_one("SELECT inet_server_addr() IS NULL", &[])
        .await
        .unwrap()
        .get(0);
    assert!(over_the_socket, "the session did not come over the socket");
    let by = cancel_a_sleep(&t, &socket).await;
    assert!(by.sent_the_request(), "Unix socket: {by:?}");
}

/// Behind a proxy that drops cancel requests, a batch cut by its budget still stops at once:
/// the release cancels it through SQL (`pg_cancel_backend` from a session of its own), so its
/// slow statement never gets past its sleep — a sequence the trigger advances after the sleep
/// is never called, which the database tells whatever the machine's load — and the shopper
/// waiting on it commits then, not at the end of the batch's 3 s statement. The scenario is
/// asserted: the proxy dropped the cancel requests. Without the fallback the statement ran to
/// its end and the shopper waited the whole 3 s.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cut_batch_stops_even_when_the_cancel_request_is_dropped() {
    let t = TestDb::new().await;
    let (v, order, _) = t.one_due_order(1).await;
    slow_first_reservation_update(&t).await;
    let proxy = crate::proxy::Proxy::start(crate::proxy::Behaviour::DropCancels).await;
    let config = proxy.release_config(&t, "127.0.0.1", tokio_postgres::config::SslMode::Disable);
    let mut s = settings();
    s.shop_deadlock_timeout_ms = Some(2000);
    let tls = unreserver::tls_connector(None, &unreserver::RdsCaRegions::All).unwrap();
    let mut db = Database::open(&config, &tls, s.lock_timeout_ms)
        .await
        .unwrap();
    let release_pid = backend_pid(&db.client).await;
    let shopper = shopper_holding(&t, v).await;
    let watcher = t.connect().await;
    let release = async { run(&mut db, &s, false).await };
    let checkout = add_item_once_the_batch_sleeps(&shopper, &watcher, release_pid, (order, v));
    let (report, (sleeping, waited)) = tokio::join!(release, checkout);
    assert!(sleeping, "the batch was never seen in its slow statement");
    assert!(
        proxy.cancels_in_the_clear() > 0,
        "no cancel request went through the proxy"
    );
    let waited = waited.expect("the shopper's transaction failed");
    assert_eq!(
        t.text("SELECT is_called::text FROM slow_finished").await,
        "false",
        "the shopper waited {waited:?}: the cut batch ran on"
    );
    assert!(report.batch_retries >= 1, "{report:?}");
    assert_eq!(t.drifted_counters().await, 0);
}

/// Makes the first update of a reservation take 3 s (a trigger sleeping once), after which it
/// advances the sequence `slow_finished` (sequences are not transactional: the statement
/// rolled back, the sequence says whether the sleep ran to its end).
async fn slow_first_reservation_update(t: &TestDb) {
    t.exec(
        "CREATE SEQUENCE slow_tries; CREATE SEQUENCE slow_finished; \
         CREATE FUNCTION slow_once() RETURNS trigger LANGUAGE plpgsql SECURITY DEFINER AS $$ \
           BEGIN IF nextval('slow_tries') = 1 THEN \
             PERFORM pg_sleep(3); PERFORM nextval('slow_finished'); \
           END IF; RETURN NEW; END $$; \
         CREATE TRIGGER slow_once BEFORE UPDATE ON orders_inventoryreservation \
           FOR EACH ROW EXECUTE FUNCTION slow_once()",
    )
    .await;
}

/// A shopper's session in a checkout that holds variant `v`.
async fn shopper_holding(t: &TestDb, v: i64) -> tokio_postgres::Client {
    let shopper = t.connect().await;
    shopper
        .batch_execute(&format!(
            "BEGIN; UPDATE products_productvariant SET reserved_quantity = reserved_quantity + 1 \
             WHERE id = {v}"
        ))
        .await
        .unwrap();
    shopper
}

/// Once the batch (`release_pid`) is seen inside its slow statement, holding the order, the
/// shopper adds an item of variant `v` to that order — the foreign-key check waits on the
/// batch — and commits: whether the batch was seen sleeping, and how long the insert took.
async fn add_item_once_the_batch_sleeps(
    shopper: &tokio_postgres::Client,
    watcher: &tokio_postgres::Client,
    release_pid: i32,
    (order, v): (i64, i64),
) -> (bool, Result<Duration, tokio_postgres::Error>) {
    let sleeping = until_seen(watcher, release_pid, "wait_event = 'PgSleep'").await;
    let started = Instant::now();
    let inserted = shopper
        .batch_execute(&format!(
            "INSERT INTO orders_inventoryreservation (order_id, product_variant_id, quantity, expires_at) \
             VALUES ({order}, {v}, 1, now() + interval '15 minutes'); COMMIT"
        ))
        .await
        .map(|()| started.elapsed());
    (sleeping, inserted)
}

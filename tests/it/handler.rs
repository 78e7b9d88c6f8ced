//! The Lambda handler driven in-process through the test app (`handle` on the `AppState` its
//! environment builds), against a test database: the status action, the deadline margin, and
//! the `errorType` each failure reaches Lambda with. (The end-to-end path under `cargo lambda` is in `lambda.rs`.)

use std::time::{Duration, SystemTime};

use serde_json::{json, Value};

use crate::app::{Front, TestApp};
use crate::common::{pg_port, TestDb, RELEASE_PASSWORD, RELEASE_ROLE};

/// The `errorType` of a failed invocation.
async fn error_type(front: &Front, payload: Value) -> String {
    match front.lambda(payload).await {
        Ok(value) => panic!("expected an error, got {value}"),
        Err(error) => error.error_type().to_string(),
    }
}

async fn one_due_reservation(t: &TestDb) {
    t.one_due_order(1).await;
}

#[tokio::test]
async fn the_status_action_reads_the_backlog() {
    let t = TestApp::spawn().await;
    one_due_reservation(&t).await;
    let status = t.lambda(json!({"action": "status"})).await.unwrap();
    assert_eq!(status["due_reservations"], 1);
    assert_eq!(status["missing_indexes"], json!([]));
    assert!(status.get("reservations_released").is_none(), "{status}");
}

#[tokio::test]
async fn no_batch_starts_inside_the_deadline_margin() {
    let t = TestApp::spawn().await;
    one_due_reservation(&t).await;
    // 300 ms left: less the margin (capped at a third), too little for one batch.
    let report = t
        .lambda_within(json!({"source": "schedule"}), 300)
        .await
        .unwrap();
    assert_eq!(report["stopped_reason"], "time_budget", "{report}");
    assert_eq!(report["reservations_released"], 0);
    assert_eq!(report["backlog_remaining"], 1);
    // A minute left: the run drains.
    let report = t.lambda(json!({"source": "schedule"})).await.unwrap();
    assert_eq!(report["stopped_reason"], "drained", "{report}");
    assert_eq!(report["reservations_released"], 1);
    assert!(uuid::Uuid::parse_str(report["run_id"].as_str().unwrap()).is_ok());
}

#[tokio::test]
async fn each_failure_reaches_lambda_with_its_error_type() {
    let t = TestApp::spawn().await;
    let good = t.front();
    assert_eq!(
        error_type(good, json!({"batch_size": "x"})).await,
        "InvalidPayload"
    );
    assert_eq!(
        error_type(good, json!({"action": "dance"})).await,
        "InvalidPayload"
    );
    // A setting the server makes wrong: LOCK_TIMEOUT_MS above half its deadlock_timeout (1 s).
    let unsafe_wait = t.with("LOCK_TIMEOUT_MS", "600");
    assert_eq!(error_type(&unsafe_wait, json!({})).await, "InvalidSetting");
    assert_eq!(
        error_type(&unsafe_wait, json!({"action": "release", "order_id": 1})).await,
        "InvalidSetting"
    );

    let port = pg_port();
    let closed = t.with(
        "DATABASE_URL",
        format!("postgres://u:p@127.0.0.1:1/{}?sslmode=disable", t.name),
    );
    assert_eq!(error_type(&closed, json!({})).await, "DatabaseUnreachable");

    let wrong = format!(
        "postgres://{RELEASE_ROLE}:wrong@127.0.0.1:{port}/{}?sslmode=disable",
        t.name
    );
    let wrong = t.with("DATABASE_URL", wrong);
    assert_eq!(
        error_type(&wrong, json!({})).await,
        "DatabaseAuthentication"
    );

    // TLS required (the default) against the test server, whose CA is not trusted here.
    let untrusted = format!(
        "postgres://{RELEASE_ROLE}:{RELEASE_PASSWORD}@localhost:{port}/{}",
        t.name
    );
    let untrusted = t
        .with("DATABASE_URL", untrusted)
        .with("DB_SSLMODE", "require");
    assert_eq!(error_type(&untrusted, json!({})).await, "TlsVerification");

    t.exec("ALTER TABLE orders_order DROP COLUMN cancelled_at")
        .await;
    assert_eq!(
        error_type(good, json!({"action": "status"})).await,
        "SchemaMismatch"
    );
    assert_eq!(
        error_type(good, json!({"dry_run": true})).await,
        "SchemaMismatch"
    );
}

/// The role's `CONNECTION LIMIT` reached (SQLSTATE 53300): its own error type, one a caller
/// retries (the shop's webhook retries it with back-off, `examples/door-webhook.py`), not
/// `DatabaseUnreachable`.
#[tokio::test]
async fn a_connection_refused_for_want_of_room_is_its_own_retryable_error() {
    let t = TestApp::spawn().await;
    let role = t.role("full").await;
    t.exec(&format!("ALTER ROLE {role} CONNECTION LIMIT 0"))
        .await;
    let url = format!(
        "postgres://{role}:full@127.0.0.1:{}/{}?sslmode=disable",
        pg_port(),
        t.name
    );
    let full = t.with("DATABASE_URL", url.clone());
    for payload in [json!({"action": "release", "order_id": 1}), json!({})] {
        assert_eq!(error_type(&full, payload).await, "TooManyConnections");
    }
    let mut config = unreserver::config_from_url("DATABASE_URL", &url).unwrap();
    config.connect_timeout(Duration::from_secs(5));
    let tls = unreserver::tls_connector(None, &unreserver::RdsCaRegions::All).unwrap();
    let err = match unreserver::Database::open(&config, &tls, 100).await {
        Ok(_) => panic!("a role allowed no connection connected"),
        Err(err) => err,
    };
    assert_eq!(err.kind(), "TooManyConnections");
    assert!(err.is_retryable(), "{}", err.chain());
    assert!(err.to_string().contains("CONNECTION LIMIT"), "{err}");
}

/// A burst of the shop's calls to the door against a role whose `CONNECTION LIMIT` is 3 (the
/// stack's `RoleConnectionLimit`, small): never more than three of the role's sessions at
/// once — a call beyond them fails `TooManyConnections`, retryable, at once — and a shopper
/// checking out meanwhile on connections of its own never fails. Each call meets an order a
/// shopper is paying for (its row locked), so it keeps its connection through its retries
/// until `LockBusy`.
#[tokio::test]
async fn a_burst_of_shop_calls_never_holds_more_connections_than_the_role_limit() {
    let t = TestApp::spawn().await;
    let role = t.role("burst").await;
    t.exec(&format!("ALTER ROLE {role} CONNECTION LIMIT 3"))
        .await;
    let url = format!(
        "postgres://{role}:burst@127.0.0.1:{}/{}?sslmode=disable",
        pg_port(),
        t.name
    );
    let door = t.with("DATABASE_URL", url).with("SHOP_DOOR", "1");
    let mut orders = Vec::new();
    for _ in 0..10 {
        orders.push(t.one_due_order(1).await.1.to_string());
    }
    let (spare_variant, _, _) = t.one_due_order(1).await;
    // Shoppers paying for the ten orders: their rows locked until the burst is over.
    let paying = crate::common::connect_url(&t.url).await;
    paying
        .batch_execute(&format!(
            "BEGIN; SELECT id FROM orders_order WHERE id IN ({}) FOR UPDATE",
            orders.join(", ")
        ))
        .await
        .unwrap();
    let busy = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(true));
    let still = |busy: &std::sync::Arc<std::sync::atomic::AtomicBool>| {
        busy.load(std::sync::atomic::Ordering::Relaxed)
    };
    // A shopper checking out on a connection of its own each time: (done, failed).
    let shopper = {
        let (busy, url) = (busy.clone(), t.url.clone());
        tokio::spawn(async move {
            let (mut done, mut failed) = (0, 0);
            while still(&busy) {
                let (client, connection) =
                    match tokio_postgres::connect(&url, tokio_postgres::NoTls).await {
                        Ok(pair) => pair,
                        Err(_) => {
                            failed += 1;
                            continue;
                        }
                    };
                tokio::spawn(connection);
                let checkout = format!(
                    "UPDATE products_productvariant SET reserved_quantity = reserved_quantity \
                     WHERE id = {spare_variant}"
                );
                match client.batch_execute(&checkout).await {
                    Ok(()) => done += 1,
                    Err(_) => failed += 1,
                }
            }
            (done, failed)
        })
    };
    // The most sessions of the role at once, watched until the burst is answered.
    let watcher = {
        let (busy, url) = (busy.clone(), t.url.clone());
        let sql = format!("SELECT count(*) FROM pg_stat_activity WHERE usename = '{role}'");
        tokio::spawn(async move {
            let client = crate::common::connect_url(&url).await;
            let mut most = 0;
            while still(&busy) {
                let n: i64 = client.query_one(&sql, &[]).await.unwrap().get(0);
                most = most.max(n);
            }
            most
        })
    };
    let calls = orders.iter().map(|order| {
        let (door, order) = (door.clone(), order.parse::<i64>().unwrap());
        tokio::spawn(async move {
            door.lambda(json!({"action": "release", "order_id": order}))
                .await
        })
    });
    let answers = futures_util::future::join_all(calls).await;
    busy.store(false, std::sync::atomic::Ordering::Relaxed);
    paying.batch_execute("ROLLBACK").await.unwrap();
    let mut kinds = std::collections::BTreeMap::new();
    for answer in answers {
        let error = answer
            .unwrap()
            .expect_err("an order a shopper holds was released");
        assert!(error.retryable, "{error:?}");
        *kinds.entry(error.error_type().to_string()).or_insert(0) += 1;
    }
    let refused = kinds.get("TooManyConnections").copied().unwrap_or(0);
    let busy_answers = kinds.get("LockBusy").copied().unwrap_or(0);
    assert_eq!(refused + busy_answers, 10, "{kinds:?}");
    assert!(refused >= 1 && busy_answers >= 1, "{kinds:?}");
    let most = watcher.await.unwrap();
    assert!(
        (1..=3).contains(&most),
        "{most} sessions of the role at once"
    );
    let (done, failed) = shopper.await.unwrap();
    assert_eq!(failed, 0, "a shopper's checkout failed");
    assert!(done > 0);
}

#[tokio::test]
async fn a_bad_ca_bundle_fails_the_init_naming_it() {
    let front = Front::new()
        .with("DATABASE_URL", "postgres://u:p@localhost/db")
        .with("DB_CA_BUNDLE", "/nonexistent/ca.pem");
    let err = match front.lambda_init().await {
        Ok(_) => panic!("a missing CA bundle was accepted"),
        Err(err) => err,
    };
    assert_eq!(err.kind(), "TlsSetup");
    assert!(err.to_string().contains("/nonexistent/ca.pem"), "{err}");
}

#[tokio::test]
async fn the_revive_and_report_actions_answer_the_cli_json() {
    let t = TestApp::spawn().await;
    let (v, order, _) = t.one_due_order(2).await;
    let run = t.lambda(json!({})).await.unwrap();
    assert_eq!(run["orders_cancelled"], 1);
    let p95 = run["release_delay_p95_seconds"].as_f64().unwrap();
    assert!((55.0..120.0).contains(&p95), "{run}");
    assert_eq!(run["paid_after_release"], 0);

    let revived = t
        .lambda(json!({"action": "revive", "order_id": order}))
        .await
        .unwrap();
    assert_eq!(
        revived,
        json!({"order_id": order, "revived": true, "reason": "revived", "short": []})
    );
    assert_eq!(t.reserved(v).await, 2);
    // A retry of a done revive is an answer (`already_active`); not revivable is one too.
    let again = t
        .lambda(json!({"action": "revive", "order_id": order}))
        .await
        .unwrap();
    assert_eq!(again["reason"], "already_active");
    assert_eq!(t.reserved(v).await, 2);

    let report = t.lambda(json!({"action": "report"})).await.unwrap();
    assert_eq!(report["days"].as_array().unwrap().len(), 7);
    assert_eq!(
        error_type(t.front(), json!({"action": "revive"})).await,
        "InvalidPayload"
    );
}

/// More failures, each from a real cause in the database, reach Lambda with their own
/// `errorType`: a table a migration holds (`TableLocked`), a statement slower than
/// `STATEMENT_TIMEOUT_MS` (`TooSlow`), a database error the release cannot help (a trigger that
/// raises: `DatabaseError`), and a revive whose row a shopper holds (`LockBusy`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_database_failure_reaches_lambda_with_its_error_type() {
    let t = TestApp::spawn().await;
    let (v, order, _) = t.one_due_order(1).await;
    let good = t.front();

    let holder = t.connect().await;
    holder
        .batch_execute("BEGIN; LOCK TABLE orders_inventoryreservation IN ACCESS EXCLUSIVE MODE")
        .await
        .unwrap();
    assert_eq!(error_type(good, json!({})).await, "TableLocked");
    holder.batch_execute("ROLLBACK").await.unwrap();

    t.slow_updates("orders_inventoryreservation", 1.0).await;
    let slow = t
        .with("STATEMENT_TIMEOUT_MS", "300")
        .with("LOCK_TIMEOUT_MS", "50");
    assert_eq!(error_type(&slow, json!({})).await, "TooSlow");

    t.exec(
        "CREATE OR REPLACE FUNCTION slow() RETURNS trigger LANGUAGE plpgsql \
           SECURITY DEFINER AS $$ BEGIN RAISE EXCEPTION 'the shop refuses'; END $$",
    )
    .await;
    assert_eq!(error_type(good, json!({})).await, "DatabaseError");
    t.exec("DROP TRIGGER slow ON orders_inventoryreservation")
        .await;

    let report = good.lambda(json!({})).await.unwrap();
    assert_eq!(report["reservations_released"], 1, "{report}");
    let shopper = t.connect().await;
    shopper
        .batch_execute(&format!(
            "BEGIN; SELECT 1 FROM products_productvariant WHERE id = {v} FOR UPDATE"
        ))
        .await
        .unwrap();
    assert_eq!(
        error_type(good, json!({"action": "revive", "order_id": order})).await,
        "LockBusy"
    );
    shopper.batch_execute("ROLLBACK").await.unwrap();
}

/// Waits (up to 5 s, looking every 2 ms) until the follow on database `name` (the first
/// front-door session started after `since`) has looked for the next due row after its first
/// pass: a look seen after a statement of a pass, or after an earlier look. Its first pass is
/// over then.
async fn until_the_first_pass_is_over(
    watcher: &tokio_postgres::Client,
    name: &str,
    since: SystemTime,
) -> bool {
    // Known by the start of its text (`pg_stat_activity` keeps only the first kilobyte).
    let sql = "SELECT starts_with(query, $4) AS looking, query_start FROM pg_stat_activity \
               WHERE datname = $1 AND application_name = $2 AND backend_start > $3 \
               AND query_start IS NOT NULL ORDER BY backend_start LIMIT 1";
    let next_due = unreserver::db::sql::follow::NEXT_DUE;
    let look = next_due.get(..100).unwrap_or(next_due);
    let (mut first_look, mut passing) = (None::<SystemTime>, false);
    for _ in 0..2500 {
        let rows = watcher
            .query(sql, &[&name, &unreserver::APPLICATION_NAME, &since, &look])
            .await
            .unwrap();
        if let Some(row) = rows.first() {
            let (looking, started): (bool, SystemTime) = (row.get(0), row.get(1));
            match (looking, first_look) {
                (true, Some(first)) if passing || started > first => return true,
                (true, None) => first_look = Some(started),
                (false, Some(_)) => passing = true,
                _ => {}
            }
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    false
}

/// The Lambda's `release` action answers as the CLI does; its `follow` action follows for its
/// seconds, releasing what falls due meanwhile, but never past the invocation's deadline less
/// the margin.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_follow_and_release_actions_answer_in_lambda() {
    let t = TestApp::spawn().await;
    let v = t.variant(2).await;
    let asked = t.order("pending", "pending").await;
    t.reservation(crate::common::Res::new(Some(asked), v, 1, "10 minutes"))
        .await;
    let released = t
        .lambda(json!({"action": "release", "order_id": asked}))
        .await
        .unwrap();
    assert_eq!(released["reason"], "released", "{released}");
    assert_eq!(released["reservations_released"], 1);

    // Due in an hour when the follow starts; once its first pass is seen over, brought forward
    // to fall due 200 ms later, while it sleeps: the follow must wake for it, whatever the
    // machine's load made of its start (a row already due at the first pass would be released
    // by it, and the follow would never have to wake).
    let falling = t.order("pending", "pending").await;
    let line = t
        .reservation(crate::common::Res::new(Some(falling), v, 1, "1 hour"))
        .await;
    let (front, since) = (t.front().clone(), SystemTime::now());
    let following = tokio::spawn(async move {
        front
            .lambda(json!({"action": "follow", "seconds": 3}))
            .await
    });
    let watcher = t.connect().await;
    assert!(
        until_the_first_pass_is_over(&watcher, &t.name, since).await,
        "the follow never looked again after its first pass"
    );
    t.exec(&format!(
        "UPDATE orders_inventoryreservation \
         SET expires_at = now() + interval '200 milliseconds' WHERE id = {line}"
    ))
    .await;
    let followed = following.await.unwrap().unwrap();
    assert_eq!(followed["reservations_released"], 1, "{followed}");
    assert_eq!(followed["follow"]["ended"], "time");
    assert!(
        followed["follow"]["passes"].as_u64().unwrap() >= 2,
        "{followed}"
    );
    let ms = followed["duration_ms"].as_u64().unwrap();
    assert!((3000..4500).contains(&ms), "followed its 3 s: {ms} ms");
    assert_eq!(t.reserved(v).await, 0);

    // 1.5 s to the deadline, a margin of a third of it: it stops after about 1 s.
    let cut = t
        .lambda_within(json!({"action": "follow", "seconds": 60}), 1_500)
        .await
        .unwrap();
    let ms = cut["duration_ms"].as_u64().unwrap();
    assert!(
        ms < 1_400,
        "never past the deadline less the margin: {ms} ms"
    );
}

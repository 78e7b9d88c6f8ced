//! Behind Debian's PgBouncer 1.18 (started by `scripts/test.sh`): in session mode every command
//! works (the session settings are SET after connecting, not sent as the `options` startup
//! parameter PgBouncer refuses); in transaction mode, the pool handing out its server
//! connections in turn as a busy pool does, the command is refused before it changes anything, with an error that names transaction
//! pooling (a quiet pool may hand one client the same server connection throughout: then the
//! command works, and its session settings stay on that connection — docs/operations.md says
//! to use session mode); a startup parameter the
//! pooler refuses is named as that, not as an unreachable database.

use crate::app::{Front, TestApp};
use unreserver::Database;

use crate::common::{
    cancel_a_sleep, test_env, until_true, Res, TestDb, RELEASE_PASSWORD, RELEASE_ROLE,
};

fn through(port_var: &str, t: &TestDb, query: &str) -> String {
    format!(
        "postgres://{RELEASE_ROLE}:{RELEASE_PASSWORD}@127.0.0.1:{}/{}?sslmode=disable{query}",
        test_env(port_var),
        t.name
    )
}

/// The front doors of `t` with `DATABASE_URL` through the pooler at `port_var`.
fn through_pooler(port_var: &str, t: &TestApp, query: &str) -> Front {
    t.with("DATABASE_URL", through(port_var, t, query))
}

async fn due_orders(t: &TestDb, n: usize) -> i64 {
    let v = t.variant(n as i32).await;
    for _ in 0..n {
        let order = t.order("pending", "pending").await;
        t.reservation(Res::new(Some(order), v, 1, "-1 minute"))
            .await;
    }
    v
}

#[tokio::test]
async fn every_command_works_through_pgbouncer_in_session_mode() {
    let t = TestApp::spawn().await;
    let v = due_orders(&t, 3).await;
    let pooled = through_pooler("UNRESERVER_TEST_PGBOUNCER_SESSION_PORT", &t, "");
    for args in [
        &["status"][..],
        &["run", "--dry-run"],
        &["run"],
        &["reconcile"],
        &["report"],
    ] {
        let out = pooled.cli(args).await;
        assert!(out.success(), "{args:?}: {}", out.stderr);
    }
    assert_eq!(t.reserved(v).await, 0, "the run released the due orders");
    // The session settings were SET on the session: the batches' own and the defaults.
    let out = pooled.cli(&["status"]).await;
    let status = out.json();
    assert_eq!(status["due_reservations"], 0, "{status}");
}

/// Three clients at once make the pool open three server connections; idle again, the pool
/// hands them out in turn (`server_round_robin`, as a busy pool does): each transaction of the
/// command then reaches another server connection than the one before. The three are seen
/// sleeping at once in the database, then cancelled: the overlap is not left to timing.
async fn warm(t: &TestDb, url: &str) {
    let clients: Vec<_> = (0..3)
        .map(|_| {
            let url = url.to_string();
            tokio::spawn(async move {
                let (client, connection) = tokio_postgres::connect(&url, tokio_postgres::NoTls)
                    .await
                    .unwrap();
                tokio::spawn(connection);
                // Cancelled below once all three sleep.
                let _ = client.simple_query("SELECT pg_sleep(60)").await;
            })
        })
        .collect();
    let all_three = until_true(
        t,
        "(SELECT count(*) FROM pg_stat_activity \
           WHERE datname = current_database() AND wait_event = 'PgSleep') >= 3",
    )
    .await;
    t.exec(
        "SELECT pg_cancel_backend(pid) FROM pg_stat_activity \
          WHERE datname = current_database() AND wait_event = 'PgSleep'",
    )
    .await;
    assert!(
        all_three,
        "the pool never held three server connections at once"
    );
    for c in clients {
        c.await.unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn transaction_pooling_is_refused_before_anything_changes() {
    let t = TestApp::spawn().await;
    due_orders(&t, 3).await;
    let before = t.fingerprint().await;
    let pooled = through_pooler("UNRESERVER_TEST_PGBOUNCER_TRANSACTION_PORT", &t, "");
    let url = pooled.var("DATABASE_URL").unwrap_or_default().to_string();
    for args in [&["run"][..], &["reconcile", "--apply"], &["status"]] {
        warm(&t, &url).await;
        let out = pooled.cli(args).await;
        let stderr = &out.stderr;
        assert_eq!(out.code, Some(1), "{args:?}: {stderr}");
        assert!(
            stderr.contains("[UnsupportedPooler]") && stderr.contains("transaction mode"),
            "{args:?}: {stderr}"
        );
    }
    assert_eq!(t.fingerprint().await, before, "nothing changed");
}

#[tokio::test]
async fn a_startup_parameter_the_pooler_refuses_is_named() {
    let t = TestApp::spawn().await;
    let out = through_pooler(
        "UNRESERVER_TEST_PGBOUNCER_SESSION_PORT",
        &t,
        "&options=-c%20statement_timeout%3D5s",
    )
    .cli(&["status"])
    .await;
    let stderr = &out.stderr;
    assert_eq!(out.code, Some(1), "{stderr}");
    assert!(
        stderr.contains("[UnsupportedPooler]") && stderr.contains("startup parameter"),
        "{stderr}"
    );
    assert!(!stderr.contains("DatabaseUnreachable"), "{stderr}");
}

/// Behind a pooler the role cannot see the pool's room (PgBouncer's `default_pool_size` is
/// not in any view the server has): a run drains with one connection however many the
/// server has free, and with more only when `POOLED_WORKERS` allows them. The pooler is seen
/// by the port: the client's is PgBouncer's, the server listens on its own.
#[tokio::test]
async fn behind_a_pooler_a_run_opens_one_connection_unless_allowed_more() {
    for (pooled_workers, workers) in [(None, 1), (Some("2"), 2)] {
        let t = TestApp::spawn().await;
        let (_, _, total) = crate::adaptive::backlog(&t, 2000).await;
        let mut pooled =
            through_pooler("UNRESERVER_TEST_PGBOUNCER_SESSION_PORT", &t, "").with("WORKERS", "2");
        if let Some(n) = pooled_workers {
            pooled = pooled.with("POOLED_WORKERS", n);
        }
        let out = pooled.cli(&["run"]).await;
        assert!(out.success(), "{}", out.stderr);
        let report = out.json();
        assert_eq!(
            report["controller"]["workers"], workers,
            "POOLED_WORKERS {pooled_workers:?}: {report}"
        );
        assert_eq!(report["reservations_released"], total, "{report}");
    }
}

/// A batch cut behind Debian's PgBouncer 1.18 sends PostgreSQL's cancel request through it.
/// That PgBouncer exits ("disconnect_client(): bad client state: 0", dropping every client)
/// when the cancelling client closes before the request is passed on, as tokio-postgres's own
/// cancel does: the release's waits for PgBouncer's close, as libpq does. Twenty statements are
/// each cancelled, the request sent every time, and a shopper's session through the same
/// pooler still answers after each. With tokio-postgres's cancel (mutation tried) the first
/// request was dropped and its statement ran its 30 s; sent as that cancel sends it (closed at
/// once after the request), twenty raw requests made this PgBouncer exit within five.
#[tokio::test]
async fn cancels_sent_through_pgbouncer_leave_it_up_for_every_other_client() {
    let t = TestDb::new().await;
    let url = through("UNRESERVER_TEST_PGBOUNCER_SESSION_PORT", &t, "");
    let config = unreserver::config_from_url("DATABASE_URL", &url).unwrap();
    let tls = unreserver::tls_connector(None, &unreserver::RdsCaRegions::All).unwrap();
    let db = Database::open(&config, &tls, 100).await.unwrap();
    let shopper = unreserver::connect(&config, &tls).await.unwrap();
    for i in 0..20 {
        let by = cancel_a_sleep(&t, &db).await;
        assert!(by.sent_the_request(), "cancel {i}: {by:?}");
        shopper
            .simple_query("SELECT 1")
            .await
            .unwrap_or_else(|e| panic!("after cancel {i} the pooler dropped a client: {e}"));
    }
}

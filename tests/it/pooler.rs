//! Behind Debian's PgBouncer 1.18 (started by `scripts/test.sh`): in session mode every command
//! works (the session settings are SET after connecting, not sent as the `options` startup
//! parameter PgBouncer refuses); in transaction mode, the pool handing out its server
//! connections in turn as a busy pool does, the command is refused before it changes anything, with an error that names transaction
//! pooling (a quiet pool may hand one client the same server connection throughout: then the
//! command works, and its session settings stay on that connection — docs/operations.md says
//! to use session mode); a startup parameter the
//! pooler refuses is named as that, not as an unreachable database.

use std::process::{Command, Output};

use crate::common::{test_env, Res, TestDb, RELEASE_PASSWORD, RELEASE_ROLE};

fn through(port_var: &str, t: &TestDb, query: &str) -> String {
    format!(
        "postgres://{RELEASE_ROLE}:{RELEASE_PASSWORD}@127.0.0.1:{}/{}?sslmode=disable{query}",
        test_env(port_var),
        t.name
    )
}

fn unreserver(url: &str, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_unreserver"))
        .args(args)
        .env("DATABASE_URL", url)
        .env_remove("DB_SECRET_ID")
        .env_remove("EVENT_BUS_NAME")
        .output()
        .unwrap()
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
    let t = TestDb::new().await;
    let v = due_orders(&t, 3).await;
    let url = through("UNRESERVER_TEST_PGBOUNCER_SESSION_PORT", &t, "");
    for args in [
        &["status"][..],
        &["run", "--dry-run"],
        &["run"],
        &["reconcile"],
        &["report"],
    ] {
        let out = unreserver(&url, args);
        assert!(
            out.status.success(),
            "{args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    assert_eq!(t.reserved(v).await, 0, "the run released the due orders");
    // The session settings were SET on the session: the batches' own and the defaults.
    let out = unreserver(&url, &["status"]);
    let status: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(status["due_reservations"], 0, "{status}");
}

/// Three clients at once make the pool open three server connections; idle again, the pool
/// hands them out in turn (`server_round_robin`, as a busy pool does): each transaction of the
/// command then reaches another server connection than the one before.
async fn warm(url: &str) {
    let clients = (0..3).map(|_| {
        let url = url.to_string();
        tokio::spawn(async move {
            let (client, connection) = tokio_postgres::connect(&url, tokio_postgres::NoTls)
                .await
                .unwrap();
            tokio::spawn(connection);
            client.simple_query("SELECT pg_sleep(0.3)").await.unwrap();
        })
    });
    for c in clients.collect::<Vec<_>>() {
        c.await.unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn transaction_pooling_is_refused_before_anything_changes() {
    let t = TestDb::new().await;
    due_orders(&t, 3).await;
    let before = t.fingerprint().await;
    let url = through("UNRESERVER_TEST_PGBOUNCER_TRANSACTION_PORT", &t, "");
    for args in [&["run"][..], &["reconcile", "--apply"], &["status"]] {
        warm(&url).await;
        let out = unreserver(&url, args);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{args:?}: {stderr}");
        assert!(
            stderr.contains("[UnsupportedPooler]") && stderr.contains("transaction mode"),
            "{args:?}: {stderr}"
        );
    }
    assert_eq!(t.fingerprint().await, before, "nothing changed");
}

#[tokio::test]
async fn a_startup_parameter_the_pooler_refuses_is_named() {
    let t = TestDb::new().await;
    let url = through(
        "UNRESERVER_TEST_PGBOUNCER_SESSION_PORT",
        &t,
        "&options=-c%20statement_timeout%3D5s",
    );
    let out = unreserver(&url, &["status"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("[UnsupportedPooler]") && stderr.contains("startup parameter"),
        "{stderr}"
    );
    assert!(!stderr.contains("DatabaseUnreachable"), "{stderr}");
}

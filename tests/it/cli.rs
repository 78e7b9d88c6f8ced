//! The `unreserver` command line as other tools use it: JSON on stdout, exit codes, and a
//! one-line error naming the problem.

use std::process::{Command, Output};

use crate::common::{Res, TestDb};

fn unreserver(args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_unreserver"));
    cmd.args(args);
    for var in [
        "DATABASE_URL",
        "BATCH_SIZE",
        "MAX_BATCHES",
        "RUST_LOG",
        "LOG_FORMAT",
        "DB_CA_BUNDLE",
    ] {
        cmd.env_remove(var);
    }
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd.output().expect("cannot start unreserver")
}

fn stdout_json(out: &Output) -> serde_json::Value {
    let text = String::from_utf8_lossy(&out.stdout);
    serde_json::from_str(text.trim()).unwrap_or_else(|e| {
        panic!(
            "stdout is not one JSON object ({e}): {text}\nstderr: {}",
            String::from_utf8_lossy(&out.stderr)
        )
    })
}

#[tokio::test]
async fn run_and_status_print_their_json_contracts() {
    let t = TestDb::new().await;
    let v = t.variant(3).await;
    for _ in 0..3 {
        let order = t.order("pending", "pending").await;
        t.reservation(Res::new(Some(order), v, 1, "-1 minute"))
            .await;
    }
    let url = t.release_url();
    let env = [("DATABASE_URL", url.as_str())];
    let status = unreserver(&["status"], &env);
    assert!(status.status.success());
    let status = stdout_json(&status);
    for key in [
        "due_reservations",
        "oldest_due_age_seconds",
        "paid_orders_with_active_reservations",
        "variants_out_of_sync",
    ] {
        assert!(status.get(key).is_some(), "status lacks {key}");
    }
    assert_eq!(status["due_reservations"], 3);

    let dry = unreserver(&["run", "--dry-run", "--batch-size", "2"], &env);
    assert!(dry.status.success());
    let dry = stdout_json(&dry);
    assert_eq!(dry["dry_run"], true);
    assert_eq!(dry["reservations_released"], 3);
    assert_eq!(dry["units_by_variant"][v.to_string()], 3);
    assert_eq!(t.reserved(v).await, 3);

    let out = unreserver(&["run", "--batch-size", "2", "--max-batches", "1"], &env);
    assert!(out.status.success());
    let report = stdout_json(&out);
    for key in unreserver::CONTRACT_FIELDS {
        assert!(report.get(key).is_some(), "report lacks {key}");
    }
    assert_eq!(report["reservations_released"], 2);
    assert_eq!(report["stopped_reason"], "max_batches");
    assert_eq!(report["backlog_remaining"], 1);
    assert_eq!(t.reserved(v).await, 1);
}

#[test]
fn a_bad_setting_is_named_before_connecting() {
    for (env, args, named) in [
        (vec![("BATCH_SIZE", "lots")], vec!["run"], "BATCH_SIZE"),
        (vec![("MAX_BATCHES", "0")], vec!["run"], "MAX_BATCHES"),
        (vec![], vec!["run", "--batch-size", "0"], "--batch-size"),
        (
            vec![("LOCK_TIMEOUT_MS", "-1")],
            vec!["status"],
            "LOCK_TIMEOUT_MS",
        ),
    ] {
        let mut env = env;
        // A port nothing listens on: the error must come before any connection attempt.
        env.push(("DATABASE_URL", "postgres://u:hunter2@127.0.0.1:1/db"));
        let out = unreserver(&args, &env);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{named}: {stderr}");
        assert!(stderr.contains(named), "{named}: {stderr}");
        assert!(stderr.contains("InvalidSetting"), "{stderr}");
        assert!(out.stdout.is_empty());
    }
    let out = unreserver(&["run"], &[]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("DATABASE_URL"));
}

#[test]
fn an_unreachable_database_is_named_without_the_password() {
    let out = unreserver(
        &["run"],
        &[(
            "DATABASE_URL",
            "postgres://app:hunter2@127.0.0.1:1/shop?connect_timeout=2",
        )],
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("database unreachable (app@127.0.0.1:1/shop)"),
        "{stderr}"
    );
    assert!(!stderr.contains("hunter2"), "{stderr}");
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
}

#[tokio::test]
async fn a_missing_column_fails_the_command_naming_it() {
    let t = TestDb::new().await;
    t.exec("ALTER TABLE orders_inventoryreservation DROP COLUMN released_at")
        .await;
    let out = unreserver(&["run"], &[("DATABASE_URL", t.release_url().as_str())]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("orders_inventoryreservation.released_at"),
        "{stderr}"
    );
}

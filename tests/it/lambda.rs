//! End to end through the real Lambda runtime interface: `cargo lambda watch`, started by
//! `scripts/test.sh` with `DB_SECRET_ID` pointing at moto's Secrets Manager and TLS required
//! against the test CA, invoked with `cargo lambda invoke` and the sample payloads of
//! `infra/events/`.

use std::process::{Command, Output};

use serde_json::{json, Value};

use crate::common::{admin_password, pg_port, test_env, TestDb};
use crate::secrets_manager::{client, put_secret};

fn invoke(args: &[&str]) -> Output {
    Command::new("cargo")
        .args([
            "lambda",
            "invoke",
            "--invoke-address",
            "127.0.0.1",
            "--invoke-port",
        ])
        .arg(test_env("UNRESERVER_TEST_LAMBDA_PORT"))
        .args(args)
        .arg("bootstrap")
        .output()
        .expect("cannot run cargo lambda invoke")
}

fn invoke_file(event: &str) -> Value {
    let path = format!("{}/infra/events/{event}", env!("CARGO_MANIFEST_DIR"));
    let out = invoke(&["--data-file", &path]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{event}: {stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_str(stdout.trim()).unwrap_or_else(|e| panic!("{event}: {e}: {stdout}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_function_runs_end_to_end_under_cargo_lambda() {
    let t = TestDb::new().await;
    t.exec(include_str!("../../infra/sample-data.sql")).await;
    let password = admin_password();
    put_secret(
        &client().await,
        &test_env("UNRESERVER_TEST_LAMBDA_SECRET"),
        &json!({"engine": "postgres", "username": "postgres", "password": password,
                "host": "localhost", "port": pg_port(), "dbname": t.name})
        .to_string(),
    )
    .await;

    let before = t.fingerprint().await;
    let dry = invoke_file("dry-run.json");
    assert_eq!(dry["dry_run"], true);
    assert_eq!(dry["reservations_released"], 10);
    assert_eq!(dry["units_by_variant"]["1"], 4);
    assert_eq!(t.fingerprint().await, before, "the dry run changed data");

    let status = invoke_file("status.json");
    assert_eq!(status["due_reservations"], 9);
    assert_eq!(status["paid_orders_with_active_reservations"], 1);

    let report = invoke_file("schedule.json");
    assert_eq!(report["dry_run"], false);
    assert_eq!(report["reservations_released"], 10);
    assert_eq!(report["orders_cancelled"], 7);
    assert_eq!(report["stopped_reason"], "drained");
    assert_eq!(
        t.i64("SELECT count(*) FROM orders_order WHERE status = 'cancelled'")
            .await,
        8
    );

    let again = invoke_file("scheduled-event.json");
    assert_eq!(again["reservations_released"], 0);
    let manual = invoke_file("run.json");
    assert_eq!(manual["reservations_released"], 0);

    // A malformed payload: a typed error naming the field.
    let out = invoke(&["--data-ascii", r#"{"dry_run": "yes"}"#]);
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(!out.status.success(), "{text}");
    assert!(
        text.contains("InvalidPayload") && text.contains("dry_run"),
        "{text}"
    );

    // The function's output: one EMF document and one summary line per run, never the password.
    let log = std::fs::read_to_string(test_env("UNRESERVER_TEST_LAMBDA_LOG")).unwrap();
    assert!(
        !log.contains(&password),
        "the database password reached the logs"
    );
    let lines: Vec<Value> = log
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l.trim()).ok())
        .collect();
    let emf: Vec<&Value> = lines.iter().filter(|v| v.get("_aws").is_some()).collect();
    assert!(
        emf.iter().any(|d| d["ReservationsReleased"] == 10.0
            && d["RunFailed"] == 0.0
            && d.get("mode").is_none()),
        "no EMF document for the scheduled run"
    );
    assert!(
        emf.iter().any(|d| d["mode"] == "dry_run"),
        "the dry run's metrics lack their own dimension"
    );
    assert!(lines.iter().any(|l| l["message"] == "run finished"
        && l["reservations_released"] == 10
        && l["request_id"].as_str().is_some_and(|id| !id.is_empty())));
    assert!(lines
        .iter()
        .any(|l| l["message"] == "rejected the payload" && l["error_type"] == "InvalidPayload"));
}

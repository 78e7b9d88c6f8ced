//! The two front-ends are adapters of one action layer: for every action both offer, the CLI's
//! stdout and the Lambda handler's response are the same JSON (the run id and timings aside),
//! and a revive that cannot be done is exit code 3 on the command line. (`events` is the CLI's
//! alone.)

use serde_json::{json, Value};

use crate::app::TestApp;
use crate::common::Res;

/// What the CLI prints for `args`, and its exit code.
async fn cli(app: &TestApp, args: &[&str]) -> (Value, i32) {
    let out = app.cli(args).await;
    (out.json().clone(), out.code.unwrap_or(-1))
}

/// What the Lambda handler answers to `payload`.
async fn lambda(app: &TestApp, payload: Value) -> Value {
    match app.lambda(payload.clone()).await {
        Ok(value) => value,
        Err(error) => panic!("{payload}: {error:?}"),
    }
}

/// The answer with what differs between two calls by nature blanked: the run id and every
/// duration or age measured on the clock.
fn comparable(mut value: Value) -> Value {
    fn blank(value: &mut Value) {
        match value {
            Value::Object(map) => {
                for (key, v) in map.iter_mut() {
                    let timed = key == "run_id"
                        || key.ends_with("_ms")
                        || key.starts_with("batch_ms")
                        || key.starts_with("hot_hold_ms")
                        || key.contains("age_seconds")
                        || key.contains("delay");
                    if timed {
                        *v = Value::Null;
                    } else {
                        blank(v);
                    }
                }
            }
            Value::Array(items) => items.iter_mut().for_each(blank),
            _ => {}
        }
    }
    blank(&mut value);
    value
}

/// Two due orders on one variant, one not yet due; the same ids in every fresh database.
async fn seeded() -> (TestApp, i64) {
    let t = TestApp::spawn().await;
    let v = t.variant(4).await;
    let mut first = 0;
    for (i, expires) in ["-2 minutes", "-1 minute", "+1 hour"]
        .into_iter()
        .enumerate()
    {
        let order = t.order("pending", "pending").await;
        if i == 0 {
            first = order;
        }
        let qty = if i == 2 { 2 } else { 1 };
        t.reservation(Res::new(Some(order), v, qty, expires)).await;
    }
    (t, first)
}

async fn same(app: &TestApp, args: &[&str], payload: Value) -> Value {
    let (printed, code) = cli(app, args).await;
    assert_eq!(code, 0, "{args:?}: {printed}");
    let answered = lambda(app, payload).await;
    assert_eq!(
        comparable(printed.clone()),
        comparable(answered),
        "{args:?}"
    );
    printed
}

#[tokio::test]
async fn the_cli_and_the_lambda_answer_every_action_alike() {
    let (a, order) = seeded().await;
    let (b, order_b) = seeded().await;
    assert_eq!(order, order_b, "the two databases must give the same ids");

    let status = same(&a, &["status"], json!({"action": "status"})).await;
    assert_eq!(status["due_reservations"], 2);
    let dry = same(
        &a,
        &["run", "--dry-run", "--batch-size", "1"],
        json!({"dry_run": true, "batch_size": 1}),
    )
    .await;
    assert_eq!(dry["reservations_released"], 2);

    // A real run changes the rows: the CLI runs on one database, the Lambda on its twin.
    let (printed, code) = cli(&a, &["run", "--max-batches", "5"]).await;
    assert_eq!(code, 0, "{printed}");
    let answered = lambda(&b, json!({"max_batches": 5})).await;
    assert_eq!(comparable(printed.clone()), comparable(answered));
    assert_eq!(printed["orders_cancelled"], 2);

    let report = same(
        &a,
        &["report", "--days", "2"],
        json!({"action": "report", "days": 2}),
    )
    .await;
    assert_eq!(report["days"][0]["reservations_released"], 2, "{report}");

    let id = order.to_string();
    let (printed, code) = cli(&a, &["revive", &id]).await;
    assert_eq!(code, 0, "{printed}");
    let answered = lambda(&b, json!({"action": "revive", "order_id": order})).await;
    assert_eq!(comparable(printed.clone()), comparable(answered));
    assert_eq!(printed["revived"], true, "{printed}");

    let reconciled = same(&a, &["reconcile"], json!({"action": "reconcile"})).await;
    assert_eq!(reconciled["drifted"], 0, "{reconciled}");

    let purged = same(
        &a,
        &["purge", "--orders"],
        json!({"action": "purge", "orders": true}),
    )
    .await;
    assert_eq!(purged["reservations"]["eligible"], 0, "{purged}");

    // The order not yet due, released on request on each twin.
    let later = (order + 2).to_string();
    let (printed, code) = cli(&a, &["release", &later]).await;
    assert_eq!(code, 0, "{printed}");
    let answered = lambda(&b, json!({"action": "release", "order_id": order + 2})).await;
    assert_eq!(comparable(printed.clone()), comparable(answered));
    assert_eq!(printed["units_released"], 2, "{printed}");

    // A follow of a second: the summed report, its wake-ups aside (a matter of timing).
    let (mut printed, code) = cli(&a, &["follow", "--for", "1"]).await;
    assert_eq!(code, 0, "{printed}");
    let mut answered = lambda(&b, json!({"action": "follow", "seconds": 1})).await;
    for value in [&mut printed, &mut answered] {
        value["follow"]["wakeups"] = Value::Null;
        value["follow"]["passes"] = Value::Null;
    }
    assert_eq!(comparable(printed.clone()), comparable(answered));
    assert_eq!(printed["follow"]["ended"], "time", "{printed}");

    // Not revivable: the same answer, and exit code 3 on the command line.
    let unknown = (order + 1000).to_string();
    let (printed, code) = cli(&a, &["revive", &unknown]).await;
    assert_eq!(code, 3, "{printed}");
    let answered = lambda(&a, json!({"action": "revive", "order_id": order + 1000})).await;
    assert_eq!(comparable(printed.clone()), comparable(answered));
    assert_eq!(printed["revived"], false);
}

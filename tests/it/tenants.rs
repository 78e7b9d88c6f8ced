//! Many shops from one deployment, on both shapes: 50 schemas in one database (django-tenants'
//! layout: the tenants listed in a table of `public`, which has shop tables of its own) and
//! three databases. One tenant's table lock, missing column or rejected password fails that
//! tenant alone, named; every other tenant is released exactly, and nothing outside the tenants
//! is touched.

use std::process::Command;

use serde_json::{json, Value};

use crate::app::TestApp;
use crate::common::{connect_url, pg_port, until_true, TestDb, RELEASE_ROLE};

const SCHEMA_SQL: &str = include_str!("../../infra/schema.sql");
const INDEXES_SQL: &str = include_str!("../../infra/indexes.sql");

/// `infra/role.sql` for `role` in database `url`, with psql's `-v` pairs `vars`.
fn role_sql(url: &str, role: &str, vars: &[(&str, &str)]) {
    let mut cmd = Command::new("psql");
    cmd.args(["-qX", url, "-v", &format!("role={role}")]);
    for (name, value) in vars {
        cmd.args(["-v", &format!("{name}={value}")]);
    }
    let out = cmd
        .arg("-f")
        .arg(concat!(env!("CARGO_MANIFEST_DIR"), "/infra/role.sql"))
        .output()
        .expect("psql");
    assert!(
        out.status.success(),
        "role.sql: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Schemas `names` in `t`, each with the shop's tables and indexes, granted to the release role
/// by `infra/role.sql` (its `schemas` variable), and listed in `public.customers_client` as
/// django-tenants lists them.
async fn schema_tenants(t: &TestDb, names: &[String]) {
    let mut ddl = String::from(
        "CREATE TABLE public.customers_client (schema_name varchar(63) PRIMARY KEY); ",
    );
    // In one transaction: the indexes without CONCURRENTLY (the tables are new and empty).
    let indexes = INDEXES_SQL.replace("CONCURRENTLY ", "");
    for name in names {
        ddl.push_str(&format!(
            "CREATE SCHEMA {name}; SET search_path = {name};\n{SCHEMA_SQL}\n;\n{indexes}\n; \
             INSERT INTO public.customers_client VALUES ('{name}'); "
        ));
    }
    ddl.push_str("RESET search_path; INSERT INTO public.customers_client VALUES ('public')");
    t.client.batch_execute(&ddl).await.unwrap();
    t.exec(&format!(
        "GRANT SELECT ON public.customers_client TO {RELEASE_ROLE}"
    ))
    .await;
    role_sql(&t.url, RELEASE_ROLE, &[("schemas", &names.join(","))]);
}

/// `orders` pending orders in `schema`, each holding `qty` units of one variant, due
/// `minutes_ago` minutes ago.
async fn seed(
    client: &tokio_postgres::Client,
    schema: &str,
    orders: i32,
    qty: i32,
    minutes_ago: i32,
) {
    client
        .batch_execute(&format!(
            "SET search_path = {schema}; \
             WITH v AS (INSERT INTO products_productvariant (product_id, sku, stock_quantity, \
                        reserved_quantity) VALUES (1, 'sku-' || random(), 1000, {orders} * {qty}) \
                        RETURNING id), \
                  o AS (INSERT INTO orders_order (order_number) \
                        SELECT 'o-' || g || '-' || random() FROM generate_series(1, {orders}) g \
                        RETURNING id) \
             INSERT INTO orders_inventoryreservation (order_id, product_variant_id, quantity, \
                                                      expires_at) \
             SELECT o.id, v.id, {qty}, now() - interval '{minutes_ago} minutes' FROM o, v; \
             RESET search_path"
        ))
        .await
        .unwrap();
}

/// In `schema`: (reservations still active, units still reserved, orders cancelled).
async fn left(client: &tokio_postgres::Client, schema: &str) -> (i64, i64, i64) {
    let row = client
        .query_one(
            &format!(
                "SELECT (SELECT count(*) FROM {schema}.orders_inventoryreservation \
                         WHERE status = 'active'), \
                        (SELECT COALESCE(sum(reserved_quantity), 0)::int8 \
                         FROM {schema}.products_productvariant), \
                        (SELECT count(*) FROM {schema}.orders_order WHERE status = 'cancelled')"
            ),
            &[],
        )
        .await
        .unwrap();
    (row.get(0), row.get(1), row.get(2))
}

fn outcome<'a>(answer: &'a Value, tenant: &str) -> &'a Value {
    answer["tenants"]
        .as_array()
        .and_then(|all| all.iter().find(|o| o["tenant"] == tenant))
        .unwrap_or_else(|| panic!("{tenant} not in {answer}"))
}

#[tokio::test]
async fn fifty_schemas_are_swept_and_a_locked_or_broken_tenant_fails_alone() {
    let t = TestApp::spawn().await;
    let names: Vec<String> = (0..50).map(|i| format!("shop_{i:02}")).collect();
    schema_tenants(&t, &names).await;
    for (i, name) in names.iter().enumerate() {
        seed(&t.client, name, 2, 1 + (i as i32 % 3), 5 + i as i32).await;
    }
    // public holds shop tables too (the template's): its due rows are no tenant's.
    seed(&t.client, "public", 3, 1, 30).await;
    // shop_07: a migration holds a table; shop_13: a column the release reads is gone.
    let mut migration = connect_url(&t.url).await;
    let lock = migration.transaction().await.unwrap();
    lock.batch_execute("LOCK TABLE shop_07.orders_order IN ACCESS EXCLUSIVE MODE")
        .await
        .unwrap();
    t.exec("ALTER TABLE shop_13.orders_inventoryreservation DROP COLUMN released_at")
        .await;
    let front = t
        .with(
            "TENANTS_QUERY",
            "SELECT schema_name FROM public.customers_client WHERE schema_name <> 'public'",
        )
        .with("TENANT_CONCURRENCY", "16");

    let out = front.cli(&["run", "--all-tenants"]).await;
    lock.rollback().await.unwrap();

    assert_eq!(out.code, Some(1), "a tenant failed: exit 1 {out:?}");
    let answer = out.json();
    // WORKERS (2) bounds the sweep's connections, whatever TENANT_CONCURRENCY asks.
    assert_eq!(
        (
            answer["tenants_at_once"].as_u64(),
            answer["workers_each"].as_u64()
        ),
        (Some(2), Some(1))
    );
    assert_eq!(answer["tenants"].as_array().unwrap().len(), 50, "{answer}");
    assert_eq!(answer["failed"], json!(["shop_07", "shop_13"]), "{answer}");
    let locked = outcome(answer, "shop_07");
    assert_eq!(locked["error"]["kind"], "TableLocked", "{locked}");
    let missing = outcome(answer, "shop_13");
    assert!(
        missing["error"]["message"]
            .as_str()
            .unwrap()
            .contains("released_at"),
        "{missing}"
    );
    let mut released = 0;
    for name in &names {
        let (active, reserved, cancelled) = left(&t.client, name).await;
        if name == "shop_07" || name == "shop_13" {
            assert_eq!((active, cancelled), (2, 0), "{name} untouched");
            continue;
        }
        assert_eq!((active, reserved, cancelled), (0, 0, 2), "{name}");
        assert_eq!(outcome(answer, name)["released"], 2, "{name}");
        assert_eq!(outcome(answer, name)["outcome"], "released", "{name}");
        released += 2;
    }
    assert_eq!(answer["released"], released, "{answer}");
    assert_eq!(
        left(&t.client, "public").await,
        (3, 3, 0),
        "public is no tenant"
    );

    // The next sweep, the lock gone: shop_07 is released; shop_13 still fails, alone.
    let out = front.cli(&["run", "--all-tenants"]).await;
    assert_eq!(out.json()["failed"], json!(["shop_13"]), "{out:?}");
    assert_eq!(left(&t.client, "shop_07").await, (0, 0, 2));
    assert_eq!(outcome(out.json(), "shop_00")["outcome"], "quiet");
}

/// A fresh database (a tenant named as it), its own role `u_<name>` granted by
/// `infra/role.sql`, whose password is `pw-<name>` — what the deployment's URL template gives
/// it — unless `right` is false, and one order due in it.
async fn database_tenant(right: bool) -> TestDb {
    let db = TestDb::new().await;
    let password = if right {
        format!("pw-{}", db.name)
    } else {
        "another".into()
    };
    let role = format!("u_{}", db.name);
    db.exec(&format!("CREATE ROLE {role} LOGIN PASSWORD '{password}'"))
        .await;
    role_sql(&db.url, &role, &[]);
    db.one_due_order(3).await;
    db
}

#[tokio::test]
async fn three_databases_are_swept_and_a_rejected_password_fails_its_tenant_alone() {
    let (a, b, c) = (
        database_tenant(true).await,
        database_tenant(true).await,
        database_tenant(false).await,
    );
    let url = format!(
        "postgres://u_{{tenant}}:pw-{{tenant}}@127.0.0.1:{}/{{tenant}}?sslmode=disable",
        pg_port()
    );
    let app = TestApp::spawn().await;
    let front = app
        .with("DATABASE_URL", url)
        .with("TENANT_KIND", "database")
        .with("TENANTS", format!("{},{},{}", a.name, b.name, c.name));

    let out = front.cli(&["run", "--all-tenants"]).await;

    assert_eq!(out.code, Some(1), "{out:?}");
    let answer = out.json();
    assert_eq!(answer["failed"], json!([c.name]), "{answer}");
    assert_eq!(
        outcome(answer, &c.name)["error"]["kind"],
        "DatabaseAuthentication",
        "{answer}"
    );
    for db in [&a, &b] {
        assert_eq!(outcome(answer, &db.name)["released"], 1, "{answer}");
        assert_eq!(
            db.i64("SELECT count(*) FROM orders_inventoryreservation WHERE status = 'active'")
                .await,
            0
        );
        assert_eq!(
            db.i64("SELECT sum(reserved_quantity)::int8 FROM products_productvariant")
                .await,
            0
        );
    }
    assert_eq!(
        c.i64("SELECT count(*) FROM orders_inventoryreservation WHERE status = 'active'")
            .await,
        1
    );
}

#[tokio::test]
async fn one_tenant_is_named_on_both_front_ends_and_its_answer_says_which() {
    let t = TestApp::spawn().await;
    let names: Vec<String> = ["north", "south", "west"].map(String::from).to_vec();
    schema_tenants(&t, &names).await;
    for name in &names {
        seed(&t.client, name, 1, 2, 10).await;
    }
    let front = t.with("TENANTS", "west, north,south");

    let listed = front.lambda(json!({"action": "tenants"})).await.unwrap();
    assert_eq!(
        listed,
        json!({"tenants": ["north", "south", "west"], "count": 3})
    );

    let ran = front
        .lambda(json!({"action": "run", "tenant": "south", "source": "fanout"}))
        .await
        .unwrap();
    assert_eq!(ran["tenant"], "south", "{ran}");
    assert_eq!(ran["reservations_released"], 1, "{ran}");
    assert_eq!(left(&t.client, "south").await, (0, 0, 1));
    assert_eq!(
        left(&t.client, "north").await,
        (1, 2, 0),
        "only the tenant named"
    );

    // Every tenant's status at once, each named.
    let out = front.cli(&["status", "--all-tenants"]).await;
    assert!(out.success(), "{out:?}");
    let due: Vec<(String, i64)> = out.json()["tenants"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| {
            let name = s["tenant"].as_str().unwrap().to_string();
            (name, s["due_reservations"].as_i64().unwrap())
        })
        .collect();
    assert_eq!(
        due,
        [("north".into(), 1), ("south".into(), 0), ("west".into(), 1)],
        "{out:?}"
    );

    // A Kubernetes Indexed Job's index: the N-th name in order (0: north).
    let out = front.cli(&["status", "--tenant-index", "0"]).await;
    assert!(out.success(), "{out:?}");
    assert_eq!(out.json()["tenant"], "north");
    assert_eq!(out.json()["due_reservations"], 1);

    // A name not listed is refused by name, before anything is touched; so is `public`.
    for name in ["east", "public"] {
        let error = front
            .lambda(json!({"action": "run", "tenant": name}))
            .await
            .unwrap_err();
        assert_eq!(error.error_type(), "InvalidSetting", "{error:?}");
        assert!(error.diagnostic.error_message.contains(name), "{error:?}");
    }
    // Without tenants configured, naming one is an error, not a run of the one database.
    let error = t
        .lambda(json!({"action": "run", "tenant": "north"}))
        .await
        .unwrap_err();
    assert!(
        error
            .diagnostic
            .error_message
            .contains("no tenants are configured"),
        "{error:?}"
    );
    let out = t.cli(&["run", "--tenant", "north"]).await;
    assert_eq!(out.code, Some(2), "{out:?}");
    assert_eq!(left(&t.client, "north").await, (1, 2, 0));

    // Two schema tenants' rows have the same ids: their events say whose they are, and their
    // stable ids differ.
    let since = humantime::format_rfc3339(
        std::time::SystemTime::now() - std::time::Duration::from_secs(600),
    )
    .to_string();
    assert!(front.cli(&["run", "--tenant", "north"]).await.success());
    let mut stock_ids = Vec::new();
    for name in ["north", "south"] {
        let out = front
            .cli(&["events", "--tenant", name, "--since", &since])
            .await;
        assert!(out.success(), "{out:?}");
        let lines = out.json_lines();
        assert!(!lines.is_empty(), "{out:?}");
        assert!(
            lines.iter().all(|e| e["detail"]["tenant"] == name),
            "{out:?}"
        );
        let stock = lines
            .iter()
            .find(|e| e["detail-type"] == "Stock Released")
            .unwrap_or_else(|| panic!("{out:?}"));
        stock_ids.push(stock["detail"]["event_id"].clone());
    }
    assert_ne!(stock_ids[0], stock_ids[1], "{stock_ids:?}");
}

#[tokio::test]
async fn a_sweep_serves_the_oldest_due_first_and_one_cut_short_starts_none_and_loses_none() {
    let t = TestApp::spawn().await;
    let names: Vec<String> = ["a", "b", "c", "d"].map(|n| format!("shop_{n}")).to_vec();
    schema_tenants(&t, &names).await;
    // Due 5, 60, 30 minutes ago; shop_d has nothing due.
    seed(&t.client, "shop_a", 1, 1, 5).await;
    seed(&t.client, "shop_b", 1, 1, 60).await;
    seed(&t.client, "shop_c", 1, 1, 30).await;
    let front = t
        .with("TENANTS", names.join(","))
        .with("TENANT_CONCURRENCY", "1");

    // A deadline gone before the first tenant could start: none starts, each is named.
    let cut = front
        .lambda_within(json!({"action": "run", "tenant": "*"}), 1)
        .await
        .unwrap();
    let started: Vec<&str> = cut["tenants"]
        .as_array()
        .unwrap()
        .iter()
        .map(|o| o["outcome"].as_str().unwrap())
        .collect();
    assert_eq!(
        started,
        ["not_started", "not_started", "not_started", "quiet"],
        "{cut}"
    );
    for name in ["shop_a", "shop_b", "shop_c"] {
        assert_eq!(left(&t.client, name).await.0, 1, "{name}");
    }

    // The schedule's payload names no tenant: all are swept, the oldest due first.
    let swept = front.lambda(json!({"source": "schedule"})).await.unwrap();
    let order: Vec<&str> = swept["tenants"]
        .as_array()
        .unwrap()
        .iter()
        .map(|o| o["tenant"].as_str().unwrap())
        .collect();
    assert_eq!(order, ["shop_b", "shop_c", "shop_a", "shop_d"], "{swept}");
    assert_eq!(swept["released"], 3, "{swept}");
    assert_eq!(swept["failed"], json!([]), "{swept}");
}

#[tokio::test]
async fn one_follower_follows_every_tenant_and_a_broken_one_is_named_while_the_others_release() {
    let t = TestApp::spawn().await;
    let names: Vec<String> = ["a", "b", "c"].map(|n| format!("shop_{n}")).to_vec();
    schema_tenants(&t, &names).await;
    seed(&t.client, "shop_a", 1, 1, 5).await;
    // shop_c cannot be read: a column its look and passes need is gone.
    t.exec("ALTER TABLE shop_c.orders_inventoryreservation DROP COLUMN expires_at")
        .await;
    let front = t.with("TENANTS", names.join(","));
    let follower = front.start_cli(&["follow", "--all-tenants"]);

    assert!(
        until_true(
            &t,
            "NOT EXISTS (SELECT FROM shop_a.orders_inventoryreservation \
                        WHERE status = 'active')"
        )
        .await,
        "shop_a's due order was never released"
    );
    // Due after the follower started: its clock for shop_b passes as it falls due.
    seed(&t.client, "shop_b", 2, 1, 0).await;
    assert!(
        until_true(
            &t,
            "NOT EXISTS (SELECT FROM shop_b.orders_inventoryreservation \
                        WHERE status = 'active')"
        )
        .await,
        "shop_b's orders were never released"
    );
    follower.terminate();
    let out = follower.wait().await;

    assert!(out.success(), "{out:?}");
    let answer = out.json();
    assert_eq!(answer["ended"], "signal", "{answer}");
    assert_eq!(answer["released"], 3, "{answer}");
    assert_eq!(answer["failed"], json!(["shop_c"]), "{answer}");
    let shop_c = outcome(answer, "shop_c");
    assert!(
        shop_c["last_error"]["message"]
            .as_str()
            .unwrap()
            .contains("expires_at"),
        "{shop_c}"
    );
    assert_eq!(
        left(&t.client, "public").await.0,
        0,
        "the template's public holds none"
    );
}

#[tokio::test]
async fn two_schema_tenants_follow_the_same_scheduled_minute_side_by_side() {
    let t = TestApp::spawn().await;
    let names: Vec<String> = ["a", "b"].map(|n| format!("shop_{n}")).to_vec();
    schema_tenants(&t, &names).await;
    let front = t.with("TENANTS", names.join(","));
    let at = humantime::format_rfc3339(std::time::SystemTime::now()).to_string();
    let scheduled = |tenant: &str| {
        json!({"action": "follow", "tenant": tenant, "seconds": 3, "source": "schedule",
               "scheduled_time": at})
    };
    let first = {
        let (front, payload) = (front.clone(), scheduled("shop_a"));
        tokio::spawn(async move { front.lambda_within(payload, 60_000).await })
    };
    let held = format!(
        "(SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND granted \
          AND classid = {}::oid AND objsubid = 2) = 1",
        unreserver::db::sql::follow::FOLLOW_LOCK_CLASS
    );
    assert!(
        until_true(&t, &held).await,
        "shop_a's follower never took its minute"
    );

    let second = front.lambda(scheduled("shop_b")).await.unwrap();
    let first = first.await.unwrap().unwrap();

    assert_eq!(second["tenant"], "shop_b");
    assert_eq!(
        second["follow"]["ended"], "time",
        "not a duplicate: {second}"
    );
    assert_eq!(first["follow"]["ended"], "time", "{first}");
}

/// A follower of every schema tenant holds its scheduled minute on its look session; when that
/// session is lost (here its backend is terminated), the new one takes the minute again before
/// anything else, so a duplicate delivery of the minute still answers `duplicate` — not a
/// second follower beside the first.
#[tokio::test]
async fn a_follower_of_all_tenants_whose_look_session_is_lost_keeps_its_minute() {
    let t = TestApp::spawn().await;
    let names: Vec<String> = ["a", "b"].map(|n| format!("shop_{n}")).to_vec();
    schema_tenants(&t, &names).await;
    let front = t.with("TENANTS", names.join(","));
    let at = humantime::format_rfc3339(std::time::SystemTime::now()).to_string();
    let scheduled = json!({"action": "follow", "tenant": "*", "seconds": 8,
                           "source": "schedule", "scheduled_time": at});
    let first = {
        let (front, payload) = (front.clone(), scheduled.clone());
        tokio::spawn(async move { front.lambda_within(payload, 60_000).await })
    };
    let holder = format!(
        "SELECT coalesce(max(pid), 0)::int8 FROM pg_locks WHERE locktype = 'advisory' \
         AND granted AND classid = {}::oid AND objsubid = 2",
        unreserver::db::sql::follow::FOLLOW_LOCK_CLASS
    );
    assert!(
        until_true(&t, &format!("({holder}) > 0")).await,
        "the follower never took its minute"
    );
    let lost = t.i64(&holder).await;
    t.exec(&format!("SELECT pg_terminate_backend({lost})"))
        .await;
    assert!(
        until_true(&t, &format!("({holder}) NOT IN (0, {lost})")).await,
        "the new look session never took the minute again"
    );

    let duplicate = front.lambda(scheduled).await.unwrap();
    let first = first.await.unwrap().unwrap();

    assert_eq!(duplicate["ended"], "duplicate", "{duplicate}");
    assert_eq!(first["ended"], "time", "{first}");
}

#[tokio::test]
async fn one_follower_follows_database_tenants_each_on_its_own_database() {
    let (a, b) = (database_tenant(true).await, database_tenant(true).await);
    let url = format!(
        "postgres://u_{{tenant}}:pw-{{tenant}}@127.0.0.1:{}/{{tenant}}?sslmode=disable",
        pg_port()
    );
    let app = TestApp::spawn().await;
    let follower = app
        .with("DATABASE_URL", url)
        .with("TENANT_KIND", "database")
        .with("TENANTS", format!("{},{}", a.name, b.name))
        .start_cli(&["follow", "--all-tenants"]);
    let released = "NOT EXISTS (SELECT FROM orders_inventoryreservation WHERE status = 'active')";
    for db in [&a, &b] {
        assert!(until_true(db, released).await, "{} never released", db.name);
    }
    follower.terminate();
    let out = follower.wait().await;

    assert!(out.success(), "{out:?}");
    assert_eq!(out.json()["released"], 2, "{out:?}");
    assert_eq!(out.json()["failed"], json!([]), "{out:?}");
}

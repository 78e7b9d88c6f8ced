//! `purge`: only what the release left behind long enough ago goes — old `expired` reservations,
//! and with `--orders` the unpaid orders the release cancelled, with their lines, unless another
//! table references them — in chunks that skip held rows, yield to the release, stop at the
//! time budget and resume; dry by default; as its own role, never the release's.

use std::time::{Duration, Instant};

use serde_json::{json, Value};
use tokio_postgres::error::SqlState;
use unreserver::{purge, Database, PurgeOptions, PurgeReport, ReleaseSettings};

use crate::app::TestApp;
use crate::common::{
    connect_url, hold_row, run, settings, Res, TestDb, RELEASE_PASSWORD, RELEASE_ROLE,
};

/// The role of `infra/purge-role.sql`, which `scripts/test.sh` grants in the template database.
const PURGE_ROLE: &str = "unreserver_purge_test";

/// The URL of `t` for the purge role.
fn purge_url(t: &TestDb) -> String {
    t.release_url().replacen(
        &format!("{RELEASE_ROLE}:{RELEASE_PASSWORD}@"),
        &format!("{PURGE_ROLE}:{RELEASE_PASSWORD}@"),
        1,
    )
}

/// What `unreserver purge ARGS` printed as the purge role, and its exit code.
pub(crate) async fn cli(t: &TestApp, args: &[&str]) -> (Value, i32) {
    let front = t.front().with("DATABASE_URL", purge_url(&t.db));
    let out = front.cli(&[&["purge"], args].concat()).await;
    (out.json().clone(), out.code.unwrap_or(-1))
}

/// A purge through the engine, as the purge role, with `settings`; with `time`, no chunk starts
/// later than that after the purge itself started (its connection open).
async fn purge_as_role(
    t: &TestDb,
    settings: &ReleaseSettings,
    time: Option<Duration>,
) -> PurgeReport {
    let tls = unreserver::tls_connector(None, &unreserver::RdsCaRegions::All).unwrap();
    let mut config = t.release_config();
    config.user(PURGE_ROLE);
    unreserver::apply_defaults(&mut config);
    let mut db = Database::open(&config, &tls, settings.lock_timeout_ms)
        .await
        .unwrap_or_else(|e| panic!("cannot open the purge connection: {}", e.chain()));
    let budget = settings
        .batch_budget(db.preflight.deadlock_timeout_ms)
        .unwrap();
    let options = PurgeOptions {
        apply: true,
        orders: false,
        older_than_days: 60,
        max_lag: Duration::from_secs(1),
        deadline: time.map(|time| Instant::now() + time + budget),
    };
    purge(&mut db, settings, &options)
        .await
        .unwrap_or_else(|e| panic!("purge failed: {}", e.chain()))
}

/// An instant `days` days before the database clock, as an SQL literal: the same instant in
/// every statement that uses it (an order's `cancelled_at` and its lines' `released_at`).
pub(crate) async fn days_ago(t: &TestDb, days: i32) -> String {
    let at = t
        .text(&format!("SELECT (now() - interval '{days} days')::text"))
        .await;
    format!("'{at}'::timestamptz")
}

/// A reservation of `variant` in `status` for `order`, released at `released_at` (an SQL
/// expression; NULL: never released).
pub(crate) async fn line(
    t: &TestDb,
    order: Option<i64>,
    variant: i64,
    status: &str,
    released: &str,
) -> i64 {
    let order = order.map_or("NULL".to_string(), |o| o.to_string());
    t.i64(&format!(
        "INSERT INTO orders_inventoryreservation \
         (order_id, product_variant_id, quantity, status, created_at, expires_at, released_at) \
         VALUES ({order}, {variant}, 1, '{status}', now() - interval '100 days', \
                 now() - interval '99 days', {released}) RETURNING id"
    ))
    .await
}

/// An order cancelled at `cancelled_at` with payment `payment`, and `lines` expired lines
/// released at `released_at`: the release cancelled it when both are the same instant.
pub(crate) async fn cancelled_order(
    t: &TestDb,
    variant: i64,
    payment: &str,
    cancelled_at: &str,
    released_at: &str,
    lines: usize,
) -> (i64, Vec<i64>) {
    let order = t.order("cancelled", payment).await;
    t.exec(&format!(
        "UPDATE orders_order SET cancelled_at = {cancelled_at} WHERE id = {order}"
    ))
    .await;
    let mut ids = Vec::new();
    for _ in 0..lines {
        ids.push(line(t, Some(order), variant, "expired", released_at).await);
    }
    (order, ids)
}

async fn exists(t: &TestDb, table: &str, id: i64) -> bool {
    t.i64(&format!("SELECT count(*) FROM {table} WHERE id = {id}"))
        .await
        == 1
}

async fn reservation_ids(t: &TestDb) -> Vec<i64> {
    t.client
        .query(
            "SELECT id FROM orders_inventoryreservation ORDER BY id",
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect()
}

/// Only `expired` reservations released more than 60 days ago go: not a younger one, not a
/// converted or released one however old, not an active one, not one never released. The dry
/// run (the default) counts them, changes nothing and exits 3; `--apply` deletes them; a purge
/// with nothing left exits 0. Without `--orders`, a line of an order the release cancelled goes
/// like any other and its order stays.
#[tokio::test]
async fn only_old_expired_reservations_go_and_a_dry_run_changes_nothing() {
    let t = TestApp::spawn().await;
    let v = t.variant(1).await;
    let (old, young) = (days_ago(&t, 70).await, days_ago(&t, 30).await);
    let gone_hold = line(&t, None, v, "expired", &old).await;
    let (order, order_lines) = cancelled_order(&t, v, "pending", &old, &old, 1).await;
    let mut kept = vec![
        line(&t, None, v, "expired", &young).await,
        line(&t, None, v, "converted", &old).await,
        line(&t, None, v, "released", &old).await,
        line(&t, None, v, "expired", "NULL").await,
    ];
    let pending = t.order("pending", "pending").await;
    kept.push(
        t.reservation(Res::new(Some(pending), v, 1, "+10 minutes"))
            .await,
    );
    kept.sort_unstable();
    let before = t.fingerprint().await;

    let (dry, code) = cli(&t, &[]).await;
    assert_eq!(code, 3, "{dry}");
    assert_eq!(t.fingerprint().await, before, "a dry run changes nothing");
    assert_eq!(dry["apply"], false, "{dry}");
    assert_eq!(dry["reservations"]["eligible"], 2, "{dry}");
    assert_eq!(dry["reservations"]["deleted"], 0, "{dry}");
    // The test server streams to one hot standby (started by scripts/test.sh): its lag is
    // watched (the purge role has pg_monitor), so nothing is noted.
    assert_eq!(dry["replicas"]["visible"], 1, "{dry}");
    assert!(dry["replicas"]["note"].is_null(), "{dry}");

    let (applied, code) = cli(&t, &["--apply", "--older-than", "60"]).await;
    assert_eq!(code, 0, "{applied}");
    assert_eq!(applied["reservations"]["deleted"], 2, "{applied}");
    assert!(applied["chunks"].as_u64().unwrap() >= 1, "{applied}");
    assert_eq!(reservation_ids(&t).await, kept);
    assert!(!exists(&t, "orders_inventoryreservation", gone_hold).await);
    assert!(!exists(&t, "orders_inventoryreservation", order_lines[0]).await);
    assert!(exists(&t, "orders_order", order).await, "without --orders");

    let (again, code) = cli(&t, &[]).await;
    assert_eq!(code, 0, "{again}");
    assert_eq!(again["reservations"]["eligible"], 0, "{again}");
}

/// With `--orders`: an unpaid order the release cancelled goes with its lines; a paid one, one
/// the shop cancelled itself, a younger one and one another table references (a Django-style
/// `DEFERRABLE INITIALLY DEFERRED` key, which would fail the chunk at commit had it been
/// deleted) stay — the last named with the key — and the chunk commits.
#[tokio::test]
async fn orders_go_with_their_lines_unless_paid_shop_cancelled_young_or_referenced() {
    let t = TestApp::spawn().await;
    t.exec(
        "CREATE TABLE shop_refund (id bigint GENERATED BY DEFAULT AS IDENTITY PRIMARY KEY, \
         order_id bigint NOT NULL REFERENCES orders_order(id) DEFERRABLE INITIALLY DEFERRED)",
    )
    .await;
    // What an operator does after the shop adds such a table: run the role's grants again.
    let status = std::process::Command::new("psql")
        .args(["-qX", &t.url, "-v", &format!("role={PURGE_ROLE}"), "-f"])
        .arg(concat!(env!("CARGO_MANIFEST_DIR"), "/infra/purge-role.sql"))
        .status()
        .expect("psql");
    assert!(status.success());
    let v = t.variant(0).await;
    let (old, young) = (days_ago(&t, 70).await, days_ago(&t, 30).await);
    let earlier = format!("({old} - interval '1 hour')");
    let (released, released_lines) = cancelled_order(&t, v, "failed", &old, &old, 2).await;
    let (paid, paid_lines) = cancelled_order(&t, v, "paid", &old, &old, 1).await;
    let (by_shop, _) = cancelled_order(&t, v, "pending", &earlier, &old, 1).await;
    let (recent, recent_lines) = cancelled_order(&t, v, "pending", &young, &young, 1).await;
    let (referenced, referenced_lines) = cancelled_order(&t, v, "pending", &old, &old, 1).await;
    t.exec(&format!(
        "INSERT INTO shop_refund (order_id) VALUES ({referenced})"
    ))
    .await;
    let before = t.fingerprint().await;

    let (dry, code) = cli(&t, &["--orders"]).await;
    assert_eq!(code, 3, "{dry}");
    assert_eq!(t.fingerprint().await, before, "a dry run changes nothing");
    assert_eq!(dry["orders"]["eligible"], 2, "{dry}");
    assert_eq!(dry["orders"]["skipped_referenced"], 1, "{dry}");
    assert_eq!(dry["orders"]["lines_deleted"], 2, "{dry}: counted");

    let (applied, code) = cli(&t, &["--orders", "--apply"]).await;
    assert_eq!(code, 0, "a referenced order waits for the shop: {applied}");
    let orders = &applied["orders"];
    assert_eq!(orders["deleted"], 1, "{applied}");
    assert_eq!(orders["lines_deleted"], 2, "{applied}");
    assert_eq!(orders["skipped_referenced"], 1, "{applied}");
    assert_eq!(
        orders["referenced"],
        json!([{"order_id": referenced, "referenced_by": ["public.shop_refund(order_id)"]}]),
        "{applied}"
    );
    assert_eq!(
        orders["foreign_keys"],
        json!(["public.shop_refund(order_id)"])
    );
    assert!(!exists(&t, "orders_order", released).await);
    for id in released_lines {
        assert!(!exists(&t, "orders_inventoryreservation", id).await);
    }
    for order in [paid, by_shop, recent, referenced] {
        assert!(exists(&t, "orders_order", order).await, "order {order}");
    }
    for id in [paid_lines, recent_lines, referenced_lines].concat() {
        assert!(
            exists(&t, "orders_inventoryreservation", id).await,
            "line {id}"
        );
    }
}

/// A reservation another transaction holds is skipped, never waited on (exit 3: work left);
/// the next purge takes it.
#[tokio::test]
async fn a_held_row_is_skipped_and_taken_next_time() {
    let t = TestApp::spawn().await;
    let v = t.variant(0).await;
    let old = days_ago(&t, 70).await;
    let mut rows = Vec::new();
    for _ in 0..3 {
        rows.push(line(&t, None, v, "expired", &old).await);
    }
    let mut shopper = t.connect().await;
    let held = hold_row(&mut shopper, "orders_inventoryreservation", rows[1]).await;
    let (first, code) = cli(&t, &["--apply"]).await;
    assert_eq!(code, 3, "{first}");
    assert_eq!(first["reservations"]["deleted"], 2, "{first}");
    assert_eq!(first["reservations"]["skipped_locked"], 1, "{first}");
    assert_eq!(reservation_ids(&t).await, vec![rows[1]]);
    held.rollback().await.unwrap();
    let (second, code) = cli(&t, &["--apply"]).await;
    assert_eq!(code, 0, "{second}");
    assert_eq!(second["reservations"]["deleted"], 1, "{second}");
}

/// A purge stops before a chunk that could not finish before its deadline, and the next one
/// takes the rest: chunks of 4 rows, each row's delete made to take 300 ms, and a deadline a
/// second past the first chunk's start.
#[tokio::test]
async fn a_purge_cut_by_its_time_budget_resumes_next_time() {
    let t = TestDb::new().await;
    let v = t.variant(0).await;
    let old = days_ago(&t, 70).await;
    for _ in 0..12 {
        line(&t, None, v, "expired", &old).await;
    }
    t.exec(
        "CREATE FUNCTION slow_delete() RETURNS trigger LANGUAGE plpgsql AS \
         $$ BEGIN PERFORM pg_sleep(0.3); RETURN OLD; END $$; \
         CREATE TRIGGER slow BEFORE DELETE ON orders_inventoryreservation \
         FOR EACH ROW EXECUTE FUNCTION slow_delete()",
    )
    .await;
    let settings = ReleaseSettings {
        batch_size: Some(4),
        ..settings()
    };
    let first = purge_as_role(&t, &settings, Some(Duration::from_secs(1))).await;
    assert_eq!(first.stopped, "time_budget", "{first:?}");
    assert!((1..12).contains(&first.reservations.deleted), "{first:?}");
    assert!(first.work_remains());
    let second = purge_as_role(&t, &settings, None).await;
    assert_eq!(second.stopped, "done", "{second:?}");
    assert_eq!(first.reservations.deleted + second.reservations.deleted, 12);
    assert_eq!(reservation_ids(&t).await, Vec::<i64>::new());
}

/// While the release has due work the purge yields (the release goes first), and stops at its
/// deadline having deleted nothing; once the release ran, the purge goes on.
#[tokio::test]
async fn the_purge_yields_while_the_release_has_due_work() {
    let t = TestDb::new().await;
    let v = t.variant(0).await;
    let old = days_ago(&t, 70).await;
    let gone = line(&t, None, v, "expired", &old).await;
    t.one_due_order(1).await;
    let yielded = purge_as_role(&t, &settings(), Some(Duration::from_millis(600))).await;
    assert_eq!(yielded.stopped, "release_due_work", "{yielded:?}");
    assert!(yielded.release_yields >= 1, "{yielded:?}");
    assert_eq!(yielded.reservations.deleted, 0);
    assert!(exists(&t, "orders_inventoryreservation", gone).await);

    let mut db = t.open().await;
    run(&mut db, &settings(), false).await;
    let after = purge_as_role(&t, &settings(), None).await;
    assert_eq!(after.reservations.deleted, 1, "{after:?}");
}

/// Fewer than 8 days are refused (exit 2) naming the week `report` covers by default, on both
/// front doors; 8 is accepted.
#[tokio::test]
async fn fewer_than_eight_days_are_refused() {
    let t = TestApp::spawn().await;
    let out = t
        .front()
        .with("DATABASE_URL", purge_url(&t.db))
        .cli(&["purge", "--older-than", "7"])
        .await;
    assert_eq!(out.code, Some(2), "{}", out.stderr);
    assert!(
        out.stderr.contains("--older-than") && out.stderr.contains("7 days `report` covers"),
        "{}",
        out.stderr
    );
    let refused = t
        .lambda(json!({"action": "purge", "older_than_days": 7}))
        .await
        .expect_err("7 days accepted");
    assert!(
        format!("{refused:?}").contains("older_than_days"),
        "{refused:?}"
    );
    let (eight, code) = cli(&t, &["--older-than", "8"]).await;
    assert_eq!(code, 0, "{eight}");
}

/// The release's role cannot purge (it never deletes): the purge fails naming the purge role's
/// grants and nothing is deleted. The purge role can delete, read the lag, and nothing else.
#[tokio::test]
async fn the_release_role_cannot_purge_and_the_purge_role_only_deletes() {
    let t = TestApp::spawn().await;
    let v = t.variant(0).await;
    let old = days_ago(&t, 70).await;
    let row = line(&t, None, v, "expired", &old).await;
    let out = t.cli(&["purge", "--apply"]).await;
    assert_eq!(out.code, Some(1), "{}", out.stdout);
    assert!(
        out.stderr.contains("infra/purge-role.sql"),
        "{}",
        out.stderr
    );
    assert!(exists(&t, "orders_inventoryreservation", row).await);

    let role = connect_url(&purge_url(&t.db)).await;
    let monitor: bool = role
        .query_one("SELECT pg_has_role('pg_monitor', 'MEMBER')", &[])
        .await
        .unwrap()
        .get(0);
    assert!(monitor, "the purge role reads the replicas' lag");
    for sql in [
        "UPDATE orders_inventoryreservation SET status = 'active'",
        "UPDATE orders_order SET status = 'pending'",
        "UPDATE orders_order SET payment_status = 'paid'",
        "INSERT INTO orders_order (order_number) VALUES ('X-1')",
        "SELECT order_number FROM orders_order",
        "SELECT quantity FROM orders_inventoryreservation",
        "UPDATE products_productvariant SET reserved_quantity = 0",
        "DELETE FROM products_productvariant",
        "DELETE FROM drops_dropproduct",
        "TRUNCATE orders_inventoryreservation",
        "CREATE TABLE unreserver_scratch (i int)",
        // Its horizon is written forward only (MARK_PURGED), never deleted.
        "DELETE FROM unreserver_purge_horizon",
        "TRUNCATE unreserver_purge_horizon",
    ] {
        let err = role
            .batch_execute(sql)
            .await
            .err()
            .unwrap_or_else(|| panic!("the purge role may run: {sql}"));
        assert_eq!(
            err.code(),
            Some(&SqlState::INSUFFICIENT_PRIVILEGE),
            "{sql}: {err}"
        );
    }
    let (applied, code) = cli(&t, &["--apply"]).await;
    assert_eq!(code, 0, "{applied}");
    assert!(!exists(&t, "orders_inventoryreservation", row).await);
}

/// Inserts `n` expired cart holds of `variant` released at `released` (an SQL expression).
async fn old_holds(t: &TestDb, variant: i64, released: &str, n: i64) {
    t.exec(&format!(
        "INSERT INTO orders_inventoryreservation \
         (order_id, product_variant_id, quantity, status, created_at, expires_at, released_at) \
         SELECT NULL, {variant}, 1, 'expired', now() - interval '100 days', \
                now() - interval '99 days', {released} FROM generate_series(1, {n})"
    ))
    .await;
}

/// A chunk reads its window through the primary key, not every old row of the table: with
/// 20,000 old rows, the chunk of the first 100 reads and filters out a few hundred rows at
/// most. (A chunk that read its window's end inside its own statement was planned as a scan
/// of every old row, the rule's subquery run on each: 100-row chunks took seconds.)
#[tokio::test]
async fn a_chunk_reads_only_its_window() {
    use unreserver::db::sql::purge::{PURGE_RESERVATION_CHUNK, RESERVATION_WINDOW};
    let t = TestDb::new().await;
    let v = t.variant(0).await;
    let old = days_ago(&t, 70).await;
    old_holds(&t, v, &old, 20_000).await;
    t.exec("ANALYZE orders_inventoryreservation").await;
    let first = t
        .i64("SELECT min(id) FROM orders_inventoryreservation")
        .await;
    let mut c = t.connect().await;
    let tx = c.transaction().await.unwrap();
    let window = tx
        .query_one(RESERVATION_WINDOW, &[&(first - 1), &100i64, &i64::MAX])
        .await
        .unwrap();
    let last: i64 = window.get("last_id");
    let plan: Vec<String> = tx
        .query(
            &format!("EXPLAIN (ANALYZE, COSTS OFF) {PURGE_RESERVATION_CHUNK}"),
            &[&(first - 1), &last, &60i32, &true, &true],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    tx.rollback().await.unwrap();
    let number_after = |line: &str, key: &str| -> i64 {
        line.rsplit_once(key)
            .and_then(|(_, rest)| rest.split(|c: char| !c.is_ascii_digit()).next())
            .and_then(|n| n.parse().ok())
            .unwrap_or(0)
    };
    let read: i64 = plan
        .iter()
        .map(|line| {
            if line.contains(" on orders_inventoryreservation") {
                number_after(line, "rows=") * number_after(line, "loops=")
            } else {
                number_after(line, "Rows Removed by Filter: ")
            }
        })
        .sum();
    assert!(read <= 500, "read {read} rows:\n{}", plan.join("\n"));
}

/// Other sessions at work on the database (a shopper in the middle of a checkout) make the
/// purge give way: every chunk at the controller's floor, a rest after each (`PURGE_REST_RATIO`
/// times the chunk's time, at least 10 ms: `rested_ms`); with nobody about, no chunk counts as
/// contended and none rests.
#[tokio::test]
async fn the_purge_gives_way_while_other_sessions_are_at_work() {
    let t = TestDb::new().await;
    let v = t.variant(0).await;
    let old = days_ago(&t, 70).await;
    old_holds(&t, v, &old, 1_000).await;
    let mut shopper = t.connect().await;
    let checkout = shopper.transaction().await.unwrap();
    checkout.execute("SELECT 1", &[]).await.unwrap();
    let busy = purge_as_role(&t, &settings(), None).await;
    assert_eq!(busy.reservations.deleted, 1_000, "{busy:?}");
    assert_eq!(busy.controller.batch_rows_max, 100, "{busy:?}");
    assert_eq!(
        u64::from(busy.controller.contended_batches),
        busy.chunks,
        "{busy:?}"
    );
    assert!(busy.rested_ms >= 10 * busy.chunks, "{busy:?}");
    checkout.rollback().await.unwrap();
    old_holds(&t, v, &old, 1_000).await;
    let quiet = purge_as_role(&t, &settings(), None).await;
    assert_eq!(quiet.reservations.deleted, 1_000, "{quiet:?}");
    assert_eq!(quiet.controller.contended_batches, 0, "{quiet:?}");
    assert_eq!(quiet.rested_ms, 0, "{quiet:?}");
}

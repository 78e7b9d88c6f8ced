//! `Stock Released`: one event per variant and per drop row each committed batch gave units
//! back to, through moto's EventBridge to an SQS queue (and the stand-in that enforces
//! PutEvents' limits): under live traffic the units add up, per variant and per drop, to what
//! the database shows released, and the replay gives the same ids; a batch touching thousands of
//! variants fits EventBridge's limits, each row announced once with what it shows for sale; a dry
//! run and a rolled-back batch announce nothing; without a bus the events go to stderr; in
//! follow mode they reach the bus within seconds of the commit.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use serde_json::{json, Value};
use tokio_postgres::Client;
use unreserver::db::sql::outbox;
use unreserver::events::model;
use unreserver::events::run::run_publishing;
use unreserver::events::stock::{self, STOCK_RELEASED};
use unreserver::{Database, OnCommit, ReleaseSettings, RunOptions};

use crate::app::TestApp;
use crate::common::{settings, Res, TestDb};
use crate::events::{
    bus_to_queue, bus_to_queue_matching, drain, limited_publisher, publishing_run, sdk,
    stand_in_counters,
};

const VARIANTS: i64 = 8;
/// The first DROPS variants are each in a limited drop (the drop row's id is the variant's).
const DROPS: i64 = 3;

/// The `Stock Released` events among `events`, each once (by `event_id`: delivery is at least
/// once), checking that two copies of one id say the same.
fn stock_by_id(events: &[Value]) -> BTreeMap<String, Value> {
    let mut by_id: BTreeMap<String, Value> = BTreeMap::new();
    for e in events.iter().filter(|e| e["detail-type"] == STOCK_RELEASED) {
        let detail = e["detail"].clone();
        let id = detail["event_id"].as_str().unwrap().to_string();
        if let Some(seen) = by_id.insert(id.clone(), detail.clone()) {
            assert_eq!(seen, detail, "two events with one id {id}");
        }
    }
    by_id
}

/// The units the events announce, summed per variant and per drop row.
fn units_announced(events: &BTreeMap<String, Value>) -> (BTreeMap<i64, i64>, BTreeMap<i64, i64>) {
    let (mut variants, mut drops) = (BTreeMap::new(), BTreeMap::new());
    for d in events.values() {
        let units = d["units"].as_i64().unwrap();
        match (
            d["product_variant_id"].as_i64(),
            d["drop_product_id"].as_i64(),
        ) {
            (Some(v), None) => *variants.entry(v).or_default() += units,
            (None, Some(p)) => *drops.entry(p).or_default() += units,
            _ => panic!("a Stock Released event names one variant or one drop row: {d}"),
        }
    }
    (variants, drops)
}

/// The units the database shows released (expired reservations), per variant and per drop.
async fn units_released(c: &Client) -> (BTreeMap<i64, i64>, BTreeMap<i64, i64>) {
    let sum = |column: &'static str| async move {
        c.query(
            &format!(
                "SELECT {column}, sum(quantity)::int8 FROM orders_inventoryreservation \
                 WHERE status = 'expired' AND {column} IS NOT NULL GROUP BY 1"
            ),
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect::<BTreeMap<i64, i64>>()
    };
    (
        sum("product_variant_id").await,
        sum("drop_product_id").await,
    )
}

/// A checkout: an order of one to three lines, due within 1.2 s, its counters raised (variants
/// then drops, ascending, as the shop locks them).
async fn checkout(c: &mut Client) -> Result<(), tokio_postgres::Error> {
    let tx = c.transaction().await?;
    let order: i64 = tx
        .query_one(
            "INSERT INTO orders_order (order_number) VALUES ('S-' || left(md5(random()::text), 24)) \
             RETURNING id",
            &[],
        )
        .await?
        .get(0);
    let mut lines: Vec<(i64, i32)> = (0..fastrand::i64(1..=3))
        .map(|_| (fastrand::i64(1..=VARIANTS), fastrand::i32(1..=3)))
        .collect();
    lines.sort_unstable();
    for (variant, qty) in &lines {
        let drop = (*variant <= DROPS).then_some(*variant);
        let ms = fastrand::i64(0..1200).to_string();
        tx.execute(
            "INSERT INTO orders_inventoryreservation \
             (order_id, product_variant_id, drop_product_id, quantity, expires_at) \
             VALUES ($1, $2, $3, $4, now() + ($5::text || ' ms')::interval)",
            &[&order, variant, &drop, qty, &ms],
        )
        .await?;
    }
    for (variant, qty) in &lines {
        tx.execute(
            "UPDATE products_productvariant SET reserved_quantity = reserved_quantity + $2 \
             WHERE id = $1",
            &[variant, qty],
        )
        .await?;
    }
    for (variant, qty) in lines.iter().filter(|(v, _)| *v <= DROPS) {
        tx.execute(
            "UPDATE drops_dropproduct SET reserved_quantity = reserved_quantity + $2 \
             WHERE id = $1",
            &[variant, qty],
        )
        .await?;
    }
    tx.commit().await
}

/// A payment: a pending order (skipping any another transaction holds) confirmed, its
/// reservations converted, its units sold.
async fn pay(c: &mut Client) -> Result<(), tokio_postgres::Error> {
    let tx = c.transaction().await?;
    let Some(order) = tx
        .query_opt(
            "SELECT id FROM orders_order WHERE status = 'pending' ORDER BY random() LIMIT 1 \
             FOR UPDATE SKIP LOCKED",
            &[],
        )
        .await?
    else {
        return tx.commit().await;
    };
    let order: i64 = order.get(0);
    let lines = tx
        .query(
            "UPDATE orders_inventoryreservation SET status = 'converted' \
             WHERE order_id = $1 AND status = 'active' \
             RETURNING product_variant_id, drop_product_id, quantity",
            &[&order],
        )
        .await?;
    let mut lines: Vec<(i64, Option<i64>, i32)> = lines
        .iter()
        .map(|r| (r.get(0), r.get(1), r.get(2)))
        .collect();
    lines.sort_unstable();
    for (variant, _, qty) in &lines {
        tx.execute(
            "UPDATE products_productvariant SET reserved_quantity = reserved_quantity - $2, \
             stock_quantity = stock_quantity - $2 WHERE id = $1",
            &[variant, qty],
        )
        .await?;
    }
    for (_, drop, qty) in &lines {
        if let Some(drop) = drop {
            tx.execute(
                "UPDATE drops_dropproduct SET reserved_quantity = reserved_quantity - $2, \
                 sold_quantity = sold_quantity + $2 WHERE id = $1",
                &[drop, qty],
            )
            .await?;
        }
    }
    tx.execute(
        "UPDATE orders_order SET status = 'confirmed', payment_status = 'paid' WHERE id = $1",
        &[&order],
    )
    .await?;
    tx.commit().await
}

/// Two release runs looping at once while shoppers check out (some lines in limited drops)
/// and pay, then a last run. Each committed batch's events are taken where the run hands them
/// to the publisher — its on-commit hook, through the same `model::from_batch` — so that every
/// one of hundreds is seen (moto delivers a few a second; the other tests cover the bus). The
/// `Stock Released` units, summed per variant and per drop row, equal the units the database
/// shows released (and the runs reported); no counter was clamped; no two events share an id;
/// and the replay of the window gives exactly the same ids with the same units.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn stock_released_units_add_up_to_the_units_released_under_live_traffic() {
    let t = TestDb::new().await;
    t.exec(&format!(
        "INSERT INTO products_productvariant (id, product_id, sku, stock_quantity) \
           SELECT g, g, 'STOCK-' || g, 1000000 FROM generate_series(1, {VARIANTS}) g; \
         INSERT INTO drops_dropproduct (id, drop_id, product_variant_id, drop_quantity) \
           SELECT g, 1, g, 1000000 FROM generate_series(1, {DROPS}) g"
    ))
    .await;
    let since = SystemTime::now() - Duration::from_secs(60);
    let s = ReleaseSettings {
        batch_size: Some(10),
        ..settings()
    };
    let announced: Arc<Mutex<Vec<Value>>> = Arc::default();
    let hook = {
        let announced = announced.clone();
        OnCommit::new(move |batch| {
            let events = model::from_batch(&batch);
            let mut all = announced.lock().unwrap();
            all.extend(events.iter().map(|e| serde_json::to_value(e).unwrap()));
        })
    };
    let stop = Arc::new(AtomicBool::new(false));
    let units = Arc::new(AtomicU64::new(0));
    let mut tasks = Vec::new();
    for shopper in 0..3 {
        let (mut c, stop) = (t.connect().await, stop.clone());
        tasks.push(tokio::spawn(async move {
            while !stop.load(Ordering::Relaxed) {
                let done = match shopper {
                    0 | 1 => checkout(&mut c).await,
                    _ => pay(&mut c).await,
                };
                // A shop transaction that fails is the shop's business here (the torture
                // test counts them): only what the release did is checked.
                let _ = done;
            }
        }));
    }
    let run = |db: Database, s: ReleaseSettings| {
        let (stop, units, hook) = (stop.clone(), units.clone(), hook.clone());
        async move {
            let mut db = db;
            loop {
                let options = RunOptions {
                    on_commit: Some(hook.clone()),
                    ..RunOptions::default()
                };
                let report = unreserver::run(&mut db, &s, &options)
                    .await
                    .unwrap_or_else(|f| panic!("a release run failed: {}", f.error.chain()));
                units.fetch_add(report.counts.units_released, Ordering::Relaxed);
                if stop.load(Ordering::Relaxed) {
                    return report;
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
    };
    let mut runs = Vec::new();
    for _ in 0..2 {
        runs.push(tokio::spawn(run(t.open_with(&s).await, s.clone())));
    }
    tokio::time::sleep(Duration::from_secs(4)).await;
    stop.store(true, Ordering::Relaxed);
    for task in tasks {
        task.await.expect("a shopper panicked");
    }
    for task in runs {
        task.await.expect("a release run panicked");
    }
    // Everything reserved is due by now: a last run takes the rest.
    tokio::time::sleep(Duration::from_millis(1300)).await;
    let last = run(t.open_with(&s).await, s.clone()).await;
    assert_eq!(last.backlog_remaining, 0);

    let announced = announced.lock().unwrap().clone();
    let stock = stock_by_id(&announced);
    let count = announced
        .iter()
        .filter(|e| e["detail-type"] == STOCK_RELEASED)
        .count();
    assert_eq!(count, stock.len(), "two events with one id");
    let (variants, drops) = units_announced(&stock);
    let (released_variants, released_drops) = units_released(&t.client).await;
    let total: i64 = released_variants.values().sum();
    eprintln!(
        "stock released: {} events, {total} units over {} variants and {} drops",
        stock.len(),
        variants.len(),
        drops.len()
    );
    assert!(total > 100, "too little released: {total}");
    assert_eq!(drops.len() as i64, DROPS, "every drop row saw units back");
    assert_eq!(variants, released_variants, "per variant");
    assert_eq!(drops, released_drops, "per drop");
    assert_eq!(
        total as u64,
        units.load(Ordering::Relaxed),
        "as the runs reported"
    );
    assert!(
        stock.values().all(|d| d["clamped"] == json!(false)),
        "a counter was clamped"
    );
    assert!(stock.values().all(|d| d["available_after"].is_i64()));

    // The replay: the same ids, with the same units.
    let rows = outbox::released_in_window(&t.client, since, None, 15)
        .await
        .unwrap();
    let replayed: Vec<Value> = stock::of_window(&rows)
        .iter()
        .map(|e| serde_json::to_value(e).unwrap())
        .collect();
    let replayed = stock_by_id(&replayed);
    // The same units per variant and drop row. The same ids for every batch that released its
    // orders whole; an order released over several batches (one hot row at a time) has every
    // line released with one instant, which the replay reads back as one batch: its events
    // there carry the summed units under another id (docs/design.md, "Stock Released").
    assert_eq!(
        units_announced(&replayed),
        (variants.clone(), drops.clone())
    );
    let same = replayed.keys().filter(|id| stock.contains_key(*id)).count();
    assert!(
        same * 2 >= replayed.len(),
        "the replay's ids are not the run's: {same} of {}",
        replayed.len()
    );
    assert!(replayed.values().all(|d| d["available_after"].is_null()));
}

/// One order of 2,000 lines, each on its own variant (500 of them in a limited drop), released
/// in one batch and published through the stand-in that enforces PutEvents' limits: its
/// `Order Expired` and 2,500 `Stock Released` events, none refused or failed. The bus delivers
/// 40 of them to the queue (moto delivers a few a second to SQS: 2,500 would take minutes),
/// each once, with its units and what its row shows for sale after the batch (variant: stock −
/// reserved; drop: drop − reserved − sold).
#[tokio::test]
async fn a_batch_touching_thousands_of_variants_announces_each_within_eventbridge_limits() {
    let t = TestDb::new().await;
    t.exec(
        "INSERT INTO products_productvariant (id, product_id, sku, stock_quantity, reserved_quantity) \
           SELECT g, g, 'MANY-' || g, 10, 2 FROM generate_series(1, 2000) g; \
         INSERT INTO drops_dropproduct (id, drop_id, product_variant_id, drop_quantity, \
           reserved_quantity, sold_quantity) \
           SELECT g, 1, g, 20, 2, 3 FROM generate_series(1, 500) g; \
         INSERT INTO orders_order (id, order_number) VALUES (1, 'MANY-1'); \
         INSERT INTO orders_inventoryreservation \
           (order_id, product_variant_id, drop_product_id, quantity, expires_at) \
           SELECT 1, g, CASE WHEN g <= 500 THEN g END, 2, now() - interval '1 minute' \
           FROM generate_series(1, 2000) g",
    )
    .await;
    // The first 20 drop rows' events and the last 20 variants'.
    let (bus, queue) = bus_to_queue_matching(&[
        json!({"detail-type": [STOCK_RELEASED],
            "detail": {"drop_product_id": [{"numeric": ["<=", 20]}]}}),
        json!({"detail-type": [STOCK_RELEASED],
            "detail": {"product_variant_id": [{"numeric": [">", 1980]}]}}),
    ])
    .await;
    let publisher = limited_publisher(bus).await;
    let refused_before = stand_in_counters().await["requests"].as_u64().unwrap();
    let mut db = t.open().await;
    let report = publishing_run(&mut db, RunOptions::default(), &publisher).await;
    assert_eq!(report.counts.reservations_released, 2000);
    // 2,500 `Stock Released` (each row in one batch: the order is released in parts of lines,
    // each part on rows of its own) and an `Order Expired` for each part.
    assert_eq!(report.events_failed, 0, "{:?}", report.counts);
    assert!(
        report.events_published > 2500,
        "{}",
        report.events_published
    );
    let refused = stand_in_counters().await["requests"].as_u64().unwrap() - refused_before;
    assert_eq!(refused, 0, "the stand-in refused requests");
    let arrived = drain(&queue).await;
    let stock = stock_by_id(&arrived);
    assert_eq!((arrived.len(), stock.len()), (40, 40), "each once");
    let (variants, drops) = units_announced(&stock);
    assert_eq!(variants, (1981..=2000).map(|v| (v, 2)).collect());
    assert_eq!(drops, (1..=20).map(|d| (d, 2)).collect());
    for d in stock.values() {
        let expected = if d["drop_product_id"].is_i64() {
            17
        } else {
            10
        };
        assert_eq!(d["available_after"], expected, "{d}");
        assert_eq!(d["clamped"], false);
    }
}

/// A dry run announces nothing; a batch that fails after giving units back to the variants
/// (a fault on the drop row, updated last) is rolled back and announces nothing either, while
/// the batch committed before it announces its units; once the fault is gone, the next run
/// announces the rest.
#[tokio::test]
async fn no_stock_released_for_a_dry_run_or_a_rolled_back_batch() {
    let t = TestDb::new().await;
    let v = t.variant(3).await;
    let d = t.drop_product(v, 2).await;
    let first = t.order("pending", "pending").await;
    t.reservation(Res::new(Some(first), v, 1, "-10 minutes"))
        .await;
    let second = t.order("pending", "pending").await;
    t.reservation(Res {
        drop: Some(d),
        ..Res::new(Some(second), v, 2, "-5 minutes")
    })
    .await;
    let (bus, queue) = bus_to_queue().await;
    let publisher =
        unreserver::events::Publisher::new(aws_sdk_eventbridge::Client::new(&sdk().await), bus);
    let s = ReleaseSettings {
        batch_size: Some(1),
        ..settings()
    };
    let mut db = t.open_with(&s).await;
    let dry = RunOptions {
        dry_run: true,
        ..RunOptions::default()
    };
    let report = run_publishing(&mut db, &s, dry, Some(&publisher), Duration::from_secs(30))
        .await
        .unwrap_or_else(|f| panic!("{}", f.error.chain()));
    assert_eq!(report.counts.units_released, 3, "the dry run saw the work");
    assert_eq!(report.events_published, 0);
    assert!(drain(&queue).await.is_empty(), "a dry run announced");

    t.exec(
        "CREATE FUNCTION fail_drop_update() RETURNS trigger LANGUAGE plpgsql AS \
           $$ BEGIN RAISE EXCEPTION 'injected fault'; END $$; \
         CREATE TRIGGER fail_drop_update BEFORE UPDATE ON drops_dropproduct \
           FOR EACH ROW EXECUTE FUNCTION fail_drop_update()",
    )
    .await;
    let failure = run_publishing(
        &mut db,
        &s,
        RunOptions::default(),
        Some(&publisher),
        Duration::from_secs(30),
    )
    .await
    .unwrap_err();
    assert!(failure.error.chain().contains("injected fault"));
    assert_eq!(failure.report.counts.units_released, 1, "the first batch");
    let stock = stock_by_id(&drain(&queue).await);
    let (variants, drops) = units_announced(&stock);
    assert_eq!(
        variants,
        BTreeMap::from([(v, 1)]),
        "only the committed batch's"
    );
    assert!(drops.is_empty(), "the rolled-back batch announced its drop");
    assert_eq!(t.reserved(v).await, 2);

    t.exec("DROP TRIGGER fail_drop_update ON drops_dropproduct")
        .await;
    publishing_run(&mut db, RunOptions::default(), &publisher).await;
    let stock = stock_by_id(&drain(&queue).await);
    assert_eq!(
        units_announced(&stock),
        (BTreeMap::from([(v, 2)]), BTreeMap::from([(d, 2)]))
    );
}

/// Without a bus (a shop outside AWS) each `Stock Released` event is one log line on stderr,
/// its JSON in `event`; stdout keeps the run's one answer; a dry run logs none.
#[tokio::test]
async fn without_a_bus_the_events_are_logged_on_stderr() {
    let t = TestApp::spawn().await;
    let (v, _, _) = t.one_due_order(2).await;
    let logged = |stderr: &str| -> Vec<Value> {
        stderr
            .lines()
            .filter_map(|line| serde_json::from_str::<Value>(line).ok())
            .filter(|line| line["message"] == STOCK_RELEASED)
            .map(|line| serde_json::from_str(line["event"].as_str().unwrap()).unwrap())
            .collect()
    };
    let front = t.with("LOG_FORMAT", "json").without("EVENT_BUS_NAME");
    let dry = front.cli(&["run", "--dry-run"]).await;
    assert!(dry.success(), "{}", dry.stderr);
    assert!(logged(&dry.stderr).is_empty(), "{}", dry.stderr);
    let out = front.cli(&["run"]).await;
    assert!(out.success(), "{}", out.stderr);
    assert_eq!(out.json()["units_released"], 2);
    let events = logged(&out.stderr);
    assert_eq!(events.len(), 1, "{}", out.stderr);
    assert_eq!(events[0]["detail-type"], STOCK_RELEASED);
    assert_eq!(events[0]["detail"]["product_variant_id"], v);
    assert_eq!(events[0]["detail"]["units"], 2);
    assert_eq!(events[0]["detail"]["available_after"], 1000);
}

/// In follow mode each batch's `Stock Released` reaches the bus within seconds of its commit:
/// 8 reservations on 8 variants falling due 500 ms apart, followed for 9 s. The delay from each
/// event's `released_at` (its batch's transaction time) to the moment the bus delivered it to
/// the queue (SQS's `SentTimestamp`, set inside moto's `PutEvents`) is at most 5 s at p95; the
/// delays are printed. A latency figure, so `scripts/test.sh` runs it alone, after the suite:
/// beside the other tests moto answers in seconds (measured there: up to 4.96 s), which is not
/// the release's doing. (A pass waits for its events before the next one: on a slow moto fewer
/// passes fit in the time, so only some of the 8 need be released.)
#[tokio::test]
#[ignore = "a latency figure: scripts/test.sh runs it alone"]
async fn follow_mode_publishes_stock_released_within_seconds_of_the_commit() {
    use aws_sdk_sqs::types::MessageSystemAttributeName::SentTimestamp;
    let t = TestApp::spawn().await;
    for k in 0..8 {
        let v = t.variant(1).await;
        let order = t.order("pending", "pending").await;
        let due = format!("{} milliseconds", 1000 + 500 * k);
        t.reservation(Res::new(Some(order), v, 1, Box::leak(due.into_boxed_str())))
            .await;
    }
    let (bus, queue) = bus_to_queue_matching(&[json!({"detail-type": [STOCK_RELEASED]})]).await;
    let out = t
        .with_aws()
        .with("EVENT_BUS_NAME", &bus)
        .cli(&["follow", "--for", "9"])
        .await;
    assert!(out.success(), "{}", out.stderr);
    let report = out.json();
    let released = report["reservations_released"].as_u64().unwrap();
    assert!(released >= 4, "{report}");
    assert_eq!(report["events_failed"], 0, "{report}");

    let sqs = aws_sdk_sqs::Client::new(&sdk().await);
    let mut delays_ms = Vec::new();
    loop {
        let received = sqs
            .receive_message()
            .queue_url(&queue)
            .max_number_of_messages(10)
            .message_system_attribute_names(SentTimestamp)
            .wait_time_seconds(1)
            .send()
            .await
            .unwrap();
        if received.messages().is_empty() {
            break;
        }
        for m in received.messages() {
            let event: Value = serde_json::from_str(m.body().unwrap()).unwrap();
            let released_at = event["detail"]["released_at"].as_str().unwrap();
            let released_at = humantime::parse_rfc3339(released_at).unwrap();
            let sent: u64 = m.attributes().unwrap()[&SentTimestamp].parse().unwrap();
            let sent = SystemTime::UNIX_EPOCH + Duration::from_millis(sent);
            let delay = sent.duration_since(released_at).unwrap_or_default();
            delays_ms.push(delay.as_millis() as u64);
            sqs.delete_message()
                .queue_url(&queue)
                .receipt_handle(m.receipt_handle().unwrap())
                .send()
                .await
                .unwrap();
        }
    }
    delays_ms.sort_unstable();
    eprintln!("follow: Stock Released from commit to the bus, ms: {delays_ms:?}");
    assert_eq!(delays_ms.len() as u64, released, "one per variant");
    let p95 = delays_ms[(delays_ms.len() * 95).div_ceil(100) - 1];
    assert!(p95 <= 5000, "p95 {p95} ms: {delays_ms:?}");
}

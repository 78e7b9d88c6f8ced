//! Expiry events through the real AWS SDK, over HTTP, to moto's EventBridge, whose rule
//! delivers them to an SQS queue: each cancelled order's event and each hold's arrive once per
//! publish with the documented detail; the database, read back for the window, gives the same
//! set; a publish that fails is counted and leaves the release committed.

use std::collections::BTreeMap;
use std::time::{Duration, SystemTime};

use aws_sdk_eventbridge::config::{Credentials, Region};
use serde_json::{json, Value};
use unreserver::db::sql::outbox;
use unreserver::events::model::from_rows;
use unreserver::events::stock::{self, STOCK_RELEASED};
use unreserver::events::{run::run_publishing, Publisher};
use unreserver::RunOptions;

use crate::app::TestApp;
use crate::common::{settings, test_env, Res, TestDb};

pub(crate) async fn sdk() -> aws_config::SdkConfig {
    aws_config::defaults(aws_config::BehaviorVersion::latest())
        .region(Region::new("us-east-1"))
        .endpoint_url(test_env("UNRESERVER_TEST_AWS_ENDPOINT"))
        .credentials_provider(Credentials::new("test", "test", None, None, "tests"))
        .load()
        .await
}

fn unique(prefix: &str) -> String {
    format!("{prefix}-{}-{}", std::process::id(), fastrand::u32(..))
}

/// A new bus with a rule sending every `unreserver` event to a new queue: (bus, queue url).
pub(crate) async fn bus_to_queue() -> (String, String) {
    bus_to_queue_matching(&[json!({"source": ["unreserver"]})]).await
}

/// A new bus with a rule for each of `patterns` sending the events it matches to a new queue:
/// (bus, queue url). (moto delivers a few events a second to SQS: a test publishing thousands
/// has only some of them delivered.)
pub(crate) async fn bus_to_queue_matching(patterns: &[Value]) -> (String, String) {
    let sdk = sdk().await;
    let (eb, sqs) = (
        aws_sdk_eventbridge::Client::new(&sdk),
        aws_sdk_sqs::Client::new(&sdk),
    );
    let bus = unique("shop-bus");
    eb.create_event_bus().name(&bus).send().await.unwrap();
    let queue = sqs
        .create_queue()
        .queue_name(unique("expired"))
        .send()
        .await
        .unwrap();
    let url = queue.queue_url().unwrap().to_string();
    let attrs = sqs
        .get_queue_attributes()
        .queue_url(&url)
        .attribute_names(aws_sdk_sqs::types::QueueAttributeName::QueueArn)
        .send()
        .await
        .unwrap();
    let arn = attrs
        .attributes()
        .and_then(|a| a.get(&aws_sdk_sqs::types::QueueAttributeName::QueueArn))
        .unwrap()
        .clone();
    for (i, pattern) in patterns.iter().enumerate() {
        let rule = format!("to-queue-{i}");
        eb.put_rule()
            .name(&rule)
            .event_bus_name(&bus)
            .event_pattern(pattern.to_string())
            .send()
            .await
            .unwrap();
        let target = aws_sdk_eventbridge::types::Target::builder()
            .id("queue")
            .arn(&arn)
            .build()
            .unwrap();
        eb.put_targets()
            .rule(&rule)
            .event_bus_name(&bus)
            .targets(target)
            .send()
            .await
            .unwrap();
    }
    (bus, url)
}

/// Every message on the queue until it stays empty: the delivered events.
pub(crate) async fn drain(queue: &str) -> Vec<Value> {
    let sqs = aws_sdk_sqs::Client::new(&sdk().await);
    let mut events = Vec::new();
    loop {
        let out = sqs
            .receive_message()
            .queue_url(queue)
            .max_number_of_messages(10)
            .wait_time_seconds(1)
            .send()
            .await
            .unwrap();
        let messages = out.messages();
        if messages.is_empty() {
            return events;
        }
        for m in messages {
            events.push(serde_json::from_str(m.body().unwrap()).unwrap());
            sqs.delete_message()
                .queue_url(queue)
                .receipt_handle(m.receipt_handle().unwrap())
                .send()
                .await
                .unwrap();
        }
    }
}

/// Keyed by what consumers deduplicate on, without `run_id` (nor, for `Stock Released`,
/// `available_after` and `clamped`, which a replay cannot read back).
pub(crate) fn by_subject(events: &[Value]) -> BTreeMap<String, Value> {
    events
        .iter()
        .map(|e| {
            let mut detail = e["detail"].clone();
            let key = match (detail.get("order_id"), detail.get("event_id")) {
                (Some(id), _) => format!("order {id}"),
                (None, Some(id)) => format!("stock {id}"),
                (None, None) => format!("hold {}", detail["reservation_id"]),
            };
            let fields = detail.as_object_mut().unwrap();
            fields.remove("run_id");
            if e["detail-type"] == STOCK_RELEASED {
                fields.remove("available_after");
                fields.remove("clamped");
            }
            (
                key,
                json!({"detail-type": e["detail-type"], "source": e["source"], "detail": detail}),
            )
        })
        .collect()
}

/// A real run (or dry run) of `options` that publishes through `publisher`, waiting up to 30 s
/// for the events after the run: moto, one Python process sharing a loaded 2-core CI, took
/// longer than 5 s for the 256 KB requests of the large-order test (3 of 41 events unsent).
pub(crate) async fn publishing_run(
    db: &mut unreserver::Database,
    options: RunOptions,
    publisher: &Publisher,
) -> unreserver::RunReport {
    run_publishing(
        db,
        &settings(),
        options,
        Some(publisher),
        Duration::from_secs(30),
    )
    .await
    .unwrap_or_else(|f| panic!("{}", f.error.chain()))
}

/// Two due orders (one with a drop), a hold, an order the shop had cancelled, a paid order.
async fn shop(t: &TestDb) -> (i64, i64, i64) {
    let v = t.variant(6).await;
    let d = t.drop_product(v, 2).await;
    let a = t.order("pending", "pending").await;
    let ra1 = t
        .reservation(Res {
            drop: Some(d),
            ..Res::new(Some(a), v, 2, "-1 minute")
        })
        .await;
    t.reservation(Res::new(Some(a), v, 1, "-2 minutes")).await;
    let b = t.order("pending", "failed").await;
    t.reservation(Res::new(Some(b), v, 1, "-3 minutes")).await;
    let hold = t.reservation(Res::new(None, v, 1, "-1 minute")).await;
    let shop_cancelled = t.order("cancelled", "pending").await;
    t.reservation(Res::new(Some(shop_cancelled), v, 1, "-1 minute"))
        .await;
    let paid = t.order("pending", "paid").await;
    t.reservation(Res::new(Some(paid), v, 1, "-1 minute")).await;
    let _ = ra1;
    (a, b, hold)
}

#[tokio::test]
async fn each_cancelled_order_and_hold_arrives_once_and_the_database_replays_the_same() {
    let t = TestDb::new().await;
    let (a, b, hold) = shop(&t).await;
    let (bus, queue) = bus_to_queue().await;
    let publisher = Publisher::new(aws_sdk_eventbridge::Client::new(&sdk().await), bus);
    let since = SystemTime::now() - Duration::from_secs(60);
    let mut db = t.open().await;
    let options = RunOptions::default();
    let run_id = options.run_id.clone();
    let report = publishing_run(&mut db, options, &publisher).await;
    assert_eq!(report.counts.orders_cancelled, 2);
    // Two orders, a hold; the stock of one variant and one drop row.
    assert_eq!((report.events_published, report.events_failed), (5, 0));

    let delivered = drain(&queue).await;
    assert_eq!(delivered.len(), 5, "{delivered:#?}");
    assert!(delivered
        .iter()
        .all(|e| e["detail"]["run_id"] == json!(run_id)));
    let delivered = by_subject(&delivered);
    let keys: Vec<&String> = delivered
        .keys()
        .filter(|k| !k.starts_with("stock"))
        .collect();
    assert_eq!(
        keys,
        [
            &format!("hold {hold}"),
            &format!("order {a}"),
            &format!("order {b}")
        ]
    );
    let order_a = &delivered[&format!("order {a}")];
    assert_eq!(order_a["detail-type"], "Order Expired");
    assert_eq!(order_a["source"], "unreserver");
    let number = t
        .text(&format!(
            "SELECT order_number::text FROM orders_order WHERE id = {a}"
        ))
        .await;
    assert_eq!(order_a["detail"]["order_number"], json!(number));
    assert_eq!(
        order_a["detail"]["reservations"].as_array().unwrap().len(),
        2
    );
    let cancelled_at = t
        .text(&format!(
            "SELECT to_char(cancelled_at AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS.US\"Z\"') \
             FROM orders_order WHERE id = {a}"
        ))
        .await;
    assert_eq!(order_a["detail"]["released_at"], json!(cancelled_at));
    assert_eq!(
        delivered[&format!("hold {hold}")]["detail-type"],
        "Cart Hold Released"
    );

    // The database is the outbox: the window gives exactly the same events, the stock's with
    // the same ids.
    let rows = outbox::expired_in_window(&db.client, since, None, 15)
        .await
        .unwrap();
    let released = outbox::released_in_window(&db.client, since, None, 15)
        .await
        .unwrap();
    let mut events = from_rows(&rows, None);
    events.extend(stock::of_window(&released));
    let replayed: Vec<Value> = events
        .iter()
        .map(|e| serde_json::to_value(e).unwrap())
        .collect();
    assert!(replayed.iter().all(|e| e["detail"]["run_id"].is_null()));
    assert_eq!(by_subject(&replayed), delivered);
    // A window that ends before the run holds none of them.
    assert!(
        outbox::expired_in_window(&db.client, since, Some(since + Duration::from_secs(1)), 15)
            .await
            .unwrap()
            .is_empty()
    );

    // Published again from the database: each arrives once more.
    let again = publisher.publish(events).await;
    assert_eq!((again.published, again.failed), (5, 0));
    let arrived = drain(&queue).await;
    assert_eq!(
        arrived.len(),
        5,
        "each arrives once more, not twice: {arrived:#?}"
    );
    assert_eq!(by_subject(&arrived), delivered);
}

#[tokio::test]
async fn a_failed_publish_is_counted_and_the_release_stays_committed() {
    let t = TestDb::new().await;
    let (v, order, r) = t.one_due_order(1).await;
    // moto fails the whole PutEvents call for a bus that does not exist.
    let publisher = Publisher::new(
        aws_sdk_eventbridge::Client::new(&sdk().await),
        unique("no-such-bus"),
    );
    let mut db = t.open().await;
    let report = publishing_run(&mut db, RunOptions::default(), &publisher).await;
    // The order's and its variant's.
    assert_eq!((report.events_published, report.events_failed), (0, 2));
    assert_eq!(report.counts.orders_cancelled, 1);
    assert_eq!(t.reservation_status(r).await, "expired");
    assert_eq!(t.order_status(order).await, "cancelled");
    assert_eq!(t.reserved(v).await, 0);
}

#[tokio::test]
async fn a_dry_run_publishes_nothing() {
    let t = TestDb::new().await;
    t.one_due_order(1).await;
    let (bus, queue) = bus_to_queue().await;
    let publisher = Publisher::new(aws_sdk_eventbridge::Client::new(&sdk().await), bus);
    let mut db = t.open().await;
    let options = RunOptions {
        dry_run: true,
        ..RunOptions::default()
    };
    let report = publishing_run(&mut db, options, &publisher).await;
    assert_eq!(report.counts.orders_cancelled, 1);
    assert_eq!((report.events_published, report.events_failed), (0, 0));
    assert!(drain(&queue).await.is_empty());
}

/// `unreserver events --since T --publish` sends the window's events again, each once.
#[tokio::test]
async fn the_cli_publishes_a_window_again() {
    let t = TestApp::spawn().await;
    let (a, b, hold) = shop(&t).await;
    let since = humantime::format_rfc3339(SystemTime::now() - Duration::from_secs(60)).to_string();
    let mut db = t.open().await;
    let report = unreserver::run(&mut db, &settings(), &RunOptions::default())
        .await
        .unwrap_or_else(|f| panic!("{}", f.error.chain()));
    assert_eq!(report.events_published, 0, "no bus: nothing published");
    let (bus, queue) = bus_to_queue().await;
    let out = t
        .with_aws()
        .with("EVENT_BUS_NAME", &bus)
        .cli(&["events", "--since", &since, "--publish"])
        .await;
    let stderr = &out.stderr;
    assert!(out.success(), "{stderr}");
    let printed = out.json();
    assert_eq!(printed, &json!({"published": 5, "failed": 0}));
    let arrived = drain(&queue).await;
    assert_eq!(arrived.len(), 5, "{arrived:#?}");
    let keys: Vec<String> = by_subject(&arrived)
        .into_keys()
        .filter(|k| !k.starts_with("stock"))
        .collect();
    assert_eq!(
        keys,
        [
            format!("hold {hold}"),
            format!("order {a}"),
            format!("order {b}")
        ]
    );
}

/// An SDK client for EventBridge through the stand-in that enforces PutEvents' limits (10
/// entries, 256 KB a request), in front of moto.
pub(crate) async fn limited_publisher(bus: String) -> Publisher {
    let sdk = aws_config::defaults(aws_config::BehaviorVersion::latest())
        .region(Region::new("us-east-1"))
        .endpoint_url(test_env("UNRESERVER_TEST_EVENTBRIDGE_ENDPOINT"))
        .credentials_provider(Credentials::new("test", "test", None, None, "tests"))
        // moto is slow with 256 KB requests on a loaded machine: patience, not a limit.
        .retry_config(aws_config::retry::RetryConfig::standard().with_max_attempts(6))
        .timeout_config(
            aws_config::timeout::TimeoutConfig::builder()
                .operation_attempt_timeout(Duration::from_secs(60))
                .build(),
        )
        .load()
        .await;
    Publisher::new(aws_sdk_eventbridge::Client::new(&sdk), bus)
}

/// `n` due pending orders of `lines` one-unit lines each on one variant, in one statement.
async fn orders_of(t: &TestDb, variant: i64, n: i64, lines: i64) -> Vec<i64> {
    let c = t.connect().await;
    let rows = c
        .query(
            "WITH o AS (INSERT INTO orders_order (order_number) \
               SELECT 'BIG-' || g || '-' || $3::int8 || '-' || random() FROM generate_series(1, $1::int8) g \
               RETURNING id), \
             r AS (INSERT INTO orders_inventoryreservation (order_id, product_variant_id, quantity, expires_at) \
               SELECT o.id, $3::int8, 1, now() - interval '1 minute' FROM o, generate_series(1, $2::int8)) \
             SELECT id FROM o ORDER BY id",
            &[&n, &lines, &variant],
        )
        .await
        .unwrap();
    c.execute(
        "UPDATE products_productvariant SET reserved_quantity = reserved_quantity + $2::int8 \
         WHERE id = $1",
        &[&variant, &(n * lines)],
    )
    .await
    .unwrap();
    rows.iter().map(|r| r.get(0)).collect()
}

/// Large orders through EventBridge's limits (a stand-in enforces them in front of moto): 30
/// small orders, 9 of 400 lines (nine of them with one small one pass 256 KB in one request)
/// and one of 4,000 (one event alone would pass it). Every order is announced — the largest in parts that together
/// hold each of its reservations once — and the replay of the window sends them all again.
#[tokio::test]
async fn events_of_large_orders_fit_eventbridge_limits_run_and_replay_alike() {
    let t = TestDb::new().await;
    let v = t.variant(0).await;
    let mut orders = orders_of(&t, v, 30, 1).await;
    orders.extend(orders_of(&t, v, 9, 400).await);
    let giant = orders_of(&t, v, 1, 4000).await[0];
    orders.push(giant);
    let (bus, queue) = bus_to_queue().await;
    let publisher = limited_publisher(bus.clone()).await;
    // The stand-in refuses what EventBridge refuses: 300 KB in one request.
    let big = aws_sdk_eventbridge::types::PutEventsRequestEntry::builder()
        .event_bus_name(&bus)
        .source("test")
        .detail_type("big")
        .detail(json!({"x": "y".repeat(300 * 1024)}).to_string())
        .build();
    let sdk_limited = aws_config::defaults(aws_config::BehaviorVersion::latest())
        .region(Region::new("us-east-1"))
        .endpoint_url(test_env("UNRESERVER_TEST_EVENTBRIDGE_ENDPOINT"))
        .credentials_provider(Credentials::new("test", "test", None, None, "tests"))
        .load()
        .await;
    let refused = aws_sdk_eventbridge::Client::new(&sdk_limited)
        .put_events()
        .entries(big)
        .send()
        .await;
    assert!(
        refused.is_err(),
        "the stand-in must refuse a 300 KB request"
    );

    let since = SystemTime::now() - Duration::from_secs(60);
    let mut db = t.open().await;
    let report = publishing_run(&mut db, RunOptions::default(), &publisher).await;
    assert_eq!(report.counts.orders_cancelled, 40);
    assert_eq!(report.events_failed, 0, "{report:?}");
    let announced = |events: &[Value]| {
        let mut lines: BTreeMap<i64, Vec<i64>> = BTreeMap::new();
        let mut parts: BTreeMap<i64, usize> = BTreeMap::new();
        for e in events
            .iter()
            .filter(|e| e["detail-type"] == "Order Expired")
        {
            let d = &e["detail"];
            let order = d["order_id"].as_i64().unwrap();
            *parts.entry(order).or_default() += 1;
            lines.entry(order).or_default().extend(
                d["reservations"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|r| r["id"].as_i64().unwrap()),
            );
        }
        for ids in lines.values_mut() {
            ids.sort_unstable();
        }
        (lines, parts)
    };
    let delivered = drain(&queue).await;
    let (lines, parts) = announced(&delivered);
    assert_eq!(
        lines.keys().copied().collect::<Vec<_>>(),
        orders,
        "every order announced"
    );
    assert!(
        parts[&giant] >= 2,
        "the giant order comes in parts: {}",
        parts[&giant]
    );
    let mut giant_lines = lines[&giant].clone();
    giant_lines.sort_unstable();
    giant_lines.dedup();
    assert_eq!(
        (lines[&giant].len(), giant_lines.len()),
        (4000, 4000),
        "each line once"
    );
    assert!(orders[30..39].iter().all(|o| lines[o].len() == 400));

    // The replay sends the same events again, through the same limits.
    let rows = outbox::expired_in_window(&db.client, since, None, 15)
        .await
        .unwrap();
    let released = outbox::released_in_window(&db.client, since, None, 15)
        .await
        .unwrap();
    let mut events = from_rows(&rows, None);
    events.extend(stock::of_window(&released));
    let replayed = publisher.publish(events).await;
    // The run announced the giant order once per batch it was released in (its parts); the
    // replay reads the order back whole (split only by size): other events, the same lines.
    assert_eq!(replayed.failed, 0, "{replayed:?}");
    assert!(replayed.published > 0);
    let (again, _) = announced(&drain(&queue).await);
    assert!(
        again == lines,
        "the replay announced other reservations than the run"
    );
}

/// The stand-in's counters (`GET /limits`): requests refused, entries throttled.
pub(crate) async fn stand_in_counters() -> Value {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let endpoint = test_env("UNRESERVER_TEST_EVENTBRIDGE_ENDPOINT");
    let address = endpoint.trim_start_matches("http://").trim_end_matches('/');
    let mut stream = tokio::net::TcpStream::connect(address).await.unwrap();
    stream
        .write_all(b"GET /limits HTTP/1.0\r\nHost: stand-in\r\n\r\n")
        .await
        .unwrap();
    let mut answer = String::new();
    stream.read_to_string(&mut answer).await.unwrap();
    let body = answer.split("\r\n\r\n").nth(1).unwrap_or_default();
    serde_json::from_str(body).unwrap()
}

/// EventBridge refuses an entry within an accepted request (`ErrorCode` ThrottlingException,
/// as past the account's quota; the stand-in throttles each entry whose detail holds
/// THROTTLE-ONCE, once): the refused entry is sent again and arrives, once; the others arrive
/// once; nothing is counted failed. The scenario is asserted first: the stand-in throttled it.
#[tokio::test]
async fn an_entry_eventbridge_throttles_is_sent_again_and_arrives_once() {
    let t = TestDb::new().await;
    let v = t.variant(0).await;
    let throttled = t.order("pending", "pending").await;
    t.exec(&format!(
        "UPDATE orders_order SET order_number = 'THROTTLE-ONCE-{throttled}' WHERE id = {throttled}"
    ))
    .await;
    t.reservation(Res::new(Some(throttled), v, 1, "-1 minute"))
        .await;
    let other = t.order("pending", "pending").await;
    t.reservation(Res::new(Some(other), v, 1, "-1 minute"))
        .await;
    t.exec(&format!(
        "UPDATE products_productvariant SET reserved_quantity = 2 WHERE id = {v}"
    ))
    .await;
    let (bus, queue) = bus_to_queue().await;
    let publisher = limited_publisher(bus).await;
    let before = stand_in_counters().await["throttled"].as_u64().unwrap();
    let mut db = t.open().await;
    let report = publishing_run(&mut db, RunOptions::default(), &publisher).await;
    let after = stand_in_counters().await["throttled"].as_u64().unwrap();
    assert!(after > before, "the stand-in throttled nothing");
    // The two orders' and their variant's.
    assert_eq!(
        (report.events_published, report.events_failed),
        (3, 0),
        "{report:?}"
    );
    let arrived = drain(&queue).await;
    assert_eq!(arrived.len(), 3, "{arrived:#?}");
    let keys: Vec<String> = by_subject(&arrived)
        .into_keys()
        .filter(|k| !k.starts_with("stock"))
        .collect();
    assert_eq!(
        keys,
        [format!("order {throttled}"), format!("order {other}")]
    );
}

/// An order released on request (none of its lines due) is announced with `"reason":
/// "released_on_request"`; one the release found due, in the same window, with `"expired"`;
/// and the database's window derives the same reasons from the rows.
#[tokio::test]
async fn an_order_released_on_request_says_so_live_and_in_the_replay() {
    let t = TestDb::new().await;
    let v = t.variant(3).await;
    let asked = t.order("pending", "pending").await;
    t.reservation(Res::new(Some(asked), v, 1, "10 minutes"))
        .await;
    t.reservation(Res::new(Some(asked), v, 1, "1 hour")).await;
    let (expired, _) = (t.order("pending", "pending").await, ());
    t.reservation(Res::new(Some(expired), v, 1, "-1 minute"))
        .await;
    let (bus, queue) = bus_to_queue().await;
    let publisher = Publisher::new(aws_sdk_eventbridge::Client::new(&sdk().await), bus);
    let since = SystemTime::now() - Duration::from_secs(60);
    let mut db = t.open().await;
    let outcome = unreserver::events::run::release_on_request(
        &mut db,
        &settings(),
        asked,
        Some(&publisher),
        "on-request",
        (None, Duration::from_secs(30)),
    )
    .await
    .unwrap();
    assert!(outcome.released);
    // The order's and its variant's.
    assert_eq!((outcome.events_published, outcome.events_failed), (2, 0));
    publishing_run(&mut db, RunOptions::default(), &publisher).await;
    let delivered = by_subject(&drain(&queue).await);
    assert_eq!(delivered.len(), 4, "{delivered:#?}");
    // The variant's stock, once per batch, each with its batch's reason.
    let mut stock_reasons: Vec<&Value> = delivered
        .values()
        .filter(|e| e["detail-type"] == STOCK_RELEASED)
        .map(|e| &e["detail"]["reason"])
        .collect();
    stock_reasons.sort_by_key(|r| r.to_string());
    assert_eq!(
        stock_reasons,
        [&json!("expired"), &json!("released_on_request")]
    );
    let reason = |events: &BTreeMap<String, Value>, order: i64| {
        events[&format!("order {order}")]["detail"]["reason"].clone()
    };
    assert_eq!(reason(&delivered, asked), json!("released_on_request"));
    assert_eq!(reason(&delivered, expired), json!("expired"));
    let rows = outbox::expired_in_window(&db.client, since, None, 15)
        .await
        .unwrap();
    let released = outbox::released_in_window(&db.client, since, None, 15)
        .await
        .unwrap();
    let mut events = from_rows(&rows, None);
    events.extend(stock::of_window(&released));
    let replayed: Vec<Value> = events
        .iter()
        .map(|e| serde_json::to_value(e).unwrap())
        .collect();
    assert_eq!(by_subject(&replayed), delivered);
}

/// `unreserver run` (or `--dry-run`) publishing to `bus`, with expiry warnings 180 s ahead and a
/// run every minute: its report.
async fn cli_run(t: &TestApp, bus: &str, dry_run: bool) -> Value {
    let args: &[&str] = if dry_run {
        &["run", "--dry-run"]
    } else {
        &["run"]
    };
    let out = t
        .with_aws()
        .with("EVENT_BUS_NAME", bus)
        .with("EXPIRY_WARNING_SECONDS", "180")
        .with("RUN_INTERVAL_SECONDS", "60")
        .cli(args)
        .await;
    assert!(out.success(), "{}", out.stderr);
    out.json().clone()
}

/// With `EXPIRY_WARNING_SECONDS` 180 and a run a minute, a run warns every pending, unpaid
/// order whose earliest active reservation falls due within 240 s — including one already
/// inside its lead time (the run came late) — with that reservation's `expires_at` and the
/// order's lines; not an order due later, a paid or cancelled one, nor one the run released. A
/// dry run publishes nothing; an extended hold is warned again for its new expiry.
#[tokio::test]
async fn orders_whose_hold_runs_out_soon_are_warned_once_a_run() {
    let t = TestApp::spawn().await;
    let v = t.variant(9).await;
    let order = |status: &'static str, payment: &'static str| t.order(status, payment);
    let (soon, late_run, later, paid, cancelled, due) = (
        order("pending", "pending").await,
        order("pending", "failed").await,
        order("pending", "pending").await,
        order("pending", "paid").await,
        order("cancelled", "pending").await,
        order("pending", "pending").await,
    );
    let first = t
        .reservation(Res::new(Some(soon), v, 1, "120 seconds"))
        .await;
    t.reservation(Res::new(Some(soon), v, 1, "10 minutes"))
        .await;
    t.reservation(Res::new(Some(late_run), v, 1, "30 seconds"))
        .await;
    t.reservation(Res::new(Some(later), v, 1, "10 minutes"))
        .await;
    t.reservation(Res::new(Some(paid), v, 1, "60 seconds"))
        .await;
    t.reservation(Res::new(Some(cancelled), v, 1, "60 seconds"))
        .await;
    t.reservation(Res::new(Some(due), v, 1, "-1 minute")).await;
    t.reservation(Res::new(Some(due), v, 1, "60 seconds")).await;
    let (bus, queue) = bus_to_queue().await;

    let dry = cli_run(&t, &bus, true).await;
    assert_eq!(dry["expiry_warnings"], 0);
    let report = cli_run(&t, &bus, false).await;
    assert_eq!(report["orders_cancelled"], 1, "{report}");
    assert_eq!(report["expiry_warnings"], 2, "{report}");
    let arrived = drain(&queue).await;
    let warnings = warnings_by_order(&arrived);
    let warned: Vec<i64> = warnings.keys().copied().collect();
    assert_eq!(warned, [soon, late_run], "{arrived:#?}");
    let expires_at = |id: i64| {
        format!(
            "SELECT to_char(expires_at AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS.US\"Z\"') \
             FROM orders_inventoryreservation WHERE id = {id}"
        )
    };
    assert_eq!(
        warnings[&soon]["expires_at"],
        json!(t.text(&expires_at(first)).await)
    );
    assert_eq!(warnings[&soon]["reservations"].as_array().unwrap().len(), 2);
    assert_eq!(
        warnings[&soon]["order_number"].as_str().map(str::is_empty),
        Some(false)
    );

    // The shopper extends the hold: the next run warns again, for the new expiry.
    t.exec(&format!(
        "UPDATE orders_inventoryreservation SET expires_at = expires_at + interval '60 seconds' \
         WHERE id = {first}"
    ))
    .await;
    assert_eq!(cli_run(&t, &bus, false).await["expiry_warnings"], 2);
    let again: Vec<Value> = drain(&queue)
        .await
        .into_iter()
        .filter(|e| e["detail"]["order_id"] == json!(soon))
        .collect();
    assert_eq!(again.len(), 1, "{again:#?}");
    assert_eq!(
        again[0]["detail"]["expires_at"],
        json!(t.text(&expires_at(first)).await)
    );
    assert_ne!(
        again[0]["detail"]["expires_at"],
        warnings[&soon]["expires_at"]
    );
}

/// The warnings apply the release's due rule: an order whose only line is a legacy row (NULL
/// `expires_at`, due at `created_at` plus the timeout) is warned, and an order mixing a legacy
/// line and a dated one is warned for the earliest of the two (they once skipped legacy lines:
/// the first order was never warned, the second for its later, dated line).
#[tokio::test]
async fn legacy_and_mixed_orders_are_warned_for_their_earliest_due_instant() {
    let t = TestApp::spawn().await;
    let v = t.variant(3).await;
    let (legacy, mixed) = (
        t.order("pending", "pending").await,
        t.order("pending", "pending").await,
    );
    let legacy_res = |order: i64, created: &'static str| Res {
        created,
        expires: None,
        ..Res::new(Some(order), v, 1, "0 seconds")
    };
    // With the default timeout of 15 minutes: due in 60 s, in 120 s; the dated line in 200 s.
    let only = t.reservation(legacy_res(legacy, "-840 seconds")).await;
    let earliest = t.reservation(legacy_res(mixed, "-780 seconds")).await;
    t.reservation(Res::new(Some(mixed), v, 1, "200 seconds"))
        .await;
    let (bus, queue) = bus_to_queue().await;

    let report = cli_run(&t, &bus, false).await;
    assert_eq!(report["expiry_warnings"], 2, "{report}");
    let arrived = drain(&queue).await;
    let warnings = warnings_by_order(&arrived);
    assert_eq!(
        warnings.keys().copied().collect::<Vec<_>>(),
        [legacy, mixed],
        "{arrived:#?}"
    );
    let due_at = |id: i64| {
        format!(
            "SELECT to_char((created_at + interval '15 minutes') AT TIME ZONE 'UTC', \
             'YYYY-MM-DD\"T\"HH24:MI:SS.US\"Z\"') FROM orders_inventoryreservation WHERE id = {id}"
        )
    };
    assert_eq!(
        warnings[&legacy]["expires_at"],
        json!(t.text(&due_at(only)).await)
    );
    assert_eq!(
        warnings[&mixed]["expires_at"],
        json!(t.text(&due_at(earliest)).await)
    );
    assert_eq!(
        warnings[&mixed]["reservations"].as_array().unwrap().len(),
        2
    );
}

/// The `Order Expiring Soon` events among `arrived`, each order's detail by its id.
fn warnings_by_order(arrived: &[Value]) -> BTreeMap<i64, Value> {
    arrived
        .iter()
        .filter(|e| e["detail-type"] == "Order Expiring Soon")
        .map(|e| {
            (
                e["detail"]["order_id"].as_i64().unwrap(),
                e["detail"].clone(),
            )
        })
        .collect()
}

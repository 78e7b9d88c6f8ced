//! The events and their detail, as EventBridge delivers them (`source`, `detail-type`,
//! `detail`), built from released reservation rows — those a batch just released, or those the
//! database holds for a window. One builder for both, so that a replay gives exactly what the
//! run published (but `run_id`, null in a replay). The `Stock Released` events are built in
//! [`super::stock`].

use std::collections::HashMap;
use std::time::SystemTime;

use serde::Serialize;
use serde_json::Value;

use super::stock;
use crate::db::sql::outbox::ExpiredRow;
use crate::db::sql::warnings::ExpiringRow;
use crate::db::sql::ReleasedReservation;
use crate::engine::hooks::Committed;

/// `Source` of every event.
pub const SOURCE: &str = "unreserver";
/// `DetailType` of the event for an order the release cancelled.
pub const ORDER_EXPIRED: &str = "Order Expired";
/// `DetailType` of the warning for a pending order whose hold runs out soon.
pub const ORDER_EXPIRING_SOON: &str = "Order Expiring Soon";
/// The `reason` of an `Order Expired` event: the release found it due.
pub const EXPIRED: &str = "expired";
/// The `reason` of an `Order Expired` event for an order released on request, none of whose
/// reservations was due.
pub const RELEASED_ON_REQUEST: &str = "released_on_request";
/// `DetailType` of the event for a cart hold (a reservation without an order) released.
pub const HOLD_RELEASED: &str = "Cart Hold Released";

/// One event, ready to print (one JSON object a line) or to publish.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Event {
    pub source: &'static str,
    #[serde(rename = "detail-type")]
    pub detail_type: &'static str,
    pub detail: Value,
    /// What the event is about, for logs: the order id, or the hold's reservation id.
    #[serde(skip)]
    pub subject: Subject,
}

/// What an event is about: named in the log when it could not be published.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub enum Subject {
    Order(i64),
    Hold(i64),
    /// A `Stock Released` event: the variant's, or the drop row's.
    Variant(i64),
    Drop(i64),
}

#[derive(Serialize)]
struct OrderExpired<'a> {
    order_id: i64,
    order_number: &'a str,
    released_at: String,
    /// `expired`, or `released_on_request` when none of the order's reservations was due
    /// (`unreserver release`).
    reason: &'static str,
    reservations: Vec<Reservation>,
    run_id: Option<&'a str>,
    /// An order too large for one event (EventBridge takes at most 256 KB an entry) is
    /// announced in parts, numbered from 1, each with some of its reservations; an order
    /// released over several batches (a giant order in parts, an order across several hot
    /// rows) gets an event for each batch, all with the same `released_at`: a consumer merges
    /// the events of an `order_id`, deduplicating its reservations by `id`.
    #[serde(skip_serializing_if = "Option::is_none")]
    part: Option<usize>,
    #[serde(skip_serializing_if = "Option::is_none")]
    parts: Option<usize>,
}

/// The most bytes one `PutEvents` entry may hold (`Source`, `DetailType` and `Detail` in UTF-8),
/// and the most a whole request may: EventBridge's documented limit, 256 KB.
pub const MAX_ENTRY_BYTES: usize = 256 * 1024;

impl Event {
    /// The entry's size as EventBridge counts it ("Calculating PutEvents event entry size"):
    /// the UTF-8 bytes of `Source`, `DetailType` and `Detail` (no `Time` or `Resources` sent).
    pub fn entry_size(&self) -> usize {
        self.source.len() + self.detail_type.len() + self.detail.to_string().len()
    }
}

#[derive(Serialize)]
struct Reservation {
    id: i64,
    product_variant_id: i64,
    drop_product_id: Option<i64>,
    quantity: i32,
}

#[derive(Serialize)]
struct HoldReleased<'a> {
    reservation_id: i64,
    product_variant_id: i64,
    drop_product_id: Option<i64>,
    quantity: i32,
    released_at: String,
    run_id: Option<&'a str>,
}

/// RFC 3339 in UTC with microseconds, as PostgreSQL keeps them.
/// The tenant's name in each event's detail (`tenant`), and each stable `event_id` made the
/// tenant's own (the SHA-256 of the name and the id, 32 hex digits): two schema tenants'
/// batches on rows of the same ids must not give one id. The one place a tenant marks an event:
/// the publisher of a tenant's state calls it, and `events` on a tenant's rows.
pub fn stamp_tenant(events: &mut [Event], tenant: &str) {
    use sha2::{Digest, Sha256};
    for event in events {
        let Value::Object(detail) = &mut event.detail else {
            continue;
        };
        if let Some(Value::String(id)) = detail.get("event_id") {
            let digest = Sha256::digest(format!("{tenant}\n{id}").as_bytes());
            let own: String = digest[..16].iter().map(|b| format!("{b:02x}")).collect();
            detail.insert("event_id".into(), Value::String(own));
        }
        detail.insert("tenant".into(), Value::String(tenant.to_string()));
    }
}

pub fn rfc3339(at: SystemTime) -> String {
    humantime::format_rfc3339_micros(at).to_string()
}

/// The events of `rows`: one per order (its rows must be adjacent, as the outbox statement and
/// a batch give them) and one per hold, in the order of `rows`.
pub fn from_rows(rows: &[ExpiredRow], run_id: Option<&str>) -> Vec<Event> {
    let mut events = Vec::new();
    let mut rest = rows;
    while let Some(first) = rest.first() {
        let Some(order_id) = first.order_id else {
            events.push(hold_released(first, run_id));
            rest = &rest[1..];
            continue;
        };
        let n = rest
            .iter()
            .take_while(|r| r.order_id == Some(order_id))
            .count();
        events.extend(order_expired(&rest[..n], run_id));
        rest = &rest[n..];
    }
    events
}

/// The events of one committed batch: an `Order Expired` for each order it cancelled (not for
/// an order the shop had cancelled already), a `Cart Hold Released` for each hold, then a
/// `Stock Released` for each variant and drop row it gave units back to ([`stock_released`]).
pub fn from_batch(batch: &Committed<'_>) -> Vec<Event> {
    // The orders this batch cancelled, and those an earlier batch cancelled whose further lines
    // this one released (announced with the lines of this batch).
    let numbers: HashMap<i64, &str> = batch
        .cancelled
        .iter()
        .chain(batch.finished)
        .map(|o| (o.id, o.order_number.as_str()))
        .collect();
    let mut rows: Vec<ExpiredRow> = batch
        .released
        .iter()
        .filter(|r| r.order_id.is_none_or(|o| numbers.contains_key(&o)))
        .map(|r| {
            let number = r.order_id.and_then(|o| numbers.get(&o));
            released_row(r, number.map(|n| (*n).to_string()))
        })
        .collect();
    rows.sort_by_key(|r| (r.order_id.is_none(), r.order_id, r.reservation_id));
    let mut events = from_rows(&rows, Some(batch.run_id));
    events.extend(stock_released(batch));
    events
}

/// The `Stock Released` events of one committed batch: every reservation it released, with
/// what its counter updates returned ([`stock::of_batch`], the replay's builder too).
pub fn stock_released(batch: &Committed<'_>) -> Vec<Event> {
    let rows: Vec<ExpiredRow> = batch
        .released
        .iter()
        .map(|r| released_row(r, None))
        .collect();
    stock::of_batch(&rows, Some(batch.counters), Some(batch.run_id))
}

/// A reservation a batch released, as the outbox statement would read it back.
fn released_row(r: &ReleasedReservation, order_number: Option<String>) -> ExpiredRow {
    ExpiredRow {
        reservation_id: r.id,
        order_id: r.order_id,
        order_number,
        variant_id: r.variant_id,
        drop_id: r.drop_id,
        quantity: r.quantity,
        released_at: r.released_at,
        due: r.delay_seconds >= 0.0,
    }
}

/// The `Order Expired` event of one order, or its parts when one event would pass
/// [`MAX_ENTRY_BYTES`]: the reservations, in their order, split so that each part fits.
fn order_expired(rows: &[ExpiredRow], run_id: Option<&str>) -> Vec<Event> {
    let reason = if rows.iter().any(|r| r.due) {
        EXPIRED
    } else {
        RELEASED_ON_REQUEST
    };
    in_parts(rows, reservation_size, |rows, part| {
        order_part(rows, reason, run_id, part)
    })
}

/// One event of `rows` made by `make`, or when it would pass [`MAX_ENTRY_BYTES`], its parts
/// (`make` given the part's number and the count): the rows, in their order, split so that each
/// part fits. `size` is a row's share of the detail.
fn in_parts<R>(
    rows: &[R],
    size: impl Fn(&R) -> usize,
    make: impl Fn(&[R], Option<(usize, usize)>) -> Event,
) -> Vec<Event> {
    let whole = make(rows, None);
    if whole.entry_size() <= MAX_ENTRY_BYTES {
        return vec![whole];
    }
    // Room for a part's envelope (ids, number, time, the part fields) beside its rows.
    let envelope = make(&rows[..1], Some((1, 1))).entry_size();
    let budget = MAX_ENTRY_BYTES - envelope;
    let mut chunks: Vec<&[R]> = Vec::new();
    let (mut start, mut used) = (0, 0);
    for (i, row) in rows.iter().enumerate() {
        let one = size(row) + 1; // and its comma
        if i > start && used + one > budget {
            chunks.push(&rows[start..i]);
            (start, used) = (i, 0);
        }
        used += one;
    }
    chunks.push(&rows[start..]);
    let parts = chunks.len();
    chunks
        .iter()
        .enumerate()
        .map(|(i, chunk)| make(chunk, Some((i + 1, parts))))
        .collect()
}

/// The `Order Expiring Soon` events of `rows` (an order's rows adjacent, as
/// [`crate::db::sql::warnings::EXPIRING_SOON`] gives them): one per order, in parts when too
/// large for one entry.
pub fn expiring_soon(rows: &[ExpiringRow], run_id: &str) -> Vec<Event> {
    let mut events = Vec::new();
    for order in rows.chunk_by(|a, b| a.order_id == b.order_id) {
        events.extend(in_parts(order, reservation_size, |rows, part| {
            expiring_part(rows, run_id, part)
        }));
    }
    events
}

#[derive(Serialize)]
struct OrderExpiringSoon<'a> {
    order_id: i64,
    order_number: &'a str,
    /// When the order's earliest active reservation falls due: with `order_id`, what a
    /// consumer deduplicates by (an extended hold warns again, for its new expiry).
    expires_at: String,
    reservations: Vec<Reservation>,
    run_id: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    part: Option<usize>,
    #[serde(skip_serializing_if = "Option::is_none")]
    parts: Option<usize>,
}

fn expiring_part(rows: &[ExpiringRow], run_id: &str, part: Option<(usize, usize)>) -> Event {
    let first = &rows[0];
    let detail = OrderExpiringSoon {
        order_id: first.order_id,
        order_number: first.order_number.as_deref().unwrap_or_default(),
        expires_at: rfc3339(first.expires_at),
        reservations: rows.iter().map(Reservation::from).collect(),
        run_id,
        part: part.map(|(k, _)| k),
        parts: part.map(|(_, n)| n),
    };
    order_event(ORDER_EXPIRING_SOON, detail, first.order_id)
}

impl From<&ExpiredRow> for Reservation {
    fn from(r: &ExpiredRow) -> Self {
        Reservation {
            id: r.reservation_id,
            product_variant_id: r.variant_id,
            drop_product_id: r.drop_id,
            quantity: r.quantity,
        }
    }
}

impl From<&ExpiringRow> for Reservation {
    fn from(r: &ExpiringRow) -> Self {
        Reservation {
            id: r.reservation_id,
            product_variant_id: r.variant_id,
            drop_product_id: r.drop_id,
            quantity: r.quantity,
        }
    }
}

/// A row's share of an event's detail: its reservation as JSON.
fn reservation_size<R>(r: &R) -> usize
where
    for<'a> Reservation: From<&'a R>,
{
    serde_json::to_string(&Reservation::from(r)).map_or(0, |s| s.len())
}

/// An event about an order, with `detail`.
fn order_event(detail_type: &'static str, detail: impl Serialize, order_id: i64) -> Event {
    Event {
        source: SOURCE,
        detail_type,
        detail: serde_json::to_value(detail).unwrap_or(Value::Null),
        subject: Subject::Order(order_id),
    }
}

fn order_part(
    rows: &[ExpiredRow],
    reason: &'static str,
    run_id: Option<&str>,
    part: Option<(usize, usize)>,
) -> Event {
    let first = &rows[0];
    let order_id = first.order_id.unwrap_or_default();
    let detail = OrderExpired {
        order_id,
        order_number: first.order_number.as_deref().unwrap_or_default(),
        released_at: rfc3339(first.released_at),
        reason,
        reservations: rows.iter().map(Reservation::from).collect(),
        run_id,
        part: part.map(|(k, _)| k),
        parts: part.map(|(_, n)| n),
    };
    order_event(ORDER_EXPIRED, detail, order_id)
}

fn hold_released(row: &ExpiredRow, run_id: Option<&str>) -> Event {
    let detail = HoldReleased {
        reservation_id: row.reservation_id,
        product_variant_id: row.variant_id,
        drop_product_id: row.drop_id,
        quantity: row.quantity,
        released_at: rfc3339(row.released_at),
        run_id,
    };
    Event {
        source: SOURCE,
        detail_type: HOLD_RELEASED,
        detail: serde_json::to_value(detail).unwrap_or(Value::Null),
        subject: Subject::Hold(row.reservation_id),
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn a_tenants_events_name_it_and_their_ids_are_its_own() {
        let event = |id: &str| Event {
            source: "unreserver",
            detail_type: "Stock Released",
            detail: serde_json::json!({"event_id": id, "units": 1}),
            subject: Subject::Variant(7),
        };
        let mut a = vec![event("00ff")];
        let mut b = vec![event("00ff")];
        stamp_tenant(&mut a, "north");
        stamp_tenant(&mut b, "south");
        assert_eq!(a[0].detail["tenant"], "north");
        assert_ne!(a[0].detail["event_id"], b[0].detail["event_id"]);
        assert_eq!(a[0].detail["event_id"].as_str().unwrap().len(), 32);
        let mut again = vec![event("00ff")];
        stamp_tenant(&mut again, "north");
        assert_eq!(again[0].detail, a[0].detail, "stable");
    }

    use std::time::Duration;

    use serde_json::json;

    use super::*;

    fn row(id: i64, order: Option<i64>, quantity: i32) -> ExpiredRow {
        ExpiredRow {
            reservation_id: id,
            order_id: order,
            order_number: order.map(|o| format!("ORD-{o}")),
            variant_id: 10 + id,
            drop_id: (id % 2 == 0).then_some(100 + id),
            quantity,
            released_at: SystemTime::UNIX_EPOCH + Duration::from_micros(1_764_000_000_123_456),
            due: id != 4,
        }
    }

    #[test]
    fn an_order_too_large_for_one_entry_is_announced_in_parts_that_fit() {
        let rows: Vec<ExpiredRow> = (1..=6000).map(|i| row(i, Some(9), 1)).collect();
        let events = from_rows(&rows, Some("run-1"));
        assert!(events.len() >= 2, "{} parts", events.len());
        let mut ids = Vec::new();
        for (k, e) in events.iter().enumerate() {
            assert!(
                e.entry_size() <= MAX_ENTRY_BYTES,
                "part {k}: {}",
                e.entry_size()
            );
            assert!(e.entry_size() > MAX_ENTRY_BYTES / 2, "parts are filled");
            assert_eq!(e.detail["part"], k + 1);
            assert_eq!(e.detail["parts"], events.len());
            assert_eq!(e.detail["order_id"], 9);
            for r in e.detail["reservations"].as_array().unwrap() {
                ids.push(r["id"].as_i64().unwrap());
            }
        }
        assert_eq!(
            ids,
            (1..=6000).collect::<Vec<_>>(),
            "every reservation once, in order"
        );
        // A small order has no part fields.
        let small = from_rows(&rows[..3], None);
        assert!(small[0].detail.get("part").is_none());
    }

    #[test]
    fn an_order_none_of_whose_rows_was_due_was_released_on_request() {
        let mut rows: Vec<ExpiredRow> = (1..=6000).map(|i| row(i, Some(9), 1)).collect();
        rows.iter_mut().for_each(|r| r.due = false);
        let events = from_rows(&rows, None);
        assert!(events.len() >= 2, "in parts");
        for e in &events {
            assert_eq!(e.detail["reason"], RELEASED_ON_REQUEST, "every part");
        }
        rows[5999].due = true;
        for e in &from_rows(&rows, None) {
            assert_eq!(
                e.detail["reason"], EXPIRED,
                "one due row: the order expired"
            );
        }
    }

    #[test]
    fn one_event_per_order_and_per_hold_with_the_documented_detail() {
        let rows = [row(1, Some(7), 2), row(2, Some(7), 1), row(3, None, 4)];
        let events = from_rows(&rows, Some("run-1"));
        assert_eq!(events.len(), 2);
        let order = serde_json::to_value(&events[0]).unwrap();
        assert_eq!(
            order,
            json!({"source": "unreserver", "detail-type": "Order Expired", "detail": {
                "order_id": 7, "order_number": "ORD-7",
                "released_at": "2025-11-24T16:00:00.123456Z", "reason": "expired",
                "reservations": [
                    {"id": 1, "product_variant_id": 11, "drop_product_id": null, "quantity": 2},
                    {"id": 2, "product_variant_id": 12, "drop_product_id": 102, "quantity": 1}],
                "run_id": "run-1"}})
        );
        let hold = serde_json::to_value(&events[1]).unwrap();
        assert_eq!(
            hold,
            json!({"source": "unreserver", "detail-type": "Cart Hold Released", "detail": {
                "reservation_id": 3, "product_variant_id": 13, "drop_product_id": null,
                "quantity": 4, "released_at": "2025-11-24T16:00:00.123456Z", "run_id": "run-1"}})
        );
        assert_eq!(events[0].subject, Subject::Order(7));
        assert_eq!(events[1].subject, Subject::Hold(3));
        assert!(from_rows(&rows, None)[0].detail["run_id"].is_null());
    }
}

//! The `Stock Released` events: for each committed batch, one per variant and one per
//! limited-drop row it gave units back to — what a waiting list or a back-in-stock
//! subscription, keyed by variant, needs. Built from one batch's released reservation rows, live
//! (with what the counters' update returned: the units now for sale, a counter clamped) or from
//! the database's rows for a window (the replay: those two are `null`), by the one builder
//! here, so that both give each event the same `event_id`.
//!
//! The id is derived from the batch's rows: the counter row, the batch's `released_at` (its
//! transaction's `now()`, the same on every row it released) and the ids of the reservations
//! whose units it gave back to that row. A reservation is released by one batch only (a revived
//! one, released again, has a new `released_at`), so two batches never share an id, and a
//! consumer that de-duplicates on it sees each batch's units once however often they are sent.

use std::collections::BTreeMap;

use serde::Serialize;
use serde_json::Value;
use sha2::{Digest, Sha256};

use super::model::{rfc3339, Event, Subject, EXPIRED, RELEASED_ON_REQUEST, SOURCE};
use crate::db::sql::outbox::ExpiredRow;
use crate::db::sql::{Counter, ReturnedUnits};

/// `DetailType` of the event for a variant or drop row a batch gave units back to.
pub const STOCK_RELEASED: &str = "Stock Released";

#[derive(Serialize)]
struct StockReleased<'a> {
    /// Stable across sends and the replay: what a consumer de-duplicates on.
    event_id: String,
    /// One of these two: the variant's event, or the drop row's.
    #[serde(skip_serializing_if = "Option::is_none")]
    product_variant_id: Option<i64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    drop_product_id: Option<i64>,
    /// The sum of the released reservations' quantities.
    units: i64,
    /// What the row shows for sale right after the batch (variant: stock − reserved; drop:
    /// drop − reserved − sold), read in its transaction; null in a replay.
    available_after: Option<i64>,
    /// The counter had drifted below the units and stopped at zero; null in a replay.
    clamped: Option<bool>,
    released_at: String,
    /// `expired`, or `released_on_request` for a batch none of whose reservations was due
    /// (`unreserver release`), as in `Order Expired`.
    reason: &'static str,
    run_id: Option<&'a str>,
}

/// What one batch gave back to one counter row: its units and the reservations they came from.
#[derive(Default)]
struct Returned {
    units: i64,
    reservations: Vec<i64>,
}

/// The `Stock Released` events of one batch's rows (every row with the batch's `released_at`):
/// variants first, then drop rows, each in ascending id order. `counters` is what the batch's
/// counter updates returned (live), or None (a replay).
pub fn of_batch(
    rows: &[ExpiredRow],
    counters: Option<&[(Counter, ReturnedUnits)]>,
    run_id: Option<&str>,
) -> Vec<Event> {
    let Some(first) = rows.first() else {
        return Vec::new();
    };
    let mut returned: BTreeMap<(Counter, i64), Returned> = BTreeMap::new();
    for row in rows {
        let mut add = |key| {
            let r: &mut Returned = returned.entry(key).or_default();
            r.units += i64::from(row.quantity);
            r.reservations.push(row.reservation_id);
        };
        add((Counter::Variants, row.variant_id));
        if let Some(drop_id) = row.drop_id {
            add((Counter::Drops, drop_id));
        }
    }
    let after: BTreeMap<(Counter, i64), &ReturnedUnits> = counters
        .unwrap_or_default()
        .iter()
        .map(|(counter, row)| ((*counter, row.id), row))
        .collect();
    let released_at = rfc3339(first.released_at);
    let reason = if rows.iter().any(|r| r.due) {
        EXPIRED
    } else {
        RELEASED_ON_REQUEST
    };
    returned
        .into_iter()
        .map(|((counter, id), mut r)| {
            r.reservations.sort_unstable();
            let update = after.get(&(counter, id));
            let detail = StockReleased {
                event_id: event_id(counter, id, &released_at, &r.reservations),
                product_variant_id: (counter == Counter::Variants).then_some(id),
                drop_product_id: (counter == Counter::Drops).then_some(id),
                units: r.units,
                available_after: update.map(|u| u.available_after),
                clamped: update.map(|u| u.clamped),
                released_at: released_at.clone(),
                reason,
                run_id,
            };
            Event {
                source: SOURCE,
                detail_type: STOCK_RELEASED,
                detail: serde_json::to_value(detail).unwrap_or(Value::Null),
                subject: match counter {
                    Counter::Variants => Subject::Variant(id),
                    Counter::Drops => Subject::Drop(id),
                },
            }
        })
        .collect()
}

/// The `Stock Released` events of a window's rows, ordered by `released_at` (as
/// [`crate::db::sql::outbox::RELEASED_IN_WINDOW`] gives them): each batch's, a batch being the
/// rows of one `released_at`.
pub fn of_window(rows: &[ExpiredRow]) -> Vec<Event> {
    rows.chunk_by(|a, b| a.released_at == b.released_at)
        .flat_map(|batch| of_batch(batch, None, None))
        .collect()
}

/// The event's id: 32 hex digits of the SHA-256 of the counter row, the batch's `released_at`
/// and the reservations (ascending) whose units came back to that row.
fn event_id(counter: Counter, id: i64, released_at: &str, reservations: &[i64]) -> String {
    let kind = match counter {
        Counter::Variants => "variant",
        Counter::Drops => "drop",
    };
    let mut hash = Sha256::new();
    hash.update(format!("{STOCK_RELEASED}\n{kind} {id}\n{released_at}\n").as_bytes());
    for reservation in reservations {
        hash.update(format!("{reservation},").as_bytes());
    }
    hash.finalize()[..16]
        .iter()
        .map(|byte| format!("{byte:02x}"))
        .collect()
}

/// Writes each `Stock Released` event among `events` to the log (stderr), one line each with
/// the event's JSON in `event`: where a shop without EventBridge reads them.
pub fn log(events: &[Event]) {
    for event in events.iter().filter(|e| e.detail_type == STOCK_RELEASED) {
        let json = serde_json::to_string(event).unwrap_or_default();
        tracing::info!(event = %json, "Stock Released");
    }
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, SystemTime};

    use serde_json::json;

    use super::*;

    fn row(id: i64, variant: i64, drop: Option<i64>, quantity: i32, at: u64) -> ExpiredRow {
        ExpiredRow {
            reservation_id: id,
            order_id: Some(100 + id),
            order_number: None,
            variant_id: variant,
            drop_id: drop,
            quantity,
            released_at: SystemTime::UNIX_EPOCH + Duration::from_micros(1_764_000_000_000_000 + at),
            due: true,
        }
    }

    fn returned(id: i64, available_after: i64, clamped: bool) -> ReturnedUnits {
        ReturnedUnits {
            id,
            clamped,
            previous_writer: 0,
            writer: 0,
            available_after,
        }
    }

    #[test]
    fn one_event_per_variant_and_drop_row_with_the_units_summed() {
        let rows = [
            row(1, 7, Some(3), 2, 0),
            row(2, 7, None, 1, 0),
            row(3, 8, Some(3), 4, 0),
        ];
        let counters = [
            (Counter::Variants, returned(7, 10, false)),
            (Counter::Variants, returned(8, 4, true)),
            (Counter::Drops, returned(3, 6, false)),
        ];
        let events = of_batch(&rows, Some(&counters), Some("run-1"));
        let details: Vec<&Value> = events.iter().map(|e| &e.detail).collect();
        assert_eq!(details.len(), 3);
        let id = details[0]["event_id"].as_str().unwrap();
        assert_eq!(id.len(), 32);
        assert_eq!(
            events[0].detail,
            json!({"event_id": id, "product_variant_id": 7, "units": 3,
                "available_after": 10, "clamped": false,
                "released_at": "2025-11-24T16:00:00.000000Z", "reason": "expired", "run_id": "run-1"})
        );
        assert_eq!(details[1]["units"], 4);
        assert_eq!(details[1]["clamped"], true);
        assert_eq!(details[2]["drop_product_id"], 3);
        assert!(details[2].get("product_variant_id").is_none());
        assert_eq!(details[2]["units"], 6);
        assert_eq!(details[2]["available_after"], 6);
        assert_eq!(events[2].subject, Subject::Drop(3));
    }

    #[test]
    fn the_replay_gives_the_same_ids_and_nulls_what_it_cannot_read_back() {
        let rows = [row(1, 7, None, 2, 0), row(2, 7, None, 1, 0)];
        let counters = [(Counter::Variants, returned(7, 10, false))];
        let live = of_batch(&rows, Some(&counters), Some("run-1"));
        // The window's rows in another order, beside another batch's.
        let window = [
            row(2, 7, None, 1, 0),
            row(1, 7, None, 2, 0),
            row(5, 7, None, 1, 9),
        ];
        let replayed = of_window(&window);
        assert_eq!(replayed.len(), 2, "one event per batch");
        assert_eq!(replayed[0].detail["event_id"], live[0].detail["event_id"]);
        assert_eq!(replayed[0].detail["units"], 3);
        assert!(replayed[0].detail["available_after"].is_null());
        assert!(replayed[0].detail["clamped"].is_null());
        assert!(replayed[0].detail["run_id"].is_null());
        assert_ne!(replayed[1].detail["event_id"], live[0].detail["event_id"]);
    }

    #[test]
    fn the_id_changes_with_the_batch_the_row_and_the_reservations() {
        let id = |c, row, at, ids: &[i64]| event_id(c, row, at, ids);
        let base = id(Counter::Variants, 7, "t1", &[1, 2]);
        assert_eq!(base, id(Counter::Variants, 7, "t1", &[1, 2]));
        assert_ne!(base, id(Counter::Drops, 7, "t1", &[1, 2]));
        assert_ne!(base, id(Counter::Variants, 8, "t1", &[1, 2]));
        assert_ne!(base, id(Counter::Variants, 7, "t2", &[1, 2]));
        assert_ne!(base, id(Counter::Variants, 7, "t1", &[1, 3]));
    }

    #[test]
    fn a_batch_of_rows_none_of_which_was_due_was_released_on_request() {
        let mut rows = [row(1, 7, None, 1, 0), row(2, 7, None, 1, 0)];
        rows.iter_mut().for_each(|r| r.due = false);
        assert_eq!(
            of_batch(&rows, None, None)[0].detail["reason"],
            RELEASED_ON_REQUEST
        );
        rows[1].due = true;
        assert_eq!(of_batch(&rows, None, None)[0].detail["reason"], EXPIRED);
    }
}

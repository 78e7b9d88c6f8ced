//! Every statement of the SQL layer, prepared on a real server, against the Rust types its
//! typed wrapper binds and decodes: each parameter's type must accept what PostgreSQL infers
//! for it, each column must exist under the name the wrapper reads, in the order written here,
//! with a type the wrapper's field can decode (what sqlx checks at compile time, checked here
//! at test time). A statement whose cast or column changed fails here, not in a shop.

use std::time::SystemTime;

use tokio_postgres::types::{FromSql, ToSql, Type};
use unreserver::db::sql::{
    self, contention, delay_report, follow, on_request, outbox, purge, reconcile, retention,
    revive, warnings, PgTimestamp,
};

use crate::common::TestDb;

type Accepts = fn(&Type) -> bool;

struct Signature {
    name: &'static str,
    text: &'static str,
    params: Vec<Accepts>,
    columns: Vec<(&'static str, Accepts)>,
}

macro_rules! sig {
    ($path:expr, [$($p:ty),*], [$($c:literal: $t:ty),*]) => {
        Signature {
            name: stringify!($path),
            text: $path,
            params: vec![$(<$p as ToSql>::accepts as Accepts),*],
            columns: vec![$(($c, <$t as FromSql<'static>>::accepts as Accepts)),*],
        }
    };
}

fn signatures() -> Vec<Signature> {
    vec![
        sig!(sql::SET_BATCH_TIMEOUTS, [String, String], ["set_config": String, "set_config": String]),
        sig!(sql::PAGE, [PgTimestamp, i64, PgTimestamp, i64, i64, i32, i64, i64],
            ["id": i64, "order_id": Option<i64>, "due_key": PgTimestamp, "legacy": bool]),
        sig!(sql::CLAIM_ORDERS, [Vec<i64>, i32, i32, i64], ["id": i64, "processing": bool, "cancelled": bool, "lines": i64]),
        sig!(sql::CLASSIFY_UNCLAIMED, [Vec<i64>, i32, i32], ["id": i64, "paid": bool, "due": bool]),
        sig!(sql::CLAIM_HOLDS, [Vec<i64>, i32], ["id": i64]),
        sig!(sql::RELEASE_RESERVATIONS, [Vec<i64>, Vec<i64>, i32, i32, Vec<i64>, Option<i64>, Option<i64>, Option<i64>, Vec<i64>],
            ["id": i64, "order_id": Option<i64>, "variant_id": i64, "drop_id": Option<i64>,
             "quantity": i32, "was_due": bool, "delay_seconds": f64, "released_at": SystemTime,
             "order_cancelled": bool, "order_finished": bool, "cancelled_order_number": String]),
        sig!(sql::RETURN_VARIANT_UNITS, [Vec<i64>, Vec<i64>], ["id": i64, "clamped": bool, "previous_writer": i64, "writer": i64, "available_after": i64]),
        sig!(sql::RETURN_DROP_UNITS, [Vec<i64>, Vec<i64>], ["id": i64, "clamped": bool, "previous_writer": i64, "writer": i64, "available_after": i64]),
        sig!(sql::QUEUE_FOR_VARIANT, [i64], ["id": i64]),
        sig!(sql::QUEUE_FOR_DROP, [i64], ["id": i64]),
        sig!(sql::LOCKED_TABLES, [], ["name": String]),
        sig!(contention::FREE_CONNECTIONS, [], ["free": i64]),
        sig!(sql::BACKEND_PID, [], ["pid": i32]),
        sig!(sql::CANCEL_BACKEND, [i32], ["cancelled": bool]),
        sig!(sql::PROBE_HELD, [Vec<i64>, Vec<i64>],
            ["id": i64, "order_id": Option<i64>, "reservation_held": bool,
             "held_variant": Option<i64>, "held_drop": Option<i64>]),
        sig!(sql::DEFERRED_AGE, [Vec<i64>, Vec<i64>, i32, i32], ["age_seconds": Option<f64>]),
        sig!(sql::BACKLOG, [i32, i32], ["due": i64, "oldest_age_seconds": Option<f64>]),
        sig!(sql::PAID_ORDERS_WITH_ACTIVE_RESERVATIONS, [], ["orders": i64]),
        sig!(sql::TABLE_COLUMNS, [Vec<String>],
            ["table_name": String, "column_name": String, "position": i16, "data_type": String]),
        sig!(sql::RESERVATION_INDEXES, [],
            ["name": String, "method": String, "keys": Vec<i16>, "options": Vec<i16>,
             "key_count": i16, "predicate": Option<String>]),
        sig!(sql::SERVER_FACTS, [],
            ["port": i32, "unix_socket": bool, "in_recovery": bool, "deadlock_timeout": String,
             "own_role": Option<bool>, "settings": Option<Vec<String>>]),
        sig!(outbox::EXPIRED_IN_WINDOW, [SystemTime, Option<SystemTime>, i32],
            ["reservation_id": i64, "order_id": Option<i64>, "order_number": Option<String>,
             "variant_id": i64, "drop_id": Option<i64>, "quantity": i32,
             "released_at": SystemTime, "due": bool]),
        sig!(outbox::RELEASED_IN_WINDOW, [SystemTime, Option<SystemTime>, i32],
            ["reservation_id": i64, "order_id": Option<i64>, "variant_id": i64,
             "drop_id": Option<i64>, "quantity": i32, "released_at": SystemTime, "due": bool]),
        sig!(outbox::PAID_AFTER_RELEASE_LAST_DAY, [], ["orders": i64]),
        sig!(outbox::PAID_AFTER_RELEASE_TOTAL, [], ["orders": i64]),
        sig!(delay_report::RELEASE_DELAY_BY_DAY, [i32, i32],
            ["day": String, "reservations_released": i64, "units_released": i64,
             "orders_cancelled": i64, "holds_released": i64, "p50": Option<f64>,
             "p95": Option<f64>, "max": Option<f64>]),
        sig!(follow::NEXT_DUE, [PgTimestamp, i32, i32, i64],
            ["checked_at": PgTimestamp, "due": i64, "wait_seconds": Option<f64>]),
        sig!(warnings::EXPIRING_SOON, [f64, i32, i32],
            ["order_id": i64, "order_number": Option<String>, "expires_at": SystemTime,
             "reservation_id": i64, "variant_id": i64, "drop_id": Option<i64>, "quantity": i32]),
        sig!(on_request::LOCK_REQUESTED_ORDER, [i64],
            ["id": i64, "paid": bool, "releasable": bool, "processing": bool, "active_lines": i64]),
        sig!(on_request::LOCK_REQUESTED_ORDER, [i64],
            ["id": i64, "paid": bool, "releasable": bool, "processing": bool, "active_lines": i64]),
        sig!(revive::LOCK_ORDER, [i64], ["id": i64, "status": String]),
        sig!(revive::LOCK_RELEASED, [i64],
            ["id": i64, "variant_id": i64, "drop_id": Option<i64>, "quantity": i32]),
        sig!(revive::LOCK_VARIANT_ROOM, [Vec<i64>], ["id": i64, "available": i64]),
        sig!(revive::LOCK_DROP_ROOM, [Vec<i64>], ["id": i64, "available": i64]),
        sig!(revive::REACTIVATE, [i64, i32], ["n": i64]),
        sig!(revive::ACTIVE_LINES, [i64], ["n": i64]),
        sig!(revive::ADD_VARIANT_UNITS, [Vec<i64>, Vec<i64>], ["id": i64]),
        sig!(revive::ADD_DROP_UNITS, [Vec<i64>, Vec<i64>], ["id": i64]),
        sig!(revive::REOPEN_ORDER, [i64], ["id": i64]),
        sig!(reconcile::DRIFTED_VARIANTS, [Option<Vec<i64>>],
            ["id": i64, "reserved_quantity": i64, "active_reserved": i64]),
        sig!(reconcile::DRIFTED_DROPS, [Option<Vec<i64>>],
            ["id": i64, "reserved_quantity": i64, "active_reserved": i64]),
        sig!(reconcile::COUNT_VARIANTS, [Option<Vec<i64>>], ["checked": i64, "unknown": Vec<i64>]),
        sig!(reconcile::COUNT_DROPS, [Option<Vec<i64>>], ["checked": i64, "unknown": Vec<i64>]),
        sig!(reconcile::LOCK_VARIANT_COUNTER, [i64], ["id": i64, "reserved_quantity": i64]),
        sig!(reconcile::LOCK_DROP_COUNTER, [i64], ["id": i64, "reserved_quantity": i64]),
        sig!(reconcile::ACTIVE_VARIANT_UNITS, [i64], ["units": i64]),
        sig!(reconcile::ACTIVE_DROP_UNITS, [i64], ["units": i64]),
        sig!(reconcile::SET_VARIANT_COUNTER, [i64, i64], ["id": i64]),
        sig!(reconcile::SET_DROP_COUNTER, [i64, i64], ["id": i64]),
        sig!(reconcile::UNTOUCHED_ORDERS, [i64], ["id": i64, "paid": bool]),
        sig!(purge::RESERVATION_RANGE, [i32, bool], ["first_id": Option<i64>, "last_id": Option<i64>]),
        sig!(purge::ORDER_RANGE, [i32], ["first_id": Option<i64>, "last_id": Option<i64>]),
        sig!(purge::RESERVATION_WINDOW, [i64, i64, i64], ["last_id": Option<i64>, "scanned": i64]),
        sig!(purge::PURGE_RESERVATION_CHUNK, [i64, i64, i32, bool, bool],
            ["eligible": i64, "deleted": i64]),
        sig!(purge::ORDER_WINDOW, [i64, i64, i64], ["last_id": Option<i64>, "scanned": i64]),
        sig!(purge::LOCK_ORDER_CHUNK, [i64, i64, i32, bool],
            ["eligible": Vec<i64>, "locked": Vec<i64>]),
        sig!(purge::LOCK_ORDER_LINES, [Vec<i64>], ["id": i64]),
        sig!(purge::COUNT_ORDER_LINES, [Vec<i64>], ["affected": i64]),
        sig!(purge::DELETE_ORDER_LINES, [Vec<i64>], ["affected": i64]),
        sig!(purge::DELETE_ORDERS, [Vec<i64>], ["affected": i64]),
        sig!(purge::FOREIGN_KEYS_TO_ORDERS, [],
            ["name": String, "referencing_table": String, "columns": Vec<String>,
             "referenced_columns": Vec<String>, "deferrable": bool]),
        sig!(purge::OTHERS_AT_WORK, [], ["at_work": i64]),
        sig!(purge::REPLICA_LAG, [], ["replicas": i64, "hidden": i64, "max_replay_lag_ms": f64]),
        sig!(purge::ROW_BYTES, [], ["reservation_bytes": Option<f64>, "order_bytes": Option<f64>]),
        sig!(retention::HORIZON_READABLE, [], ["readable": bool]),
        sig!(retention::READ_HORIZON, [], ["purged_before": SystemTime, "purged_before_utc": String,
            "purged_day": String, "max_order_id": Option<i64>]),
        sig!(retention::MARK_PURGED, [i32, Option<i64>], []),
    ]
}

#[tokio::test]
async fn every_statement_fits_its_typed_wrapper() {
    let t = TestDb::new().await;
    let client = t.connect().await;
    let mut wrong = Vec::new();
    for s in signatures() {
        let prepared = client
            .prepare(s.text)
            .await
            .unwrap_or_else(|e| panic!("{}: {e}", s.name));
        let params = prepared.params();
        if params.len() != s.params.len() {
            wrong.push(format!(
                "{}: {} parameters, the wrapper binds {}",
                s.name,
                params.len(),
                s.params.len()
            ));
        }
        for (i, (ty, accepts)) in params.iter().zip(&s.params).enumerate() {
            if !accepts(ty) {
                wrong.push(format!(
                    "{}: ${} is {ty}, which the wrapper's type cannot bind",
                    s.name,
                    i + 1
                ));
            }
        }
        let columns = prepared.columns();
        let names: Vec<&str> = columns.iter().map(|c| c.name()).collect();
        let expected: Vec<&str> = s.columns.iter().map(|(n, _)| *n).collect();
        if names != expected {
            wrong.push(format!(
                "{}: columns {names:?}, the wrapper reads {expected:?}",
                s.name
            ));
        }
        for (column, (name, accepts)) in columns.iter().zip(&s.columns) {
            if !accepts(column.type_()) {
                wrong.push(format!(
                    "{}: column {name} is {}, which the wrapper cannot decode",
                    s.name,
                    column.type_()
                ));
            }
        }
    }
    assert!(wrong.is_empty(), "{}", wrong.join("\n"));
}

#[test]
fn a_type_that_does_not_fit_is_seen() {
    // An int8 column read into an i32 field, or an int8[] parameter bound as text.
    assert!(!<i32 as FromSql>::accepts(&Type::INT8));
    assert!(!<String as ToSql>::accepts(&Type::INT8_ARRAY));
    assert!(<Option<i64> as FromSql>::accepts(&Type::INT8));
}

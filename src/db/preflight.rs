//! The preflight check run on every new connection, before anything is changed: the tables and
//! columns the release needs exist, the server's `deadlock_timeout` leaves room for the batch's
//! `lock_timeout`, and which of the recommended indexes of `infra/indexes.sql` are present.

use tokio_postgres::Client;

use super::sql;
use crate::error::{Error, Result};

/// The tables and columns the release reads or writes, and nothing more.
pub const REQUIRED_COLUMNS: &[(&str, &[&str])] = &[
    (
        "orders_inventoryreservation",
        &[
            "id",
            "order_id",
            "product_variant_id",
            "drop_product_id",
            "quantity",
            "status",
            "created_at",
            "expires_at",
            "released_at",
        ],
    ),
    (
        "orders_order",
        &[
            "id",
            "status",
            "payment_status",
            "updated_at",
            "cancelled_at",
        ],
    ),
    (
        "products_productvariant",
        &["id", "reserved_quantity", "updated_at"],
    ),
    (
        "drops_dropproduct",
        &["id", "reserved_quantity", "updated_at"],
    ),
];

/// The time columns the release compares with `now()` or writes `now()` into. They must be
/// `timestamp with time zone`: in a `timestamp` column the tool cannot know the shop's zone.
pub const TIME_COLUMNS: &[(&str, &str)] = &[
    ("orders_inventoryreservation", "created_at"),
    ("orders_inventoryreservation", "expires_at"),
    ("orders_inventoryreservation", "released_at"),
    ("orders_order", "updated_at"),
    ("orders_order", "cancelled_at"),
    ("products_productvariant", "updated_at"),
    ("drops_dropproduct", "updated_at"),
];

/// The indexes of `infra/indexes.sql`. The release is correct without them, but then every
/// batch scans the reservation table.
pub const RECOMMENDED_INDEXES: &[&str] = &[
    "unreserver_active_expiry_idx",
    "unreserver_active_legacy_idx",
];

/// What the preflight found beyond the hard requirements.
#[derive(Debug, Clone, Default)]
pub struct Preflight {
    /// Recommended indexes that are absent.
    pub missing_indexes: Vec<String>,
    /// The server's `deadlock_timeout`, in milliseconds.
    pub deadlock_timeout_ms: i64,
}

/// Checks the schema and the lock timeout against the server. Fails, naming every missing
/// table and column, before the release changes anything.
pub async fn preflight(client: &Client, lock_timeout_ms: u32) -> Result<Preflight> {
    check_columns(client).await?;
    let deadlock_timeout_ms = sql::deadlock_timeout_ms(client).await?;
    check_lock_timeout(lock_timeout_ms, deadlock_timeout_ms)?;
    let missing_indexes = missing_indexes(client).await?;
    Ok(Preflight {
        missing_indexes,
        deadlock_timeout_ms,
    })
}

/// Fails naming every table and column of [`REQUIRED_COLUMNS`] that is absent.
async fn check_columns(client: &Client) -> Result<()> {
    let tables: Vec<&str> = REQUIRED_COLUMNS.iter().map(|(t, _)| *t).collect();
    let present = sql::table_columns(client, &tables).await?;
    let mut missing = Vec::new();
    for (table, columns) in REQUIRED_COLUMNS {
        if !present.iter().any(|c| c.table == *table) {
            missing.push(format!("table {table}"));
            continue;
        }
        for column in *columns {
            if !present
                .iter()
                .any(|c| c.table == *table && c.column == *column)
            {
                missing.push(format!("column {table}.{column}"));
            }
        }
    }
    if !missing.is_empty() {
        return Err(Error::Schema(format!("missing {}", missing.join(", "))));
    }
    check_time_columns(&present)
}

/// Refuses `timestamp without time zone` (or any other type) in [`TIME_COLUMNS`].
fn check_time_columns(present: &[sql::TableColumn]) -> Result<()> {
    let wrong: Vec<String> = present
        .iter()
        .filter(|c| TIME_COLUMNS.contains(&(c.table.as_str(), c.column.as_str())))
        .filter(|c| c.data_type != "timestamp with time zone")
        .map(|c| format!("{}.{} is {}", c.table, c.column, c.data_type))
        .collect();
    if wrong.is_empty() {
        return Ok(());
    }
    Err(Error::Schema(format!(
        "{}: the release compares these columns with the database clock and writes it into \
         them, and cannot know the shop's time zone; they must be timestamp with time zone \
         (timestamptz, as Django stores them with USE_TZ = True)",
        wrong.join(", ")
    )))
}

/// In a lock cycle with a shopper, the batch must give up well before the shopper's backend
/// runs the deadlock check (after `deadlock_timeout`) and aborts the shopper.
fn check_lock_timeout(lock_timeout_ms: u32, deadlock_timeout_ms: i64) -> Result<()> {
    if i64::from(lock_timeout_ms) * 2 <= deadlock_timeout_ms {
        return Ok(());
    }
    Err(Error::Setting {
        name: "LOCK_TIMEOUT_MS".into(),
        reason: format!(
            "{lock_timeout_ms} ms must be at most half the server's deadlock_timeout \
             ({deadlock_timeout_ms} ms), so that the release, not a shopper, gives up \
             first in a lock cycle"
        ),
    })
}

/// The recommended indexes that are absent, with a warning when there are any.
async fn missing_indexes(client: &Client) -> Result<Vec<String>> {
    let existing = sql::existing_indexes(client, RECOMMENDED_INDEXES).await?;
    let missing: Vec<String> = RECOMMENDED_INDEXES
        .iter()
        .filter(|n| !existing.iter().any(|e| e == *n))
        .map(|n| n.to_string())
        .collect();
    if !missing.is_empty() {
        tracing::warn!(
            missing = ?missing,
            "recommended indexes missing (infra/indexes.sql): every batch scans the reservation table"
        );
    }
    Ok(missing)
}

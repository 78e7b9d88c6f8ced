//! The preflight check run on every new connection, before anything is changed: the tables and
//! columns the release needs exist, the server's `deadlock_timeout` leaves room for the batch's
//! `lock_timeout`, and which of the recommended indexes of `infra/indexes.sql` are present.

use tokio_postgres::Client;

use super::sql;
use crate::error::{Error, Result};
use crate::settings::check_lock_timeout;

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

/// An index of `infra/indexes.sql`, and what any index must be to do its job.
#[derive(Debug, Clone, Copy)]
pub struct Recommended {
    /// Its name in `infra/indexes.sql`.
    pub name: &'static str,
    /// The key columns an index must start with.
    pub columns: &'static [&'static str],
    /// Conditions its predicate may hold (besides none at all): each term of the predicate,
    /// with casts and parentheses removed, must be one of these.
    pub predicate_terms: &'static [&'static str],
}

/// The indexes of `infra/indexes.sql`. The release is correct without them; without the first,
/// a run reads the due rows in passes (one scan each) instead of paging through the index.
pub const RECOMMENDED_INDEXES: &[Recommended] = &[
    Recommended {
        name: "unreserver_active_expiry_idx",
        columns: &["expires_at", "id"],
        predicate_terms: &["status = 'active'"],
    },
    Recommended {
        name: "unreserver_active_legacy_idx",
        columns: &["created_at", "id"],
        predicate_terms: &["status = 'active'", "expires_at IS NULL"],
    },
];

/// The command that creates the recommended indexes, for messages.
pub const CREATE_INDEXES: &str = "psql \"$DATABASE_URL\" -f infra/indexes.sql";

/// Whether `index` serves as `wanted`: a B-tree whose keys start with the wanted columns, all
/// in one direction that a scan (forward or backward) returns in the page's order, and whose
/// predicate (if any) only narrows to rows the release reads. Anything else would leave the
/// planner sorting every remaining due row for each page: such an index is reported missing and
/// the run reads in passes.
pub fn serves(index: &sql::IndexDefinition, wanted: &Recommended) -> bool {
    let n = wanted.columns.len();
    if index.method != "btree"
        || index.columns.len() < n
        || index.options.len() < n
        || !index
            .columns
            .iter()
            .zip(wanted.columns)
            .all(|(c, w)| c == w)
        || !in_page_order(&index.options[..n])
    {
        return false;
    }
    let Some(predicate) = &index.predicate else {
        return true;
    };
    predicate_terms(predicate)
        .iter()
        .all(|term| wanted.predicate_terms.contains(&term.as_str()))
}

/// Whether key columns with these `indoption`s give the page's order `ORDER BY due, id` (both
/// ascending, NULLs last): all ascending with NULLs last (a forward scan), or all descending with
/// NULLs first (a backward scan). Mixed directions, or NULLs on the wrong side, make the planner
/// sort instead.
fn in_page_order(options: &[i16]) -> bool {
    const DESC: i16 = 1;
    const NULLS_FIRST: i16 = 2;
    options.iter().all(|o| *o == 0) || options.iter().all(|o| *o == DESC | NULLS_FIRST)
}

/// The AND-ed terms of a predicate as PostgreSQL prints it, without casts and parentheses:
/// `((status)::text = 'active'::text) AND (expires_at IS NULL)` gives `status = 'active'` and
/// `expires_at IS NULL`.
fn predicate_terms(predicate: &str) -> Vec<String> {
    let plain = predicate
        .replace("::text", "")
        .replace("::character varying", "")
        .replace(['(', ')'], "");
    plain
        .split(" AND ")
        .map(|t| t.split_whitespace().collect::<Vec<_>>().join(" "))
        .collect()
}

/// What the preflight found beyond the hard requirements.
#[derive(Debug, Clone, Default)]
pub struct Preflight {
    /// Recommended indexes for which no index of the same definition exists (named as in
    /// `infra/indexes.sql`).
    pub missing_indexes: Vec<String>,
    /// Whether an index serves the keyset page over expiring rows: without one, a run reads
    /// the due rows in passes.
    pub expiry_index: bool,
    /// The server's `deadlock_timeout`, in milliseconds.
    pub deadlock_timeout_ms: i64,
}

/// Checks the schema and the lock timeout against the server. Fails, naming every missing
/// table and column, before the release changes anything.
pub async fn preflight(client: &Client, lock_timeout_ms: u32) -> Result<Preflight> {
    check_columns(client).await?;
    let deadlock_timeout_ms = sql::deadlock_timeout_ms(client).await?;
    check_lock_timeout(lock_timeout_ms, deadlock_timeout_ms, "the server's")?;
    let indexes = sql::reservation_indexes(client).await?;
    let missing_indexes = missing_indexes(&indexes);
    Ok(Preflight {
        expiry_index: !missing_indexes
            .iter()
            .any(|m| m == RECOMMENDED_INDEXES[0].name),
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

/// The recommended indexes no present index serves, with a warning (and the command that
/// creates them) when there are any.
fn missing_indexes(indexes: &[sql::IndexDefinition]) -> Vec<String> {
    let missing: Vec<String> = RECOMMENDED_INDEXES
        .iter()
        .filter(|wanted| !indexes.iter().any(|index| serves(index, wanted)))
        .map(|wanted| wanted.name.to_string())
        .collect();
    if !missing.is_empty() {
        tracing::warn!(
            missing = ?missing,
            create_them_with = CREATE_INDEXES,
            "recommended indexes missing: runs read the due rows in passes of whole-table scans; \
             create them with {CREATE_INDEXES}"
        );
    }
    missing
}

#[cfg(test)]
mod tests {
    use super::*;

    fn index(columns: &[&str], predicate: Option<&str>) -> sql::IndexDefinition {
        sql::IndexDefinition {
            name: "any_name".into(),
            method: "btree".into(),
            columns: columns.iter().map(|c| c.to_string()).collect(),
            options: vec![0; columns.len()],
            predicate: predicate.map(Into::into),
        }
    }

    /// A B-tree on `(expires_at, id) WHERE status = 'active'`, the keyset page's index.
    fn expiry_btree() -> sql::IndexDefinition {
        index(&["expires_at", "id"], Some("(status = 'active'::text)"))
    }

    #[test]
    fn an_index_serves_only_if_a_scan_gives_the_page_order() {
        let expiry = &RECOMMENDED_INDEXES[0];
        assert!(serves(&expiry_btree(), expiry));
        let backward = sql::IndexDefinition {
            options: vec![3, 3],
            ..expiry_btree()
        };
        assert!(
            serves(&backward, expiry),
            "DESC NULLS FIRST: a backward scan"
        );
        for options in [vec![1, 0], vec![0, 1], vec![2, 0], vec![1, 1]] {
            let wrong = sql::IndexDefinition {
                options: options.clone(),
                ..expiry_btree()
            };
            assert!(!serves(&wrong, expiry), "{options:?}");
        }
        let brin = sql::IndexDefinition {
            method: "brin".into(),
            ..expiry_btree()
        };
        assert!(!serves(&brin, expiry), "a BRIN index gives no order");
        let expression_first = index(&["", "expires_at", "id"], None);
        assert!(!serves(&expression_first, expiry));
    }

    #[test]
    fn an_index_serves_by_definition_not_by_name() {
        let expiry = &RECOMMENDED_INDEXES[0];
        let legacy = &RECOMMENDED_INDEXES[1];
        assert!(serves(
            &index(&["expires_at", "id"], Some("(status = 'active'::text)")),
            expiry
        ));
        assert!(serves(
            &index(
                &["expires_at", "id"],
                Some("((status)::text = 'active'::text)")
            ),
            expiry
        ));
        assert!(serves(
            &index(&["expires_at", "id", "order_id"], None),
            expiry
        ));
        assert!(!serves(
            &index(&["expires_at"], Some("(status = 'active'::text)")),
            expiry
        ));
        assert!(!serves(&index(&["id", "expires_at"], None), expiry));
        assert!(!serves(
            &index(&["expires_at", "id"], Some("(status = 'expired'::text)")),
            expiry
        ));
        assert!(serves(
            &index(
                &["created_at", "id"],
                Some("(((status)::text = 'active'::text) AND (expires_at IS NULL))")
            ),
            legacy
        ));
        assert!(!serves(
            &index(&["created_at", "id"], Some("(expires_at IS NOT NULL)")),
            legacy
        ));
    }
}

//! The preflight check run on every new connection, before anything is changed: the server is
//! a primary (not a read-only standby), the tables and columns the release needs exist, the
//! shop's `deadlock_timeout` (the lowest any role or database sets) leaves room for the batch's
//! `lock_timeout`, whether a pooler or proxy stands between the tool and the server, and which
//! of the recommended indexes of `infra/indexes.sql` are present.

use tokio_postgres::config::Host;
use tokio_postgres::{Client, Config};

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
    /// The shop's `deadlock_timeout`, in milliseconds: the lowest of the server's and of every
    /// value a role or database sets ([`shop_deadlock_timeout_ms`]).
    pub deadlock_timeout_ms: i64,
    /// Whether the connection reaches the server through a pooler or proxy (PgBouncer, RDS
    /// Proxy): its pool, which the role cannot read, bounds the connections, not the server's
    /// counts ([`through_proxy`]).
    pub behind_pooler: bool,
}

/// Checks the server, the schema and the lock timeout. Fails — a standby at once, then naming
/// every missing table and column — before the release changes anything.
pub async fn preflight(
    client: &Client,
    config: &Config,
    lock_timeout_ms: u32,
) -> Result<Preflight> {
    // The three reads go together (pipelined); their verdicts are taken in this order.
    let tables: Vec<&str> = REQUIRED_COLUMNS.iter().map(|(t, _)| *t).collect();
    let (facts, columns, indexes) = tokio::join!(
        sql::server_facts(client),
        sql::table_columns(client, &tables),
        sql::reservation_indexes(client),
    );
    let facts = facts?;
    if facts.in_recovery {
        return Err(Error::ReadOnlyServer {
            target: super::connect::describe(config),
        });
    }
    let columns = columns?;
    check_columns(&columns)?;
    let deadlock_timeout_ms = shop_deadlock_timeout_ms(&facts);
    check_lock_timeout(lock_timeout_ms, deadlock_timeout_ms, "the server's")?;
    let indexes: Vec<sql::IndexDefinition> = indexes?
        .into_iter()
        .map(|index| index.definition(&columns))
        .collect();
    let missing_indexes = missing_indexes(&indexes);
    Ok(Preflight {
        expiry_index: !missing_indexes
            .iter()
            .any(|m| m == RECOMMENDED_INDEXES[0].name),
        missing_indexes,
        deadlock_timeout_ms,
        behind_pooler: through_proxy(config, &facts),
    })
}

/// `deadlock_timeout`'s compiled default (1 s), the server's own value as far as the release can
/// tell when its role sets another.
pub const DEADLOCK_TIMEOUT_DEFAULT_MS: i64 = 1000;

/// The shop's `deadlock_timeout`: the lowest of this session's value and of every value a role
/// or database sets for this database — the shop's sessions may run under another role, with
/// a lower one (`SHOP_DEADLOCK_TIMEOUT_MS` overrides the result). When the release's own login
/// role sets one, this session's value is that role's, and the server's (or database's) own is
/// not readable (only superusers read `pg_file_settings`): the compiled default (1 s) stands in
/// for it, the safe side (a shorter bound). A value that cannot be read is left out, with a
/// warning (this session's own: the default stands in).
pub fn shop_deadlock_timeout_ms(facts: &sql::ServerFacts) -> i64 {
    const NAME: &str = "deadlock_timeout=";
    let readable = |value: &str| {
        let ms = parse_duration_ms(value);
        if ms.is_none() {
            tracing::warn!(value, "a deadlock_timeout could not be read; ignored");
        }
        ms
    };
    let session = readable(&facts.deadlock_timeout).unwrap_or(DEADLOCK_TIMEOUT_DEFAULT_MS);
    let own_role_sets_it = facts
        .role_settings
        .iter()
        .any(|r| r.own_role && r.settings.iter().any(|s| s.starts_with(NAME)));
    let session = match own_role_sets_it {
        true => session.min(DEADLOCK_TIMEOUT_DEFAULT_MS),
        false => session,
    };
    facts
        .role_settings
        .iter()
        .flat_map(|r| r.settings.iter())
        .filter_map(|setting| setting.strip_prefix(NAME))
        .filter_map(readable)
        .fold(session, i64::min)
}

/// A time setting as `ALTER ROLE ... SET` stores it (`2s`, `500ms`, `1.5 s`, `1min`, a bare
/// number of milliseconds), in whole milliseconds; None when unreadable.
pub fn parse_duration_ms(value: &str) -> Option<i64> {
    let value = value.trim().trim_matches('\'');
    let split = value
        .find(|c: char| !(c.is_ascii_digit() || c == '.' || c == '-' || c == '+'))
        .unwrap_or(value.len());
    let (number, unit) = value.split_at(split);
    let number: f64 = number.parse().ok()?;
    let per_ms = match unit.trim() {
        "" | "ms" => 1.0,
        "us" => 0.001,
        "s" => 1_000.0,
        "min" => 60_000.0,
        "h" => 3_600_000.0,
        "d" => 86_400_000.0,
        _ => return None,
    };
    let ms = (number * per_ms).round();
    (0.0..9.0e15).contains(&ms).then_some(ms as i64)
}

/// Whether the connection went through something between the tool and the server: the client
/// named another port than the server listens on, came over TCP where the server saw its Unix
/// socket (or the reverse), or named an RDS Proxy endpoint (`*.proxy-*.rds.amazonaws.com`,
/// which keeps the port). A plain forward on the same port is not seen: `POOLED_WORKERS`
/// covers what a pool allows either way.
pub fn through_proxy(config: &Config, facts: &sql::ServerFacts) -> bool {
    let hosts = config.get_hosts();
    let ports = config.get_ports();
    let port_differs = if ports.is_empty() {
        facts.port != 5432
    } else {
        !ports.iter().any(|p| i32::from(*p) == facts.port)
    };
    let tcp = hosts.iter().any(|h| matches!(h, Host::Tcp(_)));
    let socket_differs = hosts.len() == 1 && tcp == facts.unix_socket;
    let rds_proxy = hosts.iter().any(|h| match h {
        Host::Tcp(name) => name.contains(".proxy-") && name.ends_with(".rds.amazonaws.com"),
        #[cfg(unix)]
        Host::Unix(_) => false,
    });
    port_differs || socket_differs || rds_proxy
}

/// Fails naming every table and column of [`REQUIRED_COLUMNS`] that is absent from `present`.
fn check_columns(present: &[sql::TableColumn]) -> Result<()> {
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
    check_time_columns(present)
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

    #[test]
    fn time_settings_read_as_alter_role_stores_them() {
        for (value, ms) in [
            ("2s", Some(2000)),
            ("500ms", Some(500)),
            ("1.5 s", Some(1500)),
            ("1min", Some(60_000)),
            ("750", Some(750)),
            ("'3s'", Some(3000)),
            ("2000us", Some(2)),
            ("soon", None),
            ("5 fortnights", None),
        ] {
            assert_eq!(parse_duration_ms(value), ms, "{value}");
        }
    }

    /// This session's `deadlock_timeout` (`ms`) and the values other roles set (`set`); with
    /// `own`, the release's role sets the first of them.
    fn facts(ms: i64, own: bool, set: &[&str]) -> sql::ServerFacts {
        sql::ServerFacts {
            port: 5432,
            unix_socket: false,
            in_recovery: false,
            deadlock_timeout: format!("{ms}ms"),
            role_settings: set
                .iter()
                .enumerate()
                .map(|(n, value)| sql::RoleSettings {
                    own_role: own && n == 0,
                    settings: vec!["work_mem=8MB".into(), format!("deadlock_timeout={value}")],
                })
                .collect(),
        }
    }

    #[test]
    fn the_shops_deadlock_timeout_is_the_lowest_any_role_sets() {
        assert_eq!(shop_deadlock_timeout_ms(&facts(5000, false, &[])), 5000);
        // Another role (the shop's) sets less: that bounds the release.
        assert_eq!(
            shop_deadlock_timeout_ms(&facts(5000, false, &["400ms", "9s"])),
            400
        );
        // The release's own role sets more: the server's is unreadable, the default stands in.
        assert_eq!(
            shop_deadlock_timeout_ms(&facts(20_000, true, &["20s"])),
            1000
        );
        // Another role, or the database, sets more: this session's value stands.
        assert_eq!(
            shop_deadlock_timeout_ms(&facts(20_000, false, &["20s"])),
            20_000
        );
        // A value that cannot be read is left out.
        assert_eq!(
            shop_deadlock_timeout_ms(&facts(5000, false, &["soon", "700ms"])),
            700
        );
    }

    fn index(columns: &[&str], predicate: Option<&str>) -> sql::IndexDefinition {
        sql::IndexDefinition {
            name: "any_name".into(),
            method: "btree".into(),
            columns: columns.iter().map(|c| c.to_string()).collect(),
            options: vec![0; columns.len()],
            predicate: predicate.map(Into::into),
        }
    }

    #[test]
    fn an_index_row_names_its_keys_by_position_and_drops_included_columns() {
        let column = |table: &str, column: &str, position| sql::TableColumn {
            table: table.into(),
            column: column.into(),
            position,
            data_type: "bigint".into(),
        };
        let columns = [
            column("orders_order", "status", 2),
            column(sql::RESERVATION_TABLE, "id", 1),
            column(sql::RESERVATION_TABLE, "expires_at", 8),
        ];
        let row = sql::IndexRow {
            name: "shop_idx".into(),
            method: "btree".into(),
            keys: vec![0, 8, 2, 1],
            options: vec![0, 3, 0, 0],
            key_count: 3,
            predicate: None,
        };
        let index = row.definition(&columns);
        // An expression key stays as an empty name; position 2 is another table's; the
        // INCLUDE column (id) is no key.
        assert_eq!(index.columns, ["", "expires_at", ""]);
        assert_eq!(index.options, [0, 3, 0]);
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

//! The first steps of a batch: the page of due candidates (locks nothing) and the claims of
//! orders and cart holds (`FOR UPDATE SKIP LOCKED`: a row a shopper holds is skipped, never
//! waited on).

use bytes::BytesMut;
use tokio_postgres::types::{accepts, to_sql_checked, FromSql, IsNull, ToSql, Type};
use tokio_postgres::GenericClient;

use super::{fetch, Rules, Statements};
use crate::error::Result;

/// The next page of candidates, after the run's cursors, in due order. Locks nothing and reads
/// only the reservations: it proposes; the claims below check every rule under lock.
///
/// Keyset pagination over the two partial indexes of `infra/indexes.sql`
/// (`(expires_at, id) WHERE status = 'active'`, and `(created_at, id) WHERE status = 'active'
/// AND expires_at IS NULL`): each due row is visited once per run, so rows a run passes over (a
/// paid order's, an order in payment grace, an order a shopper holds) never make every later
/// batch rescan them. Legacy rows come after the rest.
///
/// The cursor travels as a binary `timestamptz` ([`PgTimestamp`]), never as text, so it does
/// not depend on the session's `DateStyle` or `TimeZone`.
///
/// A run's workers page at once, each its own share of the orders and holds ($7/$8, see
/// [`Share`]): the share is a filter, not a key of the index, so each worker reads past the
/// others' rows in the index (cheap index entries) and never claims them.
///
/// $1/$2 cursor (expires_at, id) of the expiring rows, $3/$4 cursor (created_at, id) of the
/// legacy rows, $5 page size, $6 reservation timeout minutes, $7 workers, $8 this worker's
/// share (0-based).
/// Returns per row: id, order_id, cursor key, legacy.
pub const PAGE: &str = concat!(
    "SELECT id::int8 AS id, order_id::int8 AS order_id, due_key, legacy FROM (",
    "(SELECT r.id, r.order_id, r.expires_at AS due_key, false AS legacy ",
    "FROM orders_inventoryreservation r ",
    "WHERE r.status = 'active' AND r.expires_at <= now() ",
    "AND (r.expires_at, r.id) > ($1::timestamptz, $2::int8) ",
    "AND ",
    owned_by_share!("coalesce(r.order_id, r.id)", "$7", "$8"),
    " ",
    "ORDER BY r.expires_at, r.id LIMIT $5::int8) ",
    "UNION ALL ",
    "(SELECT r.id, r.order_id, r.created_at, true ",
    "FROM orders_inventoryreservation r ",
    "WHERE r.status = 'active' AND r.expires_at IS NULL ",
    "AND r.created_at <= now() - make_interval(mins => $6::int4) ",
    "AND (r.created_at, r.id) > ($3::timestamptz, $4::int8) ",
    "AND ",
    owned_by_share!("coalesce(r.order_id, r.id)", "$7", "$8"),
    " ",
    "ORDER BY r.created_at, r.id LIMIT $5::int8)) p ",
    "ORDER BY legacy, due_key, id LIMIT $5::int8"
);

/// A `timestamptz` exactly as PostgreSQL sends it in binary: microseconds since 2000-01-01 UTC,
/// `-infinity` and `infinity` as `i64::MIN` and `i64::MAX`. The paging cursor only compares and
/// sends it back, so it needs no calendar arithmetic and no zone.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct PgTimestamp(pub i64);

impl PgTimestamp {
    /// `-infinity`: before every row.
    pub const MIN: PgTimestamp = PgTimestamp(i64::MIN);
}

impl<'a> FromSql<'a> for PgTimestamp {
    fn from_sql(
        _: &Type,
        raw: &'a [u8],
    ) -> std::result::Result<Self, Box<dyn std::error::Error + Sync + Send>> {
        let bytes: [u8; 8] = raw.try_into()?;
        Ok(PgTimestamp(i64::from_be_bytes(bytes)))
    }

    accepts!(TIMESTAMPTZ);
}

impl ToSql for PgTimestamp {
    fn to_sql(
        &self,
        _: &Type,
        out: &mut BytesMut,
    ) -> std::result::Result<IsNull, Box<dyn std::error::Error + Sync + Send>> {
        out.extend_from_slice(&self.0.to_be_bytes());
        Ok(IsNull::No)
    }

    accepts!(TIMESTAMPTZ);
    to_sql_checked!();
}

/// Parameters of [`PAGE`].
#[derive(Debug, Clone, Copy)]
pub struct PageParams {
    /// The cursor of the expiring rows: (`expires_at`, id) of the last one paged.
    pub expiring_after: (PgTimestamp, i64),
    /// The cursor of the legacy rows: (`created_at`, id).
    pub legacy_after: (PgTimestamp, i64),
    pub limit: i64,
    pub rules: Rules,
    pub share: Share,
}

/// The share of the due rows one worker of a run pages: the orders (and cart holds) whose id
/// modulo `of` is `index` (the rule `owned_by_share!` of `rules.rs`, which counts negative ids
/// too), so that no two workers ever claim the same order, hold or reservation, and every one
/// is some worker's. One worker: `{ index: 0, of: 1 }`, every row.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Share {
    pub index: i64,
    pub of: i64,
}

impl Share {
    /// Every row: a run with one worker.
    pub const ALL: Share = Share { index: 0, of: 1 };
}

/// A row of [`PAGE`]: a due reservation proposed to the batch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PageRow {
    pub id: i64,
    /// None for a cart hold.
    pub order_id: Option<i64>,
    /// The row's cursor key: `expires_at`, or `created_at` for a legacy row.
    pub due_key: PgTimestamp,
    pub legacy: bool,
}

impl Statements {
    /// [`PAGE`].
    pub async fn page(
        &self,
        client: &(impl GenericClient + Sync),
        p: &PageParams,
    ) -> Result<Vec<PageRow>> {
        fetch(
            client,
            &self.page,
            &[
                &p.expiring_after.0,
                &p.expiring_after.1,
                &p.legacy_after.0,
                &p.legacy_after.1,
                &p.limit,
                &p.rules.timeout_minutes,
                &p.share.of,
                &p.share.index,
            ],
            "paging due reservations",
            |row| {
                Ok(PageRow {
                    id: row.try_get("id")?,
                    order_id: row.try_get("order_id")?,
                    due_key: row.try_get("due_key")?,
                    legacy: row.try_get("legacy")?,
                })
            },
        )
        .await
    }
}

/// Claims the candidate orders that are still releasable and still have a due active
/// reservation, checked on the locked row. Locks the order rows `FOR UPDATE SKIP LOCKED`: an
/// order a shopper's transaction holds in any way (payment, a reservation being added) is
/// skipped, never waited on, and stays for the next run. `FOR UPDATE` rather than `FOR NO KEY
/// UPDATE` so that an order getting a new reservation right now is skipped too.
///
/// Also counts each claimed order's active reservations, up to $4 (through the foreign-key
/// index on `order_id`; a few rows for a common order): an order with more lines than a page
/// is worked alone (see `engine::batch::Source::Alone`), so one very large order never makes
/// the batch that meets it, and the others in it, too slow.
///
/// $1 candidate order ids, $2 reservation timeout minutes, $3 grace minutes, $4 the most
/// lines to count. Returns id, whether the order's payment is `processing` (its grace
/// applies), whether it is `cancelled` already (an earlier batch cancelled it and left lines:
/// the release step looks up only those orders' instant), and its active lines (at most $4).
pub const CLAIM_ORDERS: &str = concat!(
    "SELECT o.id::int8 AS id, COALESCE(o.payment_status = 'processing', false) AS processing, ",
    "o.status = 'cancelled' AS cancelled, ",
    "(SELECT count(*) FROM (SELECT 1 FROM orders_inventoryreservation r ",
    "WHERE r.order_id = o.id AND r.status = 'active' LIMIT $4::int8) l)::int8 AS lines ",
    "FROM orders_order o ",
    "WHERE o.id = ANY($1::int8[]) AND ",
    order_is_due!("$2", "$3"),
    " ORDER BY o.id FOR UPDATE OF o SKIP LOCKED"
);

/// Parameters of [`CLAIM_ORDERS`] and [`CLASSIFY_UNCLAIMED`].
#[derive(Debug, Clone, Copy)]
pub struct OrdersParams<'a> {
    pub order_ids: &'a [i64],
    pub rules: Rules,
}

/// Parameters of [`CLAIM_ORDERS`]: the orders and rules, and the most lines to count.
#[derive(Debug, Clone, Copy)]
pub struct ClaimParams<'a> {
    pub orders: OrdersParams<'a>,
    pub count_lines_up_to: i64,
}

/// A row of [`CLAIM_ORDERS`]: an order this batch now holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ClaimedOrder {
    pub id: i64,
    /// Its payment is `processing`: the grace applies to its reservations.
    pub processing: bool,
    /// Its status is `cancelled` (on the locked row).
    pub cancelled: bool,
    /// Its active reservations, counted up to the limit the claim was given.
    pub lines: i64,
}

impl Statements {
    /// [`CLAIM_ORDERS`].
    pub async fn claim_orders(
        &self,
        client: &(impl GenericClient + Sync),
        p: &ClaimParams<'_>,
    ) -> Result<Vec<ClaimedOrder>> {
        fetch(
            client,
            &self.claim_orders,
            &[
                &p.orders.order_ids,
                &p.orders.rules.timeout_minutes,
                &p.orders.rules.grace_minutes,
                &p.count_lines_up_to,
            ],
            "claiming orders",
            |row| {
                Ok(ClaimedOrder {
                    id: row.try_get("id")?,
                    processing: row.try_get("processing")?,
                    cancelled: row.try_get("cancelled")?,
                    lines: row.try_get("lines")?,
                })
            },
        )
        .await
    }
}

/// Why candidate orders were not claimed: paid (an anomaly to report), not due or not
/// releasable (a payment in grace, a confirmed order), or — when the rule still holds —
/// locked by a shopper. Runs only when some candidates were not claimed. Locks nothing.
///
/// $1 unclaimed order ids, $2 reservation timeout minutes, $3 grace minutes.
pub const CLASSIFY_UNCLAIMED: &str = concat!(
    "SELECT o.id::int8 AS id, COALESCE(o.payment_status = 'paid', false) AS paid, COALESCE(",
    order_is_due!("$2", "$3"),
    ", false) AS due FROM orders_order o WHERE o.id = ANY($1::int8[])"
);

/// A row of [`CLASSIFY_UNCLAIMED`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct UnclaimedOrder {
    pub id: i64,
    /// Paid: an anomaly to report, never touched.
    pub paid: bool,
    /// Still due under the rules: so a shopper held it.
    pub due: bool,
}

impl Statements {
    /// [`CLASSIFY_UNCLAIMED`].
    pub async fn classify_unclaimed(
        &self,
        client: &(impl GenericClient + Sync),
        p: &OrdersParams<'_>,
    ) -> Result<Vec<UnclaimedOrder>> {
        fetch(
            client,
            &self.classify_unclaimed,
            &[
                &p.order_ids,
                &p.rules.timeout_minutes,
                &p.rules.grace_minutes,
            ],
            "classifying unclaimed orders",
            |row| {
                Ok(UnclaimedOrder {
                    id: row.try_get("id")?,
                    paid: row.try_get("paid")?,
                    due: row.try_get("due")?,
                })
            },
        )
        .await
    }
}

/// Claims candidate cart holds (reservations without an order) that are still active and due.
/// Locks those reservation rows `FOR UPDATE SKIP LOCKED`: a hold a shopper is converting into
/// an order right now is skipped.
///
/// $1 candidate reservation ids, $2 reservation timeout minutes.
pub const CLAIM_HOLDS: &str = concat!(
    "SELECT r.id::int8 AS id FROM orders_inventoryreservation r ",
    "WHERE r.id = ANY($1::int8[]) AND r.order_id IS NULL AND r.status = 'active' AND ",
    is_due!("r", "$2"),
    " ORDER BY r.id FOR UPDATE SKIP LOCKED"
);

impl Statements {
    /// [`CLAIM_HOLDS`]: the ids of the holds claimed.
    pub async fn claim_holds(
        &self,
        client: &(impl GenericClient + Sync),
        hold_ids: &[i64],
        rules: Rules,
    ) -> Result<Vec<i64>> {
        fetch(
            client,
            &self.claim_holds,
            &[&hold_ids, &rules.timeout_minutes],
            "claiming cart holds",
            |row| row.try_get("id"),
        )
        .await
    }
}

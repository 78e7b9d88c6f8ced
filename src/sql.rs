//! Every SQL statement the release runs, in one place, each with what it locks and why.
//!
//! The rules of release live here as SQL fragments shared by the statements that apply them
//! ([`releasable_order!`], [`grace!`], [`due_at!`]), so that the claim, the dry run, the backlog
//! count and `status` can never disagree about what is due. Every time comparison is against the
//! database clock (`now()`, the batch transaction's start), never the client's.
//!
//! Every column a statement returns is cast to the type the code reads (ids to `int8`,
//! quantities to `int4`, conditions coalesced to booleans), so a shop whose ids are `integer`
//! or whose columns allow NULL gets correct results, never a panic in the row decoder.
//!
//! Lock order of a batch, the same as the shop's payment code: order rows (`SKIP LOCKED`, never
//! waited on) → reservation rows → variant rows in ascending id → drop rows in ascending id.
//! Waits on reservation, variant and drop rows are bounded by `lock_timeout`, set per batch well
//! below the server's `deadlock_timeout`, so that in any lock cycle with a shopper's transaction
//! it is the batch that gives up and retries, never the shopper that gets a deadlock error.

/// An order whose reservations the release may touch: `pending` or `cancelled`, and not paid.
/// `paid`, `refunded` and any payment status this tool does not know are never touched.
macro_rules! releasable_order {
    ($o:literal) => {
        concat!(
            $o,
            ".status IN ('pending', 'cancelled') AND ",
            $o,
            ".payment_status IN ('pending', 'failed', 'processing')"
        )
    };
}

/// Extra time before a reservation of an order whose payment status is `$payment` is due: the
/// payment-processing grace (minutes in parameter `$g`) while the shopper is mid-payment,
/// nothing otherwise.
macro_rules! grace {
    ($payment:literal, $g:literal) => {
        concat!(
            "CASE WHEN ",
            $payment,
            " = 'processing' THEN make_interval(mins => ",
            $g,
            "::int4) ELSE interval '0' END"
        )
    };
}

/// When reservation `$r` is due before any grace: its `expires_at`, or for a legacy row with
/// NULL `expires_at`, `created_at` plus the reservation timeout (minutes in parameter `$t`).
macro_rules! due_at {
    ($r:literal, $t:literal) => {
        concat!(
            "COALESCE(",
            $r,
            ".expires_at, ",
            $r,
            ".created_at + make_interval(mins => ",
            $t,
            "::int4))"
        )
    };
}

/// The active reservations due by `now()` before grace, in the two index orders the release
/// pages through: by `expires_at`, then legacy rows by `created_at`. `$t` holds the timeout.
macro_rules! due_reservations {
    ($t:literal) => {
        concat!(
            "SELECT r.id, r.order_id, ",
            due_at!("r", $t),
            " AS due_at FROM orders_inventoryreservation r WHERE r.status = 'active' AND (r.expires_at <= now() OR (r.expires_at IS NULL AND r.created_at <= now() - make_interval(mins => ",
            $t,
            "::int4)))"
        )
    };
}

/// Sets the batch's lock and statement timeouts for this transaction only.
/// $1 lock_timeout, $2 statement_timeout (both like '100ms'). Locks nothing.
pub const SET_BATCH_TIMEOUTS: &str =
    "SELECT set_config('lock_timeout', $1, true), set_config('statement_timeout', $2, true)";

/// The next page of candidates, after the run's cursors, in due order. Locks nothing and reads
/// only the reservations: it proposes; the claims below check every rule under lock.
///
/// Keyset pagination over the two partial indexes of `infra/indexes.sql`
/// (`(expires_at, id) WHERE status = 'active'`, and `(created_at, id) WHERE status = 'active'
/// AND expires_at IS NULL`): each due row is visited once per run, so rows a run passes over (a
/// paid order's, an order in payment grace, an order a shopper holds) never make every later
/// batch rescan them. Legacy rows come after the rest.
///
/// $1/$2 cursor (expires_at as text, id) of the expiring rows, $3/$4 cursor (created_at as text,
/// id) of the legacy rows, $5 page size, $6 reservation timeout minutes.
/// Returns per row: id, order_id, cursor key as text, legacy.
pub const PAGE: &str = concat!(
    "SELECT id::int8, order_id::int8, due_key::text, legacy FROM (",
    "(SELECT r.id, r.order_id, r.expires_at AS due_key, false AS legacy ",
    "FROM orders_inventoryreservation r ",
    "WHERE r.status = 'active' AND r.expires_at <= now() ",
    "AND (r.expires_at, r.id) > ($1::text::timestamptz, $2::int8) ",
    "ORDER BY r.expires_at, r.id LIMIT $5::int8) ",
    "UNION ALL ",
    "(SELECT r.id, r.order_id, r.created_at, true ",
    "FROM orders_inventoryreservation r ",
    "WHERE r.status = 'active' AND r.expires_at IS NULL ",
    "AND r.created_at <= now() - make_interval(mins => $6::int4) ",
    "AND (r.created_at, r.id) > ($3::text::timestamptz, $4::int8) ",
    "ORDER BY r.created_at, r.id LIMIT $5::int8)) p ",
    "ORDER BY legacy, due_key, id LIMIT $5::int8"
);

/// The release rule for order `o`: releasable, and holding an active reservation that is due
/// (grace included). $t holds the reservation timeout, $g the grace, both in minutes.
macro_rules! order_is_due {
    ($t:literal, $g:literal) => {
        concat!(
            releasable_order!("o"),
            " AND EXISTS (SELECT 1 FROM orders_inventoryreservation r ",
            "WHERE r.order_id = o.id AND r.status = 'active' AND ",
            due_at!("r", $t),
            " + ",
            grace!("o.payment_status", $g),
            " <= now())"
        )
    };
}

/// Claims the candidate orders that are still releasable and still have a due active
/// reservation, checked on the locked row. Locks the order rows `FOR UPDATE SKIP LOCKED`: an
/// order a shopper's transaction holds in any way (payment, a reservation being added) is
/// skipped, never waited on, and stays for the next run. `FOR UPDATE` rather than `FOR NO KEY
/// UPDATE` so that an order getting a new reservation right now is skipped too.
///
/// $1 candidate order ids, $2 reservation timeout minutes, $3 grace minutes.
/// Returns id, and whether the order's payment is `processing` (its grace applies).
pub const CLAIM_ORDERS: &str = concat!(
    "SELECT o.id::int8, COALESCE(o.payment_status = 'processing', false) FROM orders_order o ",
    "WHERE o.id = ANY($1::int8[]) AND ",
    order_is_due!("$2", "$3"),
    " ORDER BY o.id FOR UPDATE OF o SKIP LOCKED"
);

/// Why candidate orders were not claimed: paid (an anomaly to report), not due or not
/// releasable (a payment in grace, a confirmed order), or — when the rule still holds —
/// locked by a shopper. Runs only when some candidates were not claimed. Locks nothing.
///
/// $1 unclaimed order ids, $2 reservation timeout minutes, $3 grace minutes.
pub const CLASSIFY_UNCLAIMED: &str = concat!(
    "SELECT o.id::int8, COALESCE(o.payment_status = 'paid', false), COALESCE(",
    order_is_due!("$2", "$3"),
    ", false) FROM orders_order o WHERE o.id = ANY($1::int8[])"
);

/// Claims candidate cart holds (reservations without an order) that are still active and due.
/// Locks those reservation rows `FOR UPDATE SKIP LOCKED`: a hold a shopper is converting into
/// an order right now is skipped.
///
/// $1 candidate reservation ids, $2 reservation timeout minutes.
pub const CLAIM_HOLDS: &str = concat!(
    "SELECT r.id::int8 FROM orders_inventoryreservation r ",
    "WHERE r.id = ANY($1::int8[]) AND r.order_id IS NULL AND r.status = 'active' AND ",
    due_at!("r", "$2"),
    " <= now() ORDER BY r.id FOR UPDATE SKIP LOCKED"
);

/// Expires every active reservation of the claimed orders (all of an order's reservations go
/// together, due or not) and the claimed holds, returning what each held and whether it was
/// due itself (a dry run uses that to tell the backlog a real run would leave). Locks those
/// reservation rows (`FOR NO KEY UPDATE`, implied by the update); the claimed orders are ours
/// already, so only a shop transaction updating a reservation without its order's lock can
/// make it wait, for at most `lock_timeout`. `status = 'active'` is re-checked on the latest
/// row version, so a reservation converted meanwhile is left alone.
///
/// $1 claimed order ids, $2 claimed hold ids, $3 reservation timeout minutes, $4 grace minutes,
/// $5 the claimed orders whose payment is `processing`.
pub const RELEASE_RESERVATIONS: &str = concat!(
    "UPDATE orders_inventoryreservation r SET status = 'expired', released_at = now() ",
    "WHERE r.status = 'active' AND (r.order_id = ANY($1::int8[]) OR r.id = ANY($2::int8[])) ",
    "RETURNING r.id::int8, r.order_id::int8, r.product_variant_id::int8, r.drop_product_id::int8, ",
    "r.quantity::int4, COALESCE(",
    due_at!("r", "$3"),
    " + CASE WHEN r.order_id = ANY($5::int8[]) THEN make_interval(mins => $4::int4) ",
    "ELSE interval '0' END <= now(), false) AS was_due"
);

/// Cancels the claimed orders whose reservations this batch released, if still `pending`
/// (a `cancelled` order keeps its original `cancelled_at`). The order rows are locked already
/// by [`CLAIM_ORDERS`]; this takes no new lock.
///
/// $1 order ids.
pub const CANCEL_ORDERS: &str = "UPDATE orders_order \
     SET status = 'cancelled', cancelled_at = now(), updated_at = now() \
     WHERE id = ANY($1::int8[]) AND status = 'pending' RETURNING id::int8";

/// Gives released units back to the counter rows of `$table`, never below zero, returning for
/// each row whether the subtraction had to be clamped (the counter had drifted below what its
/// reservations held). Locks the rows in ascending id order with `FOR NO KEY UPDATE`, the lock
/// the update takes anyway, so a checkout inserting a reservation that references the row is
/// not blocked; waits at most `lock_timeout` on a row a checkout holds. The locked version is
/// the latest one, so `l.reserved_quantity` is the value the update subtracts from.
macro_rules! return_units {
    ($table:literal) => {
        concat!(
            "WITH released(id, units) AS (SELECT * FROM unnest($1::int8[], $2::int8[])), ",
            "locked AS (SELECT t.id, t.reserved_quantity FROM ",
            $table,
            " t WHERE t.id = ANY($1::int8[]) ORDER BY t.id FOR NO KEY UPDATE) ",
            "UPDATE ",
            $table,
            " t SET reserved_quantity = GREATEST(l.reserved_quantity - rel.units, 0), ",
            "updated_at = now() FROM locked l JOIN released rel ON rel.id = l.id ",
            "WHERE t.id = l.id RETURNING t.id::int8, COALESCE(l.reserved_quantity < rel.units, false) AS clamped"
        )
    };
}

/// Gives the released units back to the variants. These hot rows are locked last but for the
/// drops, so they are held only until the commit that follows.
///
/// $1 variant ids (ascending, distinct), $2 units to give back to each.
pub const RETURN_VARIANT_UNITS: &str = return_units!("products_productvariant");

/// Gives the released units back to limited-drop rows: locked after the variants, the order the
/// shop's checkout uses.
///
/// $1 drop product ids (ascending, distinct), $2 units to give back to each.
pub const RETURN_DROP_UNITS: &str = return_units!("drops_dropproduct");

/// Due reservations a run has left (a run's `backlog_remaining`, `status`'s `due_reservations`)
/// and the age in seconds of the oldest, grace included, paid and untouchable orders excluded.
/// Reads only; locks nothing. Uses the partial indexes when present.
///
/// $1 reservation timeout minutes, $2 grace minutes.
pub const BACKLOG: &str = concat!(
    "SELECT count(*), EXTRACT(EPOCH FROM now() - min(d.due_at + ",
    grace!("o.payment_status", "$2"),
    "))::float8 FROM (",
    due_reservations!("$1"),
    ") d LEFT JOIN orders_order o ON o.id = d.order_id ",
    "WHERE d.order_id IS NULL OR (",
    releasable_order!("o"),
    " AND d.due_at + ",
    grace!("o.payment_status", "$2"),
    " <= now())"
);

/// Paid orders that still hold active reservations: an anomaly (the shop should have converted
/// them). The release never touches them. Reads every active reservation; locks nothing.
pub const PAID_ORDERS_WITH_ACTIVE_RESERVATIONS: &str = "SELECT count(DISTINCT r.order_id) \
     FROM orders_inventoryreservation r JOIN orders_order o ON o.id = r.order_id \
     WHERE r.status = 'active' AND o.payment_status = 'paid'";

/// Counter rows of `$table` whose `reserved_quantity` differs from the sum of their active
/// reservations (`$fk` is the reservation column that references them), at most $1 rows, and
/// how many there are in all. A full read of the table and of the active reservations; locks
/// nothing. For `status` only, never on the release path.
macro_rules! counter_drift {
    ($table:literal, $fk:literal) => {
        concat!(
            "SELECT t.id::int8, t.reserved_quantity::int8, COALESCE(a.units, 0)::int8, count(*) OVER () ",
            "FROM ",
            $table,
            " t LEFT JOIN (SELECT ",
            $fk,
            " AS id, sum(quantity) AS units FROM orders_inventoryreservation ",
            "WHERE status = 'active' AND ",
            $fk,
            " IS NOT NULL GROUP BY ",
            $fk,
            ") a ON a.id = t.id WHERE t.reserved_quantity <> COALESCE(a.units, 0) ",
            "ORDER BY t.id LIMIT $1::int8"
        )
    };
}

/// Variants whose counter disagrees with their active reservations. $1 row limit.
pub const VARIANT_DRIFT: &str = counter_drift!("products_productvariant", "product_variant_id");

/// Drop rows whose counter disagrees with their active reservations. $1 row limit.
pub const DROP_DRIFT: &str = counter_drift!("drops_dropproduct", "drop_product_id");

/// The columns that exist of the tables named in $1 (resolved through `search_path`), to check
/// the schema before anything changes. Reads the catalog only.
pub const TABLE_COLUMNS: &str = "SELECT t.name, a.attname::text \
     FROM unnest($1::text[]) AS t(name) \
     JOIN pg_attribute a ON a.attrelid = to_regclass(t.name) \
     WHERE a.attnum > 0 AND NOT a.attisdropped";

/// Which of the indexes named in $1 exist (on any table in `search_path`). Reads the catalog.
pub const EXISTING_INDEXES: &str = "SELECT n.name FROM unnest($1::text[]) AS n(name) \
     WHERE to_regclass(n.name) IS NOT NULL";

/// The server's `deadlock_timeout` in milliseconds, to check that the batch's `lock_timeout`
/// stays well below it. Reads a setting.
pub const DEADLOCK_TIMEOUT_MS: &str =
    "SELECT setting::int8 FROM pg_settings WHERE name = 'deadlock_timeout'";

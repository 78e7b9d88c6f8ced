//! The rules of release as SQL fragments, shared by every statement that applies them, so that
//! the claim, the release, the dry run, the backlog count, `status`, follow mode's wake-up, the
//! expiry warnings, the outbox, the delay report and revive can never disagree about what is
//! due or what the release cancelled. Fragments only: they lock nothing by themselves.
//!
//! **The due rule**, said once here: a reservation is due at its *due instant* — its
//! `expires_at`, or for a legacy row (NULL `expires_at`) its `created_at` plus
//! `RESERVATION_TIMEOUT_MINUTES` (`due_at!`), plus the payment grace while its order's payment
//! is `processing` (`grace!`, `due_instant!`) — on the database clock (`is_due!`); an
//! order is due when the release may touch it and one of its active reservations is due
//! (`order_is_due!`). Built from those, and nowhere else: the reservations due now
//! (`due_rows!`: the backlog, and what follow mode counts), the earliest instant after a given
//! one at which the clock alone makes one due (`next_due_after!`: follow mode's wake-up), and
//! how long one has been due (`seconds_due!`: ages and release delays). The index range
//! predicates of the statements (the page, the candidates below, follow's and the warnings'
//! lookups) compare the columns themselves, each a superset of what the rule then keeps.
//!
//! Instants are epoch seconds (`numeric`, exact to the microsecond) rather than `timestamptz`,
//! so that the rule computes with every time the shop can store: `infinity` (never due) and
//! `-infinity` (always due) are ±Infinity, never "cannot subtract infinite timestamps", and
//! adding the timeout or the grace to a time near the largest PostgreSQL stores is never
//! "timestamp out of range".

/// Epoch seconds (`numeric`; ±Infinity for ±`infinity`) of a `timestamptz` expression, or of
/// column `$col` of row `$r`.
macro_rules! epoch {
    ($ts:literal) => {
        concat!("EXTRACT(EPOCH FROM ", $ts, ")")
    };
    ($r:literal, $col:literal) => {
        concat!("EXTRACT(EPOCH FROM ", $r, ".", $col, ")")
    };
}

/// Minutes in parameter `$m` as seconds.
macro_rules! minutes {
    ($m:literal) => {
        concat!("(60 * ", $m, "::int4)")
    };
}

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

/// Extra seconds before a reservation is due: the payment-processing grace (minutes in
/// parameter `$g`) while the shopper is mid-payment, nothing otherwise. One fragment, two forms
/// of "mid payment": `$processing` is either the order's own column (`o.payment_status =
/// 'processing'`; NULL for a cart hold, which has no grace) or, in the release statement,
/// membership in the orders the claim found processing on their locked rows (`r.order_id =
/// ANY($5::int8[])`).
macro_rules! grace {
    ($processing:literal, $g:literal) => {
        concat!(
            "CASE WHEN ",
            $processing,
            " THEN ",
            minutes!($g),
            " ELSE 0 END"
        )
    };
}

/// Order `$o` was cancelled by the release that expired reservation `$r`: the release cancels
/// an order in the statement that expires its reservations, so its `cancelled_at` is their
/// `released_at` (the batch's `now()`); an order the shop cancelled itself has another time.
macro_rules! cancelled_by_release {
    ($o:literal, $r:literal) => {
        concat!(
            "(",
            $o,
            ".status = 'cancelled' AND ",
            $o,
            ".cancelled_at = ",
            $r,
            ".released_at)"
        )
    };
}

/// When reservation `$r` falls due before any grace, in epoch seconds: its `expires_at`, or for
/// a legacy row with NULL `expires_at`, `created_at` plus the reservation timeout (minutes in
/// parameter `$t`).
macro_rules! due_at {
    ($r:literal, $t:literal) => {
        concat!(
            "COALESCE(",
            epoch!($r, "expires_at"),
            ", ",
            epoch!($r, "created_at"),
            " + ",
            minutes!($t),
            ")"
        )
    };
}

/// The due instant of reservation `$r`, in epoch seconds: `due_at!` plus the `grace!` of
/// `$processing` (grace minutes in `$g`).
macro_rules! due_instant {
    ($r:literal, $t:literal, $processing:literal, $g:literal) => {
        concat!("(", due_at!($r, $t), " + ", grace!($processing, $g), ")")
    };
}

/// Reservation `$r` is due on the database clock (`now()`, the transaction's start): its due
/// instant has come, grace included (the second form, for a cart hold, has none). NULL when
/// neither of its times is known.
macro_rules! is_due {
    ($r:literal, $t:literal) => {
        concat!(due_at!($r, $t), " <= ", epoch!("now()"))
    };
    ($r:literal, $t:literal, $processing:literal, $g:literal) => {
        concat!(
            due_instant!($r, $t, $processing, $g),
            " <= ",
            epoch!("now()")
        )
    };
}

/// Seconds reservation `$r` has been due at `$at` (a `timestamptz` expression), as `float8`,
/// without grace or (second form) with it: what ages and release delays measure. Negative when
/// not yet due; `-Infinity` for a row due at `infinity` (never due). A row due since
/// `-infinity` counts from its `created_at` — due from the moment it was written — and one
/// written at `-infinity` too from `$at`: every due row's age is a time, never Infinity.
macro_rules! seconds_due {
    ($r:literal, $t:literal, $at:literal) => {
        concat!(
            "(",
            epoch!($at),
            " - CASE WHEN ",
            due_at!($r, $t),
            " > '-Infinity' THEN ",
            due_at!($r, $t),
            " WHEN ",
            epoch!($r, "created_at"),
            " > '-Infinity' THEN ",
            epoch!($r, "created_at"),
            " ELSE ",
            epoch!($at),
            " END)::float8"
        )
    };
    ($r:literal, $t:literal, $processing:literal, $g:literal, $at:literal) => {
        concat!(
            "(",
            seconds_due!($r, $t, $at),
            " - ",
            grace!($processing, $g),
            ")"
        )
    };
}

/// The active reservations past their due instant before grace, on the database clock, in the
/// two index ranges the backlog reads: `expires_at <= now()` (`unreserver_active_expiry_idx`),
/// then legacy rows by `created_at` (`unreserver_active_legacy_idx`). Candidates for
/// `due_rows!`, which applies the rest of the rule. `$t` holds the timeout.
macro_rules! past_due_reservations {
    ($t:literal) => {
        concat!(
            "SELECT r.id, r.order_id, r.expires_at, r.created_at ",
            "FROM orders_inventoryreservation r ",
            "WHERE r.status = 'active' AND (r.expires_at <= now() ",
            "OR (r.expires_at IS NULL AND r.created_at <= now() - make_interval(mins => ",
            $t,
            "::int4)))"
        )
    };
}

/// The reservations due now by the rule: a cart hold past its due instant, or the line of an
/// order the release may touch that is due, grace included. Columns `id`, `order_id` and `age`
/// (seconds due, grace included: `seconds_due!`). `$t` timeout, `$g` grace, in minutes.
macro_rules! due_rows {
    ($t:literal, $g:literal) => {
        concat!(
            "SELECT d.id, d.order_id, ",
            seconds_due!("d", $t, "o.payment_status = 'processing'", $g, "now()"),
            " AS age FROM (",
            past_due_reservations!($t),
            ") d LEFT JOIN orders_order o ON o.id = d.order_id ",
            "WHERE d.order_id IS NULL OR (",
            releasable_order!("o"),
            " AND ",
            is_due!("d", $t, "o.payment_status = 'processing'", $g),
            ")"
        )
    };
}

/// The release rule for order `o`: releasable, and holding an active reservation that is due
/// (grace included). `$t` holds the reservation timeout, `$g` the grace, both in minutes.
macro_rules! order_is_due {
    ($t:literal, $g:literal) => {
        concat!(
            releasable_order!("o"),
            " AND EXISTS (SELECT 1 FROM orders_inventoryreservation r ",
            "WHERE r.order_id = o.id AND r.status = 'active' AND ",
            is_due!("r", $t, "o.payment_status = 'processing'", $g),
            ")"
        )
    };
}

/// The earliest instant (epoch seconds) after `$after` (a `timestamptz` expression) at which
/// the clock alone makes a reservation due by the rule, or starts its grace: the least of the
/// rule applied to the first row of four index ranges —
/// - the next `expires_at` after `$after`: its first entry in `unreserver_active_expiry_idx`
///   (for a `processing` order's line, the start of its grace: a look too early, never late);
/// - the end of the grace of a `processing` order's line that expired within one grace before
///   `$after`: a range of the same index, one grace long;
/// - the next legacy row's `created_at` plus the timeout: its first entry in
///   `unreserver_active_legacy_idx`;
/// - the end of the grace of a `processing` order's legacy line whose timeout ended within one
///   grace before `$after`: a range of the same index, one grace long.
///
/// NULL when none will; Infinity when the next is at `infinity`. What became due otherwise
/// (a payment that failed, a hold cut back, a row written already due) the clock cannot
/// foretell: follow mode counts `due_rows!` for it. `$t` timeout, `$g` grace, in minutes.
macro_rules! next_due_after {
    ($after:literal, $t:literal, $g:literal) => {
        concat!(
            "LEAST((SELECT ",
            epoch!("min(r.expires_at)"),
            " FROM orders_inventoryreservation r ",
            "WHERE r.status = 'active' AND r.expires_at > ",
            $after,
            "), (SELECT ",
            epoch!("min(r.expires_at)"),
            " + ",
            minutes!($g),
            " FROM orders_inventoryreservation r JOIN orders_order o ON o.id = r.order_id ",
            "WHERE r.status = 'active' AND r.expires_at > ",
            $after,
            " - make_interval(mins => ",
            $g,
            "::int4) AND r.expires_at <= ",
            $after,
            " AND o.payment_status = 'processing'), (SELECT ",
            epoch!("min(r.created_at)"),
            " + ",
            minutes!($t),
            " FROM orders_inventoryreservation r ",
            "WHERE r.status = 'active' AND r.expires_at IS NULL AND r.created_at > ",
            $after,
            " - make_interval(mins => ",
            $t,
            "::int4)), (SELECT ",
            epoch!("min(r.created_at)"),
            " + ",
            minutes!($t),
            " + ",
            minutes!($g),
            " FROM orders_inventoryreservation r JOIN orders_order o ON o.id = r.order_id ",
            "WHERE r.status = 'active' AND r.expires_at IS NULL AND r.created_at > ",
            $after,
            " - make_interval(mins => ",
            $t,
            "::int4 + ",
            $g,
            "::int4) AND r.created_at <= ",
            $after,
            " - make_interval(mins => ",
            $t,
            "::int4) AND o.payment_status = 'processing'))"
        )
    };
}

/// Which worker of a run owns the row whose owning id is `$id` (an order's id, or a cart
/// hold's own id): the one whose share index (parameter `$index`) is that id modulo the
/// number of workers (parameter `$of`), counted from zero for every id — negative and zero
/// included (PostgreSQL's `mod` takes the dividend's sign, so it is brought back into
/// `0..of`). One share per id, every id in one share: no two workers claim the same order,
/// and none is left to nobody.
///
/// Written as `CASE WHEN ... THEN true ELSE false END`, not as the bare equality, for the
/// planner's sake: it has no statistics on the expression, so it took the equality for one
/// row in 200 (its default) where it is one in `of`, expected the page's `LIMIT` to need every
/// due row after the cursor, and read them all (a bitmap scan, then a sort) in every batch:
/// half the backlog a page on average, 24 ms a page of 3,500 at 100,000 due, 40 ms at the
/// start. A boolean expression the planner cannot see into it takes for one row in two, and
/// it walks the keyset index in order, stopping at the `LIMIT` (2 to 5 ms).
macro_rules! owned_by_share {
    ($id:literal, $of:literal, $index:literal) => {
        concat!(
            "CASE WHEN mod(mod(",
            $id,
            "::int8, ",
            $of,
            "::int8) + ",
            $of,
            "::int8, ",
            $of,
            "::int8) = ",
            $index,
            "::int8 THEN true ELSE false END"
        )
    };
}

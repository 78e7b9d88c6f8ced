//! The rules of release as SQL fragments, shared by every statement that applies them, so that
//! the claim, the dry run, the backlog count, `status`, the outbox, the delay report and revive
//! can never disagree about what is due or what the release cancelled. Fragments only: they
//! lock nothing by themselves.

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

/// Extra time before a reservation is due: the payment-processing grace (minutes in parameter
/// `$g`) while the shopper is mid-payment, nothing otherwise. One fragment, two forms of "mid
/// payment": `$processing` is either the order's own column (`o.payment_status = 'processing'`)
/// or, in the release statement, membership in the orders the claim found processing on their
/// locked rows (`r.order_id = ANY($5::int8[])`).
macro_rules! grace {
    ($processing:literal, $g:literal) => {
        concat!(
            "CASE WHEN ",
            $processing,
            " THEN make_interval(mins => ",
            $g,
            "::int4) ELSE interval '0' END"
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
            grace!("o.payment_status = 'processing'", $g),
            " <= now())"
        )
    };
}

/// Which worker of a run owns the row whose owning id is `$id` (an order's id, or a cart
/// hold's own id): the one whose share index (parameter `$index`) is that id modulo the
/// number of workers (parameter `$of`), counted from zero for every id — negative and zero
/// included (PostgreSQL's `mod` takes the dividend's sign, so it is brought back into
/// `0..of`). One share per id, every id in one share: no two workers claim the same order,
/// and none is left to nobody.
macro_rules! owned_by_share {
    ($id:literal, $of:literal, $index:literal) => {
        concat!(
            "mod(mod(",
            $id,
            "::int8, ",
            $of,
            "::int8) + ",
            $of,
            "::int8, ",
            $of,
            "::int8) = ",
            $index,
            "::int8"
        )
    };
}

//! Releasing one order on request (the shop's abandon or payment-failed webhook): the order is
//! locked and judged first, here; its release then runs the batch's own steps
//! ([`super::RELEASE_RESERVATIONS`], the counters), with the one difference that none of its
//! reservations needs to be due.

use tokio_postgres::GenericClient;

use super::fetch;
use crate::error::Result;

/// Locks the requested order `FOR UPDATE NOWAIT` and reads what the rules need to judge it on
/// the locked row: whether it is paid, whether the release may touch it (`pending` or
/// `cancelled`, payment `pending`, `failed` or `processing`), whether its payment is
/// `processing`, and its active reservations (through the foreign-key index on `order_id`).
/// `FOR UPDATE`, as the batch's claim: no reservation can be added to the order meanwhile.
/// `NOWAIT`: a shopper holding the order (paying right now) fails the statement at once
/// (`55P03`) instead of making the release wait in the order's lock queue; the caller tries
/// again a few milliseconds later, for `LOCK_TIMEOUT_MS`. No row: no such order.
///
/// $1 order id.
pub const LOCK_REQUESTED_ORDER: &str = concat!(
    "SELECT o.id::int8 AS id, COALESCE(o.payment_status = 'paid', false) AS paid, COALESCE(",
    releasable_order!("o"),
    ", false) AS releasable, COALESCE(o.payment_status = 'processing', false) AS processing, ",
    "(SELECT count(*) FROM orders_inventoryreservation r ",
    "WHERE r.order_id = o.id AND r.status = 'active')::int8 AS active_lines ",
    "FROM orders_order o WHERE o.id = $1::int8 FOR UPDATE OF o NOWAIT"
);

/// A row of [`LOCK_REQUESTED_ORDER`]: the requested order, locked by this transaction.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OnRequestOrder {
    pub id: i64,
    /// Its payment is `paid`: never touched.
    pub paid: bool,
    /// The release's rules admit it (status and payment).
    pub releasable: bool,
    /// Its payment is `processing`.
    pub processing: bool,
    /// Its active reservations.
    pub active_lines: i64,
}

/// [`LOCK_REQUESTED_ORDER`]: the order, None when there is no such order.
pub async fn lock_requested_order(
    client: &(impl GenericClient + Sync),
    order_id: i64,
) -> Result<Option<OnRequestOrder>> {
    let rows = fetch(
        client,
        LOCK_REQUESTED_ORDER,
        &[&order_id],
        "locking the order to release on request",
        |row| {
            Ok(OnRequestOrder {
                id: row.try_get("id")?,
                paid: row.try_get("paid")?,
                releasable: row.try_get("releasable")?,
                processing: row.try_get("processing")?,
                active_lines: row.try_get("active_lines")?,
            })
        },
    )
    .await?;
    Ok(rows.into_iter().next())
}

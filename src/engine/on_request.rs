//! Releasing one order now, on request — the shop's abandon or payment-failed webhook — whether
//! its reservations are due or not, by the release's rules otherwise: only a `pending` or
//! `cancelled` order whose payment is `pending`, `failed` or `processing` (a paid order never),
//! the batch's own steps and locks (never waiting in a lock queue), the same counters, the order
//! cancelled with `cancelled_at`, and its `Order Expired` event (through the run's on-commit
//! hook). One batch ([`Source::OnRequest`]) within the batch budget, measured from its first
//! hot row as for a large order.
//!
//! A row someone holds (the order itself, one of its reservations, a counter row) ends the try:
//! the batch, which polls for no row here, leaves the order out and ends its transaction, so
//! that nothing — the order row least of all (a shopper adding an item locks it) — is kept
//! while the release waits. It tries again by the one retry policy, like revive
//! ([`super::retry::HeldRowRetry`]): after 2 ms, then 4, ... up to 32 (jittered), for
//! `LOCK_TIMEOUT_MS`; then after a backoff, up to `BATCH_MAX_ATTEMPTS` such attempts in all, and
//! then a retryable [`Error::Busy`]. Each try locks the order again and judges it on the rows
//! it locked. A try cut by its budget (a loaded server) ends its attempt the same way; cut
//! every time, it is [`Error::TooSlow`].

use std::collections::HashSet;
use std::time::Duration;

use serde::Serialize;
use tokio_postgres::error::SqlState;

use super::batch::{BatchOutcome, BatchParams, Refusal, Source};
use super::budget::{batch_budget, statement_timeout, timed_batch, Budget, TryError};
use super::hooks::{Committed, OnCommit};
use super::retry::HeldRowRetry;
use crate::config::ReleaseSettings;
use crate::db::session::Database;
use crate::error::{is_cancelled, sql_state, Error, Result};

/// Why an order asked for was or was not released.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Reason {
    Released,
    /// Its payment is `paid`: never touched.
    Paid,
    /// Its status or payment is one the release rules refuse (a confirmed order, a refund).
    NotReleasable,
    /// It holds no active reservation (released already, or never reserved).
    NothingActive,
    UnknownOrder,
}

impl From<Refusal> for Reason {
    fn from(refusal: Refusal) -> Self {
        match refusal {
            Refusal::Paid => Reason::Paid,
            Refusal::NotReleasable => Reason::NotReleasable,
            Refusal::NothingActive => Reason::NothingActive,
            Refusal::UnknownOrder => Reason::UnknownOrder,
        }
    }
}

/// What `release ORDER_ID` answers (the CLI prints it, the Lambda returns it).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct OnRequestOutcome {
    pub order_id: i64,
    pub released: bool,
    pub reason: Reason,
    pub reservations_released: u64,
    pub units_released: u64,
    /// Its `Order Expired` events published, and those that could not be (logged by order
    /// id); both 0 without a bus.
    pub events_published: u64,
    pub events_failed: u64,
}

/// Releases `order_id` now if the rules admit it; `on_commit` gets what the committed batch
/// released (its events).
pub async fn release_on_request(
    db: &mut Database,
    settings: &ReleaseSettings,
    order_id: i64,
    on_commit: Option<(&OnCommit, &str)>,
) -> Result<OnRequestOutcome> {
    let budget = Budget::FromHotPhase {
        hot: batch_budget(settings, db)?,
        whole: Duration::from_millis(u64::from(settings.statement_timeout_ms)),
    };
    let mut params = BatchParams::new(settings, false);
    // One try each: a batch that meets a held row leaves the order out and ends its
    // transaction; this caller polls, holding nothing.
    params.lock_wait = Duration::ZERO;
    let mut tries = HeldRowRetry::of(settings).start();
    loop {
        let (next, cut) = match try_release(db, &params, budget, order_id).await? {
            Try::Done(batch) => {
                if let (Some((hook, run_id)), false) = (on_commit, batch.released.is_empty()) {
                    hook.call(Committed {
                        released: &batch.released,
                        cancelled: &batch.cancelled,
                        finished: &batch.finished,
                        counters: &batch.returned,
                        run_id,
                    });
                }
                return Ok(outcome(order_id, &batch));
            }
            Try::Held => (tries.after_held().await, None),
            Try::Cut(error) => (tries.back_off().await, Some(error)),
        };
        if !next {
            return Err(given_up(order_id, settings, cut));
        }
    }
}

/// The error after every attempt failed: the last one cut by its budget, or a row held.
fn given_up(order_id: i64, settings: &ReleaseSettings, cut: Option<Error>) -> Error {
    match cut {
        Some(error) => Error::TooSlow {
            what: "releasing the order on request",
            why: format!(
                "every try took longer than its budget (half the shop's deadlock_timeout from \
                 its first hot row): {}",
                error.chain()
            ),
            hint: String::new(),
        },
        None => Error::Busy {
            what: "releasing the order on request",
            why: format!(
                "order {order_id} or a row it needs stayed locked by another transaction \
                 through {} tries; try again shortly",
                settings.batch_max_attempts
            ),
        },
    }
}

/// How one try ended.
enum Try {
    Done(Box<BatchOutcome>),
    /// A row was held (the order itself, one of its reservations, a counter row): nothing
    /// was changed, and the try's transaction is over.
    Held,
    /// The batch outlived its budget (under load, or behind a slow trigger): rolled back.
    Cut(Error),
}

/// One try: one batch on the order, which locks it (`NOWAIT`), judges it on the locked row and
/// releases it — or, meeting a held row, leaves it out and ends its transaction.
async fn try_release(
    db: &mut Database,
    params: &BatchParams,
    budget: Budget,
    order_id: i64,
) -> Result<Try> {
    let none = HashSet::new();
    match timed_batch(db, params, Source::OnRequest(order_id), &none, budget).await {
        Ok(batch) if !batch.locked_tables.is_empty() => Err(Error::Busy {
            what: "releasing the order on request",
            why: format!(
                "tables {} are locked by another session (a migration, a LOCK TABLE); \
                 nothing was changed, try again once it is done",
                batch.locked_tables.join(", ")
            ),
        }),
        // A reservation or counter row was held: the order was left out, nothing changed.
        Ok(batch) if !batch.deferred_orders.is_empty() => Ok(Try::Held),
        Ok(batch) => Ok(Try::Done(Box::new(batch))),
        // The order row was held (`NOWAIT`): the batch rolled back.
        Err(TryError::Other(e)) if sql_state(&e) == Some(&SqlState::LOCK_NOT_AVAILABLE) => {
            tracing::debug!(order_id, error = %e.chain(), "the order is held");
            Ok(Try::Held)
        }
        Err(TryError::Cut(e)) => Ok(Try::Cut(e)),
        Err(TryError::Other(e)) if is_cancelled(&e) => Err(statement_timeout(e, String::new())),
        Err(TryError::Other(e)) => Err(e),
    }
}

fn outcome(order_id: i64, batch: &BatchOutcome) -> OnRequestOutcome {
    let reason = batch.refused.map_or(Reason::Released, Reason::from);
    OnRequestOutcome {
        order_id,
        released: reason == Reason::Released,
        reason,
        reservations_released: batch.counts.reservations_released,
        units_released: batch.counts.units_released,
        events_published: 0,
        events_failed: 0,
    }
}

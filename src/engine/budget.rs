//! A batch's time budget and how it is cut: past it, the statement running is cancelled
//! (through PostgreSQL's cancel protocol, then through SQL), the batch rolls back, and the
//! next one gets a new session. Used by a run's batches and by a release on request.

use std::collections::HashSet;
use std::time::{Duration, Instant};

use crate::config::ReleaseSettings;
use crate::db::cancel::Sent;
use crate::db::session::Database;
use crate::engine::batch::{self, BatchOutcome, BatchParams, Source};
use crate::error::{is_cancelled, Error, Result};

/// How often the cancel request is sent again while a cut batch has not yet stopped.
const CANCEL_REPEAT: Duration = Duration::from_millis(20);
/// Cancel requests sent before cancelling through SQL (`pg_cancel_backend`).
const CANCEL_REQUESTS: u32 = 3;

/// The longest a batch may take: half the shop's `deadlock_timeout` (the setting, else the
/// server's), which must leave room for `LOCK_TIMEOUT_MS`.
pub(super) fn batch_budget(settings: &ReleaseSettings, db: &Database) -> Result<Duration> {
    settings.batch_budget(db.preflight.deadlock_timeout_ms)
}

/// Why a try of a batch failed: cut by its budget (the statement it was running was
/// cancelled by us), or anything else.
pub(super) enum TryError {
    Cut(Error),
    Other(Error),
}

/// How long a batch may run before it is cut.
#[derive(Debug, Clone, Copy)]
pub(super) enum Budget {
    /// From its start: every batch but a large order's.
    Whole(Duration),
    /// `hot` from the moment it first locks a hot row, and at most `whole` from its start: a
    /// batch of one large order.
    FromHotPhase { hot: Duration, whole: Duration },
}

impl Budget {
    /// When a batch that started at `started` is cut, given when it first locked a hot row.
    fn cut_at(self, started: Instant, hot_since: Option<Instant>) -> Instant {
        match self {
            Budget::Whole(budget) => started + budget,
            Budget::FromHotPhase { hot, whole } => {
                let whole = started + whole;
                hot_since.map_or(whole, |at| (at + hot).min(whole))
            }
        }
    }
}

/// Runs one batch within `budget`: past it, the statement running is cancelled (through
/// PostgreSQL's cancel protocol), the batch rolls back, and the error says it was cut. In any
/// lock cycle with a shopper it is thus the batch that gives up, before the shopper's
/// deadlock check, and no shopper waits on a batch longer than the budget.
pub(super) async fn timed_batch(
    db: &mut Database,
    params: &BatchParams,
    source: Source<'_>,
    exclude: &HashSet<i64>,
    budget: Budget,
) -> std::result::Result<BatchOutcome, TryError> {
    let mut canceller = db.canceller();
    // The hot phase of an earlier batch must not set this one's timer: read before the batch
    // resets it, it could lie past the budget already (a release on request tries again after
    // a backoff) and cut the batch at once.
    params.hot_phase.reset();
    let mut hot = params.hot_phase.subscribe();
    let started = Instant::now();
    let cut = {
        let batch = batch::release_batch(db, params, source, exclude);
        tokio::pin!(batch);
        loop {
            let cut_at = budget.cut_at(started, *hot.borrow_and_update());
            tokio::select! {
                result = &mut batch => return result.map_err(TryError::Other),
                () = tokio::time::sleep_until(cut_at.into()) => break,
                Ok(()) = hot.changed() => {}
            }
        }
        let mut sent = 0_u32;
        loop {
            // A cancel request that has not stopped the batch after a few repeats may never
            // have reached the server (a proxy that drops it): cancel through SQL instead.
            let answered = sent < CANCEL_REQUESTS && {
                let request = canceller.request();
                tokio::pin!(request);
                // The batch goes on while the request's answer is awaited, so that its
                // rollback frees the rows at once; the request is still awaited to its end
                // (a pooler must not see it dropped half-way: `db::cancel`).
                tokio::select! {
                    result = &mut batch => {
                        request.await;
                        break result;
                    }
                    outcome = &mut request => outcome == Some(Sent::Answered),
                }
            };
            if !answered {
                tokio::select! {
                    result = &mut batch => break result,
                    _ = canceller.cancel_through_sql() => {}
                }
            }
            sent += 1;
            tokio::select! {
                result = &mut batch => break result,
                () = tokio::time::sleep(CANCEL_REPEAT) => {}
            }
        }
    };
    // A cancel request sent may still be on its way: it must not reach the next batch's
    // statements (nor, through a pooler, another client's). The next batch gets a new session.
    db.reconnect().await.map_err(TryError::Other)?;
    cut.map_err(|e| {
        if is_cancelled(&e) {
            TryError::Cut(e)
        } else {
            TryError::Other(e)
        }
    })
}

/// A statement the server cancelled by its `statement_timeout` (not our budget): too slow.
pub(super) fn statement_timeout(error: Error, hint: String) -> Error {
    let what = match &error {
        Error::Database { context, .. } => *context,
        _ => "a statement",
    };
    Error::TooSlow {
        what,
        why: format!(
            "it hit the statement timeout (STATEMENT_TIMEOUT_MS): {}",
            error.chain()
        ),
        hint,
    }
}

//! The hook a run (or a release on request) calls after each committed batch, with what the
//! batch released: the events layer composes and publishes the expiry events there.

use crate::db::sql::{CancelledOrder, Counter, ReleasedReservation, ReturnedUnits};

/// What a committed batch released, as the on-commit hook sees it.
#[derive(Debug, Clone, Copy)]
pub struct Committed<'a> {
    pub released: &'a [ReleasedReservation],
    pub cancelled: &'a [CancelledOrder],
    /// Orders an earlier batch cancelled whose further lines this one released.
    pub finished: &'a [CancelledOrder],
    /// The counter rows it gave units back to, as the update returned them.
    pub counters: &'a [(Counter, ReturnedUnits)],
    pub run_id: &'a str,
}

/// The hook a run calls after each committed batch.
#[derive(Clone)]
pub struct OnCommit(std::sync::Arc<dyn Fn(Committed<'_>) + Send + Sync>);

impl OnCommit {
    pub fn new(hook: impl Fn(Committed<'_>) + Send + Sync + 'static) -> Self {
        OnCommit(std::sync::Arc::new(hook))
    }

    /// Hands a committed batch to the hook.
    pub fn call(&self, batch: Committed<'_>) {
        (self.0)(batch);
    }
}

impl std::fmt::Debug for OnCommit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("OnCommit")
    }
}

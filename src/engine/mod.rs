//! The release engine: the run loop, one batch and its steps, the retry policy, the run report,
//! and the status; around the release, reviving an order whose payment came late and the
//! release-delay report, and purging what the release left behind.
//! It works on a checked [`crate::db::session::Database`] and knows nothing of the front-ends.

pub(crate) mod batch;
pub(crate) mod budget;
pub mod controller;
pub mod counts;
pub(crate) mod follow;
pub(crate) mod hooks;
pub(crate) mod on_request;
pub(crate) mod pass;
pub(crate) mod purge;
pub(crate) mod reconcile;
pub(crate) mod release_delay;
pub(crate) mod retry;
pub(crate) mod revive;
pub(crate) mod run;
pub(crate) mod run_report;
pub(crate) mod status;

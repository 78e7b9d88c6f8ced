//! The release engine: the run loop, one batch and its steps, the run report, and the status.
//! It works on a checked [`crate::db::session::Database`] and knows nothing of the front-ends.

pub(crate) mod batch;
pub(crate) mod pass;
pub(crate) mod report;
pub(crate) mod run;
pub(crate) mod status;

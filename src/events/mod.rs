//! Telling the shop what the release did: one `Order Expired` event per order a run cancelled,
//! one `Cart Hold Released` per hold and one `Stock Released` per variant and drop row a batch
//! gave units back to ([`stock`]), published to Amazon EventBridge after each committed
//! batch ([`sink`], [`publisher`]), and the same events read back from the database for any
//! window ([`model::from_rows`] over [`crate::db::sql::outbox`]): the database is the outbox.
//! [`run`] runs the release with its events published.

pub mod model;
pub mod publisher;
pub mod run;
pub mod sink;
pub mod stock;
pub mod warnings;

pub use model::Event;
pub use publisher::{Published, Publisher};
pub use sink::{PublishTask, Sink};

//! unreserver gives back the stock held by expired reservations of unpaid orders in a shop's
//! PostgreSQL database, in short batches that never make a shopper's transaction fail or wait
//! long. The library holds the release engine; `src/bin` holds two thin front-ends, the
//! `unreserver` command line and the `bootstrap` AWS Lambda function.

pub mod batch;
pub mod cli;
pub mod connect;
pub mod credentials;
pub mod database;
pub mod error;
pub mod handler;
pub mod metrics;
pub mod payload;
pub mod release;
pub mod report;
pub mod schema;
pub mod secrets;
pub mod settings;
pub mod sql;
pub mod status;
pub mod telemetry;
pub mod tls;

pub use error::{Error, Result};

//! Integration tests against a real PostgreSQL server started by `scripts/test.sh`.

mod batching;
mod cli;
mod common;
mod concurrency;
mod failures;
mod release_rules;
mod status;

//! Integration tests against a real PostgreSQL server started by `scripts/test.sh`.

mod actions;
mod batching;
mod cli;
mod common;
mod concurrency;
mod drop_day;
mod events;
mod failures;
mod faults;
mod handler;
mod iam;
mod indexes;
mod lambda;
mod layers;
mod least_privilege;
mod reconcile;
mod release_rules;
mod revive;
mod sam;
mod secrets_manager;
mod settings;
mod sql_types;
mod status;
mod template;
mod tls;
mod torture;

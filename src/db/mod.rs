//! The database layer: connection settings and credentials, verified TLS, opening a checked
//! connection, the preflight, and every SQL statement of the release with its typed wrapper.

pub(crate) mod cancel;
pub(crate) mod connect;
pub(crate) mod conninfo;
pub(crate) mod credentials;
pub(crate) mod iam;
pub(crate) mod preflight;
pub(crate) mod secrets;
pub(crate) mod session;
pub mod settings;
pub mod sql;
pub(crate) mod tls;

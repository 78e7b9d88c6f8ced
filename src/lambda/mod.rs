//! The AWS Lambda front-end: the state built once per execution environment, the handler, the
//! payloads it accepts, and the CloudWatch metrics (EMF) it writes.

pub(crate) mod handler;
pub(crate) mod metrics;
pub(crate) mod payload;

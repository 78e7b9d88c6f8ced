//! The AWS Lambda function (`bootstrap` on the provided.al2023 runtime): builds the state once
//! per execution environment and serves invocations with [`unreserver::handle`].

use std::time::Instant;

use lambda_runtime::{service_fn, LambdaEvent};
use serde_json::Value;
use unreserver::telemetry::{self, LogFormat};
use unreserver::{handle, AppState};

#[tokio::main]
async fn main() -> Result<(), lambda_runtime::Error> {
    let started = Instant::now();
    telemetry::init(LogFormat::Json);
    let state = match AppState::from_env().await {
        Ok(state) => state,
        Err(error) => {
            tracing::error!(error_type = error.kind(), error = %error.chain(), "cannot start");
            return Err(error.into());
        }
    };
    tracing::info!(
        init_ms = started.elapsed().as_secs_f64() * 1000.0,
        tls_ms = state.init.tls_ms,
        aws_ms = state.init.aws_ms,
        "ready for invocations"
    );
    let state = &state;
    // Boxed: the handler's future is deep, and the runtime nests it further.
    lambda_runtime::run(service_fn(move |event: LambdaEvent<Value>| {
        Box::pin(handle(state, event))
    }))
    .await
}

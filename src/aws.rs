//! The AWS SDK's shared configuration: one loader for every AWS client the process builds
//! (Secrets Manager, EventBridge), so that all of them use the same region, credentials chain
//! and short timeouts.

use std::time::Duration;

/// The AWS SDK's default configuration (region, credentials, `AWS_ENDPOINT_URL` from the
/// environment), with short timeouts: a run must not hang on AWS.
pub async fn sdk_config() -> aws_config::SdkConfig {
    aws_config::defaults(aws_config::BehaviorVersion::latest())
        .timeout_config(
            aws_config::timeout::TimeoutConfig::builder()
                .connect_timeout(Duration::from_secs(3))
                .operation_timeout(Duration::from_secs(10))
                .build(),
        )
        .load()
        .await
}

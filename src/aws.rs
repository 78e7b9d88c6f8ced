//! The AWS SDK's shared configuration: one loader for every AWS client the process builds
//! (Secrets Manager, EventBridge), so that all of them use the same region, credentials chain,
//! short timeouts and HTTPS client (hyper 1 and rustls on ring, trusting the system store).

use std::time::Duration;

/// The AWS SDK's default configuration (region, credentials, `AWS_ENDPOINT_URL` from the
/// environment), with short timeouts: a run must not hang on AWS.
pub async fn sdk_config() -> aws_config::SdkConfig {
    use aws_smithy_http_client::tls::{rustls_provider::CryptoMode, Provider};
    let https = aws_smithy_http_client::Builder::new()
        .tls_provider(Provider::Rustls(CryptoMode::Ring))
        .build_https();
    aws_config::defaults(aws_config::BehaviorVersion::latest())
        .http_client(https)
        .timeout_config(
            aws_config::timeout::TimeoutConfig::builder()
                .connect_timeout(Duration::from_secs(3))
                .operation_timeout(Duration::from_secs(10))
                .build(),
        )
        .load()
        .await
}

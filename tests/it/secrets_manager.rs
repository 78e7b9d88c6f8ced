//! Credentials through the real AWS SDK, over HTTP, from moto's Secrets Manager server (started
//! by `scripts/test.sh`): happy path, missing and malformed secrets, a rotated password, and an
//! unreachable service; and over verified HTTPS from a second moto, through the function's own
//! HTTPS client (rustls on ring).

use std::time::Duration;

use aws_sdk_secretsmanager::config::{Credentials, Region};
use serde_json::json;
use tokio_postgres::config::SslMode;
use unreserver::config::SecretSettings;
use unreserver::{tls_connector, CredentialSource, Error, RdsCaRegions, SecretSource};

use crate::app::TestApp;
use crate::common::{pg_port, run, settings, test_env, Res, TestDb};

pub async fn client_for(endpoint: &str) -> aws_sdk_secretsmanager::Client {
    let config = aws_config::defaults(aws_config::BehaviorVersion::latest())
        .region(Region::new("us-east-1"))
        .endpoint_url(endpoint)
        .credentials_provider(Credentials::new("test", "test", None, None, "tests"))
        .retry_config(aws_config::retry::RetryConfig::standard().with_max_attempts(2))
        .timeout_config(
            aws_config::timeout::TimeoutConfig::builder()
                .operation_timeout(Duration::from_secs(10))
                .build(),
        )
        .load()
        .await;
    aws_sdk_secretsmanager::Client::new(&config)
}

pub async fn client() -> aws_sdk_secretsmanager::Client {
    client_for(&test_env("UNRESERVER_TEST_AWS_ENDPOINT")).await
}

/// Creates the secret, or gives it a new value when it exists.
pub async fn put_secret(client: &aws_sdk_secretsmanager::Client, id: &str, value: &str) {
    let created = client
        .create_secret()
        .name(id)
        .secret_string(value)
        .send()
        .await;
    if created.is_err() {
        client
            .put_secret_value()
            .secret_id(id)
            .secret_string(value)
            .send()
            .await
            .unwrap_or_else(|e| panic!("cannot write secret {id}: {e:?}"));
    }
}

fn unique(prefix: &str) -> String {
    format!("{prefix}-{}-{}", std::process::id(), fastrand::u32(..))
}

fn defaults(host: Option<&str>, dbname: Option<&str>) -> SecretSettings {
    SecretSettings {
        secret_id: String::new(),
        host: host.map(Into::into),
        port: pg_port(),
        dbname: dbname.map(Into::into),
        ssl_mode: SslMode::Require,
        cache_ttl: Duration::from_secs(900),
    }
}

fn source(client: aws_sdk_secretsmanager::Client, id: &str, d: SecretSettings) -> CredentialSource {
    CredentialSource::Secret {
        source: Box::new(SecretSource::new(
            client,
            id.into(),
            Duration::from_secs(900),
        )),
        defaults: d,
    }
}

fn verified_tls() -> unreserver::Tls {
    let ca = test_env("UNRESERVER_TEST_CA_CERT");
    tls_connector(Some(std::path::Path::new(&ca)), &RdsCaRegions::All).unwrap()
}

#[tokio::test]
async fn an_rds_secret_opens_a_verified_connection_and_runs() {
    let t = TestDb::new().await;
    let role = t.role("first-pass").await;
    let v = t.variant(1).await;
    let order = t.order("pending", "pending").await;
    t.reservation(Res::new(Some(order), v, 1, "-1 minute"))
        .await;
    let sm = client().await;
    let id = unique("rds");
    put_secret(
        &sm,
        &id,
        &json!({"engine": "postgres", "username": role, "password": "first-pass", "host": "localhost",
                "port": pg_port(), "dbname": t.name, "dbInstanceIdentifier": "shop"})
        .to_string(),
    )
    .await;
    let creds = source(sm, &id, defaults(None, None));
    let mut db = creds.open(&verified_tls(), 100, None).await.unwrap();
    let report = run(&mut db, &settings(), false).await;
    assert_eq!(report.counts.reservations_released, 1);
}

#[tokio::test]
async fn a_username_and_password_secret_takes_the_rest_from_settings() {
    let t = TestDb::new().await;
    let role = t.role("pw").await;
    let sm = client().await;
    let id = unique("userpass");
    put_secret(
        &sm,
        &id,
        &json!({"username": role, "password": "pw"}).to_string(),
    )
    .await;
    let creds = source(sm.clone(), &id, defaults(Some("localhost"), Some(&t.name)));
    creds.open(&verified_tls(), 100, None).await.unwrap();
    // Without DB_HOST the error names the secret and the setting.
    let creds = source(sm, &id, defaults(None, Some(&t.name)));
    let err = creds.open(&verified_tls(), 100, None).await.err().unwrap();
    assert!(
        err.to_string().contains(&id) && err.to_string().contains("DB_HOST"),
        "{err}"
    );
}

#[tokio::test]
async fn a_missing_secret_is_named_and_not_retryable() {
    let creds = source(client().await, "does-not-exist", defaults(None, None));
    let err = creds.open(&verified_tls(), 100, None).await.err().unwrap();
    assert!(matches!(err, Error::Secret { .. }), "{err}");
    assert_eq!(err.kind(), "SecretUnavailable");
    assert!(
        err.to_string().contains("does-not-exist") && err.to_string().contains("not found"),
        "{err}"
    );
    assert!(!err.is_retryable());
}

#[tokio::test]
async fn a_malformed_secret_names_the_field_never_the_value() {
    let sm = client().await;
    for (value, expect) in [
        ("s3cret-value".to_string(), "not a JSON object"),
        (
            json!({"username": "app", "pass": "s3cret-value"}).to_string(),
            "field password is missing",
        ),
        (
            json!({"username": "app", "password": "s3cret-value", "port": "s3cret-value"})
                .to_string(),
            "field port",
        ),
    ] {
        let id = unique("malformed");
        put_secret(&sm, &id, &value).await;
        let creds = source(sm.clone(), &id, defaults(Some("localhost"), Some("x")));
        let err = creds.open(&verified_tls(), 100, None).await.err().unwrap();
        let text = err.chain();
        assert!(text.contains(&id) && text.contains(expect), "{text}");
        assert!(
            !text.contains("s3cret-value"),
            "the secret's value leaked: {text}"
        );
    }
}

/// The password is rotated: the database rejects the cached one, the secret is read again once,
/// and the connection succeeds. Until then the cache is used, not the service.
#[tokio::test]
async fn a_rotated_password_is_fetched_again_once() {
    let t = TestDb::new().await;
    let role = t.role("before-rotation").await;
    let sm = client().await;
    let id = unique("rotation");
    let secret = |pw: &str| {
        json!({"username": role, "password": pw, "host": "localhost", "port": pg_port(), "dbname": t.name})
            .to_string()
    };
    put_secret(&sm, &id, &secret("before-rotation")).await;
    let creds = source(sm.clone(), &id, defaults(None, None));
    creds.open(&verified_tls(), 100, None).await.unwrap();

    // The secret changes but the database still takes the old password: the cache serves.
    put_secret(&sm, &id, "not json at all").await;
    creds
        .open(&verified_tls(), 100, None)
        .await
        .expect("the cached credentials were not used");

    // Rotation: the database and the secret move to a new password.
    t.exec(&format!("ALTER ROLE {role} PASSWORD 'after-rotation'"))
        .await;
    put_secret(&sm, &id, &secret("after-rotation")).await;
    creds
        .open(&verified_tls(), 100, None)
        .await
        .expect("the rotated password was not fetched");

    // A secret whose password the database rejects even when fresh: an authentication error
    // naming the user, not the password.
    put_secret(&sm, &id, &secret("wrong-password")).await;
    t.exec(&format!("ALTER ROLE {role} PASSWORD 'third'")).await;
    let err = creds.open(&verified_tls(), 100, None).await.err().unwrap();
    assert!(
        matches!(err, Error::Authentication { .. }),
        "{}",
        err.chain()
    );
    assert_eq!(err.kind(), "DatabaseAuthentication");
    assert!(
        err.chain().contains(&role) && !err.chain().contains("wrong-password"),
        "{}",
        err.chain()
    );
}

#[tokio::test]
async fn an_unreachable_secrets_manager_is_a_retryable_error() {
    // A port nothing listens on.
    let sm = client_for("http://127.0.0.1:1").await;
    let creds = source(sm, "any", defaults(None, None));
    let err = creds.open(&verified_tls(), 100, None).await.err().unwrap();
    assert!(matches!(err, Error::Secret { .. }), "{}", err.chain());
    assert!(err.to_string().contains("unreachable"), "{}", err.chain());
    assert!(err.is_retryable());
}

/// An SDK client that trusts exactly the test CA, for writing to the HTTPS moto.
async fn client_over_https(endpoint: &str) -> aws_sdk_secretsmanager::Client {
    use aws_smithy_http_client::tls::TrustStore;
    use aws_smithy_http_client::tls::{rustls_provider::CryptoMode, Provider, TlsContext};
    let ca = std::fs::read(test_env("UNRESERVER_TEST_CA_CERT")).unwrap();
    let trust = TrustStore::empty()
        .with_native_roots(false)
        .with_pem_certificate(ca);
    let https = aws_smithy_http_client::Builder::new()
        .tls_provider(Provider::Rustls(CryptoMode::Ring))
        .tls_context(
            TlsContext::builder()
                .with_trust_store(trust)
                .build()
                .unwrap(),
        )
        .build_https();
    let config = aws_config::defaults(aws_config::BehaviorVersion::latest())
        .region(Region::new("us-east-1"))
        .endpoint_url(endpoint)
        .credentials_provider(Credentials::new("test", "test", None, None, "tests"))
        .http_client(https)
        .load()
        .await;
    aws_sdk_secretsmanager::Client::new(&config)
}

/// The function's own HTTPS client (rustls on ring, the system store: here `SSL_CERT_FILE`)
/// reads the secret over verified TLS; with a store that lacks the endpoint's CA it refuses
/// the endpoint, so verification is not skipped.
#[tokio::test]
async fn the_secret_is_read_over_verified_https() {
    let Ok(endpoint) = std::env::var("UNRESERVER_TEST_AWS_TLS_ENDPOINT") else {
        panic!("UNRESERVER_TEST_AWS_TLS_ENDPOINT unset: run scripts/test.sh");
    };
    let t = TestApp::spawn().await;
    let role = t.role("over-https").await;
    let id = unique("https");
    let secret = json!({"username": role, "password": "over-https", "host": "localhost",
                        "port": pg_port(), "dbname": t.name});
    put_secret(
        &client_over_https(&endpoint).await,
        &id,
        &secret.to_string(),
    )
    .await;
    let ca = test_env("UNRESERVER_TEST_CA_CERT");
    let through_the_secret = t
        .with_aws()
        .without("DATABASE_URL")
        .with("DB_SECRET_ID", &id)
        .with("DB_CA_BUNDLE", &ca)
        .with("AWS_ENDPOINT_URL", endpoint);
    let trusting = |cert_file: &str| through_the_secret.with("SSL_CERT_FILE", cert_file);
    let out = trusting(&ca).cli(&["status"]).await;
    let stderr = &out.stderr;
    assert!(out.success(), "{stderr}");
    let report = out.json();
    assert_eq!(report["due_reservations"], 0, "{report}");
    assert_eq!(report["missing_indexes"], json!([]), "{report}");
    // The same with a store that holds only an unrelated CA: the endpoint is not trusted.
    let out = trusting(&test_env("UNRESERVER_TEST_WRONG_CA_CERT"))
        .cli(&["status"])
        .await;
    let stderr = &out.stderr;
    assert_eq!(out.code, Some(1), "{stderr}");
    assert!(
        stderr.contains("[SecretUnavailable]") && stderr.contains("UnknownIssuer"),
        "{stderr}"
    );
}

/// A CA the built-in set lacks, trusted without a rebuild: its PEM in a Secrets Manager secret
/// (`DB_CA_SECRET_ID`) is read at start, and the command reaches the database over verified TLS
/// (host name and chain) as the least-privilege role. Without it the same command fails
/// `TlsVerification`, and the error names the way out.
#[tokio::test]
async fn a_ca_held_in_a_secret_is_trusted_without_a_rebuild() {
    let t = TestApp::spawn().await;
    let client = client().await;
    let id = unique("ca-bundle");
    let pem = std::fs::read_to_string(test_env("UNRESERVER_TEST_CA_CERT")).unwrap();
    put_secret(&client, &id, &pem).await;
    let url = format!(
        "postgres://{}:{}@localhost:{}/{}?sslmode=require",
        crate::common::RELEASE_ROLE,
        crate::common::RELEASE_PASSWORD,
        pg_port(),
        t.name
    );
    let over_tls = t.with_aws().with("DATABASE_URL", url);
    let status = |ca_secret: Option<&str>| match ca_secret {
        Some(id) => over_tls.with("DB_CA_SECRET_ID", id),
        None => over_tls.clone(),
    };
    let out = status(Some(&id)).cli(&["status"]).await;
    let stderr = &out.stderr;
    assert!(out.success(), "{stderr}");
    let report = out.json();
    assert_eq!(report["due_reservations"], 0, "{report}");
    assert!(
        !stderr.contains("BEGIN CERTIFICATE"),
        "the PEM is not logged: {stderr}"
    );

    let out = status(None).cli(&["status"]).await;
    let stderr = &out.stderr;
    assert_eq!(out.code, Some(1), "{stderr}");
    assert!(
        stderr.contains("[TlsVerification]") && stderr.contains("DB_CA_SECRET_ID"),
        "{stderr}"
    );

    // A secret that holds no certificate fails at start, naming the secret.
    let junk = unique("ca-junk");
    put_secret(&client, &junk, "not a certificate").await;
    let out = status(Some(&junk)).cli(&["status"]).await;
    let stderr = &out.stderr;
    assert_eq!(out.code, Some(1), "{stderr}");
    assert!(stderr.contains(&junk), "{stderr}");
}

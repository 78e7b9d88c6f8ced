//! TLS to the database for real: the test server runs with `ssl=on` and a certificate from a CA
//! made by `scripts/test.sh`; `sslmode=require` verifies the chain and the host name; the
//! release itself runs as its least-privilege role over such a connection.

use std::path::PathBuf;

use tokio_postgres::config::SslMode;
use tokio_postgres::{Client, Config};
use unreserver::{
    apply_defaults, connect, tls_certificates, tls_connector, Database, Error, RdsCaRegions,
};

use crate::common::{admin_password, pg_port, run, settings, test_env, TestDb, RELEASE_ROLE};

fn ca() -> PathBuf {
    test_env("UNRESERVER_TEST_CA_CERT").into()
}

fn wrong_ca() -> PathBuf {
    test_env("UNRESERVER_TEST_WRONG_CA_CERT").into()
}

async fn connect_to(
    host: &str,
    hostaddr: Option<&str>,
    mode: SslMode,
    ca: Option<PathBuf>,
) -> Result<Client, Error> {
    let mut config = Config::new();
    config
        .host(host)
        .port(pg_port())
        .user("postgres")
        .password(admin_password())
        .dbname("postgres")
        .ssl_mode(mode);
    if let Some(addr) = hostaddr {
        config.hostaddr(addr.parse().unwrap());
    }
    apply_defaults(&mut config);
    let tls = tls_connector(ca.as_deref(), &RdsCaRegions::All)?;
    connect(&config, &tls).await
}

async fn uses_tls(client: &Client) -> bool {
    client
        .query_one(
            "SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()",
            &[],
        )
        .await
        .unwrap()
        .get(0)
}

/// `sslmode=disable` loads no CA store (the costliest part of a process's start: the
/// `DB_CA_BUNDLE` named, even a missing one, is not read) and connects in the clear; asked for
/// a handshake all the same, that connector refuses it, never falling back to the clear.
#[tokio::test]
async fn without_tls_no_ca_store_is_loaded_and_a_handshake_is_refused() {
    let url = format!(
        "postgres://postgres:{}@localhost:{}/postgres?sslmode=disable",
        admin_password(),
        pg_port()
    );
    let config = unreserver::Config::from_lookup(|name| match name {
        "DATABASE_URL" => Some(url.clone()),
        "DB_CA_BUNDLE" => Some("/nonexistent/ca-bundle.pem".into()),
        _ => None,
    })
    .unwrap();
    let tls = config.database.tls_connector(None).unwrap();
    assert!(!tls.verifies());
    let plain = unreserver::config_from_url("DATABASE_URL", &url).unwrap();
    let client = connect(&plain, &tls).await.unwrap();
    assert!(!uses_tls(&client).await);
    let mut require = plain.clone();
    require.ssl_mode(SslMode::Require);
    let err = connect(&require, &tls).await.err().unwrap();
    assert_eq!(err.kind(), "TlsVerification", "{}", err.chain());
    assert!(err.chain().contains("sslmode disable"), "{}", err.chain());
}

#[tokio::test]
async fn require_verifies_the_chain_with_the_configured_ca() {
    let client = connect_to("localhost", None, SslMode::Require, Some(ca()))
        .await
        .unwrap();
    assert!(uses_tls(&client).await);
    // The certificate also names 127.0.0.1.
    let client = connect_to("127.0.0.1", None, SslMode::Require, Some(ca()))
        .await
        .unwrap();
    assert!(uses_tls(&client).await);
}

#[tokio::test]
async fn require_fails_clearly_without_the_ca() {
    for ca in [None, Some(wrong_ca())] {
        let err = match connect_to("localhost", None, SslMode::Require, ca.clone()).await {
            Ok(_) => panic!("connected without trusting the server's CA ({ca:?})"),
            Err(err) => err,
        };
        assert!(matches!(err, Error::TlsHandshake { .. }), "{}", err.chain());
        assert_eq!(err.kind(), "TlsVerification");
        assert!(
            err.chain().contains("certificate verify failed"),
            "{}",
            err.chain()
        );
        // It says where a CA may be added: a bundle, or another region's built-in RDS CAs.
        assert!(err.chain().contains("DB_CA_BUNDLE") && err.chain().contains("DB_RDS_CA_REGIONS"));
        assert!(!err.is_retryable());
    }
}

#[tokio::test]
async fn require_fails_on_a_wrong_host_name() {
    // The right server and CA, reached under a name its certificate does not carry.
    let err = match connect_to(
        "wrong-name.invalid",
        Some("127.0.0.1"),
        SslMode::Require,
        Some(ca()),
    )
    .await
    {
        Ok(_) => panic!("connected although the certificate names another host"),
        Err(err) => err,
    };
    assert!(matches!(err, Error::TlsHandshake { .. }), "{}", err.chain());
    assert!(
        err.chain().contains("wrong-name.invalid"),
        "{}",
        err.chain()
    );
}

/// Every certificate of a bundle is trusted, not only the first (the RDS bundle holds over a
/// hundred, the right one anywhere among them).
#[tokio::test]
async fn every_certificate_of_a_bundle_is_trusted() {
    let dir = std::env::temp_dir().join(format!("unreserver-bundle-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let bundle = dir.join("bundle.pem");
    let wrong = std::fs::read_to_string(wrong_ca()).unwrap();
    let right = std::fs::read_to_string(ca()).unwrap();
    std::fs::write(
        &bundle,
        format!("# a comment line\n{wrong}\n{wrong}{right}"),
    )
    .unwrap();
    assert_eq!(
        tls_certificates(&std::fs::read_to_string(&bundle).unwrap())
            .unwrap()
            .len(),
        3
    );
    let client = connect_to("localhost", None, SslMode::Require, Some(bundle.clone()))
        .await
        .unwrap();
    assert!(uses_tls(&client).await);
    std::fs::remove_dir_all(&dir).unwrap();
}

#[tokio::test]
async fn an_unreadable_bundle_is_a_clear_setup_error() {
    let bundle = std::path::Path::new("/nonexistent/bundle.pem");
    let err = tls_connector(Some(bundle), &RdsCaRegions::All)
        .err()
        .unwrap();
    assert_eq!(err.kind(), "TlsSetup");
    assert!(err.to_string().contains("/nonexistent/bundle.pem"));
}

#[tokio::test]
async fn disable_sends_in_the_clear() {
    let client = connect_to("localhost", None, SslMode::Disable, None)
        .await
        .unwrap();
    assert!(!uses_tls(&client).await);
}

/// A connection string without `sslmode`, against a server that offers no TLS (a stub that
/// answers the TLS request with `N`, as a server without TLS does): the connection is refused
/// with `TlsVerification`, and nothing — no user name, no password — is sent in the clear.
/// (tokio-postgres alone would default to `prefer` and go on in clear text.)
#[tokio::test]
async fn without_sslmode_a_server_that_offers_no_tls_is_refused() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let stub = tokio::spawn(async move {
        let (mut socket, _) = listener.accept().await.unwrap();
        let mut request = [0u8; 8];
        socket.read_exact(&mut request).await.unwrap();
        assert_eq!(
            &request[4..],
            &[0x04, 0xd2, 0x16, 0x2f],
            "an SSLRequest comes first"
        );
        socket.write_all(b"N").await.unwrap();
        let mut after = Vec::new();
        let _ = tokio::time::timeout(
            std::time::Duration::from_millis(500),
            socket.read_to_end(&mut after),
        )
        .await;
        after
    });
    let url = format!("postgres://app:s3cret@127.0.0.1:{port}/shop");
    let config = unreserver::config_from_url("DATABASE_URL", &url).unwrap();
    let tls = tls_connector(None, &unreserver::RdsCaRegions::All).unwrap();
    let err = match connect(&config, &tls).await {
        Ok(_) => panic!("connected without TLS"),
        Err(err) => err,
    };
    assert_eq!(err.kind(), "TlsVerification", "{}", err.chain());
    assert!(!err.chain().contains("s3cret"));
    let sent_in_clear = stub.await.unwrap();
    assert!(
        sent_in_clear.is_empty(),
        "sent in the clear: {sent_in_clear:?}"
    );
}

/// The release end to end as it runs in production: the least-privilege role of
/// `infra/role.sql`, over TLS verified against the CA (chain and host name), releasing a due
/// order with a drop line — every statement of a run, preflight included, on that connection.
#[tokio::test]
async fn the_release_runs_as_its_role_over_verified_tls() {
    let t = TestDb::new().await;
    let (v, order, _) = t.one_due_order(2).await;
    let mut config = t.release_config();
    config.host("localhost").ssl_mode(SslMode::Require);
    let tls = tls_connector(Some(&ca()), &RdsCaRegions::All).unwrap();
    let mut db = Database::open(&config, &tls, settings().lock_timeout_ms)
        .await
        .unwrap_or_else(|e| panic!("{}", e.chain()));
    assert!(
        uses_tls(&db.client).await,
        "the release connection is not TLS"
    );
    let role: String = db
        .client
        .query_one("SELECT current_user::text", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(role, RELEASE_ROLE);
    let report = run(&mut db, &settings(), false).await;
    assert_eq!(
        (
            report.counts.reservations_released,
            report.counts.orders_cancelled
        ),
        (1, 1),
        "{report:?}"
    );
    assert_eq!(t.order_status(order).await, "cancelled");
    assert_eq!(t.reserved(v).await, 0);
    assert_eq!(t.drifted_counters().await, 0);
}

/// A cut batch's cancel request goes over the connection's own verified TLS and is answered:
/// the statement is stopped by the request itself (a failed handshake would have fallen back
/// to cancelling through SQL, which the answer names), and a proxy in front of the server saw
/// every connection, the cancel's too, ask for TLS first — never a cancel key in the clear.
#[tokio::test]
async fn a_cancel_request_goes_over_verified_tls_and_stops_its_statement() {
    let t = TestDb::new().await;
    let proxy = crate::proxy::Proxy::start(crate::proxy::Behaviour::Forward).await;
    let config = proxy.release_config(&t, "localhost", SslMode::Require);
    let tls = tls_connector(Some(&ca()), &RdsCaRegions::All).unwrap();
    let db = Database::open(&config, &tls, settings().lock_timeout_ms)
        .await
        .unwrap_or_else(|e| panic!("{}", e.chain()));
    let by = crate::common::cancel_a_sleep(&t, &db).await;
    assert!(by.sent_the_request(), "{by:?}");
    assert_eq!(
        proxy.cancels_in_the_clear(),
        0,
        "a cancel key went in the clear"
    );
    assert_eq!(proxy.connections(), 2, "the session and its cancel request");
    assert_eq!(proxy.tls_requests(), 2, "a connection did not ask for TLS");
}

/// A pooler that accepts the cancel request's connection and never answers its TLS request
/// (suspended, overloaded) does not hold the cut batch: the cancel gives up on it within the
/// connection's `connect_timeout` (1 s here), and so does the fallback through SQL, whose
/// connection goes the same way. Before the bound, the cancel waited for the answer forever.
#[tokio::test]
async fn a_pooler_that_never_answers_the_cancel_does_not_hold_it() {
    let t = TestDb::new().await;
    let proxy = crate::proxy::Proxy::start(crate::proxy::Behaviour::SilentAfter(1)).await;
    let mut config = proxy.release_config(&t, "localhost", SslMode::Require);
    config.connect_timeout(std::time::Duration::from_secs(1));
    let tls = tls_connector(Some(&ca()), &RdsCaRegions::All).unwrap();
    let db = Database::open(&config, &tls, settings().lock_timeout_ms)
        .await
        .unwrap_or_else(|e| panic!("{}", e.chain()));
    let mut canceller = db.canceller();
    let by = tokio::time::timeout(std::time::Duration::from_secs(20), canceller.cancel())
        .await
        .expect("the cancel waited 20 s on a pooler that never answers");
    assert_eq!(by, unreserver::CancelledBy::Nothing);
    assert_eq!(
        proxy.connections(),
        3,
        "the session, the request and the SQL fallback"
    );
}

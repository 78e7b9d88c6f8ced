//! RDS IAM database authentication end to end on a real PostgreSQL: the function signs a token
//! from its role's credentials (here fixed ones, and a fixed clock) and presents it as the
//! password over verified TLS; a role whose password the test set to that token is let in,
//! and a token signed at another time is refused.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use aws_credential_types::provider::SharedCredentialsProvider;
use aws_credential_types::Credentials;
use secrecy::ExposeSecret;
use unreserver::config::IamSettings;
use unreserver::{
    rds_iam_token, tls_connector, CredentialSource, IamSource, RdsCaRegions, TokenTarget,
};

use crate::common::{pg_port, test_env, TestDb};

fn at_noon() -> SystemTime {
    UNIX_EPOCH + Duration::from_secs(1_800_000_000)
}

fn an_hour_later() -> SystemTime {
    at_noon() + Duration::from_secs(3600)
}

fn credentials() -> Credentials {
    Credentials::new(
        "ASIAEXAMPLE",
        "secret-key",
        Some("session+token/x=".into()),
        None,
        "test",
    )
}

fn source(t: &TestDb, user: &str, clock: fn() -> SystemTime) -> CredentialSource {
    CredentialSource::Iam(Box::new(IamSource {
        settings: IamSettings {
            host: "localhost".into(),
            port: pg_port(),
            dbname: t.name.clone(),
            user: user.into(),
            region: None,
        },
        credentials: SharedCredentialsProvider::new(credentials()),
        region: "eu-west-1".into(),
        clock,
    }))
}

#[tokio::test]
async fn postgres_accepts_the_token_the_function_presents() {
    let t = TestDb::new().await;
    let user = t.role("not-the-token").await;
    let target = TokenTarget {
        host: "localhost",
        port: pg_port(),
        user: &user,
        region: "eu-west-1",
    };
    let token = rds_iam_token(&target, credentials(), at_noon()).unwrap();
    assert!(token
        .expose_secret()
        .contains("&X-Amz-Security-Token=session%2Btoken%2Fx%3D"));
    t.exec(&format!(
        "ALTER ROLE {user} PASSWORD '{}'",
        token.expose_secret()
    ))
    .await;
    let ca = test_env("UNRESERVER_TEST_CA_CERT");
    let tls = tls_connector(Some(std::path::Path::new(&ca)), &RdsCaRegions::All).unwrap();

    let db = source(&t, &user, at_noon).open(&tls, 100, None).await;
    let db = db.unwrap_or_else(|e| panic!("the token was refused: {}", e.chain()));
    let ssl: bool = db
        .client
        .query_one(
            "SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert!(ssl, "IAM tokens travel over TLS only");

    let err = match source(&t, &user, an_hour_later).open(&tls, 100, None).await {
        Ok(_) => panic!("a token signed at another time was accepted"),
        Err(err) => err,
    };
    assert_eq!(err.kind(), "DatabaseAuthentication");
    assert!(!err.chain().contains("X-Amz-Signature"), "{}", err.chain());
}

/// The token is signed for the database's region, not the function's: taken from an RDS host
/// name first (whatever `AWS_REGION` or `DB_REGION` say), else from `DB_REGION`. The source the
/// function builds from its settings carries that region, and the token it signs names it.
#[tokio::test]
async fn the_token_is_signed_for_the_region_of_the_database() {
    let region_of = |host: &'static str, db_region: Option<&'static str>| async move {
        let config = unreserver::Config::from_lookup(|n| match n {
            "DB_AUTH" => Some("iam".into()),
            "DB_HOST" => Some(host.into()),
            "DB_NAME" => Some("shop".into()),
            "DB_USER" => Some("unreserver".into()),
            "DB_REGION" => db_region.map(Into::into),
            _ => None,
        })
        .unwrap();
        match CredentialSource::from_config(&config.database)
            .await
            .unwrap()
        {
            CredentialSource::Iam(source) => source.region.clone(),
            _ => panic!("expected IAM"),
        }
    };
    let rds = "shop.abc123.us-east-2.rds.amazonaws.com";
    assert_eq!(region_of(rds, None).await, "us-east-2");
    assert_eq!(region_of(rds, Some("eu-central-1")).await, "us-east-2");
    assert_eq!(
        region_of("db.shop.internal", Some("eu-central-1")).await,
        "eu-central-1"
    );
    let target = TokenTarget {
        host: rds,
        port: 5432,
        user: "unreserver",
        region: &region_of(rds, None).await,
    };
    let token = rds_iam_token(&target, credentials(), at_noon()).unwrap();
    assert!(
        token
            .expose_secret()
            .contains("%2Fus-east-2%2Frds-db%2Faws4_request"),
        "the credential scope names the database's region"
    );
}

//! RDS IAM database authentication: instead of a stored password, a token signed locally for
//! each connection with the function role's credentials (session token included) — a SigV4
//! presigned `connect` request for the `rds-db` service, valid for 15 minutes, used as the
//! password over verified TLS. No network call is made to sign; the token is never logged (it
//! lives in a [`SecretString`] and in the connection config, whose `Debug` redacts it).

use std::time::{Duration, SystemTime};

use aws_credential_types::Credentials;
use aws_sigv4::http_request::{
    sign, SignableBody, SignableRequest, SignatureLocation, SigningSettings,
};
use aws_sigv4::sign::v4;
use aws_smithy_runtime_api::client::identity::Identity;
use percent_encoding::{utf8_percent_encode, AsciiSet, NON_ALPHANUMERIC};
use secrecy::SecretString;

use crate::error::{Error, Result};

/// How long a token is valid: the most RDS accepts.
const TOKEN_LIFETIME: Duration = Duration::from_secs(900);

/// What a query value keeps unescaped: RFC 3986's unreserved characters.
const QUERY_VALUE: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'_')
    .remove(b'.')
    .remove(b'~');

/// The database endpoint and user a token is for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TokenTarget<'a> {
    pub host: &'a str,
    pub port: u16,
    pub user: &'a str,
    pub region: &'a str,
}

/// The region a token for `host` is signed for: the database's own, which its RDS endpoint
/// name says (`shop.abc.us-east-2.rds.amazonaws.com`); else `DB_REGION`; else the process's
/// (`AWS_REGION`). RDS accepts a token only when it was signed for the database's region.
pub fn token_region(host: &str, setting: Option<&str>, own: Option<&str>) -> Option<String> {
    super::tls::rds_region(host)
        .or(setting)
        .or(own)
        .map(str::to_string)
}

/// The token for `target`, signed with `credentials` at `now`.
pub fn auth_token(
    target: &TokenTarget<'_>,
    credentials: Credentials,
    now: SystemTime,
) -> Result<SecretString> {
    let fail = |what: &str, e: &dyn std::fmt::Display| Error::Setting {
        name: "DB_AUTH".into(),
        reason: format!("cannot sign the RDS IAM token ({what}: {e})"),
    };
    let identity: Identity = credentials.into();
    let mut settings = SigningSettings::default();
    settings.expires_in = Some(TOKEN_LIFETIME);
    settings.signature_location = SignatureLocation::QueryParams;
    let params = v4::SigningParams::builder()
        .identity(&identity)
        .region(target.region)
        .name("rds-db")
        .time(now)
        .settings(settings)
        .build()
        .map_err(|e| fail("parameters", &e))?;
    let user = utf8_percent_encode(target.user, QUERY_VALUE).to_string();
    let endpoint = format!(
        "{}:{}/?Action=connect&DBUser={user}",
        target.host, target.port
    );
    let url = format!("https://{endpoint}");
    let request = SignableRequest::new("GET", &url, std::iter::empty(), SignableBody::empty())
        .map_err(|e| fail("request", &e))?;
    let (instructions, _) = sign(request, &params.into())
        .map_err(|e| fail("signature", &e))?
        .into_parts();
    let mut token = endpoint;
    for (name, value) in instructions.params() {
        token.push('&');
        token.push_str(name);
        token.push('=');
        token.push_str(&utf8_percent_encode(value, QUERY_VALUE).to_string());
    }
    Ok(SecretString::from(token))
}

#[cfg(test)]
mod tests {
    use std::time::UNIX_EPOCH;

    use secrecy::ExposeSecret;

    use super::*;

    fn target() -> TokenTarget<'static> {
        TokenTarget {
            host: "prod-instance.us-east-1.rds.amazonaws.com",
            port: 3306,
            user: "peccy",
            region: "us-east-1",
        }
    }

    /// AWS's own published example (the AWS SDK for Rust's RDS auth-token test vector): fixed
    /// credentials and clock give exactly this token.
    #[test]
    fn the_token_is_the_documented_sigv4_presigned_form() {
        let credentials = Credentials::new("akid", "secret", None, None, "test");
        let now = UNIX_EPOCH + Duration::from_secs(1_724_709_600);
        let token = auth_token(&target(), credentials, now).unwrap();
        assert_eq!(
            token.expose_secret(),
            "prod-instance.us-east-1.rds.amazonaws.com:3306/?Action=connect&DBUser=peccy\
             &X-Amz-Algorithm=AWS4-HMAC-SHA256&X-Amz-Credential=akid%2F20240826%2Fus-east-1%2Frds-db%2Faws4_request\
             &X-Amz-Date=20240826T220000Z&X-Amz-Expires=900&X-Amz-SignedHeaders=host\
             &X-Amz-Signature=dd0cba843009474347af724090233265628ace491ea17ce3eb3da098b983ad89"
        );
    }

    #[test]
    fn a_session_token_is_signed_in_and_escaped() {
        let credentials = Credentials::new(
            "ASIAKID",
            "secret",
            Some("tok/en+with=chars".into()),
            None,
            "t",
        );
        let token =
            auth_token(&target(), credentials, UNIX_EPOCH + Duration::from_secs(1)).unwrap();
        let token = token.expose_secret();
        assert!(
            token.contains("&X-Amz-Security-Token=tok%2Fen%2Bwith%3Dchars"),
            "{token}"
        );
        assert!(!format!("{:?}", SecretString::from(token.to_string())).contains("ASIAKID"));
    }
}

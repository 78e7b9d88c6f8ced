//! Database credentials from AWS Secrets Manager, cached in the execution environment.
//!
//! The secret may have the RDS shape (`username`, `password`, `host`, `port`, `dbname`; other keys
//! are ignored) or hold only `username` and `password`, the rest coming from settings. The
//! cached value is used until its TTL passes or the database rejects it (the password was
//! rotated), whichever comes first. Errors name the secret and the field, never a value.

use std::time::{Duration, Instant};

use aws_sdk_secretsmanager::error::{DisplayErrorContext, SdkError};
use aws_sdk_secretsmanager::operation::get_secret_value::GetSecretValueError;
use secrecy::SecretString;
use serde_json::Value;
use tokio::sync::Mutex;

use crate::error::{Error, Result};

/// Credentials and, when the secret has them, the address of the database.
#[derive(Clone)]
pub struct DbCredentials {
    pub username: String,
    pub password: SecretString,
    pub host: Option<String>,
    pub port: Option<u16>,
    pub dbname: Option<String>,
}

impl std::fmt::Debug for DbCredentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DbCredentials")
            .field("username", &self.username)
            .field("password", &"[redacted]")
            .field("host", &self.host)
            .field("port", &self.port)
            .field("dbname", &self.dbname)
            .finish()
    }
}

/// Parses the secret's text. `secret_id` names the secret in errors; no value is ever quoted.
pub fn parse_secret(secret_id: &str, text: &str) -> Result<DbCredentials> {
    let fail = |reason: String| Error::Secret {
        secret_id: secret_id.into(),
        reason,
        retryable: false,
    };
    // Parse into a Value first: serde_json's typed errors can quote the offending value.
    let value: Value = serde_json::from_str(text).map_err(|e| {
        fail(format!(
            "is not a JSON object (syntax error at line {}, column {})",
            e.line(),
            e.column()
        ))
    })?;
    let Value::Object(map) = value else {
        return Err(fail("is not a JSON object".into()));
    };
    let string = |field: &str, required: bool| -> Result<Option<String>> {
        match map.get(field) {
            Some(Value::String(s)) if !s.is_empty() => Ok(Some(s.clone())),
            Some(Value::String(_)) | None | Some(Value::Null) if !required => Ok(None),
            Some(Value::String(_)) => Err(fail(format!("field {field} is empty"))),
            None | Some(Value::Null) => Err(fail(format!("field {field} is missing"))),
            Some(_) => Err(fail(format!("field {field} is not a string"))),
        }
    };
    let username = string("username", true)?.unwrap_or_default();
    let password = string("password", true)?.unwrap_or_default();
    let host = string("host", false)?;
    let dbname = string("dbname", false)?;
    let port = match map.get("port") {
        None | Some(Value::Null) => None,
        Some(Value::Number(n)) => Some(
            n.as_u64()
                .and_then(|p| u16::try_from(p).ok())
                .ok_or_else(|| fail("field port is not a port number".into()))?,
        ),
        Some(Value::String(s)) => Some(
            s.parse::<u16>()
                .map_err(|_| fail("field port is not a port number".into()))?,
        ),
        Some(_) => return Err(fail("field port is not a port number".into())),
    };
    Ok(DbCredentials {
        username,
        password: SecretString::from(password),
        host,
        port,
        dbname,
    })
}

/// Reads the secret through the AWS SDK and caches it for `ttl`.
pub struct SecretSource {
    client: aws_sdk_secretsmanager::Client,
    secret_id: String,
    ttl: Duration,
    cache: Mutex<Option<(DbCredentials, Instant)>>,
}

impl SecretSource {
    pub fn new(client: aws_sdk_secretsmanager::Client, secret_id: String, ttl: Duration) -> Self {
        SecretSource {
            client,
            secret_id,
            ttl,
            cache: Mutex::new(None),
        }
    }

    pub fn secret_id(&self) -> &str {
        &self.secret_id
    }

    /// The credentials: cached while younger than the TTL, unless `refresh` asks for a fresh
    /// read (after the database rejected the cached password).
    pub async fn credentials(&self, refresh: bool) -> Result<DbCredentials> {
        let mut cache = self.cache.lock().await;
        if let Some((credentials, fetched)) = cache.as_ref() {
            if !refresh && fetched.elapsed() < self.ttl {
                return Ok(credentials.clone());
            }
        }
        let credentials = self.fetch().await?;
        *cache = Some((credentials.clone(), Instant::now()));
        Ok(credentials)
    }

    async fn fetch(&self) -> Result<DbCredentials> {
        let text = self.text("fetched database credentials").await?;
        parse_secret(&self.secret_id, &text)
    }

    /// The secret's `SecretString` as it is (a PEM CA bundle, for `DB_CA_SECRET_ID`), read
    /// once, never cached, never logged.
    pub async fn text(&self, what: &'static str) -> Result<String> {
        let started = Instant::now();
        let output = self
            .client
            .get_secret_value()
            .secret_id(&self.secret_id)
            .send()
            .await
            .map_err(|e| self.classify(e))?;
        tracing::info!(
            secret_id = %self.secret_id,
            version_id = output.version_id().unwrap_or("?"),
            elapsed_ms = started.elapsed().as_millis() as u64,
            "{what}"
        );
        let text = output.secret_string().ok_or_else(|| Error::Secret {
            secret_id: self.secret_id.clone(),
            reason: "holds no SecretString (binary secrets are not supported)".into(),
            retryable: false,
        })?;
        Ok(text.to_string())
    }

    fn classify(&self, error: SdkError<GetSecretValueError>) -> Error {
        let (reason, retryable) = match &error {
            SdkError::ServiceError(service) => match service.err() {
                GetSecretValueError::ResourceNotFoundException(_) => {
                    ("was not found".into(), false)
                }
                GetSecretValueError::InvalidRequestException(_)
                | GetSecretValueError::InvalidParameterException(_)
                | GetSecretValueError::DecryptionFailure(_) => (
                    format!("cannot be read: {}", DisplayErrorContext(&error)),
                    false,
                ),
                other => {
                    let denied = other
                        .meta()
                        .code()
                        .is_some_and(|c| c.contains("AccessDenied"));
                    (
                        format!("cannot be read: {}", DisplayErrorContext(&error)),
                        !denied,
                    )
                }
            },
            SdkError::ConstructionFailure(_) => (
                format!(
                    "request could not be built: {}",
                    DisplayErrorContext(&error)
                ),
                false,
            ),
            _ => (
                format!(
                    "Secrets Manager unreachable: {}",
                    DisplayErrorContext(&error)
                ),
                true,
            ),
        };
        Error::Secret {
            secret_id: self.secret_id.clone(),
            reason,
            retryable,
        }
    }
}

#[cfg(test)]
mod tests {
    use secrecy::ExposeSecret;

    use super::*;

    #[test]
    fn reads_the_rds_shape_and_ignores_extra_keys() {
        let c = parse_secret(
            "db",
            r#"{"username":"app","password":"p4ss","engine":"postgres","host":"h","port":5433,"dbname":"shop","dbInstanceIdentifier":"x"}"#,
        )
        .unwrap();
        assert_eq!(c.username, "app");
        assert_eq!(c.password.expose_secret(), "p4ss");
        assert_eq!(
            (c.host.as_deref(), c.port, c.dbname.as_deref()),
            (Some("h"), Some(5433), Some("shop"))
        );
        assert!(!format!("{c:?}").contains("p4ss"));
    }

    #[test]
    fn reads_username_and_password_only_and_string_ports() {
        let c = parse_secret("db", r#"{"username":"app","password":"p"}"#).unwrap();
        assert_eq!((c.host, c.port, c.dbname), (None, None, None));
        let c = parse_secret("db", r#"{"username":"app","password":"p","port":"6432"}"#).unwrap();
        assert_eq!(c.port, Some(6432));
    }

    #[test]
    fn errors_name_the_secret_and_field_never_a_value() {
        for (text, expect) in [
            ("hunter2", "not a JSON object"),
            (r#"["hunter2"]"#, "not a JSON object"),
            (r#"{"username":"app"}"#, "field password is missing"),
            (r#"{"password":"hunter2"}"#, "field username is missing"),
            (
                r#"{"username":"app","password":""}"#,
                "field password is empty",
            ),
            (
                r#"{"username":"app","password":12345}"#,
                "field password is not a string",
            ),
            (
                r#"{"username":"app","password":"hunter2","port":"hunter2"}"#,
                "field port",
            ),
            (
                r#"{"username":"app","password":"hunter2","port":70000}"#,
                "field port",
            ),
        ] {
            let err = parse_secret("prod/db", text).unwrap_err();
            let msg = err.to_string();
            assert!(
                msg.contains("prod/db") && msg.contains(expect),
                "{text}: {msg}"
            );
            assert!(!msg.contains("hunter2") && !msg.contains("12345"), "{msg}");
            assert!(!err.is_retryable());
        }
    }
}

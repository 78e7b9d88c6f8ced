//! Reading a connection string (libpq URL or key=value) before tokio-postgres does, so that it
//! cannot lose TLS or leak a password:
//!
//! - TLS defaults to `require` (chain and host name verified) when `sslmode` is absent, where
//!   tokio-postgres would default to `prefer` and fall back to clear text;
//! - `prefer` and `allow` are refused, with the reason; `verify-ca` too (`require` verifies
//!   more); `verify-full`, which tokio-postgres rejects, is read as `require`, which is the same
//!   here; `disable` is honoured only when written;
//! - a URL's user and password are split at the last `@` of the authority and percent-decoded,
//!   so a password with `@` or `:` works, and no part of it is handed to a parser whose error
//!   could quote it.

use std::borrow::Cow;

use percent_encoding::percent_decode_str;
use tokio_postgres::config::SslMode;
use tokio_postgres::Config;

use crate::error::{Error, Result};

/// Parses `conn` (the value of setting `setting`), never quoting it in an error.
pub fn parse(setting: &str, conn: &str) -> Result<Config> {
    let conn = conn.trim();
    let is_url = conn.starts_with("postgres://") || conn.starts_with("postgresql://");
    let (mut config, sslmode) = if is_url {
        parse_url(setting, conn)?
    } else {
        parse_key_value(setting, conn)?
    };
    config.ssl_mode(ssl_mode(setting, sslmode.as_deref())?);
    Ok(config)
}

/// The TLS mode a written `sslmode` (None: absent) asks for; `setting` names it in errors.
pub fn ssl_mode(setting: &str, value: Option<&str>) -> Result<SslMode> {
    let refuse = |reason: &str| Error::Setting {
        name: setting.into(),
        reason: reason.into(),
    };
    match value.map(str::trim) {
        None | Some("") | Some("require") | Some("verify-full") => Ok(SslMode::Require),
        Some("disable") => Ok(SslMode::Disable),
        Some("prefer") | Some("allow") => Err(refuse(
            "sslmode prefer (or allow) falls back to clear text when the server offers no TLS, \
             sending the password and the shop's data readable on the network; use require \
             (the default: chain and host name verified) or, on a network you trust, disable",
        )),
        Some("verify-ca") => Err(refuse(
            "sslmode verify-ca is not supported: require (the default) verifies the certificate \
             chain and the host name",
        )),
        Some(_) => Err(refuse(
            "sslmode must be require (the default), verify-full (the same) or disable",
        )),
    }
}

fn invalid(setting: &str, what: &str) -> Error {
    Error::Setting {
        name: setting.into(),
        reason: format!("not a valid PostgreSQL connection string ({what})"),
    }
}

/// A `postgres://user:password@host:port/db?params` URL: the user and password are taken out
/// (split at the authority's last `@`, then the first `:`) and set on the config directly.
fn parse_url(setting: &str, url: &str) -> Result<(Config, Option<String>)> {
    let rest = url.split_once("://").map_or(url, |(_, rest)| rest);
    let (authority_and_path, query) = match rest.split_once('?') {
        Some((before, query)) => (before, Some(query)),
        None => (rest, None),
    };
    let (userinfo, host_and_path) = match authority_and_path.rfind('@') {
        Some(at) => (
            Some(&authority_and_path[..at]),
            &authority_and_path[at + 1..],
        ),
        None => (None, authority_and_path),
    };
    let (params, sslmode) = split_query(setting, query)?;
    let mut rebuilt = format!("postgresql://{host_and_path}");
    if !params.is_empty() {
        rebuilt.push('?');
        rebuilt.push_str(&params.join("&"));
    }
    let mut config: Config = rebuilt
        .parse()
        .map_err(|e: tokio_postgres::Error| invalid(setting, &e.to_string()))?;
    if let Some(userinfo) = userinfo {
        let (user, password) = match userinfo.split_once(':') {
            Some((user, password)) => (user, Some(password)),
            None => (userinfo, None),
        };
        let user = decode(setting, user, "the user")?;
        if !user.is_empty() {
            config.user(user.into_owned());
        }
        if let Some(password) = password {
            config.password(decode(setting, password, "the password")?.as_bytes());
        }
    }
    Ok((config, sslmode))
}

/// The query parameters other than `sslmode`, and `sslmode`'s decoded value.
fn split_query(setting: &str, query: Option<&str>) -> Result<(Vec<String>, Option<String>)> {
    let mut params = Vec::new();
    let mut sslmode = None;
    for pair in query.unwrap_or("").split('&').filter(|p| !p.is_empty()) {
        match pair.split_once('=') {
            Some(("sslmode", value)) => sslmode = Some(decode(setting, value, "sslmode")?.into()),
            _ => params.push(pair.to_string()),
        }
    }
    Ok((params, sslmode))
}

fn decode<'a>(setting: &str, part: &'a str, what: &str) -> Result<Cow<'a, str>> {
    percent_decode_str(part).decode_utf8().map_err(|_| {
        invalid(
            setting,
            &format!("{what} is not valid percent-encoded UTF-8"),
        )
    })
}

/// A key=value string: the `sslmode` pair is taken out (tokio-postgres rejects `verify-full`
/// and would default to `prefer`), the rest parsed by tokio-postgres, whose quoting rules it is.
fn parse_key_value(setting: &str, conn: &str) -> Result<(Config, Option<String>)> {
    let (rest, sslmode) = take_key(conn, "sslmode");
    let config: Config = rest
        .parse()
        .map_err(|_| invalid(setting, "a key=value pair is malformed"))?;
    Ok((config, sslmode))
}

/// Removes every `key=value` pair named `key` from a key=value string (values plain or
/// single-quoted with backslash escapes), returning the rest and the last value.
fn take_key(conn: &str, key: &str) -> (String, Option<String>) {
    let mut rest = String::new();
    let mut found = None;
    let mut chars = conn.char_indices().peekable();
    while let Some(&(start, c)) = chars.peek() {
        if c.is_whitespace() {
            rest.push(c);
            chars.next();
            continue;
        }
        let (name, value, end) = pair(conn, &mut chars);
        if name == key {
            found = Some(value);
        } else {
            rest.push_str(&conn[start..end]);
        }
    }
    (rest, found)
}

/// Reads the `name = value` pair the iterator is at: (name, unquoted value, end offset).
fn pair(
    conn: &str,
    chars: &mut std::iter::Peekable<std::str::CharIndices<'_>>,
) -> (String, String, usize) {
    let mut name = String::new();
    while let Some(&(_, c)) = chars.peek() {
        if c == '=' || c.is_whitespace() {
            break;
        }
        name.push(c);
        chars.next();
    }
    while chars
        .peek()
        .is_some_and(|&(_, c)| c.is_whitespace() || c == '=')
    {
        chars.next();
    }
    let mut value = String::new();
    let quoted = chars.peek().is_some_and(|&(_, c)| c == '\'');
    if quoted {
        chars.next();
    }
    while let Some((_, c)) = chars.next() {
        match c {
            '\\' if quoted => value.extend(chars.next().map(|(_, c)| c)),
            '\'' if quoted => break,
            c if !quoted && c.is_whitespace() => break,
            c => value.push(c),
        }
    }
    let end = chars.peek().map_or(conn.len(), |&(i, _)| i);
    (name, value, end)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn password(config: &Config) -> String {
        String::from_utf8(config.get_password().unwrap().to_vec()).unwrap()
    }

    #[test]
    fn tls_is_required_unless_disable_is_written() {
        for url in [
            "postgres://app:pw@db.example/shop",
            "postgres://app:pw@db.example/shop?sslmode=require",
            "postgres://app:pw@db.example/shop?sslmode=verify-full",
            "host=db.example user=app dbname=shop",
            "host=db.example user=app sslmode=verify-full dbname=shop",
        ] {
            assert_eq!(
                parse("DATABASE_URL", url).unwrap().get_ssl_mode(),
                SslMode::Require,
                "{url}"
            );
        }
        let c = parse(
            "DATABASE_URL",
            "postgres://app@h/db?sslmode=disable&application_name=x",
        )
        .unwrap();
        assert_eq!(c.get_ssl_mode(), SslMode::Disable);
        assert_eq!(c.get_application_name(), Some("x"));
        let c = parse("DATABASE_URL", "host=h user=app sslmode = 'disable'").unwrap();
        assert_eq!(c.get_ssl_mode(), SslMode::Disable);
    }

    #[test]
    fn prefer_allow_and_verify_ca_are_refused_with_the_reason() {
        for url in [
            "postgres://app:s3cret@h/db?sslmode=prefer",
            "postgres://app:s3cret@h/db?sslmode=allow",
            "host=h user=app password=s3cret sslmode=prefer",
            "postgres://app:s3cret@h/db?sslmode=verify-ca",
            "postgres://app:s3cret@h/db?sslmode=bogus",
        ] {
            let err = parse("DATABASE_URL", url).unwrap_err().to_string();
            assert!(
                err.contains("DATABASE_URL") && err.contains("sslmode"),
                "{url}: {err}"
            );
            assert!(!err.contains("s3cret"), "{err}");
        }
        let err = parse("DATABASE_URL", "postgres://a:b@h/db?sslmode=prefer").unwrap_err();
        assert!(err.to_string().contains("clear text"), "{err}");
    }

    #[test]
    fn a_password_with_at_and_colon_is_read_whole() {
        let c = parse(
            "DATABASE_URL",
            "postgres://app:p@ss:w@rd@db.example:6432/shop",
        )
        .unwrap();
        assert_eq!(password(&c), "p@ss:w@rd");
        assert_eq!(c.get_user(), Some("app"));
        assert_eq!(c.get_dbname(), Some("shop"));
        assert_eq!(c.get_ports(), [6432]);
        let c = parse(
            "DATABASE_URL",
            "postgresql://app:p%40ss%3Aw%2Frd@db.example/shop",
        )
        .unwrap();
        assert_eq!(password(&c), "p@ss:w/rd");
        let c = parse(
            "DATABASE_URL",
            "host=h user=app password='a b\\'c' sslmode=disable dbname=shop",
        )
        .unwrap();
        assert_eq!(password(&c), "a b'c");
        assert_eq!(c.get_dbname(), Some("shop"));
        assert_eq!(c.get_ssl_mode(), SslMode::Disable);
    }

    #[test]
    fn errors_never_quote_the_password() {
        for url in [
            "postgres://app:h@nter2:x@h:notaport/db",
            "postgres://app:hunter2@h/db?connect_timeout=soon",
            "host=h user=app password=hunter2 port=nope",
        ] {
            let err = parse("DATABASE_URL", url).unwrap_err().to_string();
            assert!(err.contains("DATABASE_URL"), "{err}");
            assert!(
                !err.contains("hunter2") && !err.contains("nter2"),
                "{url}: {err}"
            );
        }
    }
}

//! TLS for the database connection: native-tls with certificate and host name verification,
//! trusting the system store, the Amazon RDS CA certificates compiled into the binary
//! (`infra/rds-ca-bundle.pem`, so that verified TLS to RDS works out of the box: those of the
//! database's region, or all of them), and every certificate of an optional CA bundle file
//! (`DB_CA_BUNDLE`).

use std::path::Path;

use std::future::Future;
use std::pin::Pin;

use native_tls::{Certificate, TlsConnector};
use postgres_native_tls::{MakeTlsConnector, TlsStream};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio_postgres::tls::{MakeTlsConnect, TlsConnect};

use crate::error::{Error, Result};

const BEGIN: &str = "-----BEGIN CERTIFICATE-----";
const END: &str = "-----END CERTIFICATE-----";

/// The Amazon RDS CA certificates still valid when it was written, each under a `# <subject CN>`
/// line naming its region, from `infra/rds-ca-bundle.pem` (`scripts/update-rds-ca.sh`).
pub const RDS_CA_BUNDLE: &str = include_str!("../../infra/rds-ca-bundle.pem");

/// Which of the built-in RDS CAs a connector trusts (`DB_RDS_CA_REGIONS`). OpenSSL parses a
/// certificate in about 0.05 ms here, and a cold start would otherwise parse all 87 for the
/// three that a database's region needs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RdsCaRegions {
    /// Every region's CAs.
    All,
    /// The CAs of these regions (`eu-west-1`, ...); all of them if none is in the bundle.
    Only(Vec<String>),
}

impl RdsCaRegions {
    /// `all`, or region names (`eu-west-1`, `us-gov-west-1`, ...) separated by commas.
    pub fn parse(value: &str) -> std::result::Result<RdsCaRegions, String> {
        if value.trim().eq_ignore_ascii_case("all") {
            return Ok(RdsCaRegions::All);
        }
        let regions: Vec<String> = value.split(',').map(|r| r.trim().to_owned()).collect();
        match regions.iter().find(|r| !is_region_name(r)) {
            Some(bad) => Err(format!(
                "{bad:?} is not a region name like eu-west-1 (give `all` or regions separated \
                 by commas)"
            )),
            None => Ok(RdsCaRegions::Only(regions)),
        }
    }

    /// Whether the certificate labelled `label` (its subject CN, `Amazon RDS eu-west-1 Root CA
    /// RSA2048 G1`) is trusted.
    fn trusts(&self, label: &str) -> bool {
        match self {
            RdsCaRegions::All => true,
            RdsCaRegions::Only(regions) => label
                .split_whitespace()
                .any(|word| regions.iter().any(|r| r == word)),
        }
    }
}

/// `eu-west-1`, `ap-southeast-4`, `us-gov-west-1`: lower-case words then a number.
pub(crate) fn is_region_name(name: &str) -> bool {
    let parts: Vec<&str> = name.split('-').collect();
    let (Some(last), words) = (parts.last(), &parts[..parts.len().saturating_sub(1)]) else {
        return false;
    };
    words.len() >= 2
        && words
            .iter()
            .all(|w| !w.is_empty() && w.bytes().all(|b| b.is_ascii_lowercase()))
        && !last.is_empty()
        && last.bytes().all(|b| b.is_ascii_digit())
}

/// The region of an RDS endpoint's host name (`db.abc.eu-west-1.rds.amazonaws.com`, or a proxy's
/// or a China region's), `None` for any other name.
pub fn rds_region(host: &str) -> Option<&str> {
    let host = host.trim_end_matches('.');
    let rest = host
        .strip_suffix(".rds.amazonaws.com")
        .or_else(|| host.strip_suffix(".rds.amazonaws.com.cn"))?;
    rest.rsplit('.').next().filter(|r| !r.is_empty())
}

/// The built-in RDS CAs `regions` trusts; every one when no certificate names those regions (a
/// region newer than the bundle: the system store or `DB_CA_BUNDLE` must then hold its CA).
pub fn rds_certificates(regions: &RdsCaRegions) -> std::result::Result<Vec<Certificate>, String> {
    let chosen: Vec<&str> = labelled_rds_certificates()
        .filter(|(label, _)| regions.trusts(label))
        .map(|(_, pem)| pem)
        .collect();
    if chosen.is_empty() {
        return certificates(RDS_CA_BUNDLE);
    }
    certificates(&chosen.concat())
}

/// Each certificate of the RDS bundle with its label: `(subject CN, PEM block)`.
fn labelled_rds_certificates() -> impl Iterator<Item = (&'static str, &'static str)> {
    RDS_CA_BUNDLE
        .split("\n# ")
        .filter_map(|block| block.split_once('\n'))
        .filter(|(_, pem)| pem.starts_with(BEGIN))
}

/// The TLS of every connection of the process: the verified connector, or none at all when the
/// configuration sends data in the clear (`sslmode=disable`). Loading the system store and the
/// RDS CAs is the costliest part of a process's start (OpenSSL parses every certificate): a
/// process that will never make a handshake does not pay it.
#[derive(Clone)]
pub struct Tls(Option<MakeTlsConnector>);

impl Tls {
    /// No TLS: the configuration says `sslmode=disable`. A handshake asked of it fails.
    pub fn disabled() -> Tls {
        Tls(None)
    }

    /// Whether this is the verified connector (not [`Tls::disabled`]).
    pub fn verifies(&self) -> bool {
        self.0.is_some()
    }
}

impl From<MakeTlsConnector> for Tls {
    fn from(connector: MakeTlsConnector) -> Self {
        Tls(Some(connector))
    }
}

impl<S> MakeTlsConnect<S> for Tls
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    type Stream = TlsStream<S>;
    type TlsConnect = Handshake;
    type Error = native_tls::Error;

    /// tokio-postgres asks for a handshake before each connection, even one that will not use
    /// it (`sslmode=disable`): without a connector it gets one that refuses.
    fn make_tls_connect(&mut self, domain: &str) -> std::result::Result<Handshake, Self::Error> {
        match &mut self.0 {
            Some(connector) => {
                MakeTlsConnect::<S>::make_tls_connect(connector, domain).map(Handshake::Verified)
            }
            None => Ok(Handshake::Disabled),
        }
    }
}

/// One connection's handshake: verified, or refused (TLS disabled).
pub enum Handshake {
    Verified(postgres_native_tls::TlsConnector),
    Disabled,
}

/// What a refused handshake answers.
const TLS_DISABLED: &str = "TLS handshake refused: this process was configured with sslmode \
                            disable and loaded no CA certificates";

type HandshakeFuture<S> = Pin<
    Box<
        dyn Future<
                Output = std::result::Result<
                    TlsStream<S>,
                    Box<dyn std::error::Error + Send + Sync>,
                >,
            > + Send,
    >,
>;

impl<S> TlsConnect<S> for Handshake
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    type Stream = TlsStream<S>;
    type Error = Box<dyn std::error::Error + Send + Sync>;
    type Future = HandshakeFuture<S>;

    fn connect(self, stream: S) -> Self::Future {
        match self {
            Handshake::Verified(connector) => {
                let handshake = connector.connect(stream);
                Box::pin(async move { handshake.await.map_err(Into::into) })
            }
            Handshake::Disabled => Box::pin(async { Err(TLS_DISABLED.into()) }),
        }
    }
}

/// Builds the connector used for every connection of the process: the system store, the RDS
/// CAs `rds` names, and with `ca_bundle` each certificate in that file too.
pub fn connector(ca_bundle: Option<&Path>, rds: &RdsCaRegions) -> Result<Tls> {
    connector_with(ca_bundle, None, rds)
}

/// [`connector`], also trusting the CAs of `extra`: PEM read at start from a Secrets Manager
/// secret (`DB_CA_SECRET_ID`), so that a deployed function can trust a CA without a rebuild.
pub fn connector_with(
    ca_bundle: Option<&Path>,
    extra: Option<(&str, &str)>,
    rds: &RdsCaRegions,
) -> Result<Tls> {
    let mut builder = TlsConnector::builder();
    if let Some((secret_id, pem)) = extra {
        let certs = certificates(pem)
            .map_err(|e| Error::Tls(format!("the CA bundle in secret {secret_id}: {e}")))?;
        for cert in certs {
            builder.add_root_certificate(cert);
        }
    }
    let rds = rds_certificates(rds)
        .map_err(|e| Error::Tls(format!("the built-in RDS CA bundle: {e}")))?;
    for cert in rds {
        builder.add_root_certificate(cert);
    }
    if let Some(path) = ca_bundle {
        let pem = std::fs::read_to_string(path)
            .map_err(|e| Error::Tls(format!("cannot read CA bundle {}: {e}", path.display())))?;
        let certs = certificates(&pem)
            .map_err(|e| Error::Tls(format!("CA bundle {}: {e}", path.display())))?;
        for cert in certs {
            builder.add_root_certificate(cert);
        }
    }
    let connector = builder
        .build()
        .map_err(|e| Error::Tls(format!("cannot build TLS connector: {e}")))?;
    Ok(Tls::from(MakeTlsConnector::new(connector)))
}

/// Every certificate of a PEM bundle (`Certificate::from_pem` reads only the first one). Each
/// block's base64 is decoded here and the DER handed to OpenSSL, whose PEM decoder (OpenSSL 3)
/// is several times slower: this runs during a Lambda cold start, over a hundred certificates.
pub fn certificates(pem: &str) -> std::result::Result<Vec<Certificate>, String> {
    use base64::Engine as _;
    let mut certs = Vec::new();
    let mut rest = pem;
    while let Some(start) = rest.find(BEGIN) {
        let Some(len) = rest[start..].find(END) else {
            return Err(format!("certificate {} has no END line", certs.len() + 1));
        };
        let body: String = rest[start + BEGIN.len()..start + len]
            .chars()
            .filter(|c| !c.is_whitespace())
            .collect();
        let invalid = |e: &dyn std::fmt::Display| {
            format!("certificate {} is not valid: {e}", certs.len() + 1)
        };
        let der = base64::engine::general_purpose::STANDARD
            .decode(body)
            .map_err(|e| invalid(&e))?;
        certs.push(Certificate::from_der(&der).map_err(|e| invalid(&e))?);
        rest = &rest[start + len + END.len()..];
    }
    if certs.is_empty() {
        return Err("no PEM certificate found".into());
    }
    Ok(certs)
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    #[test]
    fn every_rds_certificate_parses_and_the_connector_loads_them() {
        let certs = certificates(RDS_CA_BUNDLE).unwrap();
        assert_eq!(certs.len(), 87);
        assert_eq!(RDS_CA_BUNDLE.matches(BEGIN).count(), 87);
        assert_eq!(rds_certificates(&RdsCaRegions::All).unwrap().len(), 87);
        for cert in &certs {
            assert!(cert.to_der().is_ok_and(|der| der.len() > 500));
        }
        assert!(connector(None, &RdsCaRegions::All).is_ok());
    }

    #[test]
    fn each_label_is_the_subject_of_the_certificate_below_it() {
        let blocks: Vec<(&str, &str)> = labelled_rds_certificates().collect();
        assert_eq!(blocks.len(), 87);
        for (label, pem) in blocks {
            assert!(label.starts_with("Amazon RDS ") && label.contains(" Root CA "));
            let der = certificates(pem).unwrap().remove(0).to_der().unwrap();
            // A root's subject CN is in its DER twice (issuer and subject), as plain bytes.
            let found = der
                .windows(label.len())
                .filter(|w| *w == label.as_bytes())
                .count();
            assert_eq!(found, 2, "{label}");
        }
    }

    #[test]
    fn a_region_gets_its_own_three_roots() {
        let der = |regions| -> Vec<Vec<u8>> {
            let certs = rds_certificates(&regions).unwrap();
            certs.iter().map(|c| c.to_der().unwrap()).collect()
        };
        let eu = der(only(&["eu-west-1"]));
        assert_eq!(eu.len(), 3);
        assert!(eu
            .iter()
            .all(|d| contains(d, b"Amazon RDS eu-west-1 Root CA")));
        // us-east-1 has its Beta roots too.
        assert_eq!(der(only(&["eu-west-1", "us-east-1"])).len(), 6 + 3);
        // Not `eu-west-1` inside `eu-west-12`, nor a region the bundle does not know.
        assert_eq!(der(only(&["eu-west-12"])).len(), 87);
        assert_eq!(der(only(&["west"])).len(), 87);
    }

    /// `RdsCaRegions::Only` of these regions.
    pub(crate) fn only(regions: &[&str]) -> RdsCaRegions {
        RdsCaRegions::Only(regions.iter().map(|s| s.to_string()).collect())
    }

    fn contains(haystack: &[u8], needle: &[u8]) -> bool {
        haystack.windows(needle.len()).any(|w| w == needle)
    }

    #[test]
    fn regions_are_parsed_strictly() {
        assert_eq!(RdsCaRegions::parse("ALL"), Ok(RdsCaRegions::All));
        assert_eq!(RdsCaRegions::parse("eu-west-1"), Ok(only(&["eu-west-1"])));
        assert_eq!(
            RdsCaRegions::parse(" us-gov-west-1 , eu-west-1"),
            Ok(only(&["us-gov-west-1", "eu-west-1"]))
        );
        for bad in [
            "",
            "eu",
            "eu-west",
            "EU-WEST-1",
            "eu-west-1,",
            "eu west 1",
            "-west-1",
        ] {
            let error = RdsCaRegions::parse(bad).unwrap_err();
            assert!(
                error.contains("region name like eu-west-1"),
                "{bad}: {error}"
            );
        }
    }

    #[test]
    fn rds_endpoints_name_their_region() {
        for (host, region) in [
            (
                "shop.c9akciq32.eu-west-1.rds.amazonaws.com",
                Some("eu-west-1"),
            ),
            (
                "shop.proxy-c9akciq32.us-east-2.rds.amazonaws.com.",
                Some("us-east-2"),
            ),
            (
                "shop.cluster-ro-x.cn-north-1.rds.amazonaws.com.cn",
                Some("cn-north-1"),
            ),
            ("db.shop.example", None),
            ("rds.amazonaws.com", None),
            ("10.0.0.5", None),
        ] {
            assert_eq!(rds_region(host), region, "{host}");
        }
    }

    #[test]
    fn rejects_files_without_certificates() {
        assert!(certificates("hello").is_err());
        assert!(certificates(&format!("{BEGIN}\nAAAA\n")).is_err());
        assert!(certificates(&format!("{BEGIN}\nnot base64!\n{END}\n")).is_err());
    }
}

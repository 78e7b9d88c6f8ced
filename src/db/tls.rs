//! TLS for the database connection: native-tls with certificate and host name verification,
//! trusting the system store, the Amazon RDS CA certificates compiled into the binary
//! (`infra/rds-ca-bundle.pem`, so that verified TLS to RDS works out of the box), and every
//! certificate of an optional CA bundle file (`DB_CA_BUNDLE`).

use std::path::Path;

use native_tls::{Certificate, TlsConnector};
use postgres_native_tls::MakeTlsConnector;

use crate::error::{Error, Result};

const BEGIN: &str = "-----BEGIN CERTIFICATE-----";
const END: &str = "-----END CERTIFICATE-----";

/// The Amazon RDS CA certificates (2024), from `infra/rds-ca-bundle.pem`
/// (`scripts/update-rds-ca.sh` regenerates it).
pub const RDS_CA_BUNDLE: &str = include_str!("../../infra/rds-ca-bundle.pem");

/// Builds the connector used for every connection of the process: the system store and the RDS
/// CAs, and with `ca_bundle` each certificate in that file too.
pub fn connector(ca_bundle: Option<&Path>) -> Result<MakeTlsConnector> {
    let mut builder = TlsConnector::builder();
    let rds = certificates(RDS_CA_BUNDLE)
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
    Ok(MakeTlsConnector::new(connector))
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
mod tests {
    use super::*;

    #[test]
    fn every_rds_certificate_parses_and_the_connector_loads_them() {
        let certs = certificates(RDS_CA_BUNDLE).unwrap();
        assert_eq!(certs.len(), 115);
        assert_eq!(RDS_CA_BUNDLE.matches(BEGIN).count(), 115);
        for cert in &certs {
            assert!(cert.to_der().is_ok_and(|der| der.len() > 500));
        }
        assert!(connector(None).is_ok());
    }

    #[test]
    fn rejects_files_without_certificates() {
        assert!(certificates("hello").is_err());
        assert!(certificates(&format!("{BEGIN}\nAAAA\n")).is_err());
        assert!(certificates(&format!("{BEGIN}\nnot base64!\n{END}\n")).is_err());
    }
}

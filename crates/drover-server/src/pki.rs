//! The server's certificate authority: made on first start, it signs the server's own TLS certificate and
//! every node's client certificate. Agents pin it by its SHA-256 fingerprint, carried in join tokens.

use std::path::{Path, PathBuf};

use chrono::{Datelike, Utc};
use rcgen::{
    BasicConstraints, CertificateParams, CertificateSigningRequestParams, DistinguishedName,
    DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair, KeyUsagePurpose, SanType, SerialNumber,
};
use sha2::{Digest, Sha256};

use drover_files::write_atomic;

pub const CA_CERT_FILE: &str = "ca.crt";
pub const CA_KEY_FILE: &str = "ca.key";

#[derive(Debug, thiserror::Error)]
pub enum PkiError {
    #[error("cannot read or write {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path} is not a usable PEM file: {source}")]
    BadPem { path: PathBuf, source: rcgen::Error },
    #[error("the certificate signing request is invalid: {0}")]
    BadCsr(rcgen::Error),
    #[error("cannot generate a certificate: {0}")]
    Generate(#[from] rcgen::Error),
}

/// The CA and the server's TLS identity.
pub struct Pki {
    issuer: Issuer<'static, KeyPair>,
    ca_pem: String,
    ca_der: Vec<u8>,
    fingerprint: String,
    pub server_cert_der: Vec<u8>,
    pub server_key_der: Vec<u8>,
}

/// Lowercase hex SHA-256 of a certificate's DER bytes.
pub fn fingerprint(der: &[u8]) -> String {
    hex::encode(Sha256::digest(der))
}

/// Valid from yesterday (tolerates clock skew) for `years` years.
fn set_validity(params: &mut CertificateParams, years: i32) {
    let from = Utc::now() - chrono::Duration::days(1);
    let (y, m, d) = (from.year(), from.month() as u8, from.day().min(28) as u8);
    params.not_before = rcgen::date_time_ymd(y, m, d);
    params.not_after = rcgen::date_time_ymd(y + years, m, d);
}

fn random_serial() -> SerialNumber {
    let mut bytes: [u8; 16] = rand::random();
    bytes[0] &= 0x7f; // keep it positive
    SerialNumber::from_slice(&bytes)
}

fn read(path: &Path) -> Result<String, PkiError> {
    std::fs::read_to_string(path).map_err(|source| PkiError::Io {
        path: path.to_path_buf(),
        source,
    })
}

fn write(path: &Path, contents: &str, private: bool) -> Result<(), PkiError> {
    write_atomic(path, contents.as_bytes(), private).map_err(|source| PkiError::Io {
        path: path.to_path_buf(),
        source,
    })
}

impl Pki {
    /// Loads the CA from `dir`, or creates it when absent (the bool says so), then issues the server's TLS
    /// certificate for `sans` plus the fixed name agents verify.
    pub fn load_or_create(dir: &Path, sans: &[String]) -> Result<(Self, bool), PkiError> {
        let cert_path = dir.join(CA_CERT_FILE);
        let key_path = dir.join(CA_KEY_FILE);
        let created = !cert_path.exists();
        let (ca_pem, key) = if created {
            let key = KeyPair::generate()?;
            let mut params = CertificateParams::default();
            let mut dn = DistinguishedName::new();
            dn.push(DnType::CommonName, "drover CA");
            params.distinguished_name = dn;
            params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
            params.key_usages = vec![
                KeyUsagePurpose::KeyCertSign,
                KeyUsagePurpose::CrlSign,
                KeyUsagePurpose::DigitalSignature,
            ];
            params.serial_number = Some(random_serial());
            set_validity(&mut params, 20);
            let cert = params.self_signed(&key)?;
            // Key first: a CA certificate without its key on disk would be unusable.
            write(&key_path, &key.serialize_pem(), true)?;
            write(&cert_path, &cert.pem(), false)?;
            (cert.pem(), key)
        } else {
            let key_pem = read(&key_path)?;
            let key = KeyPair::from_pem(&key_pem).map_err(|source| PkiError::BadPem {
                path: key_path.clone(),
                source,
            })?;
            (read(&cert_path)?, key)
        };
        let issuer = Issuer::from_ca_cert_pem(&ca_pem, key).map_err(|source| PkiError::BadPem {
            path: cert_path.clone(),
            source,
        })?;
        let ca_der = pem_to_der(&ca_pem).ok_or_else(|| PkiError::BadPem {
            path: cert_path.clone(),
            source: rcgen::Error::CouldNotParseCertificate,
        })?;
        let fingerprint = fingerprint(&ca_der);

        let server_key = KeyPair::generate()?;
        let mut names = vec![drover_proto::SERVER_TLS_NAME.to_string()];
        names.extend(sans.iter().cloned());
        let mut params = CertificateParams::new(names)?;
        let mut dn = DistinguishedName::new();
        dn.push(DnType::CommonName, drover_proto::SERVER_TLS_NAME);
        params.distinguished_name = dn;
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        params.serial_number = Some(random_serial());
        set_validity(&mut params, 1);
        let server_cert = params.signed_by(&server_key, &issuer)?;

        Ok((
            Self {
                issuer,
                ca_pem,
                ca_der,
                fingerprint,
                server_cert_der: server_cert.der().to_vec(),
                server_key_der: server_key.serialize_der(),
            },
            created,
        ))
    }

    pub fn ca_pem(&self) -> &str {
        &self.ca_pem
    }

    pub fn ca_der(&self) -> &[u8] {
        &self.ca_der
    }

    /// SHA-256 of the CA certificate, as carried in join tokens.
    pub fn fingerprint(&self) -> &str {
        &self.fingerprint
    }

    /// Signs a node's CSR. Whatever the request asked for is replaced: the node gets a client-only
    /// certificate whose common name is its id, the one place its identity comes from.
    pub fn sign_node_csr(&self, csr_pem: &str, node_id: &str) -> Result<String, PkiError> {
        let mut csr =
            CertificateSigningRequestParams::from_pem(csr_pem).map_err(PkiError::BadCsr)?;
        let mut params = CertificateParams::default();
        let mut dn = DistinguishedName::new();
        dn.push(DnType::CommonName, node_id);
        params.distinguished_name = dn;
        params.subject_alt_names = vec![SanType::DnsName(
            format!("{node_id}.node.drover").try_into()?,
        )];
        params.is_ca = IsCa::ExplicitNoCa;
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        params.serial_number = Some(random_serial());
        set_validity(&mut params, 5);
        csr.params = params;
        Ok(csr.signed_by(&self.issuer)?.pem())
    }
}

/// The DER bytes of the first PEM block.
pub fn pem_to_der(pem: &str) -> Option<Vec<u8>> {
    use rustls::pki_types::{CertificateDer, pem::PemObject};
    CertificateDer::from_pem_slice(pem.as_bytes())
        .ok()
        .map(|c| c.to_vec())
}

/// The node id in a client certificate: its common name.
pub fn node_id_from_cert(der: &[u8]) -> Option<String> {
    let (_, cert) = x509_parser::parse_x509_certificate(der).ok()?;
    let cn = cert.subject().iter_common_name().next()?.as_str().ok()?;
    Some(cn.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn creates_then_reloads_the_same_ca_and_signs_csrs() {
        let dir = tempfile::tempdir().unwrap();
        let (pki, created) = Pki::load_or_create(dir.path(), &["localhost".into()]).unwrap();
        assert!(created);
        let (again, created) = Pki::load_or_create(dir.path(), &[]).unwrap();
        assert!(!created);
        assert_eq!(pki.fingerprint(), again.fingerprint());

        let key = KeyPair::generate().unwrap();
        let csr = CertificateParams::new(vec!["evil".to_string()])
            .unwrap()
            .serialize_request(&key)
            .unwrap()
            .pem()
            .unwrap();
        let cert = pki.sign_node_csr(&csr, "node-123").unwrap();
        let der = pem_to_der(&cert).unwrap();
        assert_eq!(node_id_from_cert(&der).as_deref(), Some("node-123"));
        assert!(pki.sign_node_csr("not a csr", "x").is_err());
    }
}

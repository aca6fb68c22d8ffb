//! The REST API's optional TLS: the server's own certificate (signed by its CA, which `drover login`
//! pins), or a certificate chain and key from files.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};

use crate::pki::Pki;

/// Where the API's TLS certificate comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ApiTls {
    /// The server certificate the CA issued (names: `drover-server`, localhost, loopback, `--agent-san`).
    ServerCa,
    /// A PEM chain (leaf first, ending with the CA that `drover login` should pin) and its PEM key.
    Files { cert: PathBuf, key: PathBuf },
}

#[derive(Debug, thiserror::Error)]
pub enum ApiTlsError {
    #[error("cannot read the API certificate {path}: {message}")]
    File { path: PathBuf, message: String },
    #[error("{0} holds no certificate")]
    NoCertificate(PathBuf),
    #[error("cannot use the API certificate: {0}")]
    Rustls(#[from] rustls::Error),
}

fn file_error(path: &Path, e: impl std::fmt::Display) -> ApiTlsError {
    ApiTlsError::File {
        path: path.to_path_buf(),
        message: e.to_string(),
    }
}

/// The rustls configuration for the API: HTTP/1.1 only, no client certificates (operators use tokens).
pub fn server_config(pki: &Pki, tls: &ApiTls) -> Result<rustls::ServerConfig, ApiTlsError> {
    let (chain, key) = match tls {
        ApiTls::ServerCa => (
            vec![
                CertificateDer::from(pki.server_cert_der.clone()),
                CertificateDer::from(pki.ca_der().to_vec()),
            ],
            PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(pki.server_key_der.clone())),
        ),
        ApiTls::Files { cert, key } => {
            let chain = CertificateDer::pem_file_iter(cert)
                .map_err(|e| file_error(cert, e))?
                .collect::<Result<Vec<_>, _>>()
                .map_err(|e| file_error(cert, e))?;
            if chain.is_empty() {
                return Err(ApiTlsError::NoCertificate(cert.clone()));
            }
            (
                chain,
                PrivateKeyDer::from_pem_file(key).map_err(|e| file_error(key, e))?,
            )
        }
    };
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_no_client_auth()
        .with_single_cert(chain, key)?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(config)
}

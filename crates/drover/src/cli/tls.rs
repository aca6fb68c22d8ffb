//! TLS to the REST API against a pinned CA: how `drover login` reads a server's CA before trusting it, and
//! how every later command verifies the server with it.

use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context as _, bail};
use rustls::RootCertStore;
use rustls::client::WebPkiServerVerifier;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{DigitallySignedStruct, SignatureScheme};
use sha2::{Digest, Sha256};

const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// Lowercase hex SHA-256 of a certificate's DER bytes, as join tokens carry it.
pub fn fingerprint(der: &[u8]) -> String {
    hex::encode(Sha256::digest(der))
}

/// A fingerprint as people paste it (`AB:CD:…`, `sha256:abcd…`, any case) in the form we print, or
/// `None` when it is not 64 hex digits.
pub fn normalize_fingerprint(text: &str) -> Option<String> {
    let text = text.trim();
    let text = text
        .strip_prefix("sha256:")
        .or_else(|| text.strip_prefix("SHA256:"))
        .unwrap_or(text);
    let hex: String = text.chars().filter(|c| *c != ':').collect();
    (hex.len() == 64 && hex.chars().all(|c| c.is_ascii_hexdigit())).then(|| hex.to_lowercase())
}

/// A certificate's PEM form.
pub fn der_to_pem(der: &[u8]) -> String {
    let b64 = drover_types::base64::encode(der);
    let mut pem = String::from("-----BEGIN CERTIFICATE-----\n");
    for line in b64.as_bytes().chunks(64) {
        pem.push_str(&String::from_utf8_lossy(line));
        pem.push('\n');
    }
    pem.push_str("-----END CERTIFICATE-----\n");
    pem
}

/// Reads the last certificate of the chain the server at `host:port` presents (its CA), without trusting
/// it: nothing is sent on this connection but the handshake.
pub async fn fetch_ca(host: &str, port: u16) -> anyhow::Result<Vec<u8>> {
    let config = drover_proto::pinning::chain_reading_config()?;
    let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
    let tcp = tokio::time::timeout(
        CONNECT_TIMEOUT,
        tokio::net::TcpStream::connect((host.trim_matches(['[', ']']), port)),
    )
    .await
    .map_err(|_| anyhow::anyhow!("connecting to {host}:{port} timed out"))?
    .with_context(|| format!("cannot reach {host}:{port}"))?;
    let name = ServerName::try_from(host.trim_matches(['[', ']']).to_string())
        .with_context(|| format!("{host:?} is not a host name or IP address"))?;
    let tls = tokio::time::timeout(CONNECT_TIMEOUT, connector.connect(name, tcp))
        .await
        .map_err(|_| anyhow::anyhow!("the TLS handshake with {host}:{port} timed out"))?
        .with_context(|| {
            format!(
                "TLS handshake with {host}:{port} failed (is the server started with --api-tls?)"
            )
        })?;
    let chain = tls.get_ref().1.peer_certificates().unwrap_or_default();
    match chain {
        [_, .., ca] => Ok(ca.to_vec()),
        _ => bail!(
            "the server at {host}:{port} presented no CA certificate after its own; with --api-cert, the file must hold the whole chain, ending with the CA"
        ),
    }
}

/// A client TLS configuration trusting only `ca_pem`.
pub fn pinned_config(ca_pem: &str) -> anyhow::Result<rustls::ClientConfig> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut roots = RootCertStore::empty();
    for cert in CertificateDer::pem_slice_iter(ca_pem.as_bytes()) {
        roots
            .add(cert.context("the pinned CA is not valid PEM")?)
            .context("the pinned CA is not a usable certificate")?;
    }
    if roots.is_empty() {
        bail!("the context holds no CA certificate; run `drover login` again");
    }
    let inner = WebPkiServerVerifier::builder_with_provider(Arc::new(roots), provider.clone())
        .build()
        .context("cannot use the pinned CA")?;
    let mut config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(PinnedVerifier { inner }))
        .with_no_client_auth();
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(config)
}

/// Accepts a chain to the pinned CA issued for the host the URL names or for `drover-server`, the name
/// every certificate from a drover CA carries (so a server reached by any address needs no new
/// certificate, as for agents). Node certificates from the same CA are client-only and fail here.
#[derive(Debug)]
struct PinnedVerifier {
    inner: Arc<WebPkiServerVerifier>,
}

impl ServerCertVerifier for PinnedVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let verify = |name: &ServerName<'_>| {
            self.inner
                .verify_server_cert(end_entity, intermediates, name, ocsp_response, now)
        };
        verify(server_name).or_else(|first| {
            ServerName::try_from(drover_proto::SERVER_TLS_NAME)
                .map_err(|_| first.clone())
                .and_then(|fixed| verify(&fixed).map_err(|_| first))
        })
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.inner.supported_verify_schemes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fingerprints_are_read_in_the_forms_people_paste() {
        let hex = "ab".repeat(32);
        assert_eq!(normalize_fingerprint(&hex).as_deref(), Some(hex.as_str()));
        let colons = vec!["AB"; 32].join(":");
        assert_eq!(
            normalize_fingerprint(&format!("SHA256:{colons}")).as_deref(),
            Some(hex.as_str())
        );
        assert_eq!(normalize_fingerprint("abcd"), None);
        assert_eq!(normalize_fingerprint(&"zz".repeat(32)), None);
    }

    #[test]
    fn a_pem_round_trips_to_the_same_der() {
        let der: Vec<u8> = (0..200u8).collect();
        let pem = der_to_pem(&der);
        let back = CertificateDer::from_pem_slice(pem.as_bytes()).unwrap();
        assert_eq!(back.as_ref(), der.as_slice());
    }
}

//! The node's identity: its key, the client certificate the server signed, and the pinned CA, all in the
//! state dir. Enrollment trades a join token and a CSR for that certificate, after checking that the
//! server's CA matches the fingerprint the token carries.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use drover_proto::v1::EnrollRequest;
use drover_types::{Labels, PROTOCOL_VERSION, token::JoinToken};
use rustls::pki_types::ServerName;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity as TlsIdentity};

const KEY_FILE: &str = "node.key";
const CERT_FILE: &str = "node.crt";
const CA_FILE: &str = "ca.crt";
const NODE_FILE: &str = "node.json";
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Debug, thiserror::Error)]
pub enum IdentityError {
    #[error("cannot read or write {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path} is corrupt: {message}; remove the state dir and enroll again")]
    Corrupt { path: PathBuf, message: String },
    #[error(
        "this node is not enrolled yet: start it once with --token (from `drover token create`) and --server"
    )]
    NotEnrolled,
    #[error("--server is required to enroll (for example https://cp.example.com:9090)")]
    NoServer,
    #[error("server URL {0:?} is invalid: {1}")]
    BadUrl(String, String),
    #[error(transparent)]
    Token(#[from] drover_types::token::TokenFormatError),
    #[error(
        "the server at {url} presents CA fingerprint {found}, but the join token pins {expected}: \
         this is not the server that made the token (wrong address, or someone in between)"
    )]
    FingerprintMismatch {
        url: String,
        found: String,
        expected: String,
    },
    #[error("cannot reach the server at {url}: {message}")]
    Unreachable { url: String, message: String },
    #[error("the server refused the enrollment: {0}")]
    Refused(String),
    #[error("cannot make a key or certificate request: {0}")]
    Crypto(#[from] rcgen::Error),
}

/// What the agent remembers about its enrollment.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct NodeInfo {
    pub node_id: String,
    pub name: String,
    pub server: String,
}

/// An enrolled node's credentials.
pub struct Identity {
    pub info: NodeInfo,
    pub key_pem: String,
    pub cert_pem: String,
    pub ca_pem: String,
}

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> IdentityError + '_ {
    move |source| IdentityError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// Accepts `host:port`, `https://host:port`; refuses plain http (the agent link is always TLS).
pub fn normalize_url(url: &str) -> Result<String, IdentityError> {
    let url = url.trim();
    if url.starts_with("http://") {
        return Err(IdentityError::BadUrl(
            url.into(),
            "the agent link is always TLS: use https:// and the agent port (default 9090)".into(),
        ));
    }
    let authority = url
        .strip_prefix("https://")
        .unwrap_or(url)
        .trim_end_matches('/');
    if authority.is_empty() || authority.contains('/') || authority.contains("://") {
        return Err(IdentityError::BadUrl(
            url.into(),
            "expected https://HOST:PORT".into(),
        ));
    }
    let has_port = authority.rsplit_once(':').is_some_and(|(host, p)| {
        !host.is_empty() && !host.ends_with(':') && p.parse::<u16>().is_ok()
    });
    if has_port {
        Ok(format!("https://{authority}"))
    } else {
        Ok(format!("https://{authority}:9090"))
    }
}

impl Identity {
    /// Loads the identity from the state dir; `None` when the node has not enrolled.
    pub fn load(dir: &Path) -> Result<Option<Self>, IdentityError> {
        let node_path = dir.join(NODE_FILE);
        if !node_path.exists() {
            return Ok(None);
        }
        let read = |name: &str| {
            let p = dir.join(name);
            std::fs::read_to_string(&p).map_err(io_err(&p))
        };
        let info: NodeInfo =
            serde_json::from_str(&read(NODE_FILE)?).map_err(|e| IdentityError::Corrupt {
                path: node_path.clone(),
                message: e.to_string(),
            })?;
        Ok(Some(Self {
            info,
            key_pem: read(KEY_FILE)?,
            cert_pem: read(CERT_FILE)?,
            ca_pem: read(CA_FILE)?,
        }))
    }

    fn save(&self, dir: &Path) -> Result<(), IdentityError> {
        drover_files::create_private_dir(dir).map_err(io_err(dir))?;
        let write = |name: &str, text: &str, private: bool| {
            let p = dir.join(name);
            drover_files::write_atomic(&p, text.as_bytes(), private).map_err(io_err(&p))
        };
        write(KEY_FILE, &self.key_pem, true)?;
        write(CERT_FILE, &self.cert_pem, false)?;
        write(CA_FILE, &self.ca_pem, false)?;
        // node.json last: its presence means the enrollment is complete.
        let info = serde_json::to_string_pretty(&self.info).unwrap_or_default();
        write(NODE_FILE, &info, false)
    }

    /// A TLS endpoint to the server that verifies it against the pinned CA and presents our certificate.
    pub fn endpoint(&self, server: &str) -> Result<Endpoint, IdentityError> {
        let tls = ClientTlsConfig::new()
            .ca_certificate(Certificate::from_pem(&self.ca_pem))
            .identity(TlsIdentity::from_pem(&self.cert_pem, &self.key_pem))
            .domain_name(drover_proto::SERVER_TLS_NAME);
        endpoint(server, tls)
    }
}

impl Identity {
    /// Connects with this node's certificate and waits briefly for the server's first word. A server that
    /// refuses the certificate answers with a TLS alert, returned here; `None` means it did not refuse.
    pub async fn probe_refusal(&self, server: &str) -> Option<std::io::Error> {
        use rustls::pki_types::{CertificateDer, PrivateKeyDer, pem::PemObject};
        use tokio::io::AsyncReadExt;
        let mut roots = rustls::RootCertStore::empty();
        for ca in CertificateDer::pem_slice_iter(self.ca_pem.as_bytes()).flatten() {
            roots.add(ca).ok()?;
        }
        let chain: Vec<CertificateDer<'static>> =
            CertificateDer::pem_slice_iter(self.cert_pem.as_bytes())
                .flatten()
                .collect();
        let key = PrivateKeyDer::from_pem_slice(self.key_pem.as_bytes()).ok()?;
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut config = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .ok()?
            .with_root_certificates(roots)
            .with_client_auth_cert(chain, key)
            .ok()?;
        config.alpn_protocols = vec![b"h2".to_vec()];
        let authority = server.strip_prefix("https://").unwrap_or(server);
        let tcp = tokio::time::timeout(CONNECT_TIMEOUT, tokio::net::TcpStream::connect(authority))
            .await
            .ok()?
            .ok()?;
        let name = ServerName::try_from(drover_proto::SERVER_TLS_NAME).ok()?;
        let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
        let mut tls =
            match tokio::time::timeout(CONNECT_TIMEOUT, connector.connect(name, tcp)).await {
                Ok(Ok(tls)) => tls,
                Ok(Err(e)) => return e.to_string().contains("alert").then_some(e),
                Err(_) => return None,
            };
        // An accepted client waits for our HTTP/2 preface and says nothing; a refused one gets an alert.
        let mut byte = [0u8; 1];
        match tokio::time::timeout(Duration::from_secs(3), tls.read(&mut byte)).await {
            Ok(Err(e)) if e.to_string().contains("alert") => Some(e),
            _ => None,
        }
    }
}

fn endpoint(url: &str, tls: ClientTlsConfig) -> Result<Endpoint, IdentityError> {
    Channel::from_shared(url.to_string())
        .map_err(|e| IdentityError::BadUrl(url.into(), e.to_string()))?
        .tls_config(tls)
        .map_err(|e| IdentityError::BadUrl(url.into(), e.to_string()))
        .map(|e| {
            e.connect_timeout(CONNECT_TIMEOUT)
                // The server sends nothing to an idle agent, so these pings are what the server answers at idle:
                // every 30 s notices a silently vanished server within 50 s (a restarted one closes the
                // connection, which is noticed at once).
                .http2_keep_alive_interval(Duration::from_secs(30))
                .keep_alive_timeout(Duration::from_secs(20))
                .keep_alive_while_idle(true)
                // HTTP/2's default 64 KiB window would hold bulk output (and blobs) to a trickle.
                .initial_stream_window_size(Some(drover_types::STREAM_WINDOW))
                .initial_connection_window_size(Some(drover_types::STREAM_WINDOW * 2))
        })
}

/// Enrolls this node: pins the CA by the token's fingerprint, sends a CSR with the token, keeps the result.
pub async fn enroll(
    dir: &Path,
    server: &str,
    token: &str,
    name: &str,
    labels: &Labels,
) -> Result<Identity, IdentityError> {
    let token = JoinToken::parse(token, true)?;
    let ca_der = fetch_ca(server).await?;
    let found = hex::encode(Sha256::digest(&ca_der));
    if found != token.ca_fingerprint {
        return Err(IdentityError::FingerprintMismatch {
            url: server.into(),
            found,
            expected: token.ca_fingerprint,
        });
    }
    let ca_pem = pem::encode(&pem::Pem::new("CERTIFICATE", ca_der));
    let tls = ClientTlsConfig::new()
        .ca_certificate(Certificate::from_pem(&ca_pem))
        .domain_name(drover_proto::SERVER_TLS_NAME);
    let channel =
        endpoint(server, tls)?
            .connect()
            .await
            .map_err(|e| IdentityError::Unreachable {
                url: server.into(),
                message: crate::transport_error::describe_transport_error(&e),
            })?;

    let key = rcgen::KeyPair::generate()?;
    let csr = rcgen::CertificateParams::default()
        .serialize_request(&key)?
        .pem()?;
    let response = drover_proto::AgentLinkClient::new(channel)
        .enroll(EnrollRequest {
            protocol_version: PROTOCOL_VERSION,
            token: token.credential(),
            csr_pem: csr,
            name: name.to_string(),
            labels: labels.clone().into_iter().collect(),
        })
        .await
        .map_err(|status| match status.code() {
            // What the server says about this request itself is final.
            tonic::Code::Unauthenticated
            | tonic::Code::PermissionDenied
            | tonic::Code::InvalidArgument
            | tonic::Code::FailedPrecondition
            | tonic::Code::AlreadyExists
            | tonic::Code::Unimplemented => IdentityError::Refused(status.message().to_string()),
            // Busy (too many enrollments at once), gone mid-call, or a broken connection (which a busy
            // server's kernel causes too): try again later.
            _ => IdentityError::Unreachable {
                url: server.into(),
                message: status.message().to_string(),
            },
        })?
        .into_inner();
    let identity = Identity {
        info: NodeInfo {
            node_id: response.node_id,
            name: response.name,
            server: server.to_string(),
        },
        key_pem: key.serialize_pem(),
        cert_pem: response.cert_pem,
        ca_pem,
    };
    identity.save(dir)?;
    Ok(identity)
}

/// Reads the CA certificate the server sends at the end of its chain. Nothing secret is sent on this
/// connection; what it returns is trusted only after its fingerprint matches the join token.
async fn fetch_ca(server: &str) -> Result<Vec<u8>, IdentityError> {
    let unreachable = |message: String| IdentityError::Unreachable {
        url: server.into(),
        message,
    };
    let authority = &server["https://".len()..];
    let config =
        drover_proto::pinning::chain_reading_config().map_err(|e| unreachable(e.to_string()))?;
    let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
    let tcp = tokio::time::timeout(CONNECT_TIMEOUT, tokio::net::TcpStream::connect(authority))
        .await
        .map_err(|_| unreachable("timed out".into()))?
        .map_err(|e| unreachable(e.to_string()))?;
    let name = ServerName::try_from(drover_proto::SERVER_TLS_NAME)
        .map_err(|e| unreachable(e.to_string()))?;
    let tls = tokio::time::timeout(CONNECT_TIMEOUT, connector.connect(name, tcp))
        .await
        .map_err(|_| unreachable("TLS handshake timed out".into()))?
        .map_err(|e| {
            unreachable(format!(
                "TLS handshake failed: {}",
                crate::transport_error::describe_transport_error(&e)
            ))
        })?;
    let chain = tls.get_ref().1.peer_certificates().unwrap_or_default();
    chain
        .last()
        .filter(|_| chain.len() >= 2)
        .map(|c| c.to_vec())
        .ok_or_else(|| unreachable("the server did not present a CA certificate: is this a drover server's agent port?".into()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_get_a_scheme_and_port() {
        assert_eq!(normalize_url("cp:9090").unwrap(), "https://cp:9090");
        assert_eq!(normalize_url("https://cp").unwrap(), "https://cp:9090");
        assert_eq!(
            normalize_url("https://127.0.0.1:7000/").unwrap(),
            "https://127.0.0.1:7000"
        );
        assert!(normalize_url("http://cp:9090").is_err());
        assert!(normalize_url("https://").is_err());
    }
}

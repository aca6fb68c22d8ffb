//! The agent port's TLS: every connection is TLS; a client certificate is optional at the handshake (so
//! `Enroll` works without one) but when presented it must chain to our CA. The node id is read from the
//! verified certificate here, once, and travels with the connection.

use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use rustls::RootCertStore;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use rustls::server::WebPkiClientVerifier;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio_rustls::TlsAcceptor;
use tokio_rustls::server::TlsStream;
use tonic::transport::server::Connected;

use crate::metrics::ServerMetrics;
use crate::pki::{Pki, node_id_from_cert};

/// A connection has this long for its TLS handshake, then as long again for the HTTP/2 preface: one that
/// has not proven itself by then is closed. Afterwards HTTP/2 keepalive pings watch it (see `server.rs`).
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// The client's HTTP/2 connection preface (RFC 9113, 3.4).
const PREFACE_BYTES: usize = 24;

/// Who is on the other end of a connection, as proven by TLS.
#[derive(Debug, Clone)]
pub struct Peer {
    pub addr: Option<SocketAddr>,
    /// Present when the client showed a certificate signed by our CA.
    pub node_id: Option<String>,
}

/// A TLS connection from an agent, carrying its proven identity into every request's extensions.
pub struct AgentConn {
    inner: TlsStream<TcpStream>,
    peer: Peer,
    /// Until the preface has arrived: when it must have, how many of its bytes are still to come, and
    /// where a late one is counted.
    preface: Option<(Pin<Box<tokio::time::Sleep>>, usize, Arc<ServerMetrics>)>,
}

impl Connected for AgentConn {
    type ConnectInfo = Peer;
    fn connect_info(&self) -> Peer {
        self.peer.clone()
    }
}

impl AsyncRead for AgentConn {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let this = &mut *self;
        let before = buf.filled().len();
        let polled = Pin::new(&mut this.inner).poll_read(cx, buf);
        if let Some((deadline, left, metrics)) = this.preface.as_mut() {
            match &polled {
                Poll::Ready(Ok(())) => {
                    *left = left.saturating_sub(buf.filled().len() - before);
                    if *left == 0 {
                        this.preface = None;
                    }
                }
                Poll::Pending if deadline.as_mut().poll(cx).is_ready() => {
                    metrics.agent_connection("preface_timeout");
                    return Poll::Ready(Err(std::io::Error::new(
                        std::io::ErrorKind::TimedOut,
                        "no HTTP/2 preface within the deadline",
                    )));
                }
                _ => {}
            }
        }
        polled
    }
}

impl AsyncWrite for AgentConn {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

pub fn server_config(pki: &Pki) -> Result<rustls::ServerConfig, rustls::Error> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut roots = RootCertStore::empty();
    roots.add(CertificateDer::from(pki.ca_der().to_vec()))?;
    let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider.clone())
        .allow_unauthenticated()
        .build()
        .map_err(|e| rustls::Error::General(e.to_string()))?;
    let chain = vec![
        CertificateDer::from(pki.server_cert_der.clone()),
        CertificateDer::from(pki.ca_der().to_vec()),
    ];
    let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(pki.server_key_der.clone()));
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_client_cert_verifier(verifier)
        .with_single_cert(chain, key)?;
    config.alpn_protocols = vec![b"h2".to_vec()];
    Ok(config)
}

/// Explains a failed handshake in words an operator can act on.
fn describe_handshake_error(e: &std::io::Error) -> String {
    let text = e.to_string();
    if text.contains("peer certificate")
        || text.contains("UnknownIssuer")
        || text.contains("BadSignature")
    {
        format!(
            "refused a client certificate not issued by this server's CA ({text}); the node must enroll again with a join token"
        )
    } else {
        format!("TLS handshake failed: {text}")
    }
}

/// Accepts TCP connections and hands finished TLS connections to tonic. Handshakes run concurrently so
/// a slow or hostile client never blocks others.
pub fn incoming(
    listener: TcpListener,
    config: rustls::ServerConfig,
    metrics: Arc<ServerMetrics>,
) -> tokio_stream::wrappers::ReceiverStream<Result<AgentConn, std::io::Error>> {
    let acceptor = TlsAcceptor::from(Arc::new(config));
    let (tx, rx) = mpsc::channel(64);
    tokio::spawn(async move {
        loop {
            let (tcp, addr) = tokio::select! {
                accepted = listener.accept() => match accepted {
                    Ok(pair) => pair,
                    Err(e) => {
                        tracing::warn!("cannot accept an agent connection: {e}");
                        tokio::time::sleep(Duration::from_millis(100)).await;
                        continue;
                    }
                },
                _ = tx.closed() => return,
            };
            let (acceptor, tx, metrics) = (acceptor.clone(), tx.clone(), metrics.clone());
            tokio::spawn(async move {
                let _ = tcp.set_nodelay(true);
                let began = std::time::Instant::now();
                let tls = match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await
                {
                    Ok(Ok(tls)) => tls,
                    Ok(Err(e)) => {
                        metrics.agent_connection("handshake_failed");
                        tracing::warn!(peer = %addr, "{}", describe_handshake_error(&e));
                        return;
                    }
                    Err(_) => {
                        metrics.agent_connection("handshake_timeout");
                        tracing::debug!(peer = %addr, "TLS handshake timed out");
                        return;
                    }
                };
                metrics.agent_connect("handshake", began.elapsed());
                let node_id = tls
                    .get_ref()
                    .1
                    .peer_certificates()
                    .and_then(|chain| chain.first())
                    .and_then(|leaf| node_id_from_cert(leaf));
                let conn = AgentConn {
                    inner: tls,
                    peer: Peer {
                        addr: Some(addr),
                        node_id,
                    },
                    preface: Some((
                        Box::pin(tokio::time::sleep(HANDSHAKE_TIMEOUT)),
                        PREFACE_BYTES,
                        metrics,
                    )),
                };
                let _ = tx.send(Ok(conn)).await;
            });
        }
    });
    tokio_stream::wrappers::ReceiverStream::new(rx)
}

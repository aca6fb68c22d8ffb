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
use tokio::sync::{Semaphore, mpsc};
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
/// TLS handshakes in progress at once; more accepted connections wait their turn, in order. Without a
/// bound, a whole fleet reconnecting at once shares the server's cores between thousands of handshakes, none
/// finishes within `HANDSHAKE_TIMEOUT`, and every agent pays a failure and a longer backoff; with one, they
/// finish in turn, each in milliseconds. Waiting happens accepted, not in the kernel's queue: one that
/// overflows drops connects, which agents give up on after 10 s.
pub const HANDSHAKES_AT_ONCE: usize = 256;
/// How long an accepted connection may wait for its handshake's turn before it is closed.
pub const HANDSHAKE_QUEUE_TIMEOUT: Duration = Duration::from_secs(30);

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

/// Accepts TCP connections and hands finished TLS connections to tonic. Up to `HANDSHAKES_AT_ONCE`
/// handshakes run concurrently, each in its own task and under its own deadline, so a slow client holds up
/// no other's beyond its slot.
pub fn incoming(
    listener: TcpListener,
    config: rustls::ServerConfig,
    metrics: Arc<ServerMetrics>,
) -> tokio_stream::wrappers::ReceiverStream<Result<AgentConn, std::io::Error>> {
    incoming_bounded(listener, config, metrics, HANDSHAKES_AT_ONCE)
}

fn incoming_bounded(
    listener: TcpListener,
    config: rustls::ServerConfig,
    metrics: Arc<ServerMetrics>,
    at_once: usize,
) -> tokio_stream::wrappers::ReceiverStream<Result<AgentConn, std::io::Error>> {
    let acceptor = TlsAcceptor::from(Arc::new(config));
    let (tx, rx) = mpsc::channel(64);
    let handshakes = Arc::new(Semaphore::new(at_once));
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
            let handshakes = handshakes.clone();
            tokio::spawn(async move {
                let _ = tcp.set_nodelay(true);
                let began = std::time::Instant::now();
                let slot =
                    match tokio::time::timeout(HANDSHAKE_QUEUE_TIMEOUT, handshakes.acquire_owned())
                        .await
                    {
                        Ok(Ok(slot)) => slot,
                        Ok(Err(_)) => return,
                        Err(_) => {
                            metrics.agent_connection("handshake_timeout");
                            tracing::debug!(peer = %addr, "no TLS handshake slot in time");
                            return;
                        }
                    };
                let handshake = tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await;
                drop(slot);
                let tls = match handshake {
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

#[cfg(test)]
mod tests {
    use super::*;
    use rustls::pki_types::ServerName;
    use tokio_stream::StreamExt;

    #[tokio::test]
    async fn a_handshake_past_the_bound_waits_for_a_slot_and_then_finishes() {
        let dir = tempfile::tempdir().unwrap();
        let (pki, _) = Pki::load_or_create(dir.path(), &["localhost".into()]).unwrap();
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let metrics = Arc::new(ServerMetrics::new(false));
        let mut conns = incoming_bounded(listener, server_config(&pki).unwrap(), metrics, 1);

        // A client that connects and says nothing holds the only slot.
        let silent = TcpStream::connect(addr).await.unwrap();
        let mut roots = RootCertStore::empty();
        roots
            .add(CertificateDer::from(pki.ca_der().to_vec()))
            .unwrap();
        let client = rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
        let connector = tokio_rustls::TlsConnector::from(Arc::new(client));
        let mut second = tokio::spawn(async move {
            let tcp = TcpStream::connect(addr).await?;
            let name = ServerName::try_from("localhost").unwrap();
            connector.connect(name, tcp).await
        });
        assert!(
            tokio::time::timeout(Duration::from_millis(500), &mut second)
                .await
                .is_err(),
            "a handshake finished while the only slot was taken"
        );

        // The silent client leaves: its handshake fails, the slot frees, and the waiting one goes through.
        drop(silent);
        let done = tokio::time::timeout(Duration::from_secs(10), second)
            .await
            .expect("the waiting handshake finishes once the slot is free");
        done.unwrap().expect("the handshake succeeds");
        let conn = tokio::time::timeout(Duration::from_secs(10), conns.next())
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        assert!(
            conn.peer.node_id.is_none(),
            "no client certificate, no node"
        );
    }
}

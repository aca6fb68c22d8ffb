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
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc};
use tokio_rustls::TlsAcceptor;
use tokio_rustls::server::TlsStream;
use tokio_util::sync::PollSemaphore;
use tonic::transport::server::Connected;

use crate::metrics::ServerMetrics;
use crate::pki::{Pki, node_id_from_cert};

/// A connection has this long to start its TLS handshake (its first bytes), and as long again for the
/// HTTP/2 preface once TLS is up: one that has not proven itself by then is closed. Afterwards HTTP/2
/// keepalive pings watch it (see `server.rs`).
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// The client's HTTP/2 connection preface (RFC 9113, 3.4).
const PREFACE_BYTES: usize = 24;
/// TLS handshakes the server works on at once. A slot is held only while the server has bytes of the
/// handshake to process (its CPU work), never while it waits for the peer: a connection that sends
/// nothing, or stalls halfway, holds no slot, so idle sockets cannot keep real agents from their turn.
/// Without a bound, a whole fleet reconnecting at once shares the server's cores between thousands of
/// handshakes and none finishes in time; with one, they finish in turn, each in milliseconds. Waiting
/// happens accepted, not in the kernel's queue: one that overflows drops connects, which agents give up
/// on after 10 s.
pub const HANDSHAKES_AT_ONCE: usize = 256;
/// How long a handshake may take in all, its waits for a slot included, once its first bytes arrived.
pub const HANDSHAKE_QUEUE_TIMEOUT: Duration = Duration::from_secs(30);
/// How long a connection without a client certificate stays open: long enough for an `Enroll` (one small
/// request) from the slowest device, short enough that no one holds the server's memory without a
/// certificate for long.
pub const UNPROVEN_CONNECTION_LIFETIME: Duration = Duration::from_secs(60);

/// Who is on the other end of a connection, as proven by TLS.
#[derive(Debug, Clone)]
pub struct Peer {
    pub addr: Option<SocketAddr>,
    /// Present when the client showed a certificate signed by our CA.
    pub node_id: Option<String>,
}

/// A TLS connection from an agent, carrying its proven identity into every request's extensions.
pub struct AgentConn {
    inner: TlsStream<Gated>,
    peer: Peer,
    /// Until the preface has arrived: when it must have, how many of its bytes are still to come, and
    /// where a late one is counted.
    preface: Option<(Pin<Box<tokio::time::Sleep>>, usize, Arc<ServerMetrics>)>,
    /// When a connection without a client certificate is closed (`UNPROVEN_CONNECTION_LIFETIME`).
    unproven_until: Option<Pin<Box<tokio::time::Sleep>>>,
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
        if polled.is_pending()
            && let Some(until) = this.unproven_until.as_mut()
            && until.as_mut().poll(cx).is_ready()
        {
            return Poll::Ready(Err(std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                "a connection without a client certificate reached its lifetime",
            )));
        }
        polled
    }
}

/// A TCP connection during its TLS handshake: it takes a handshake slot when the peer's bytes are there to
/// be processed and gives it back as soon as a read has to wait for the peer again.
pub struct Gated {
    tcp: TcpStream,
    gate: Option<Gate>,
}

struct Gate {
    slots: PollSemaphore,
    held: Option<OwnedSemaphorePermit>,
}

impl Gated {
    fn new(tcp: TcpStream, slots: Arc<Semaphore>) -> Self {
        Self {
            tcp,
            gate: Some(Gate {
                slots: PollSemaphore::new(slots),
                held: None,
            }),
        }
    }

    /// After the handshake: no slot, and nothing left of the gate on the connection.
    fn open(&mut self) {
        self.gate = None;
    }
}

impl AsyncRead for Gated {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let this = &mut *self;
        let Some(gate) = this.gate.as_mut() else {
            return Pin::new(&mut this.tcp).poll_read(cx, buf);
        };
        if gate.held.is_none() {
            // Wait for the peer first, then for a slot: a silent peer never queues for one.
            std::task::ready!(this.tcp.poll_read_ready(cx))?;
            match std::task::ready!(gate.slots.poll_acquire(cx)) {
                Some(slot) => gate.held = Some(slot),
                None => {
                    return Poll::Ready(Err(std::io::Error::other("the server is shutting down")));
                }
            }
        }
        let polled = Pin::new(&mut this.tcp).poll_read(cx, buf);
        if polled.is_pending() {
            gate.held = None;
        }
        polled
    }
}

impl AsyncWrite for Gated {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.tcp).poll_write(cx, buf)
    }
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.tcp).poll_flush(cx)
    }
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.tcp).poll_shutdown(cx)
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

/// Accepts TCP connections and hands finished TLS connections to tonic. Every connection's handshake runs
/// in its own task under its own deadlines; at most `HANDSHAKES_AT_ONCE` are being worked on at once (see
/// `Gated`).
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
    let slots = Arc::new(Semaphore::new(at_once));
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
            let (acceptor, tx, metrics, slots) =
                (acceptor.clone(), tx.clone(), metrics.clone(), slots.clone());
            tokio::spawn(async move {
                if let Some(conn) = handshake(tcp, addr, acceptor, slots, metrics).await {
                    let _ = tx.send(Ok(conn)).await;
                }
            });
        }
    });
    tokio_stream::wrappers::ReceiverStream::new(rx)
}

/// One connection's TLS handshake, or `None` when it failed or ran out of time (counted and logged).
async fn handshake(
    tcp: TcpStream,
    addr: SocketAddr,
    acceptor: TlsAcceptor,
    slots: Arc<Semaphore>,
    metrics: Arc<ServerMetrics>,
) -> Option<AgentConn> {
    let _ = tcp.set_nodelay(true);
    let began = std::time::Instant::now();
    // A peer that says nothing is closed after `HANDSHAKE_TIMEOUT`, having held no slot. A peek, not
    // `readable()`, which may report a fresh socket ready before anything has arrived.
    match tokio::time::timeout(HANDSHAKE_TIMEOUT, tcp.peek(&mut [0u8; 1])).await {
        Ok(Ok(n)) if n > 0 => {}
        Ok(_) => return None,
        Err(_) => {
            metrics.agent_connection("silent_timeout");
            tracing::debug!(peer = %addr, "no TLS handshake began in time");
            return None;
        }
    }
    let handshake = tokio::time::timeout(
        HANDSHAKE_TIMEOUT + HANDSHAKE_QUEUE_TIMEOUT,
        acceptor.accept(Gated::new(tcp, slots)),
    )
    .await;
    let mut tls = match handshake {
        Ok(Ok(tls)) => tls,
        Ok(Err(e)) => {
            metrics.agent_connection("handshake_failed");
            tracing::warn!(peer = %addr, "{}", describe_handshake_error(&e));
            return None;
        }
        Err(_) => {
            metrics.agent_connection("handshake_timeout");
            tracing::debug!(peer = %addr, "TLS handshake timed out");
            return None;
        }
    };
    tls.get_mut().0.open();
    metrics.agent_connect("handshake", began.elapsed());
    let node_id = tls
        .get_ref()
        .1
        .peer_certificates()
        .and_then(|chain| chain.first())
        .and_then(|leaf| node_id_from_cert(leaf));
    let unproven_until = node_id
        .is_none()
        .then(|| Box::pin(tokio::time::sleep(UNPROVEN_CONNECTION_LIFETIME)));
    Some(AgentConn {
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
        unproven_until,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use rustls::pki_types::ServerName;
    use tokio_stream::StreamExt;

    fn client_config(pki: &Pki) -> rustls::ClientConfig {
        let mut roots = RootCertStore::empty();
        roots
            .add(CertificateDer::from(pki.ca_der().to_vec()))
            .unwrap();
        rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth()
    }

    #[tokio::test]
    async fn peers_that_stall_hold_no_handshake_slot() {
        let dir = tempfile::tempdir().unwrap();
        let (pki, _) = Pki::load_or_create(dir.path(), &["localhost".into()]).unwrap();
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let metrics = Arc::new(ServerMetrics::new(false));
        // One slot only: any peer holding it would stall everyone else.
        let mut conns = incoming_bounded(listener, server_config(&pki).unwrap(), metrics, 1);

        // One says nothing; another starts a TLS record and stops halfway; a third sends a whole
        // ClientHello and never answers the server's reply.
        let _silent = TcpStream::connect(addr).await.unwrap();
        let mut partial = TcpStream::connect(addr).await.unwrap();
        tokio::io::AsyncWriteExt::write_all(&mut partial, &[0x16, 0x03, 0x01, 0x02, 0x00, 0x01])
            .await
            .unwrap();
        let stalled = {
            let hello = capture_client_hello(&pki).await;
            let mut tcp = TcpStream::connect(addr).await.unwrap();
            tokio::io::AsyncWriteExt::write_all(&mut tcp, &hello)
                .await
                .unwrap();
            tcp
        };

        let connector = tokio_rustls::TlsConnector::from(Arc::new(client_config(&pki)));
        let tcp = TcpStream::connect(addr).await.unwrap();
        let name = ServerName::try_from("localhost").unwrap();
        tokio::time::timeout(Duration::from_secs(5), connector.connect(name, tcp))
            .await
            .expect("a real handshake finishes while the others stall")
            .expect("the handshake succeeds");
        let conn = tokio::time::timeout(Duration::from_secs(5), conns.next())
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        assert!(
            conn.peer.node_id.is_none(),
            "no client certificate, no node"
        );
        drop((partial, stalled));
    }

    /// A real client's first flight, as bytes, to replay without going on.
    async fn capture_client_hello(pki: &Pki) -> Vec<u8> {
        let (mut near, far) = tokio::io::duplex(64 * 1024);
        let connector = tokio_rustls::TlsConnector::from(Arc::new(client_config(pki)));
        let name = ServerName::try_from("localhost").unwrap();
        let client = tokio::spawn(async move { connector.connect(name, far).await });
        let mut buf = vec![0u8; 64 * 1024];
        let n = tokio::io::AsyncReadExt::read(&mut near, &mut buf)
            .await
            .unwrap();
        client.abort();
        buf.truncate(n);
        buf
    }
}

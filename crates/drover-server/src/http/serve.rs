//! Serving the REST API over HTTP/1, in the clear or over TLS, with deadlines before a connection proves
//! itself: the TLS handshake must end within `HANDSHAKE_DEADLINE`, and a whole request head must arrive
//! within `HEADER_DEADLINE` (from when the connection is ready, or since its last response), or the
//! connection is closed. Only those are timed: a slow body is bounded by its size limit, and a long
//! response (an SSE follower) is never cut.

use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio_rustls::TlsAcceptor;

/// How long a client has to send a request's headers.
pub const HEADER_DEADLINE: Duration = Duration::from_secs(10);
/// How long a client has to finish the TLS handshake (with `--api-tls`).
pub const HANDSHAKE_DEADLINE: Duration = Duration::from_secs(10);

/// Serves `router` (over TLS when `tls` is given) until `shutdown` changes, then lets open requests finish
/// (connections close after their current response) and returns when every connection has.
pub async fn serve(
    listener: TcpListener,
    router: Router,
    tls: Option<rustls::ServerConfig>,
    mut shutdown: watch::Receiver<bool>,
) -> std::io::Result<()> {
    let acceptor = tls.map(|c| TlsAcceptor::from(Arc::new(c)));
    // Every connection holds a receiver; the sender sees them all gone once the last one closed.
    let (all_closed, open) = watch::channel(());
    loop {
        let (tcp, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(pair) => pair,
                Err(e) => {
                    tracing::warn!("cannot accept an API connection: {e}");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
            _ = shutdown.changed() => break,
        };
        // Without TCP_NODELAY an event written while the previous one is unacknowledged waits for the
        // client's delayed ACK (40 ms on Linux): every streamed task output would be that late.
        let _ = tcp.set_nodelay(true);
        let (router, shutdown, open, acceptor) = (
            router.clone(),
            shutdown.clone(),
            open.clone(),
            acceptor.clone(),
        );
        // The handshake runs in the connection's own task, so a slow client never holds up accepting.
        tokio::spawn(async move {
            match acceptor {
                None => serve_connection(tcp, router, shutdown).await,
                Some(acceptor) => {
                    match tokio::time::timeout(HANDSHAKE_DEADLINE, acceptor.accept(tcp)).await {
                        Ok(Ok(tls)) => serve_connection(tls, router, shutdown).await,
                        Ok(Err(e)) => tracing::debug!(%peer, "API TLS handshake failed: {e}"),
                        Err(_) => tracing::debug!(%peer, "API TLS handshake timed out"),
                    }
                }
            }
            drop(open);
        });
    }
    drop(open);
    all_closed.closed().await;
    Ok(())
}

async fn serve_connection<I>(io: I, router: Router, mut shutdown: watch::Receiver<bool>)
where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let service = TowerToHyperService::new(router);
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(HEADER_DEADLINE);
    let conn = builder.serve_connection(TokioIo::new(io), service);
    tokio::pin!(conn);
    let result = tokio::select! {
        r = conn.as_mut() => r,
        _ = shutdown.changed() => {
            conn.as_mut().graceful_shutdown();
            conn.await
        }
    };
    if let Err(e) = result {
        tracing::debug!("API connection closed: {e}");
    }
}

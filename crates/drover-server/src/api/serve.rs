//! Serving the REST API over HTTP/1 with a deadline on request headers: a connection that does not send a
//! whole request head within `HEADER_DEADLINE` (from when it opens, or since its last response) is closed.
//! Only reading a head is timed: a slow body is bounded by its size limit, and a long response (an SSE
//! follower) is never cut.

use std::time::Duration;

use axum::Router;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use tokio::net::TcpListener;
use tokio::sync::watch;

/// How long a client has to send a request's headers.
pub const HEADER_DEADLINE: Duration = Duration::from_secs(10);

/// Serves `router` until `shutdown` changes, then lets open requests finish (connections close after
/// their current response) and returns when every connection has.
pub async fn serve(
    listener: TcpListener,
    router: Router,
    mut shutdown: watch::Receiver<bool>,
) -> std::io::Result<()> {
    // Every connection holds a receiver; the sender sees them all gone once the last one closed.
    let (all_closed, open) = watch::channel(());
    loop {
        let tcp = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((tcp, _)) => tcp,
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
        let service = TowerToHyperService::new(router.clone());
        let (mut shutdown, open) = (shutdown.clone(), open.clone());
        tokio::spawn(async move {
            let mut builder = hyper::server::conn::http1::Builder::new();
            builder
                .timer(TokioTimer::new())
                .header_read_timeout(HEADER_DEADLINE);
            let conn = builder.serve_connection(TokioIo::new(tcp), service);
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
            drop(open);
        });
    }
    drop(open);
    all_closed.closed().await;
    Ok(())
}

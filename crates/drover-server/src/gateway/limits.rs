//! What a caller that has not proven itself can make the server hold. Only `Enroll` is served without a
//! client certificate: any other request from such a caller is refused before its body is read. An
//! enrollment's body (a token, a name, labels and a CSR: a few KiB) is read whole, up to
//! `UNPROVEN_MAX_BYTES`, within `UNPROVEN_BODY_TIMEOUT`, in a waiting room of `UNPROVEN_WAITING` places;
//! when the room is full the request that has waited longest leaves it. A real agent sends its enrollment
//! in one go and waits milliseconds, so streams that promise a body and stall are the ones that leave, and
//! no number of them keeps an agent from enrolling. Then at most `UNPROVEN_AT_ONCE` enrollments are worked
//! on at once. Everything else keeps the service's own limit (`MAX_MESSAGE`: blobs travel whole).

use std::collections::VecDeque;
use std::convert::Infallible;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use http_body_util::{BodyExt, Full, Limited};
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tonic::Status;
use tonic::body::Body;
use tonic::codegen::http::{Request, Response};
use tonic::codegen::{BoxFuture, Service};
use tonic::server::NamedService;

use super::tls::Peer;
use crate::metrics::ServerMetrics;
use crate::sync::lock;

/// The most bytes an unproven request's body may carry.
pub const UNPROVEN_MAX_BYTES: usize = 64 * 1024;
/// How long an enrollment's body may take to arrive: ample for a Pi Zero on a slow link (it is a few KiB).
pub const UNPROVEN_BODY_TIMEOUT: Duration = Duration::from_secs(10);
/// Enrollments whose bodies are arriving at once. With `UNPROVEN_MAX_BYTES` this bounds what the server
/// holds for callers without a certificate: 256 x 64 KiB = 16 MiB.
pub const UNPROVEN_WAITING: usize = 256;
/// Enrollments worked on at once (a CSR signed and a node stored); more wait for a turn.
pub const UNPROVEN_AT_ONCE: usize = 32;

const ENROLL_PATH: &str = "/drover.v1.AgentLink/Enroll";

/// Wraps the gRPC service with those limits.
#[derive(Clone)]
pub struct UnprovenLimits<S> {
    inner: S,
    room: Arc<WaitingRoom>,
    permits: Arc<Semaphore>,
    metrics: Arc<ServerMetrics>,
}

impl<S> UnprovenLimits<S> {
    pub fn new(inner: S, metrics: Arc<ServerMetrics>) -> Self {
        Self::with_room(inner, metrics, UNPROVEN_WAITING)
    }

    fn with_room(inner: S, metrics: Arc<ServerMetrics>, places: usize) -> Self {
        Self {
            inner,
            room: Arc::new(WaitingRoom::new(places)),
            permits: Arc::new(Semaphore::new(UNPROVEN_AT_ONCE)),
            metrics,
        }
    }
}

impl<S: NamedService> NamedService for UnprovenLimits<S> {
    const NAME: &'static str = S::NAME;
}

fn respond(status: Status) -> BoxFuture<Response<Body>, Infallible> {
    Box::pin(std::future::ready(Ok(status.into_http())))
}

impl<S> Service<Request<Body>> for UnprovenLimits<S>
where
    S: Service<Request<Body>, Response = Response<Body>, Error = Infallible>
        + Clone
        + Send
        + 'static,
    S::Future: Send + 'static,
{
    type Response = Response<Body>;
    type Error = Infallible;
    type Future = BoxFuture<Response<Body>, Infallible>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request<Body>) -> Self::Future {
        let proven = req
            .extensions()
            .get::<Peer>()
            .is_some_and(|p| p.node_id.is_some());
        let enroll = req.uri().path() == ENROLL_PATH;
        if proven && !enroll {
            return Box::pin(self.inner.call(req));
        }
        if !enroll {
            return respond(Status::unauthenticated(
                "a client certificate issued by this server is required: enroll with a join token first",
            ));
        }
        // The service was made ready for this call; the clone serves it once the body is in.
        let mut inner = self.inner.clone();
        std::mem::swap(&mut inner, &mut self.inner);
        let (room, permits, metrics) = (
            self.room.clone(),
            self.permits.clone(),
            self.metrics.clone(),
        );
        Box::pin(async move {
            let (parts, body) = req.into_parts();
            let place = room.enter(&metrics);
            let read = async {
                Limited::new(body, UNPROVEN_MAX_BYTES)
                    .collect()
                    .await
                    .map(|c| c.to_bytes())
            };
            let bytes = tokio::select! {
                _ = place.left.cancelled() => {
                    return Ok(Status::resource_exhausted(
                        "too many enrollments at once: retry in a few seconds",
                    )
                    .into_http());
                }
                read = tokio::time::timeout(UNPROVEN_BODY_TIMEOUT, read) => match read {
                    Ok(Ok(bytes)) => bytes,
                    Ok(Err(e)) => {
                        return Ok(Status::invalid_argument(format!(
                            "the enrollment request could not be read ({e}); it may be at most {UNPROVEN_MAX_BYTES} bytes"
                        ))
                        .into_http());
                    }
                    Err(_) => {
                        metrics.agent_connection("unproven_timeout");
                        return Ok(Status::deadline_exceeded(
                            "the enrollment request did not arrive in time",
                        )
                        .into_http());
                    }
                },
            };
            drop(place);
            let Ok(_permit) = permits.acquire_owned().await else {
                return Ok(Status::unavailable("the server is shutting down").into_http());
            };
            let req = Request::from_parts(parts, Body::new(Full::new(bytes)));
            inner.call(req).await
        })
    }
}

/// Places for requests whose bodies are on the way. Entering a full room sends the one that has waited
/// longest away.
struct WaitingRoom {
    places: usize,
    queue: Mutex<(u64, VecDeque<(u64, CancellationToken)>)>,
}

/// A place in the room, given back when dropped; `left` fires when the place was taken by a newcomer.
struct Place<'a> {
    room: &'a WaitingRoom,
    id: u64,
    left: CancellationToken,
}

impl WaitingRoom {
    fn new(places: usize) -> Self {
        Self {
            places,
            queue: Mutex::new((0, VecDeque::new())),
        }
    }

    fn enter(&self, metrics: &ServerMetrics) -> Place<'_> {
        let left = CancellationToken::new();
        let mut guard = lock(&self.queue);
        let (next, queue) = &mut *guard;
        while queue.len() >= self.places {
            let Some((_, oldest)) = queue.pop_front() else {
                break;
            };
            oldest.cancel();
            metrics.agent_connection("unproven_busy");
        }
        let id = *next;
        *next += 1;
        queue.push_back((id, left.clone()));
        Place {
            room: self,
            id,
            left,
        }
    }
}

impl Drop for Place<'_> {
    fn drop(&mut self) {
        let mut guard = lock(&self.room.queue);
        let queue = &mut guard.1;
        if let Some(at) = queue.iter().position(|(id, _)| *id == self.id) {
            queue.remove(at);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_full_room_sends_the_longest_waiting_away() {
        let metrics = ServerMetrics::new(false);
        let room = WaitingRoom::new(2);
        let first = room.enter(&metrics);
        let second = room.enter(&metrics);
        assert!(!first.left.is_cancelled() && !second.left.is_cancelled());
        let third = room.enter(&metrics);
        assert!(first.left.is_cancelled(), "the oldest place is taken");
        assert!(!second.left.is_cancelled() && !third.left.is_cancelled());
        // A place given back makes room without sending anyone away.
        drop(second);
        let fourth = room.enter(&metrics);
        assert!(!third.left.is_cancelled() && !fourth.left.is_cancelled());
        drop(first);
        assert_eq!(lock(&room.queue).1.len(), 2);
    }
}

//! What a caller that has not proven itself can make the server read. Any request on a connection without
//! a client certificate, and every `Enroll`, is read up to `UNPROVEN_MAX_BYTES` (an enrollment is a token,
//! a name, labels and a CSR: a few KiB), and only `UNPROVEN_AT_ONCE` such requests are served at once.
//! Everything else keeps the service's own limit (`MAX_MESSAGE`: blobs travel whole).

use std::convert::Infallible;
use std::sync::Arc;
use std::task::{Context, Poll};

use http_body_util::Limited;
use tokio::sync::Semaphore;
use tonic::Status;
use tonic::body::Body;
use tonic::codegen::http::{Request, Response};
use tonic::codegen::{BoxFuture, Service};
use tonic::server::NamedService;

use super::tls::Peer;
use crate::metrics::ServerMetrics;

/// The most bytes an unproven request's body may carry.
pub const UNPROVEN_MAX_BYTES: usize = 64 * 1024;
/// Unproven requests served at once; more are refused with RESOURCE_EXHAUSTED (agents retry).
pub const UNPROVEN_AT_ONCE: usize = 32;

const ENROLL_PATH: &str = "/drover.v1.AgentLink/Enroll";

/// Wraps the gRPC service with those limits.
#[derive(Clone)]
pub struct UnprovenLimits<S> {
    inner: S,
    permits: Arc<Semaphore>,
    metrics: Arc<ServerMetrics>,
}

impl<S> UnprovenLimits<S> {
    pub fn new(inner: S, metrics: Arc<ServerMetrics>) -> Self {
        Self {
            inner,
            permits: Arc::new(Semaphore::new(UNPROVEN_AT_ONCE)),
            metrics,
        }
    }
}

impl<S: NamedService> NamedService for UnprovenLimits<S> {
    const NAME: &'static str = S::NAME;
}

impl<S> Service<Request<Body>> for UnprovenLimits<S>
where
    S: Service<Request<Body>, Response = Response<Body>, Error = Infallible> + Send + 'static,
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
        if proven && req.uri().path() != ENROLL_PATH {
            return Box::pin(self.inner.call(req));
        }
        let Ok(permit) = self.permits.clone().try_acquire_owned() else {
            self.metrics.agent_connection("unproven_busy");
            let busy =
                Status::resource_exhausted("too many enrollments at once: retry in a few seconds");
            return Box::pin(std::future::ready(Ok(busy.into_http())));
        };
        let req = req.map(|body| Body::new(Limited::new(body, UNPROVEN_MAX_BYTES)));
        let response = self.inner.call(req);
        Box::pin(async move {
            let r = response.await;
            drop(permit);
            r
        })
    }
}

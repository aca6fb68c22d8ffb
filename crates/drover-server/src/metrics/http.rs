//! `/metrics` over HTTP: on the REST address behind an operator token (the `authorize` layer and
//! `ROUTE_ROLES` guard it like any operator route), or on `--metrics-listen` without one; and the layer
//! that times REST requests.

use std::sync::Arc;
use std::time::Instant;

use axum::Router;
use axum::extract::{MatchedPath, Request, State};
use axum::http::header;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use tokio::net::TcpListener;
use tokio::sync::watch;

use crate::Fleet;
use crate::api::{ApiError, ApiState};

/// The OpenMetrics text format that `prometheus-client` writes (Prometheus reads it, and so do people).
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

async fn exposition(fleet: &Fleet) -> Result<Response, ApiError> {
    let metrics = fleet.metrics();
    let observed = fleet.observe(metrics.per_node()).await?;
    let body = metrics.encode(&observed).map_err(|e| {
        tracing::error!("cannot encode metrics: {e}");
        ApiError::Internal
    })?;
    Ok(([(header::CONTENT_TYPE, CONTENT_TYPE)], body).into_response())
}

/// `GET /metrics` on the REST address (viewer role).
#[utoipa::path(
    get,
    path = "/metrics",
    tag = "meta",
    operation_id = "metrics",
    responses((status = 200, description = "Prometheus metrics in the OpenMetrics text format (docs/operations.md)", content_type = "application/openmetrics-text", body = String))
)]
pub async fn scrape(State(s): State<ApiState>) -> Result<Response, ApiError> {
    exposition(&s.fleet).await
}

/// Times every REST request until its response head, labelled by the route pattern that matched (never the
/// raw path: ids would make a series per node and task).
pub async fn track_requests(State(s): State<ApiState>, request: Request, next: Next) -> Response {
    let route = request
        .extensions()
        .get::<MatchedPath>()
        .map(|p| p.as_str().to_string())
        .unwrap_or_else(|| "unmatched".to_string());
    let method = request.method().as_str().to_string();
    let start = Instant::now();
    let response = next.run(request).await;
    s.fleet
        .metrics()
        .request(route, method, response.status().as_u16(), start.elapsed());
    response
}

/// Serves `/metrics` without a token on its own listener (`--metrics-listen`), until `shutdown` changes.
pub async fn serve_open(
    listener: TcpListener,
    fleet: Arc<Fleet>,
    shutdown: watch::Receiver<bool>,
) -> std::io::Result<()> {
    let router = Router::new()
        .route(
            "/metrics",
            get(|State(fleet): State<Arc<Fleet>>| async move { exposition(&fleet).await }),
        )
        .fallback(|| async { ApiError::NotFound("this address serves /metrics only".into()) })
        .with_state(fleet);
    crate::api::serve(listener, router, None, shutdown).await
}

//! The REST API under /api/v1 (JSON). Operator routes need an operator token (or the bootstrap admin
//! token) whose role allows the route (see `auth`); the MIaaS agent routes use join tokens and node tokens;
//! `/health` is open.

mod actions;
mod auth;
mod error;
mod json;
mod manifests;
mod miaas;
mod nodes;
mod openapi;
mod operators;
mod paging;
mod serve;
mod sessions;
#[cfg(feature = "tamper")]
mod tamper;
mod tasks;
mod tls;
mod tokens;

use std::sync::Arc;

use axum::Router;
use axum::extract::DefaultBodyLimit;
use axum::http::header::AUTHORIZATION;
use axum::middleware;
use axum::routing::{delete, get, post};
use sha2::{Digest, Sha256};

pub use auth::{Caller, ROUTE_ROLES, authenticate, check_role, required_role};
pub(crate) use drover_types::url::percent_encode;
pub use error::ApiError;
pub use openapi::{OPEN_ROUTES, document as openapi_document};
pub use serve::{HANDSHAKE_DEADLINE, HEADER_DEADLINE, serve};
pub use tls::{ApiTls, ApiTlsError, server_config as tls_config};

use crate::Fleet;

/// Bodies above this are refused with 413.
pub const MAX_BODY_BYTES: usize = 1024 * 1024;

#[derive(Clone)]
pub struct ApiState {
    pub fleet: Arc<Fleet>,
    /// SHA-256 of the admin token; comparing digests keeps the check constant-time in the secret.
    admin_token_sha256: [u8; 32],
    /// The dashboard's login links waiting to be used.
    login_codes: Arc<crate::ui::LoginCodes>,
    /// Whether the API is served over TLS (the dashboard's cookie is then `Secure`).
    tls: bool,
    /// Where agents reach this server (`--advertise-url`), told to HTTP agents when they register.
    advertise_url: Arc<str>,
}

impl ApiState {
    pub fn new(fleet: Arc<Fleet>, admin_token: &str) -> Self {
        Self {
            fleet,
            admin_token_sha256: Sha256::digest(admin_token.as_bytes()).into(),
            login_codes: Arc::default(),
            tls: false,
            advertise_url: "http://localhost:8080".into(),
        }
    }

    /// Says the API is served over TLS.
    pub fn with_tls(mut self, tls: bool) -> Self {
        self.tls = tls;
        self
    }

    pub(crate) fn ui_secure(&self) -> bool {
        self.tls
    }

    pub(crate) fn ui_codes(&self) -> &crate::ui::LoginCodes {
        &self.login_codes
    }

    /// The URL registering HTTP agents are told to use (see [`advertise_url`]).
    pub fn with_advertise_url(mut self, url: &str) -> Self {
        self.advertise_url = url.into();
        self
    }
}

/// The URL HTTP agents are told to reach the server at when none is configured: `localhost` for a loopback
/// listen address (what MIaaS answers), else the listen address itself; `https` when the API is served over TLS.
pub fn advertise_url(listen: std::net::SocketAddr, tls: bool) -> String {
    let scheme = if tls { "https" } else { "http" };
    if listen.ip().is_loopback() {
        format!("{scheme}://localhost:{}", listen.port())
    } else {
        // SocketAddr's Display brackets IPv6 addresses, as URLs need.
        format!("{scheme}://{listen}")
    }
}

/// The bearer token of a request, if any.
pub fn bearer(headers: &axum::http::HeaderMap) -> Option<&str> {
    let value = headers.get(AUTHORIZATION)?.to_str().ok()?;
    let token = value
        .strip_prefix("Bearer ")
        .or_else(|| value.strip_prefix("bearer "))?
        .trim();
    (!token.is_empty()).then_some(token)
}

/// `healthy`, as MIaaS answers, so that MIaaS agents and probes read it alike.
#[utoipa::path(
    get,
    path = "/health",
    tag = "meta",
    operation_id = "health",
    responses((status = 200, description = "`{\"status\": \"healthy\", \"version\": \"…\"}`", body = Object))
)]
async fn health() -> axum::Json<serde_json::Value> {
    axum::Json(serde_json::json!({"status": "healthy", "version": drover_types::VERSION}))
}

/// How long `/ready` waits for the database: a probe must answer sooner than the pool's own timeout.
const READY_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(2);

/// Whether this replica can serve: its database answers and, with `--nats`, its NATS connection is up. 503
/// with the cause when not; the process stays
/// up and the pool reconnects, so a load balancer takes it out and puts it back.
#[utoipa::path(
    get,
    path = "/ready",
    tag = "meta",
    operation_id = "ready",
    responses(
        (status = 200, description = "`{\"ready\": true, \"leader\": bool}`", body = Object),
        (status = 503, description = "`{\"ready\": false, \"cause\": \"…\", \"leader\": bool}`", body = Object),
    )
)]
async fn ready(
    axum::extract::State(state): axum::extract::State<ApiState>,
) -> (axum::http::StatusCode, axum::Json<serde_json::Value>) {
    let leader = state.fleet.is_leader();
    let cause = match tokio::time::timeout(READY_TIMEOUT, state.fleet.store().ping()).await {
        Ok(Ok(())) => None,
        Ok(Err(e)) => Some(e.to_string()),
        Err(_) => Some(format!(
            "cannot reach the database: no answer in {READY_TIMEOUT:?}"
        )),
    }
    // A replica cut off from NATS cannot reach agents held by others, nor they its own.
    .or_else(|| state.fleet.nats_problem());
    match cause {
        None => (
            axum::http::StatusCode::OK,
            axum::Json(serde_json::json!({"ready": true, "leader": leader})),
        ),
        Some(cause) => (
            axum::http::StatusCode::SERVICE_UNAVAILABLE,
            axum::Json(serde_json::json!({"ready": false, "cause": cause, "leader": leader})),
        ),
    }
}

async fn not_found() -> ApiError {
    ApiError::NotFound("no such API route; see docs/api.md".into())
}

pub fn router(state: ApiState) -> Router {
    #[cfg(feature = "tamper")]
    let operator = tamper::routes(Router::new());
    #[cfg(not(feature = "tamper"))]
    let operator = Router::new();
    let operator = operator
        .route("/api/v1/nodes", get(nodes::list))
        .route("/api/v1/nodes/{id}", get(nodes::get).delete(nodes::delete))
        .route("/api/v1/nodes/{id}/metrics", get(nodes::metrics))
        .route("/api/v1/nodes/{id}/actions", get(actions::list))
        .route("/api/v1/nodes/{id}/actions/{name}", post(actions::call))
        .route(
            "/api/v1/nodes/{id}/actions/calls/{call_id}/cancel",
            post(actions::cancel),
        )
        .route(
            "/api/v1/nodes/{id}/sessions",
            get(sessions::list).delete(sessions::terminate_all),
        )
        .route(
            "/api/v1/nodes/{id}/sessions/{plugin}",
            get(sessions::get).delete(sessions::terminate),
        )
        .route(
            "/api/v1/nodes/{id}/sessions/{plugin}/history",
            get(sessions::history),
        )
        .route(
            "/api/v1/nodes/{id}/sessions/{plugin}/messages",
            post(sessions::message),
        )
        .route("/api/v1/tasks", get(tasks::list).post(tasks::create))
        .route("/api/v1/tasks/{id}", get(tasks::get))
        .route("/api/v1/tasks/{id}/runs", get(tasks::runs))
        .route("/api/v1/tasks/{id}/cancel", post(tasks::cancel))
        .route("/api/v1/tasks/{id}/output", get(tasks::output))
        .route("/api/v1/audit", get(tasks::audit))
        .route(
            "/api/v1/manifests",
            get(manifests::list).post(manifests::apply),
        )
        .route(
            "/api/v1/manifests/{name}",
            get(manifests::get).delete(manifests::delete),
        )
        .route("/api/v1/status", get(manifests::status))
        .route("/api/v1/status/events", get(manifests::status_events))
        .route(
            "/api/v1/blobs/{sha256}",
            axum::routing::put(manifests::put_blob)
                .layer(DefaultBodyLimit::max(crate::server::MAX_MESSAGE)),
        )
        .route("/api/v1/nodes/{id}/status", get(manifests::node_status))
        .route("/api/v1/nodes/{id}/labels", post(manifests::label))
        .route(
            "/api/v1/nodes/{id}/labels/accept",
            post(nodes::accept_labels),
        )
        .route("/api/v1/tokens", get(tokens::list).post(tokens::create))
        .route("/api/v1/tokens/{id}", delete(tokens::revoke))
        .route(
            "/api/v1/operators",
            get(operators::list).post(operators::create),
        )
        .route("/api/v1/operators/{name}", delete(operators::revoke))
        .route("/api/v1/whoami", get(operators::whoami))
        .route("/metrics", get(crate::metrics::scrape))
        // Every route above needs a line in `auth::ROUTE_ROLES`.
        .route_layer(middleware::from_fn_with_state(
            state.clone(),
            auth::authorize,
        ));
    let agents = Router::new()
        .route("/api/v1/nodes/register", post(miaas::register))
        .route("/api/v1/nodes/{id}/heartbeat", post(miaas::heartbeat));
    Router::new()
        .route("/health", get(health))
        .route("/ready", get(ready))
        .route("/api/v1/openapi.json", get(openapi::openapi_json))
        .merge(operator)
        .merge(agents)
        .merge(crate::ui::router(state.clone()))
        .fallback(not_found)
        .layer(middleware::from_fn_with_state(
            state.clone(),
            crate::metrics::track_requests,
        ))
        .layer(DefaultBodyLimit::max(MAX_BODY_BYTES))
        .with_state(state)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_default_advertised_url_follows_the_listen_address() {
        assert_eq!(
            advertise_url(([127, 0, 0, 1], 8080).into(), false),
            "http://localhost:8080"
        );
        assert_eq!(
            advertise_url("[::1]:9000".parse().unwrap(), true),
            "https://localhost:9000"
        );
        assert_eq!(
            advertise_url(([10, 0, 0, 7], 8080).into(), false),
            "http://10.0.0.7:8080"
        );
        assert_eq!(
            advertise_url("[fd00::7]:8080".parse().unwrap(), true),
            "https://[fd00::7]:8080"
        );
    }
}

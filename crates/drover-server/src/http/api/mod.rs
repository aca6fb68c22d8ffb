//! The REST API under /api/v1 (JSON). Operator routes need an operator token (or the bootstrap admin
//! token) whose role allows the route (see `http::auth`); the MIaaS agent routes use join tokens and node
//! tokens; `/health` and `/ready` are open. One file per resource, named as its path.

pub(super) mod actions;
pub(super) mod audit;
pub(super) mod blobs;
mod json;
pub(super) mod manifests;
pub(super) mod meta;
pub(super) mod miaas;
pub(super) mod nodes;
pub(super) mod operators;
mod paging;
pub(super) mod sessions;
#[cfg(feature = "tamper")]
mod tamper;
pub(super) mod tasks;
pub(super) mod tokens;

use axum::Router;
use axum::extract::DefaultBodyLimit;
use axum::middleware;
use axum::routing::{delete, get, post};
use drover_types::limits::MAX_MESSAGE;

use super::HttpState;
use super::auth::authorize;

/// The REST routes: the operator routes behind `authorize` (each with its line in `ROUTE_ROLES`), the
/// MIaaS agent routes (they check join and node tokens themselves) and the open meta routes.
pub(super) fn routes(state: HttpState) -> Router<HttpState> {
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
        .route("/api/v1/audit", get(audit::list))
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
            axum::routing::put(blobs::put).layer(DefaultBodyLimit::max(MAX_MESSAGE)),
        )
        .route("/api/v1/nodes/{id}/status", get(nodes::status))
        .route("/api/v1/nodes/{id}/labels", post(nodes::label))
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
        // Every route above needs a line in `http::ROUTE_ROLES`.
        .route_layer(middleware::from_fn_with_state(state.clone(), authorize));
    let agents = Router::new()
        .route("/api/v1/nodes/register", post(miaas::register))
        .route("/api/v1/nodes/{id}/heartbeat", post(miaas::heartbeat));
    Router::new()
        .route("/health", get(meta::health))
        .route("/ready", get(meta::ready))
        .merge(operator)
        .merge(agents)
}

//! The open routes that say whether this server is up: `/health` and `/ready`.

use crate::http::HttpState;

/// `healthy`, as MIaaS answers, so that MIaaS agents and probes read it alike.
#[utoipa::path(
    get,
    path = "/health",
    tag = "meta",
    operation_id = "health",
    responses((status = 200, description = "`{\"status\": \"healthy\", \"version\": \"…\"}`", body = Object))
)]
pub(in crate::http) async fn health() -> axum::Json<serde_json::Value> {
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
pub(in crate::http) async fn ready(
    axum::extract::State(state): axum::extract::State<HttpState>,
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

//! Operator routes for daemon-plugin sessions.

use axum::Json;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use drover_types::audit::AuditAction;
use drover_types::session::{SessionDetail, SessionInfo, SessionSample};

use super::json::ApiJson;
use crate::http::{ApiError, Caller, HttpState};

#[utoipa::path(get, path = "/api/v1/nodes/{id}/sessions", tag = "sessions", operation_id = "sessions_list", params(("id" = String, Path, description = "node id or name")), responses((status = 200, description = "the node's daemon sessions", body = [drover_types::session::SessionInfo]), (status = "4XX", description = "refused: `error` says why, `field` names the field at fault", body = drover_types::api::ErrorBody)))]
pub async fn list(
    State(s): State<HttpState>,
    Path(id): Path<String>,
) -> Result<Json<Vec<SessionInfo>>, ApiError> {
    Ok(Json(s.fleet.streams.sessions(&id).await?))
}

#[utoipa::path(get, path = "/api/v1/nodes/{id}/sessions/{plugin}", tag = "sessions", operation_id = "sessions_get", params(("id" = String, Path, description = "node id or name"), ("plugin" = String, Path, description = "daemon plugin name")), responses((status = 200, description = "the session and its latest payload", body = drover_types::session::SessionDetail), (status = "4XX", description = "refused: `error` says why, `field` names the field at fault", body = drover_types::api::ErrorBody)))]
pub async fn get(
    State(s): State<HttpState>,
    Path((id, plugin)): Path<(String, String)>,
) -> Result<Json<SessionDetail>, ApiError> {
    Ok(Json(s.fleet.streams.session(&id, &plugin).await?))
}

#[utoipa::path(get, path = "/api/v1/nodes/{id}/sessions/{plugin}/history", tag = "sessions", operation_id = "sessions_history", params(("id" = String, Path, description = "node id or name"), ("plugin" = String, Path, description = "daemon plugin name")), responses((status = 200, description = "the last payloads", body = [drover_types::session::SessionSample]), (status = "4XX", description = "refused: `error` says why, `field` names the field at fault", body = drover_types::api::ErrorBody)))]
pub async fn history(
    State(s): State<HttpState>,
    Path((id, plugin)): Path<(String, String)>,
) -> Result<Json<Vec<SessionSample>>, ApiError> {
    Ok(Json(s.fleet.streams.session_history(&id, &plugin).await?))
}

#[utoipa::path(delete, path = "/api/v1/nodes/{id}/sessions", tag = "sessions", operation_id = "sessions_terminate_all", params(("id" = String, Path, description = "node id or name")), responses((status = 200, description = "`{\"terminated\": N}`; the agent recreates them", body = serde_json::Value), (status = "4XX", description = "refused: `error` says why, `field` names the field at fault", body = drover_types::api::ErrorBody)))]
pub async fn terminate_all(
    State(s): State<HttpState>,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let n = s.fleet.streams.terminate_sessions(&id, None).await?;
    s.fleet
        .access
        .audit(
            &caller.name,
            AuditAction::SessionTerminate,
            &id,
            serde_json::json!({"terminated": n}),
        )
        .await;
    Ok(Json(serde_json::json!({"terminated": n})))
}

#[utoipa::path(delete, path = "/api/v1/nodes/{id}/sessions/{plugin}", tag = "sessions", operation_id = "sessions_terminate", params(("id" = String, Path, description = "node id or name"), ("plugin" = String, Path, description = "daemon plugin name")), responses((status = 200, description = "`{\"terminated\": N}`", body = serde_json::Value), (status = "4XX", description = "refused: `error` says why, `field` names the field at fault", body = drover_types::api::ErrorBody)))]
pub async fn terminate(
    State(s): State<HttpState>,
    caller: Caller,
    Path((id, plugin)): Path<(String, String)>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let n = s
        .fleet
        .streams
        .terminate_sessions(&id, Some(&plugin))
        .await?;
    s.fleet
        .access
        .audit(
            &caller.name,
            AuditAction::SessionTerminate,
            &id,
            serde_json::json!({"plugin": plugin, "terminated": n}),
        )
        .await;
    Ok(Json(serde_json::json!({"terminated": n})))
}

#[utoipa::path(post, path = "/api/v1/nodes/{id}/sessions/{plugin}/messages", tag = "sessions", operation_id = "sessions_message", request_body(content = serde_json::Value, description = "any JSON, delivered to the plugin's handler"), params(("id" = String, Path, description = "node id or name"), ("plugin" = String, Path, description = "daemon plugin name")), responses((status = 202, description = "delivered"), (status = "4XX", description = "refused: `error` says why, `field` names the field at fault", body = drover_types::api::ErrorBody)))]
pub async fn message(
    State(s): State<HttpState>,
    caller: Caller,
    Path((id, plugin)): Path<(String, String)>,
    ApiJson(body): ApiJson<serde_json::Value>,
) -> Result<StatusCode, ApiError> {
    // Recorded without the message: it is the plugin's payload, possibly large or private.
    s.fleet.streams.session_message(&id, &plugin, body).await?;
    s.fleet
        .access
        .audit(
            &caller.name,
            AuditAction::SessionMessage,
            &id,
            serde_json::json!({"plugin": plugin}),
        )
        .await;
    Ok(StatusCode::ACCEPTED)
}

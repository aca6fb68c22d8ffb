//! Operator routes for daemon-plugin sessions.

use axum::Json;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use drover_types::session::{SessionDetail, SessionInfo, SessionSample};

use super::json::ApiJson;
use super::{ApiError, ApiState, Caller};

pub async fn list(
    State(s): State<ApiState>,
    Path(id): Path<String>,
) -> Result<Json<Vec<SessionInfo>>, ApiError> {
    Ok(Json(s.fleet.sessions(&id).await?))
}

pub async fn get(
    State(s): State<ApiState>,
    Path((id, plugin)): Path<(String, String)>,
) -> Result<Json<SessionDetail>, ApiError> {
    Ok(Json(s.fleet.session(&id, &plugin).await?))
}

pub async fn history(
    State(s): State<ApiState>,
    Path((id, plugin)): Path<(String, String)>,
) -> Result<Json<Vec<SessionSample>>, ApiError> {
    Ok(Json(s.fleet.session_history(&id, &plugin).await?))
}

pub async fn terminate_all(
    State(s): State<ApiState>,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let n = s.fleet.terminate_sessions(&id, None).await?;
    s.fleet
        .audit(
            &caller.name,
            "session.terminate",
            &id,
            serde_json::json!({"terminated": n}),
        )
        .await;
    Ok(Json(serde_json::json!({"terminated": n})))
}

pub async fn terminate(
    State(s): State<ApiState>,
    caller: Caller,
    Path((id, plugin)): Path<(String, String)>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let n = s.fleet.terminate_sessions(&id, Some(&plugin)).await?;
    s.fleet
        .audit(
            &caller.name,
            "session.terminate",
            &id,
            serde_json::json!({"plugin": plugin, "terminated": n}),
        )
        .await;
    Ok(Json(serde_json::json!({"terminated": n})))
}

pub async fn message(
    State(s): State<ApiState>,
    caller: Caller,
    Path((id, plugin)): Path<(String, String)>,
    ApiJson(body): ApiJson<serde_json::Value>,
) -> Result<StatusCode, ApiError> {
    // Recorded without the message: it is the plugin's payload, possibly large or private.
    s.fleet.session_message(&id, &plugin, body).await?;
    s.fleet
        .audit(
            &caller.name,
            "session.message",
            &id,
            serde_json::json!({"plugin": plugin}),
        )
        .await;
    Ok(StatusCode::ACCEPTED)
}

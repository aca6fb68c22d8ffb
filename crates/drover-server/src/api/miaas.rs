//! The MIaaS agent contract for plain HTTP agents: register, then heartbeat with a node token.

use axum::Json;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use drover_types::api::{HeartbeatRequest, RegisterRequest, RegisterResponse};

use super::json::ApiJson;
use super::{ApiError, ApiState, bearer};

pub async fn register(
    State(s): State<ApiState>,
    headers: HeaderMap,
    ApiJson(req): ApiJson<RegisterRequest>,
) -> Result<(StatusCode, Json<RegisterResponse>), ApiError> {
    let name = req.name.clone();
    let registered = s.fleet.register_http(bearer(&headers), req).await?;
    tracing::info!(node = %name, id = %registered.node_id, "HTTP node registered");
    Ok((StatusCode::CREATED, Json(registered)))
}

pub async fn heartbeat(
    State(s): State<ApiState>,
    Path(id): Path<String>,
    headers: HeaderMap,
    ApiJson(metrics): ApiJson<HeartbeatRequest>,
) -> Result<Json<serde_json::Value>, ApiError> {
    s.fleet
        .http_heartbeat(&id, bearer(&headers), metrics)
        .await?;
    Ok(Json(serde_json::json!({"status": "ok"})))
}

//! The MIaaS agent contract for plain HTTP agents: register, then heartbeat with a node token. Each route
//! authenticates its bearer before it reads the body.

use axum::Json;
use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use drover_types::api::{HeartbeatRequest, RegisterRequest, RegisterResponse};

use super::{ApiError, ApiState, bearer, json};

pub async fn register(
    State(s): State<ApiState>,
    headers: HeaderMap,
    body: Body,
) -> Result<(StatusCode, Json<RegisterResponse>), ApiError> {
    let registrant = s.fleet.registrant(bearer(&headers)).await?;
    let req: RegisterRequest = json::read(body).await?;
    let name = req.name.clone();
    let registered = s.fleet.register_http(registrant, req).await?;
    tracing::info!(node = %name, id = %registered.node_id, "HTTP node registered");
    Ok((StatusCode::CREATED, Json(registered)))
}

pub async fn heartbeat(
    State(s): State<ApiState>,
    Path(id): Path<String>,
    headers: HeaderMap,
    body: Body,
) -> Result<Json<serde_json::Value>, ApiError> {
    s.fleet
        .authenticate_http_node(&id, bearer(&headers))
        .await?;
    let metrics: HeartbeatRequest = json::read(body).await?;
    s.fleet.heartbeat(&id, metrics).await?;
    Ok(Json(serde_json::json!({"status": "ok"})))
}

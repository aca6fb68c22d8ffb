//! The MIaaS agent contract for plain HTTP agents: register, then heartbeat with a node token. Each route
//! authenticates its bearer before it reads the body.

use axum::Json;
use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use drover_types::api::{HeartbeatRequest, HeartbeatResponse, RegisterRequest, RegisterResponse};

use super::json;
use crate::http::{ApiError, HttpState, bearer};

#[utoipa::path(post, path = "/api/v1/nodes/register", tag = "miaas", operation_id = "miaas_register", request_body = drover_types::api::RegisterRequest, responses((status = 201, description = "registered (again under the same name: the same node, a new token)", body = drover_types::api::RegisterResponse), (status = 422, description = "a field the MIaaS contract requires is missing", body = drover_types::api::ErrorBody), (status = "4XX", description = "refused: `error` says why, `field` names the field at fault", body = drover_types::api::ErrorBody)))]
pub async fn register(
    State(s): State<HttpState>,
    headers: HeaderMap,
    body: Body,
) -> Result<(StatusCode, Json<RegisterResponse>), ApiError> {
    let registrant = s.fleet.nodes.registrant(bearer(&headers)).await?;
    // MIaaS answers 422 naming a missing required field; its agents read that.
    let req: RegisterRequest = json::read_contract(body).await?;
    if let Some(field) = req.missing_field() {
        return Err(ApiError::missing_field(field));
    }
    // The address is shown and used as an address: a node may not store any text it likes there.
    if let Some(ip) = &req.ip
        && ip.parse::<std::net::IpAddr>().is_err()
    {
        return Err(ApiError::bad_request(
            "field `ip` must be an IPv4 or IPv6 address, such as 192.0.2.10",
            Some("ip".into()),
        ));
    }
    let name = req.name.clone();
    let registered = s.fleet.nodes.register_http(registrant, req).await?;
    tracing::info!(node = %name, id = %registered.node_id, "HTTP node registered");
    Ok((
        StatusCode::CREATED,
        Json(RegisterResponse {
            node_id: registered.node_id,
            node_token: registered.node_token,
            control_plane_url: s.advertise_url.to_string(),
        }),
    ))
}

#[utoipa::path(post, path = "/api/v1/nodes/{id}/heartbeat", tag = "miaas", operation_id = "miaas_heartbeat", request_body = drover_types::Metrics, params(("id" = String, Path, description = "the node id registration gave")), responses((status = 200, description = "recorded", body = drover_types::api::HeartbeatResponse), (status = "4XX", description = "refused: `error` says why, `field` names the field at fault", body = drover_types::api::ErrorBody)))]
pub async fn heartbeat(
    State(s): State<HttpState>,
    Path(id): Path<String>,
    headers: HeaderMap,
    body: Body,
) -> Result<Json<HeartbeatResponse>, ApiError> {
    s.fleet
        .nodes
        .authenticate_http_node(&id, bearer(&headers))
        .await?;
    let metrics: HeartbeatRequest = json::read(body).await?;
    s.fleet.nodes.heartbeat(&id, metrics).await?;
    let now = chrono::Utc::now();
    Ok(Json(HeartbeatResponse {
        status: "ok".into(),
        // Microseconds keep the float exact enough and cannot overflow for any real clock.
        timestamp: now.timestamp_micros() as f64 / 1e6,
    }))
}

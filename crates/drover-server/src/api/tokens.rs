//! Operator routes for join tokens.

use axum::Json;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use drover_types::api::{CreateTokenRequest, CreatedToken};
use drover_types::token::JoinTokenInfo;

use super::json::ApiJson;
use super::{ApiError, ApiState, Caller};

pub async fn create(
    State(s): State<ApiState>,
    caller: Caller,
    ApiJson(req): ApiJson<CreateTokenRequest>,
) -> Result<(StatusCode, Json<CreatedToken>), ApiError> {
    let created = s.fleet.create_token(&caller.name, req).await?;
    tracing::info!(token = %created.info.id, "join token created");
    Ok((StatusCode::CREATED, Json(created)))
}

pub async fn list(State(s): State<ApiState>) -> Result<Json<Vec<JoinTokenInfo>>, ApiError> {
    Ok(Json(s.fleet.list_tokens().await?))
}

pub async fn revoke(
    State(s): State<ApiState>,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<StatusCode, ApiError> {
    s.fleet.revoke_token(&caller.name, &id).await?;
    tracing::info!(token = %id, "join token revoked");
    Ok(StatusCode::NO_CONTENT)
}

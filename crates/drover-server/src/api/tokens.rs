//! Operator routes for join tokens.

use axum::Json;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use drover_types::api::{CreateTokenRequest, CreatedToken};
use drover_types::token::JoinTokenInfo;

use super::json::ApiJson;
use super::{ApiError, ApiState, OPERATOR};

pub async fn create(
    State(s): State<ApiState>,
    ApiJson(req): ApiJson<CreateTokenRequest>,
) -> Result<(StatusCode, Json<CreatedToken>), ApiError> {
    let created = s.fleet.create_token(OPERATOR, req).await?;
    tracing::info!(token = %created.info.id, "join token created");
    Ok((StatusCode::CREATED, Json(created)))
}

pub async fn list(State(s): State<ApiState>) -> Result<Json<Vec<JoinTokenInfo>>, ApiError> {
    Ok(Json(s.fleet.list_tokens().await?))
}

pub async fn revoke(
    State(s): State<ApiState>,
    Path(id): Path<String>,
) -> Result<StatusCode, ApiError> {
    s.fleet.revoke_token(OPERATOR, &id).await?;
    tracing::info!(token = %id, "join token revoked");
    Ok(StatusCode::NO_CONTENT)
}

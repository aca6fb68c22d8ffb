//! Operator routes for join tokens.

use axum::Json;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use drover_types::api::{CreateTokenRequest, CreatedToken};
use drover_types::token::JoinTokenInfo;

use super::json::ApiJson;
use crate::http::{ApiError, Caller, HttpState};

#[utoipa::path(post, path = "/api/v1/tokens", tag = "tokens", operation_id = "tokens_create", request_body = drover_types::api::CreateTokenRequest, responses((status = 201, description = "the join token; the only time the secret is shown", body = drover_types::api::CreatedToken), (status = "4XX", description = "refused: `error` says why, `field` names the field at fault", body = drover_types::api::ErrorBody)))]
pub async fn create(
    State(s): State<HttpState>,
    caller: Caller,
    ApiJson(req): ApiJson<CreateTokenRequest>,
) -> Result<(StatusCode, Json<CreatedToken>), ApiError> {
    let created = s.fleet.access.create_token(&caller.name, req).await?;
    tracing::info!(token = %created.info.id, "join token created");
    Ok((StatusCode::CREATED, Json(created)))
}

#[utoipa::path(get, path = "/api/v1/tokens", tag = "tokens", operation_id = "tokens_list", responses((status = 200, description = "join tokens without secrets", body = [drover_types::token::JoinTokenInfo]), (status = "4XX", description = "refused: `error` says why, `field` names the field at fault", body = drover_types::api::ErrorBody)))]
pub async fn list(State(s): State<HttpState>) -> Result<Json<Vec<JoinTokenInfo>>, ApiError> {
    Ok(Json(s.fleet.access.list_tokens().await?))
}

#[utoipa::path(delete, path = "/api/v1/tokens/{id}", tag = "tokens", operation_id = "tokens_revoke", params(("id" = String, Path, description = "token id")), responses((status = 204, description = "revoked"), (status = "4XX", description = "refused: `error` says why, `field` names the field at fault", body = drover_types::api::ErrorBody)))]
pub async fn revoke(
    State(s): State<HttpState>,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<StatusCode, ApiError> {
    s.fleet.access.revoke_token(&caller.name, &id).await?;
    tracing::info!(token = %id, "join token revoked");
    Ok(StatusCode::NO_CONTENT)
}

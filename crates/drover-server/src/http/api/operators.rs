//! Admin routes for operators, and `whoami` for any caller.

use axum::Json;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use drover_types::operator::{CreateOperatorRequest, CreatedOperator, OperatorInfo, WhoAmI};

use super::json::ApiJson;
use crate::http::{ApiError, Caller, HttpState};

#[utoipa::path(post, path = "/api/v1/operators", tag = "operators", operation_id = "operators_create", request_body = drover_types::operator::CreateOperatorRequest, responses((status = 201, description = "the operator and its token; the only time the token is shown", body = drover_types::operator::CreatedOperator), (status = "4XX", description = "refused: `error` says why, `field` names the field at fault", body = drover_types::api::ErrorBody)))]
pub async fn create(
    State(s): State<HttpState>,
    caller: Caller,
    ApiJson(req): ApiJson<CreateOperatorRequest>,
) -> Result<(StatusCode, Json<CreatedOperator>), ApiError> {
    let created = s.fleet.access.create_operator(&caller.name, req).await?;
    tracing::info!(operator = %created.info.name, role = %created.info.role, "operator created");
    Ok((StatusCode::CREATED, Json(created)))
}

#[utoipa::path(get, path = "/api/v1/operators", tag = "operators", operation_id = "operators_list", responses((status = 200, description = "operators without tokens", body = [drover_types::operator::OperatorInfo]), (status = "4XX", description = "refused: `error` says why, `field` names the field at fault", body = drover_types::api::ErrorBody)))]
pub async fn list(State(s): State<HttpState>) -> Result<Json<Vec<OperatorInfo>>, ApiError> {
    Ok(Json(s.fleet.access.list_operators().await?))
}

#[utoipa::path(delete, path = "/api/v1/operators/{name}", tag = "operators", operation_id = "operators_revoke", params(("name" = String, Path, description = "operator name")), responses((status = 204, description = "revoked; the token is refused from now on"), (status = "4XX", description = "refused: `error` says why, `field` names the field at fault", body = drover_types::api::ErrorBody)))]
pub async fn revoke(
    State(s): State<HttpState>,
    caller: Caller,
    Path(name): Path<String>,
) -> Result<StatusCode, ApiError> {
    s.fleet.access.revoke_operator(&caller.name, &name).await?;
    tracing::info!(operator = %name, "operator revoked");
    Ok(StatusCode::NO_CONTENT)
}

#[utoipa::path(get, path = "/api/v1/whoami", tag = "operators", operation_id = "operators_whoami", responses((status = 200, description = "the token's owner and role", body = drover_types::operator::WhoAmI), (status = "4XX", description = "refused: `error` says why, `field` names the field at fault", body = drover_types::api::ErrorBody)))]
pub async fn whoami(caller: Caller) -> Json<WhoAmI> {
    Json(WhoAmI {
        name: caller.name,
        role: caller.role,
    })
}

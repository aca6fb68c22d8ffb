//! Admin routes for operators, and `whoami` for any caller.

use axum::Json;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use drover_types::operator::{CreateOperatorRequest, CreatedOperator, OperatorInfo, WhoAmI};

use super::json::ApiJson;
use super::{ApiError, ApiState, Caller};

pub async fn create(
    State(s): State<ApiState>,
    caller: Caller,
    ApiJson(req): ApiJson<CreateOperatorRequest>,
) -> Result<(StatusCode, Json<CreatedOperator>), ApiError> {
    let created = s.fleet.create_operator(&caller.name, req).await?;
    tracing::info!(operator = %created.info.name, role = %created.info.role, "operator created");
    Ok((StatusCode::CREATED, Json(created)))
}

pub async fn list(State(s): State<ApiState>) -> Result<Json<Vec<OperatorInfo>>, ApiError> {
    Ok(Json(s.fleet.list_operators().await?))
}

pub async fn revoke(
    State(s): State<ApiState>,
    caller: Caller,
    Path(name): Path<String>,
) -> Result<StatusCode, ApiError> {
    s.fleet.revoke_operator(&caller.name, &name).await?;
    tracing::info!(operator = %name, "operator revoked");
    Ok(StatusCode::NO_CONTENT)
}

pub async fn whoami(caller: Caller) -> Json<WhoAmI> {
    Json(WhoAmI {
        name: caller.name,
        role: caller.role,
    })
}

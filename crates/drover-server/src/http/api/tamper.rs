//! Routes of the test-only tampering server (cargo feature `tamper`); see `fleet::tamper`.

use axum::Json;
use axum::extract::{Path, State};
use axum::http::{Method, StatusCode};
use drover_types::manifest::ApplyManifest;
use drover_types::operator::Role;
use drover_types::task::Task;
use serde::Deserialize;

use super::json::ApiJson;
use crate::fleet::tamper::DesiredTamper;
use crate::http::routes::Routes;
use crate::http::{ApiError, HttpState};

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DesiredRequest {
    mode: DesiredTamper,
}

async fn desired(
    State(s): State<HttpState>,
    ApiJson(req): ApiJson<DesiredRequest>,
) -> Result<StatusCode, ApiError> {
    s.fleet.desired.tamper_desired(req.mode).await?;
    Ok(StatusCode::NO_CONTENT)
}

async fn manifest(
    State(s): State<HttpState>,
    ApiJson(req): ApiJson<ApplyManifest>,
) -> Result<StatusCode, ApiError> {
    s.fleet.desired.tamper_manifest(req).await?;
    Ok(StatusCode::NO_CONTENT)
}

async fn replay(
    State(s): State<HttpState>,
    Path(id): Path<String>,
) -> Result<(StatusCode, Json<Task>), ApiError> {
    Ok((
        StatusCode::CREATED,
        Json(s.fleet.tasks.tamper_replay(&id).await?),
    ))
}

/// Registers the tampering routes: admin only, behind the same operator authentication as the rest, and
/// left out of the OpenAPI document.
pub(in crate::http) fn routes(r: Routes) -> Routes {
    r.op_undocumented(Method::POST, "/api/v1/tamper/desired", Role::Admin, desired)
        .op_undocumented(
            Method::POST,
            "/api/v1/tamper/manifest",
            Role::Admin,
            manifest,
        )
        .op_undocumented(
            Method::POST,
            "/api/v1/tamper/replay/{id}",
            Role::Admin,
            replay,
        )
}

//! Routes of the test-only tampering server (cargo feature `tamper`); see `fleet::tamper`.

use axum::Json;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::routing::post;
use drover_types::manifest::ApplyManifest;
use drover_types::task::Task;
use serde::Deserialize;

use super::json::ApiJson;
use crate::fleet::tamper::DesiredTamper;
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
    s.fleet.tamper_desired(req.mode).await?;
    Ok(StatusCode::NO_CONTENT)
}

async fn manifest(
    State(s): State<HttpState>,
    ApiJson(req): ApiJson<ApplyManifest>,
) -> Result<StatusCode, ApiError> {
    s.fleet.tamper_manifest(req).await?;
    Ok(StatusCode::NO_CONTENT)
}

async fn replay(
    State(s): State<HttpState>,
    Path(id): Path<String>,
) -> Result<(StatusCode, Json<Task>), ApiError> {
    Ok((StatusCode::CREATED, Json(s.fleet.tamper_replay(&id).await?)))
}

/// Adds the tampering routes (behind the same operator authentication as the rest).
pub fn routes(router: axum::Router<HttpState>) -> axum::Router<HttpState> {
    router
        .route("/api/v1/tamper/desired", post(desired))
        .route("/api/v1/tamper/manifest", post(manifest))
        .route("/api/v1/tamper/replay/{id}", post(replay))
}

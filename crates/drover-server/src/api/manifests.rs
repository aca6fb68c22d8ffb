//! Operator routes for manifests, convergence status and node labels.

use axum::Json;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use drover_types::manifest::{Applied, Manifest, NodeStatusReport, StoredManifest};
use drover_types::{Labels, Node};
use serde::Deserialize;

use super::json::ApiJson;
use super::{ApiError, ApiState};

const ACTOR: &str = "admin";

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ApplyQuery {
    #[serde(default)]
    dry_run: bool,
}

/// Applies a manifest; with `?dry_run=true`, answers each touched node's plan instead and changes nothing.
pub async fn apply(
    State(s): State<ApiState>,
    query: Result<Query<ApplyQuery>, axum::extract::rejection::QueryRejection>,
    ApiJson(m): ApiJson<Manifest>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let Query(q) =
        query.map_err(|e| ApiError::bad_request(e.body_text(), Some("dry_run".into())))?;
    if q.dry_run {
        let nodes = s.fleet.plan_manifest(m).await?;
        return Ok(Json(serde_json::json!({"dry_run": true, "nodes": nodes})));
    }
    let applied: Applied = s.fleet.apply_manifest(ACTOR, m).await?;
    Ok(Json(serde_json::to_value(applied).unwrap_or_default()))
}

pub async fn put_blob(
    State(s): State<ApiState>,
    Path(sha256): Path<String>,
    body: axum::body::Bytes,
) -> Result<StatusCode, ApiError> {
    s.fleet.put_blob(&sha256, body.to_vec()).await?;
    Ok(StatusCode::CREATED)
}

pub async fn list(State(s): State<ApiState>) -> Result<Json<Vec<StoredManifest>>, ApiError> {
    Ok(Json(s.fleet.manifests().await?))
}

pub async fn get(
    State(s): State<ApiState>,
    Path(name): Path<String>,
) -> Result<Json<StoredManifest>, ApiError> {
    Ok(Json(s.fleet.manifest(&name).await?))
}

pub async fn delete(
    State(s): State<ApiState>,
    Path(name): Path<String>,
) -> Result<StatusCode, ApiError> {
    s.fleet.delete_manifest(ACTOR, &name).await?;
    Ok(StatusCode::NO_CONTENT)
}

pub async fn status(State(s): State<ApiState>) -> Result<Json<Vec<NodeStatusReport>>, ApiError> {
    Ok(Json(s.fleet.status().await?))
}

pub async fn node_status(
    State(s): State<ApiState>,
    Path(id): Path<String>,
) -> Result<Json<NodeStatusReport>, ApiError> {
    Ok(Json(s.fleet.node_status(&id).await?))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LabelRequest {
    #[serde(default)]
    set: Labels,
    #[serde(default)]
    remove: Vec<String>,
}

pub async fn label(
    State(s): State<ApiState>,
    Path(id): Path<String>,
    ApiJson(req): ApiJson<LabelRequest>,
) -> Result<Json<Node>, ApiError> {
    Ok(Json(
        s.fleet.label_node(ACTOR, &id, req.set, req.remove).await?,
    ))
}

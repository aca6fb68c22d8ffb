//! Operator routes for nodes.

use axum::Json;
use axum::extract::{Path, Query, State};
use drover_types::{MetricsSample, Node};
use serde::Deserialize;

use super::{ApiError, ApiState, Caller};

/// Who operator changes are audited as.
const ACTOR: &str = "admin";

pub async fn list(State(s): State<ApiState>) -> Result<Json<Vec<Node>>, ApiError> {
    Ok(Json(s.fleet.nodes().await?))
}

pub async fn get(
    State(s): State<ApiState>,
    Path(id): Path<String>,
) -> Result<Json<Node>, ApiError> {
    Ok(Json(s.fleet.node(&id).await?))
}

pub async fn delete(
    State(s): State<ApiState>,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<Json<Node>, ApiError> {
    Ok(Json(s.fleet.delete_node(&caller.name, &id).await?))
}

/// `POST /api/v1/nodes/{id}/labels/accept`: the labels the node reported after enrolling count in
/// selection from now on.
pub async fn accept_labels(
    State(s): State<ApiState>,
    Path(id): Path<String>,
) -> Result<Json<Node>, ApiError> {
    Ok(Json(s.fleet.accept_labels(ACTOR, &id).await?))
}

#[derive(Deserialize)]
pub struct HistoryQuery {
    limit: Option<usize>,
}

pub async fn metrics(
    State(s): State<ApiState>,
    Path(id): Path<String>,
    query: Result<Query<HistoryQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Json<Vec<MetricsSample>>, ApiError> {
    let Query(q) = query.map_err(|e| ApiError::bad_request(e.body_text(), Some("limit".into())))?;
    let limit = q.limit.unwrap_or(100).min(10_000);
    Ok(Json(s.fleet.metrics_history(&id, limit).await?))
}

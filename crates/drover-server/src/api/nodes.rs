//! Operator routes for nodes.

use axum::Json;
use axum::extract::{Path, Query, State};
use drover_types::{MetricsSample, Node};
use serde::Deserialize;

use super::{ApiError, ApiState, Caller};

/// Who operator changes are audited as.
const ACTOR: &str = "admin";

#[utoipa::path(get, path = "/api/v1/nodes", tag = "nodes", operation_id = "nodes_list", responses((status = 200, description = "every node", body = [drover_types::Node]), (status = "4XX", description = "refused: `error` says why, `field` names the field at fault", body = drover_types::api::ErrorBody)))]
pub async fn list(State(s): State<ApiState>) -> Result<Json<Vec<Node>>, ApiError> {
    Ok(Json(s.fleet.nodes().await?))
}

#[utoipa::path(get, path = "/api/v1/nodes/{id}", tag = "nodes", operation_id = "nodes_get", params(("id" = String, Path, description = "node id or name")), responses((status = 200, description = "the node", body = drover_types::Node), (status = "4XX", description = "refused: `error` says why, `field` names the field at fault", body = drover_types::api::ErrorBody)))]
pub async fn get(
    State(s): State<ApiState>,
    Path(id): Path<String>,
) -> Result<Json<Node>, ApiError> {
    Ok(Json(s.fleet.node(&id).await?))
}

#[utoipa::path(delete, path = "/api/v1/nodes/{id}", tag = "nodes", operation_id = "nodes_delete", params(("id" = String, Path, description = "node id or name")), responses((status = 200, description = "the deleted node; its agent is refused until it enrolls again", body = drover_types::Node), (status = "4XX", description = "refused: `error` says why, `field` names the field at fault", body = drover_types::api::ErrorBody)))]
pub async fn delete(
    State(s): State<ApiState>,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<Json<Node>, ApiError> {
    Ok(Json(s.fleet.delete_node(&caller.name, &id).await?))
}

/// `POST /api/v1/nodes/{id}/labels/accept`: the labels the node reported after enrolling count in
/// selection from now on.
#[utoipa::path(post, path = "/api/v1/nodes/{id}/labels/accept", tag = "nodes", operation_id = "nodes_accept_labels", params(("id" = String, Path, description = "node id or name")), responses((status = 200, description = "the node, its pending labels now server-side", body = drover_types::Node), (status = "4XX", description = "refused: `error` says why, `field` names the field at fault", body = drover_types::api::ErrorBody)))]
pub async fn accept_labels(
    State(s): State<ApiState>,
    Path(id): Path<String>,
) -> Result<Json<Node>, ApiError> {
    Ok(Json(s.fleet.accept_labels(ACTOR, &id).await?))
}

#[derive(Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct HistoryQuery {
    limit: Option<usize>,
}

#[utoipa::path(get, path = "/api/v1/nodes/{id}/metrics", tag = "nodes", operation_id = "nodes_metrics", params(("id" = String, Path, description = "node id or name"), HistoryQuery), responses((status = 200, description = "metrics samples, oldest first", body = [drover_types::MetricsSample]), (status = "4XX", description = "refused: `error` says why, `field` names the field at fault", body = drover_types::api::ErrorBody)))]
pub async fn metrics(
    State(s): State<ApiState>,
    Path(id): Path<String>,
    query: Result<Query<HistoryQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Json<Vec<MetricsSample>>, ApiError> {
    let Query(q) = query.map_err(|e| ApiError::bad_request(e.body_text(), Some("limit".into())))?;
    let limit = q.limit.unwrap_or(100).min(10_000);
    Ok(Json(s.fleet.metrics_history(&id, limit).await?))
}

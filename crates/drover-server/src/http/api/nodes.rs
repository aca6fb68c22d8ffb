//! Operator routes for nodes: listing, removing, metrics, convergence status and labels.

use axum::Json;
use axum::extract::{Path, Query, State};
use axum::response::{IntoResponse, Response};
use drover_types::manifest::NodeStatusReport;
use drover_types::{Labels, MetricsSample, Node};
use serde::Deserialize;

use super::json::ApiJson;
use crate::fleet::pages::{MAX_PAGE, NodeFilter};
use crate::http::{ApiError, Caller, HttpState};

/// Who operator changes are audited as.
const ACTOR: &str = "admin";

#[derive(Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct ListQuery {
    /// Nodes on a page (100 when only other parameters are given; at most 1000).
    limit: Option<usize>,
    /// Nodes skipped, by name.
    offset: Option<usize>,
    /// Only nodes in this status: Ready, NotReady or Offline.
    status: Option<String>,
    /// Only nodes with these labels: `key=value[,key=value]`.
    label: Option<String>,
}

/// `GET /api/v1/nodes`: every node, as always, when no parameter is given; with `limit`, `offset`, `status`
/// or `label`, one page of the matching nodes (by name; `limit` 100 by default, at most 1000). The body is
/// a JSON array either way; a page says how many match in `X-Total-Count` and links the next page in `Link`.
#[utoipa::path(get, path = "/api/v1/nodes", tag = "nodes", operation_id = "nodes_list", params(ListQuery), responses((status = 200, description = "every node, or with a parameter one page of them (`X-Total-Count`: how many match; `Link`: the next page)", body = [drover_types::Node]), (status = "4XX", description = "refused: `error` says why, `field` names the field at fault", body = drover_types::api::ErrorBody)))]
pub async fn list(
    State(s): State<HttpState>,
    query: Result<Query<ListQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Response, ApiError> {
    let Query(q) = query.map_err(|e| ApiError::bad_request(e.body_text(), None))?;
    if q.limit.is_none() && q.offset.is_none() && q.status.is_none() && q.label.is_none() {
        return Ok(Json(s.fleet.nodes.nodes().await?).into_response());
    }
    let filter = NodeFilter::parse(q.status.as_deref(), q.label.as_deref(), q.offset, q.limit)?;
    let (offset, limit) = (filter.offset, filter.limit.clamp(1, MAX_PAGE));
    let page = s.fleet.nodes.nodes_page(filter.clone()).await?;
    let labels: Vec<String> = filter
        .labels
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect();
    let filters = [
        (
            "status",
            filter.status.map(|s| s.to_string()).unwrap_or_default(),
        ),
        ("label", labels.join(",")),
    ];
    let headers = super::paging::headers(
        "/api/v1/nodes",
        &filters,
        offset,
        limit,
        page.nodes.len(),
        page.total,
    );
    Ok((headers, Json(page.nodes)).into_response())
}

#[utoipa::path(get, path = "/api/v1/nodes/{id}", tag = "nodes", operation_id = "nodes_get", params(("id" = String, Path, description = "node id or name")), responses((status = 200, description = "the node", body = drover_types::Node), (status = "4XX", description = "refused: `error` says why, `field` names the field at fault", body = drover_types::api::ErrorBody)))]
pub async fn get(
    State(s): State<HttpState>,
    Path(id): Path<String>,
) -> Result<Json<Node>, ApiError> {
    Ok(Json(s.fleet.nodes.node(&id).await?))
}

#[utoipa::path(delete, path = "/api/v1/nodes/{id}", tag = "nodes", operation_id = "nodes_delete", params(("id" = String, Path, description = "node id or name")), responses((status = 200, description = "the deleted node; its agent is refused until it enrolls again", body = drover_types::Node), (status = "4XX", description = "refused: `error` says why, `field` names the field at fault", body = drover_types::api::ErrorBody)))]
pub async fn delete(
    State(s): State<HttpState>,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<Json<Node>, ApiError> {
    Ok(Json(s.fleet.nodes.delete_node(&caller.name, &id).await?))
}

/// `POST /api/v1/nodes/{id}/labels/accept`: the labels the node reported after enrolling count in
/// selection from now on.
#[utoipa::path(post, path = "/api/v1/nodes/{id}/labels/accept", tag = "nodes", operation_id = "nodes_accept_labels", params(("id" = String, Path, description = "node id or name")), responses((status = 200, description = "the node, its pending labels now server-side", body = drover_types::Node), (status = "4XX", description = "refused: `error` says why, `field` names the field at fault", body = drover_types::api::ErrorBody)))]
pub async fn accept_labels(
    State(s): State<HttpState>,
    Path(id): Path<String>,
) -> Result<Json<Node>, ApiError> {
    Ok(Json(s.fleet.desired.accept_labels(ACTOR, &id).await?))
}

#[derive(Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct HistoryQuery {
    limit: Option<usize>,
}

#[utoipa::path(get, path = "/api/v1/nodes/{id}/metrics", tag = "nodes", operation_id = "nodes_metrics", params(("id" = String, Path, description = "node id or name"), HistoryQuery), responses((status = 200, description = "metrics samples, oldest first", body = [drover_types::MetricsSample]), (status = "4XX", description = "refused: `error` says why, `field` names the field at fault", body = drover_types::api::ErrorBody)))]
pub async fn metrics(
    State(s): State<HttpState>,
    Path(id): Path<String>,
    query: Result<Query<HistoryQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Json<Vec<MetricsSample>>, ApiError> {
    let Query(q) = query.map_err(|e| ApiError::bad_request(e.body_text(), Some("limit".into())))?;
    let limit = q.limit.unwrap_or(100).min(10_000);
    Ok(Json(s.fleet.nodes.metrics_history(&id, limit).await?))
}

#[utoipa::path(get, path = "/api/v1/nodes/{id}/status", tag = "manifests", operation_id = "manifests_node_status", params(("id" = String, Path, description = "node id or name")), responses((status = 200, description = "the node's convergence status", body = drover_types::manifest::NodeStatusReport), (status = "4XX", description = "refused: `error` says why, `field` names the field at fault", body = drover_types::api::ErrorBody)))]
pub async fn status(
    State(s): State<HttpState>,
    Path(id): Path<String>,
) -> Result<Json<NodeStatusReport>, ApiError> {
    Ok(Json(s.fleet.desired.node_status(&id).await?))
}

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct LabelRequest {
    #[serde(default)]
    set: Labels,
    #[serde(default)]
    remove: Vec<String>,
}

#[utoipa::path(post, path = "/api/v1/nodes/{id}/labels", tag = "nodes", operation_id = "manifests_label", request_body = LabelRequest, params(("id" = String, Path, description = "node id or name")), responses((status = 200, description = "the node", body = drover_types::Node), (status = "4XX", description = "refused: `error` says why, `field` names the field at fault", body = drover_types::api::ErrorBody)))]
pub async fn label(
    State(s): State<HttpState>,
    caller: Caller,
    Path(id): Path<String>,
    ApiJson(req): ApiJson<LabelRequest>,
) -> Result<Json<Node>, ApiError> {
    Ok(Json(
        s.fleet
            .desired
            .label_node(&caller.name, &id, req.set, req.remove)
            .await?,
    ))
}

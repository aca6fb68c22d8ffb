//! Operator routes for action calls.

use crate::fleet::CallTicket;
use drover_types::audit::AuditAction;
use drover_types::signing::CommandSignature;
use std::time::Duration;

use axum::Json;
use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use drover_types::action::{ActionInfo, ActionReply, DEFAULT_DEADLINE_MS};
use drover_types::duration::parse_duration_at_most;
use serde::Deserialize;

use super::json;
use crate::http::{ApiError, Caller, HttpState};

#[derive(Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct CallQuery {
    /// Deadline, like `30s` (default 30 s).
    timeout: Option<String>,
    /// A caller-chosen id, so the caller can cancel the call while it waits.
    call_id: Option<String>,
    /// A command signature (JSON, `drover action --sign-key`) over `{"action", "args"}`, for nodes that
    /// pin signing keys; only actions that change the node need one there.
    signature: Option<String>,
}

#[utoipa::path(get, path = "/api/v1/nodes/{id}/actions", tag = "actions", operation_id = "actions_list", params(("id" = String, Path, description = "node id or name")), responses((status = 200, description = "the actions the connected node offers", body = [drover_types::action::ActionInfo]), (status = "4XX", description = "refused: `error` says why, `field` names the field at fault", body = drover_types::api::ErrorBody)))]
pub async fn list(
    State(s): State<HttpState>,
    Path(id): Path<String>,
) -> Result<Json<Vec<ActionInfo>>, ApiError> {
    Ok(Json(s.fleet.streams.node_actions(&id).await?))
}

#[utoipa::path(post, path = "/api/v1/nodes/{id}/actions/{name}", tag = "actions", operation_id = "actions_call", request_body(content = serde_json::Value, description = "the action's arguments (empty: none)"), params(("id" = String, Path, description = "node id or name"), ("name" = String, Path, description = "action name"), CallQuery), responses((status = 200, description = "the action's result", body = drover_types::action::ActionReply), (status = "4XX", description = "refused: `error` says why, `field` names the field at fault", body = drover_types::api::ErrorBody)))]
pub async fn call(
    State(s): State<HttpState>,
    caller: Caller,
    Path((id, name)): Path<(String, String)>,
    query: Result<Query<CallQuery>, axum::extract::rejection::QueryRejection>,
    body: Bytes,
) -> Result<Json<ActionReply>, ApiError> {
    let Query(q) = query.map_err(|e| ApiError::bad_request(e.body_text(), None))?;
    let deadline = match q.timeout.as_deref() {
        Some(t) => parse_duration_at_most(t, crate::fleet::MAX_ACTION_DEADLINE)
            .map_err(|e| ApiError::bad_request(e.to_string(), Some("timeout".into())))?,
        None => Duration::from_millis(DEFAULT_DEADLINE_MS),
    };
    let args = if body.iter().all(u8::is_ascii_whitespace) {
        serde_json::Value::Null
    } else {
        json::parse::<serde_json::Value>(&body)?
    };
    let signature = q
        .signature
        .as_deref()
        .map(serde_json::from_str::<CommandSignature>)
        .transpose()
        .map_err(|e| {
            ApiError::bad_request(
                format!("not a command signature: {e}"),
                Some("signature".into()),
            )
        })?;
    let ticket = CallTicket {
        call_id: q.call_id,
        signature,
    };
    let (call_id, result) = s
        .fleet
        .streams
        .call_action(&caller.name, &id, &name, args, deadline, ticket)
        .await?;
    Ok(Json(ActionReply { call_id, result }))
}

#[utoipa::path(post, path = "/api/v1/nodes/{id}/actions/calls/{call_id}/cancel", tag = "actions", operation_id = "actions_cancel", params(("id" = String, Path, description = "node id or name"), ("call_id" = String, Path, description = "the call id chosen by the caller")), responses((status = 202, description = "cancelled; the waiting caller gets `Cancelled`"), (status = "4XX", description = "refused: `error` says why, `field` names the field at fault", body = drover_types::api::ErrorBody)))]
pub async fn cancel(
    State(s): State<HttpState>,
    caller: Caller,
    Path((node, call_id)): Path<(String, String)>,
) -> Result<StatusCode, ApiError> {
    s.fleet.streams.cancel_call(&node, &call_id).await?;
    s.fleet
        .access
        .audit(
            &caller.name,
            AuditAction::ActionCancel,
            &node,
            serde_json::json!({"call": call_id}),
        )
        .await;
    Ok(StatusCode::ACCEPTED)
}

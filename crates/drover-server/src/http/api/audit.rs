//! `/api/v1/audit`: who changed what, newest first.

use axum::Json;
use axum::extract::{Query, State};
use drover_types::task::AuditEntry;
use serde::Deserialize;

use crate::http::{ApiError, HttpState};
use crate::store::AuditFilter;

#[derive(Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct AuditQuery {
    actor: Option<String>,
    action: Option<String>,
    target: Option<String>,
    since: Option<String>,
    limit: Option<usize>,
}

#[utoipa::path(get, path = "/api/v1/audit", tag = "audit", operation_id = "tasks_audit", params(AuditQuery), responses((status = 200, description = "audit entries, newest first", body = [drover_types::task::AuditEntry]), (status = "4XX", description = "refused: `error` says why, `field` names the field at fault", body = drover_types::api::ErrorBody)))]
pub async fn list(
    State(s): State<HttpState>,
    query: Result<Query<AuditQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Json<Vec<AuditEntry>>, ApiError> {
    let Query(q) = query.map_err(|e| ApiError::bad_request(e.body_text(), None))?;
    let since = q.since.as_deref().map(audit_since).transpose()?;
    let filter = AuditFilter {
        actor: q.actor,
        action: q.action,
        target: q.target,
        since,
        limit: q.limit.unwrap_or(100).min(10_000),
    };
    Ok(Json(s.fleet.access.audit_log(filter).await?))
}

/// `since`: an RFC 3339 time, or a duration ago. Checked: a duration reaching before the earliest time
/// chrono holds is refused, not overflowed.
fn audit_since(text: &str) -> Result<chrono::DateTime<chrono::Utc>, ApiError> {
    if let Ok(t) = chrono::DateTime::parse_from_rfc3339(text) {
        return Ok(t.with_timezone(&chrono::Utc));
    }
    let field = || Some("since".to_string());
    let ago = drover_types::duration::parse_duration(text).map_err(|e| {
        ApiError::bad_request(
            format!("{text:?} is neither an RFC 3339 time nor a duration like 1h ({e})"),
            field(),
        )
    })?;
    drover_types::duration::before(chrono::Utc::now(), ago)
        .ok_or_else(|| ApiError::bad_request(format!("{text:?} reaches too far back"), field()))
}

//! Operator routes for manifests and the fleet's convergence status.

use axum::Json;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use drover_types::envelope::{self, Form};
use drover_types::manifest::{Applied, ApplyManifest, StoredManifest};
use serde::Deserialize;

use std::convert::Infallible;
use std::sync::Arc;

use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;

use super::json::{self, ApiJson};
use crate::Fleet;
use crate::fleet::FleetError;
use crate::fleet::pages::{DEFAULT_PAGE, MAX_PAGE, parse_resource_state};
use crate::http::{ApiError, Caller, HttpState};
use crate::store::ConvergenceQuery;

#[derive(Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct ApplyQuery {
    #[serde(default)]
    dry_run: bool,
}

/// Applies a manifest (and its signature, when it has one); with `?dry_run=true`, answers each touched
/// node's plan instead and changes nothing.
#[utoipa::path(post, path = "/api/v1/manifests", tag = "manifests", operation_id = "manifests_apply", request_body(content = drover_types::manifest::Manifest, description = "a manifest, flat or in its `apiVersion: drover/v1`, `kind: Manifest` envelope (docs/desired-state.md)"), params(ApplyQuery), responses((status = 200, description = "`Applied`, or with `dry_run` `{\"dry_run\": true, \"nodes\": [NodePlan]}`", body = drover_types::manifest::Applied), (status = "4XX", description = "refused: `error` says why, `field` names the field at fault", body = drover_types::api::ErrorBody)))]
pub async fn apply(
    State(s): State<HttpState>,
    caller: Caller,
    query: Result<Query<ApplyQuery>, axum::extract::rejection::QueryRejection>,
    ApiJson(document): ApiJson<serde_json::Value>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let Query(q) =
        query.map_err(|e| ApiError::bad_request(e.body_text(), Some("dry_run".into())))?;
    let (m, form) = parse_manifest(document)?;
    if q.dry_run {
        let nodes = s
            .fleet
            .desired
            .plan_manifest(m)
            .await
            .map_err(|e| as_written(e, form))?;
        return Ok(Json(serde_json::json!({"dry_run": true, "nodes": nodes})));
    }
    let applied: Applied = s
        .fleet
        .desired
        .apply_manifest(&caller.name, m)
        .await
        .map_err(|e| as_written(e, form))?;
    Ok(Json(serde_json::to_value(applied).unwrap_or_default()))
}

/// A manifest in the flat form or in its `apiVersion`/`kind` envelope (see `drover_types::envelope`).
fn parse_manifest(document: serde_json::Value) -> Result<(ApplyManifest, Form), ApiError> {
    let (mut flat, form) = envelope::unwrap(document)
        .map_err(|e| ApiError::bad_request(e.to_string(), Some(e.field)))?;
    // The signature rides beside the flat form's fields; the manifest itself is parsed on its own so a
    // bad field is named by its path.
    let signature = match flat.as_object_mut().and_then(|m| m.remove("signature")) {
        Some(sig) => Some(json::from_value(sig, &|path| format!("signature.{path}"))?),
        None => None,
    };
    // serde stops at the first unknown field; a manifest with several typos names them all at once.
    let unknown = unknown_fields(&flat);
    if unknown.len() > 1 {
        let named: Vec<(String, String)> = unknown
            .into_iter()
            .map(|(path, reason)| (form.field(&path), reason))
            .collect();
        let message = named
            .iter()
            .map(|(field, reason)| format!("field `{field}`: {reason}"))
            .collect::<Vec<_>>()
            .join("; ");
        return Err(ApiError::bad_request(
            message,
            named.into_iter().next().map(|(f, _)| f),
        ));
    }
    let manifest = json::from_value(flat, &|path| form.field(&path))?;
    Ok((
        ApplyManifest {
            manifest,
            signature,
        },
        form,
    ))
}

/// Every unknown field of a flat manifest, as (path, serde's message), in document order. Each one serde
/// reports is taken out of a copy and the parse tried again, so the known fields stay serde's own (no list
/// to keep in step with the types). Stops at the first problem of another kind: that one is reported on its
/// own by the normal parse, as before.
fn unknown_fields(flat: &serde_json::Value) -> Vec<(String, String)> {
    use serde_path_to_error::Segment;
    let mut doc = flat.clone();
    let mut found = Vec::new();
    // Each round removes one key, so a body of at most 1 MiB ends; the cap keeps a hostile one cheap.
    for _ in 0..100 {
        let Err(e) = serde_path_to_error::deserialize::<_, drover_types::manifest::Manifest>(&doc)
        else {
            break;
        };
        let reason = e.inner().to_string();
        if !reason.starts_with("unknown field") {
            break;
        }
        let segments: Vec<Segment> = e.path().iter().cloned().collect();
        let Some((Segment::Map { key }, parents)) = segments.split_last() else {
            break;
        };
        let mut at = &mut doc;
        for segment in parents {
            let next = match segment {
                Segment::Map { key } => at.get_mut(key.as_str()),
                Segment::Seq { index } => at.get_mut(*index),
                _ => None,
            };
            match next {
                Some(v) => at = v,
                None => return found,
            }
        }
        match at.as_object_mut().and_then(|o| o.remove(key.as_str())) {
            Some(_) => found.push((e.path().to_string(), reason)),
            None => break,
        }
    }
    found
}

/// Names a refused manifest's fields as its author wrote them (`spec.resources[0].id` in an envelope).
fn as_written(e: FleetError, form: Form) -> FleetError {
    match e {
        FleetError::ManifestInvalid(errors) => FleetError::ManifestInvalid(
            errors
                .into_iter()
                .map(|mut e| {
                    // A resource's own fields (`file.path`) are named relative to the resource, which
                    // the error names; only paths from the document's top are moved.
                    if e.resource.is_none() || e.field.starts_with("resources[") {
                        e.field = form.field(&e.field);
                    }
                    e
                })
                .collect(),
        ),
        other => other,
    }
}

#[utoipa::path(get, path = "/api/v1/manifests", tag = "manifests", operation_id = "manifests_list", responses((status = 200, description = "every manifest", body = [drover_types::manifest::StoredManifest]), (status = "4XX", description = "refused: `error` says why, `field` names the field at fault", body = drover_types::api::ErrorBody)))]
pub async fn list(State(s): State<HttpState>) -> Result<Json<Vec<StoredManifest>>, ApiError> {
    Ok(Json(s.fleet.desired.manifests().await?))
}

#[utoipa::path(get, path = "/api/v1/manifests/{name}", tag = "manifests", operation_id = "manifests_get", params(("name" = String, Path, description = "manifest name")), responses((status = 200, description = "the manifest", body = drover_types::manifest::StoredManifest), (status = "4XX", description = "refused: `error` says why, `field` names the field at fault", body = drover_types::api::ErrorBody)))]
pub async fn get(
    State(s): State<HttpState>,
    Path(name): Path<String>,
) -> Result<Json<StoredManifest>, ApiError> {
    Ok(Json(s.fleet.desired.manifest(&name).await?))
}

#[utoipa::path(delete, path = "/api/v1/manifests/{name}", tag = "manifests", operation_id = "manifests_delete", params(("name" = String, Path, description = "manifest name")), responses((status = 204, description = "deleted; agents remove what it gave them"), (status = "4XX", description = "refused: `error` says why, `field` names the field at fault", body = drover_types::api::ErrorBody)))]
pub async fn delete(
    State(s): State<HttpState>,
    caller: Caller,
    Path(name): Path<String>,
) -> Result<StatusCode, ApiError> {
    s.fleet.desired.delete_manifest(&caller.name, &name).await?;
    Ok(StatusCode::NO_CONTENT)
}

#[derive(Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct StatusQuery {
    /// Nodes on a page (100 when only other parameters are given; at most 1000).
    limit: Option<usize>,
    /// Nodes skipped, by name.
    offset: Option<usize>,
    /// Only nodes reporting resources of this manifest, each report keeping only those resources.
    manifest: Option<String>,
    /// Only nodes whose worst resource state (of the manifest, when one is named) is this: Ready,
    /// Pending, Reconciling, Failed, UnknownKind, Conflict or Refused.
    state: Option<String>,
}

/// `GET /api/v1/status`: every node's convergence, as always, when no parameter is given; with `limit`,
/// `offset`, `manifest` or `state`, one page of the matching nodes by name, with `X-Total-Count` and `Link`.
#[utoipa::path(get, path = "/api/v1/status", tag = "manifests", operation_id = "manifests_status", params(StatusQuery), responses((status = 200, description = "every node's convergence status, or with a parameter one page of them (`X-Total-Count`: how many match; `Link`: the next page)", body = [drover_types::manifest::NodeStatusReport]), (status = "4XX", description = "refused: `error` says why, `field` names the field at fault", body = drover_types::api::ErrorBody)))]
pub async fn status(
    State(s): State<HttpState>,
    query: Result<Query<StatusQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Response, ApiError> {
    let Query(q) = query.map_err(|e| ApiError::bad_request(e.body_text(), None))?;
    if q.limit.is_none() && q.offset.is_none() && q.manifest.is_none() && q.state.is_none() {
        return Ok(Json(s.fleet.desired.status().await?).into_response());
    }
    let state = q
        .state
        .as_deref()
        .filter(|s| !s.trim().is_empty())
        .map(|s| parse_resource_state(s, "state"))
        .transpose()?;
    let manifest = q.manifest.filter(|m| !m.is_empty());
    let (offset, limit) = (
        q.offset.unwrap_or(0),
        q.limit.unwrap_or(DEFAULT_PAGE).clamp(1, MAX_PAGE),
    );
    let (reports, total) = s
        .fleet
        .desired
        .status_page(ConvergenceQuery {
            manifest: manifest.clone(),
            state,
            offset,
            limit,
        })
        .await?;
    let filters = [
        ("manifest", manifest.unwrap_or_default()),
        (
            "state",
            state.map(|s| s.as_str().to_string()).unwrap_or_default(),
        ),
    ];
    let headers = super::paging::headers(
        "/api/v1/status",
        &filters,
        offset,
        limit,
        reports.len(),
        total,
    );
    Ok((headers, Json(reports)).into_response())
}

/// Changed nodes whose statuses are read at once, at most.
const BURST: usize = 4096;

/// Server-Sent Events: `event: status` (every node's `NodeStatusReport`) first; then `event: node` (one
/// node's report) whenever its desired generation or its convergence report changes, a node changed several
/// times meanwhile sent once, as it is now. Ids count the stream's events. Resuming needs no replay: every
/// stream, resumed (`Last-Event-ID`) or not, starts with the whole status, subscribed to before it is read.
#[utoipa::path(get, path = "/api/v1/status/events", tag = "manifests", operation_id = "manifests_status_events", responses((status = 200, description = "Server-Sent Events: `status` (the whole status) then `node` changes", content_type = "text/event-stream", body = String), (status = "4XX", description = "refused: `error` says why, `field` names the field at fault", body = drover_types::api::ErrorBody)))]
pub async fn status_events(State(s): State<HttpState>) -> impl axum::response::IntoResponse {
    let live = s.fleet.desired.subscribe_status();
    let (tx, rx) = mpsc::channel(64);
    tokio::spawn(follow_status(s.fleet.clone(), live, tx));
    Sse::new(ReceiverStream::new(rx)).keep_alive(KeepAlive::default())
}

async fn follow_status(
    fleet: Arc<Fleet>,
    live: Arc<crate::fleet::desired::StatusFollower>,
    tx: mpsc::Sender<Result<Event, Infallible>>,
) {
    let mut id = 0u64;
    let mut event = |name: &str, data: String| {
        id += 1;
        Ok::<_, Infallible>(Event::default().event(name).id(id.to_string()).data(data))
    };
    let Ok(all) = fleet.desired.status().await else {
        return;
    };
    if tx.send(event("status", json(&all))).await.is_err() {
        return;
    }
    loop {
        let changed = tokio::select! {
            changed = live.changed() => changed,
            _ = tx.closed() => return,
        };
        for nodes in changed.chunks(BURST) {
            let Ok(reports) = fleet.desired.statuses_of(nodes).await else {
                return;
            };
            for report in reports {
                if tx.send(event("node", json(&report))).await.is_err() {
                    return;
                }
            }
        }
    }
}

fn json(data: &impl serde::Serialize) -> String {
    serde_json::to_string(data).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    #[test]
    fn every_unknown_field_is_named_at_once() {
        let doc = json!({
            "name": "web",
            "resources": [
                {"id": "a", "file": {"path": "/a", "contnet": "x"}},
                {"id": "b", "fiel": {"path": "/b"}},
            ],
            "selektor": {},
        });
        let found: Vec<String> = super::unknown_fields(&doc)
            .into_iter()
            .map(|(p, _)| p)
            .collect();
        assert_eq!(found.len(), 3, "{found:?}");
        for path in ["resources[0].file.contnet", "resources[1].fiel", "selektor"] {
            assert!(found.iter().any(|p| p == path), "{path} not in {found:?}");
        }
        let Err(e) = super::parse_manifest(doc) else {
            panic!("accepted")
        };
        let text = format!("{e:?}");
        assert!(
            text.contains("contnet") && text.contains("fiel") && text.contains("selektor"),
            "{text}"
        );
        // One typo reads as it always did.
        let one = json!({"name": "web", "resources": [], "selektor": {}});
        assert_eq!(super::unknown_fields(&one).len(), 1);
        assert!(super::parse_manifest(one).is_err());
    }
}

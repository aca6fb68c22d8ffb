//! The audit log: who did what to which target, newest first, filtered by actor, action or target.

use askama::Template;
use axum::extract::{Query, State};
use axum::http::HeaderMap;
use axum::response::Response;
use serde::Deserialize;

use super::view::{self, Nav};
use crate::http::{Caller, HttpState};
use crate::store::AuditFilter;

/// Entries shown.
const ENTRIES: usize = 100;
/// The longest filter text taken from the query string.
const MAX_FILTER: usize = 256;

#[derive(Deserialize, Default)]
pub struct AuditQuery {
    actor: Option<String>,
    action: Option<String>,
    target: Option<String>,
}

pub struct Entry {
    when: String,
    at: String,
    actor: String,
    action: String,
    target: String,
    detail: String,
}

#[derive(Template)]
#[template(path = "audit_live.html")]
pub struct Live {
    self_url: String,
    entries: Vec<Entry>,
}

#[derive(Template)]
#[template(path = "audit.html")]
pub struct Page {
    actor: String,
    action: String,
    target: String,
    live: String,
}

fn clean(v: Option<String>) -> Option<String> {
    v.map(|s| s.trim().chars().take(MAX_FILTER).collect::<String>())
        .filter(|s| !s.is_empty())
}

pub async fn page(
    State(s): State<HttpState>,
    caller: Caller,
    headers: HeaderMap,
    query: Result<Query<AuditQuery>, axum::extract::rejection::QueryRejection>,
) -> Response {
    let q = query.map(|Query(q)| q).unwrap_or_default();
    let filter = AuditFilter {
        actor: clean(q.actor),
        action: clean(q.action),
        target: clean(q.target),
        since: None,
        limit: ENTRIES,
    };
    let entries = match s.fleet.access.audit_log(filter.clone()).await {
        Ok(e) => e,
        Err(e) => return view::failed(&caller, e.into()),
    };
    let params: Vec<String> = [
        ("actor", &filter.actor),
        ("action", &filter.action),
        ("target", &filter.target),
    ]
    .into_iter()
    .filter_map(|(k, v)| {
        v.as_ref()
            .map(|v| format!("{k}={}", drover_types::url::percent_encode(v)))
    })
    .collect();
    let live = Live {
        self_url: if params.is_empty() {
            "/ui/audit".into()
        } else {
            format!("/ui/audit?{}", params.join("&"))
        },
        entries: entries
            .into_iter()
            .map(|e| Entry {
                when: view::ago(Some(e.at)),
                at: view::time(e.at),
                actor: e.actor,
                action: e.action,
                target: e.target,
                detail: if e.detail.is_null() {
                    String::new()
                } else {
                    e.detail.to_string()
                },
            })
            .collect(),
    };
    let body = Page {
        actor: filter.actor.unwrap_or_default(),
        action: filter.action.unwrap_or_default(),
        target: filter.target.unwrap_or_default(),
        live: live.render().unwrap_or_default(),
    };
    view::live_or_page(&headers, "Audit log", Nav::Audit, &caller, &body, &live)
}

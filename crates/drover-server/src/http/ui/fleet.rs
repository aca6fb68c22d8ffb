//! The fleet: nodes by name, a page at a time, filtered by status and labels, with counts by status.

use askama::Template;
use axum::extract::{Query, State};
use axum::http::HeaderMap;
use axum::response::Response;
use drover_types::{Node, NodeStatus};
use serde::Deserialize;

use super::view::{self, Count, Nav, Pager};
use crate::fleet::pages::NodeFilter;
use crate::http::{Caller, HttpState};

/// Nodes on a page.
const PAGE: usize = 50;

#[derive(Deserialize, Default)]
pub struct FleetQuery {
    status: Option<String>,
    label: Option<String>,
    page: Option<usize>,
}

/// A node as a row of the table.
pub struct Row {
    id: String,
    name: String,
    status: String,
    status_class: &'static str,
    connected: bool,
    cpu: Option<u32>,
    mem: Option<u32>,
    disk: String,
    cpus: String,
    gpus: String,
    labels: Vec<String>,
    last_seen: String,
}

pub fn status_class(s: NodeStatus) -> &'static str {
    match s {
        NodeStatus::Ready => "ok",
        NodeStatus::NotReady => "warn",
        NodeStatus::Offline => "bad",
    }
}

/// The node's last metrics while it is Ready: CPU and memory use from a node gone quiet are not current.
fn live_metrics(n: &Node) -> Option<&drover_types::Metrics> {
    n.metrics.as_ref().filter(|_| n.status == NodeStatus::Ready)
}

fn row(n: Node) -> Row {
    let caps = &n.capabilities;
    Row {
        status: n.status.to_string(),
        status_class: status_class(n.status),
        connected: n.connected,
        // Use by the second: only from a Ready node is the last reading current ("–" otherwise).
        cpu: live_metrics(&n).map(|m| view::pct(m.cpu_usage)),
        mem: live_metrics(&n).map(|m| view::pct(m.mem_usage)),
        disk: n
            .metrics
            .as_ref()
            .map(|m| view::mb(m.disk_free_mb))
            .unwrap_or_else(|| "–".into()),
        cpus: match (caps.cpu_count, caps.mem_mb) {
            (Some(c), Some(m)) => format!("{c} CPU · {}", view::mb(m)),
            (Some(c), None) => format!("{c} CPU"),
            (None, Some(m)) => view::mb(m),
            (None, None) => String::new(),
        },
        gpus: match caps.gpus.len() {
            0 => "–".into(),
            1 => caps.gpus[0].name.clone(),
            k => format!("{k} × {}", caps.gpus[0].name),
        },
        labels: n.labels.iter().map(|(k, v)| format!("{k}={v}")).collect(),
        last_seen: view::ago(n.last_seen),
        id: n.id,
        name: n.name,
    }
}

#[derive(Template)]
#[template(path = "fleet_live.html")]
pub struct Live {
    self_url: String,
    error: String,
    counts: Vec<Count>,
    rows: Vec<Row>,
    pager: Pager,
}

#[derive(Template)]
#[template(path = "fleet.html")]
pub struct Page {
    status: String,
    options: Vec<(&'static str, bool)>,
    label: String,
    live: String,
}

/// The fleet page's address for a status, label filter and page.
fn href(status: Option<&str>, label: &str, page: usize) -> String {
    let mut parts = Vec::new();
    if let Some(s) = status {
        parts.push(format!("status={s}"));
    }
    if !label.is_empty() {
        parts.push(format!(
            "label={}",
            drover_types::url::percent_encode(label)
        ));
    }
    if page > 0 {
        parts.push(format!("page={page}"));
    }
    if parts.is_empty() {
        "/ui/".into()
    } else {
        format!("/ui/?{}", parts.join("&"))
    }
}

/// What the query asks for: the filter, the label filter shown (empty when the query is refused),
/// the page, and why the query was refused (empty when it was not).
struct Asked {
    filter: NodeFilter,
    error: String,
    label: String,
    page_no: usize,
}

fn asked(q: &FleetQuery) -> Asked {
    let label = q.label.clone().unwrap_or_default().trim().to_string();
    let page_no = q.page.unwrap_or(0).min(view::MAX_PAGE_NO);
    let parsed = NodeFilter::parse(
        q.status.as_deref(),
        Some(&label),
        Some(page_no * PAGE),
        Some(PAGE),
    );
    let (filter, error) = match parsed {
        Ok(f) => (f, String::new()),
        Err(e) => (
            NodeFilter {
                limit: PAGE,
                ..NodeFilter::default()
            },
            e.to_string(),
        ),
    };
    let label = if error.is_empty() {
        label
    } else {
        String::new()
    };
    Asked {
        filter,
        error,
        label,
        page_no,
    }
}

pub async fn page(
    State(s): State<HttpState>,
    caller: Caller,
    headers: HeaderMap,
    query: Result<Query<FleetQuery>, axum::extract::rejection::QueryRejection>,
) -> Response {
    let q = query.map(|Query(q)| q).unwrap_or_default();
    let Asked {
        filter,
        mut error,
        label,
        page_no,
    } = asked(&q);
    let status = filter.status.map(|s| s.to_string());
    let (rows, counts, total) = match s.fleet.nodes.nodes_page(filter.clone()).await {
        Ok(p) => (p.nodes.into_iter().map(row).collect(), p.counts, p.total),
        Err(e) => {
            tracing::error!("the dashboard cannot list nodes: {e}");
            error = "The nodes cannot be read right now; see the server's log.".into();
            (Vec::new(), Default::default(), 0)
        }
    };
    let counts_row = [
        ("All", "all", None, counts.total()),
        ("Ready", "ok", Some(NodeStatus::Ready), counts.ready),
        (
            "NotReady",
            "warn",
            Some(NodeStatus::NotReady),
            counts.not_ready,
        ),
        ("Offline", "bad", Some(NodeStatus::Offline), counts.offline),
    ]
    .into_iter()
    .map(|(name, class, st, n)| Count {
        name: name.to_string(),
        class,
        n,
        href: href(st.map(|s| s.to_string()).as_deref(), &label, 0),
        active: st == filter.status,
    })
    .collect();
    let pager = Pager::new(page_no, PAGE, rows.len(), total, |p| {
        href(status.as_deref(), &label, p)
    });
    let live = Live {
        self_url: href(status.as_deref(), &label, page_no),
        error,
        counts: counts_row,
        rows,
        pager,
    };
    let live_html = match live.render() {
        Ok(h) => h,
        Err(e) => {
            tracing::error!("cannot render the fleet: {e}");
            String::new()
        }
    };
    let status = status.unwrap_or_default();
    let body = Page {
        options: ["Ready", "NotReady", "Offline"]
            .into_iter()
            .map(|o| (o, o == status))
            .collect(),
        status,
        label,
        live: live_html,
    };
    view::live_or_page(&headers, "Fleet", Nav::Fleet, &caller, &body, &live)
}

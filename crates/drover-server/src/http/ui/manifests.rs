//! Manifests and how each stands on the nodes that report its resources: resources and nodes counted by
//! state (one aggregate read for all manifests), and a manifest's page listing its nodes a page at a time,
//! filtered by state. A node's state for a manifest is the worst of its resources' (RESOURCE_STATES).

use askama::Template;
use axum::extract::{Path, Query, State};
use axum::http::HeaderMap;
use axum::response::Response;
use drover_types::manifest::{NodeStatusReport, RESOURCE_STATES, ResourceState, StoredManifest};
use serde::Deserialize;

use super::node::resource_class;
use super::view::{self, Count, Nav, Pager};
use crate::fleet::pages::parse_resource_state;
use crate::http::{Caller, HttpState};
use crate::store::{ConvergenceQuery, ManifestCounts};

/// Nodes on a manifest's page.
const PAGE: usize = 50;

/// A state's count, linking to the nodes in it.
pub struct Chip {
    state: &'static str,
    class: &'static str,
    n: usize,
    href: Option<String>,
}

pub struct ManifestRow {
    name: String,
    href: String,
    generation: u64,
    selector: String,
    resources: usize,
    updated: String,
    /// Its resources on nodes, by state.
    states: Vec<Chip>,
    /// Nodes by their worst state, each a link to them.
    node_states: Vec<Chip>,
    /// Its targets, counted as `drover apply` counts them: selected nodes that take manifests.
    targets: usize,
    /// Targets not connected now.
    offline: usize,
    /// Selected HTTP nodes, which take no manifests.
    http: usize,
    /// Its rollout's page, when it has a rollout policy (applying it started a rollout).
    rollout: Option<String>,
}

/// The rollout page of a manifest with a rollout policy: known from the manifest alone, so the pages
/// that list manifests read nothing more for it.
fn rollout_href(m: &StoredManifest) -> Option<String> {
    m.manifest.rollout.as_ref().map(|_| {
        format!(
            "/ui/rollouts/{}",
            drover_types::url::percent_encode(&m.manifest.name)
        )
    })
}

fn selector(m: &StoredManifest) -> String {
    if m.manifest.selector.is_empty() {
        "every node".into()
    } else {
        m.manifest
            .selector
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect::<Vec<_>>()
            .join(",")
    }
}

fn page_href(name: &str, state: Option<ResourceState>, page: usize) -> String {
    let base = format!("/ui/manifests/{}", drover_types::url::percent_encode(name));
    view::href(&base, &[("state", state.map_or("", |s| s.as_str()))], page)
}

fn chips(counts: &[(ResourceState, usize)], link: Option<&str>) -> Vec<Chip> {
    RESOURCE_STATES
        .iter()
        .filter_map(|s| counts.iter().find(|(c, _)| c == s))
        .map(|(s, n)| Chip {
            state: s.as_str(),
            class: resource_class(*s),
            n: *n,
            href: link.map(|m| page_href(m, Some(*s), 0)),
        })
        .collect()
}

#[derive(Template)]
#[template(path = "manifests_live.html")]
pub struct Live {
    rows: Vec<ManifestRow>,
}

#[derive(Template)]
#[template(path = "manifests.html")]
pub struct Page {
    live: String,
}

pub async fn page(State(s): State<HttpState>, caller: Caller, headers: HeaderMap) -> Response {
    let manifests = match s.fleet.desired.manifests().await {
        Ok(m) => m,
        Err(e) => return view::failed(&caller, e.into()),
    };
    let counts = match s.fleet.desired.manifest_counts().await {
        Ok(c) => c,
        Err(e) => return view::failed(&caller, e.into()),
    };
    let targets = match s.fleet.desired.manifest_targets(&manifests).await {
        Ok(t) => t,
        Err(e) => return view::failed(&caller, e.into()),
    };
    let rows = manifests
        .into_iter()
        .zip(targets)
        .map(|(m, t)| {
            let name = m.manifest.name.clone();
            let c = counts
                .iter()
                .find(|c| c.manifest == name)
                .cloned()
                .unwrap_or_default();
            ManifestRow {
                selector: selector(&m),
                resources: m.manifest.resources.len(),
                updated: view::ago(Some(m.updated_at)),
                generation: m.generation,
                href: page_href(&name, None, 0),
                states: chips(&c.resources, None),
                node_states: chips(&c.nodes, Some(&name)),
                targets: t.nodes.len(),
                offline: t.offline.len(),
                http: t.http_nodes.len(),
                rollout: rollout_href(&m),
                name,
            }
        })
        .collect();
    let live = Live { rows };
    let body = Page {
        live: live.render().unwrap_or_default(),
    };
    view::live_or_page(&headers, "Manifests", Nav::Manifests, &caller, &body, &live)
}

#[derive(Deserialize, Default)]
pub struct NodesQuery {
    state: Option<String>,
    page: Option<usize>,
}

/// A node's line on a manifest's page: its worst state and its resources of the manifest.
pub struct NodeRow {
    id: String,
    name: String,
    state: &'static str,
    class: &'static str,
    generation: String,
    /// (resource id, state, class, error)
    resources: Vec<(String, &'static str, &'static str, String)>,
}

#[derive(Template)]
#[template(path = "manifest_live.html")]
pub struct NodesLive {
    self_url: String,
    error: String,
    counts: Vec<Count>,
    rows: Vec<NodeRow>,
    pager: Pager,
}

#[derive(Template)]
#[template(path = "manifest.html")]
pub struct NodesPage {
    name: String,
    generation: u64,
    selector: String,
    resources: usize,
    updated: String,
    rollout: Option<String>,
    live: String,
}

fn counts_row(name: &str, c: &ManifestCounts, active: Option<ResourceState>) -> Vec<Count> {
    let all = Count {
        name: "All".into(),
        class: "all",
        n: c.nodes_total(),
        href: page_href(name, None, 0),
        active: active.is_none(),
    };
    std::iter::once(all)
        .chain(chips(&c.nodes, Some(name)).into_iter().map(|chip| Count {
            active: Some(chip.state) == active.map(|s| s.as_str()),
            name: chip.state.to_string(),
            class: chip.class,
            n: chip.n,
            href: chip.href.unwrap_or_default(),
        }))
        .collect()
}

/// A node's report for the manifest as a row: its worst resource state, the generation it reports.
fn node_row(r: NodeStatusReport) -> NodeRow {
    let worst = r
        .convergence
        .resources
        .iter()
        .map(|res| res.state)
        .reduce(ResourceState::worst)
        .unwrap_or(ResourceState::Pending);
    let stale = r.convergence.observed_generation != r.desired_generation;
    NodeRow {
        state: worst.as_str(),
        class: resource_class(worst),
        generation: if stale {
            format!(
                "reports {} of {}",
                r.convergence.observed_generation, r.desired_generation
            )
        } else {
            r.desired_generation.to_string()
        },
        resources: r
            .convergence
            .resources
            .into_iter()
            .map(|res| {
                (
                    res.id,
                    res.state.as_str(),
                    resource_class(res.state),
                    res.error.unwrap_or_default(),
                )
            })
            .collect(),
        id: r.node_id,
        name: r.node_name,
    }
}

/// `GET /ui/manifests/{name}`: the manifest, its nodes counted by state, and a page of them.
pub async fn nodes(
    State(s): State<HttpState>,
    caller: Caller,
    headers: HeaderMap,
    Path(name): Path<String>,
    query: Result<Query<NodesQuery>, axum::extract::rejection::QueryRejection>,
) -> Response {
    let q = query.map(|Query(q)| q).unwrap_or_default();
    let manifest = match s.fleet.desired.manifest(&name).await {
        Ok(m) => m,
        Err(e) => return view::failed(&caller, e.into()),
    };
    let page_no = q.page.unwrap_or(0).min(view::MAX_PAGE_NO);
    let (state, mut error) = match q.state.as_deref().filter(|s| !s.trim().is_empty()) {
        None => (None, String::new()),
        Some(text) => match parse_resource_state(text, "state") {
            Ok(s) => (Some(s), String::new()),
            Err(e) => (None, e.to_string()),
        },
    };
    let counts = match s.fleet.desired.manifest_counts().await {
        Ok(c) => c
            .into_iter()
            .find(|c| c.manifest == name)
            .unwrap_or_default(),
        Err(e) => return view::failed(&caller, e.into()),
    };
    let query = ConvergenceQuery {
        manifest: Some(name.clone()),
        state,
        offset: page_no.saturating_mul(PAGE),
        limit: PAGE,
    };
    let (reports, total) = match s.fleet.desired.status_page(query).await {
        Ok(p) => p,
        Err(e) => {
            tracing::error!("the dashboard cannot read the manifest's nodes: {e}");
            error = "The nodes cannot be read right now; see the server's log.".into();
            (Vec::new(), 0)
        }
    };
    let rows: Vec<NodeRow> = reports.into_iter().map(node_row).collect();
    let pager = Pager::new(page_no, PAGE, rows.len(), total, |p| {
        page_href(&name, state, p)
    });
    let live = NodesLive {
        self_url: page_href(&name, state, page_no),
        error,
        counts: counts_row(&name, &counts, state),
        rows,
        pager,
    };
    let body = NodesPage {
        selector: selector(&manifest),
        resources: manifest.manifest.resources.len(),
        updated: view::ago(Some(manifest.updated_at)),
        generation: manifest.generation,
        rollout: rollout_href(&manifest),
        name,
        live: live.render().unwrap_or_default(),
    };
    view::live_or_page(&headers, "Manifest", Nav::Manifests, &caller, &body, &live)
}

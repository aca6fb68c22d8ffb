//! Manifests and how each stands on the nodes it selects: resources by state, and the nodes not there yet.

use std::collections::BTreeMap;

use askama::Template;
use axum::extract::State;
use axum::http::HeaderMap;
use axum::response::Response;
use drover_types::manifest::ResourceState;

use super::node::resource_class;
use super::view::{self, Nav};
use crate::api::{ApiState, Caller};

/// Nodes listed per manifest whose resources are not all Ready.
const LAGGING: usize = 20;

pub struct Lagging {
    node_id: String,
    node: String,
    resource: String,
    state: String,
    class: &'static str,
    error: String,
}

pub struct ManifestRow {
    name: String,
    generation: u64,
    selector: String,
    resources: usize,
    updated: String,
    /// (state, class, resources on nodes in it)
    states: Vec<(String, &'static str, usize)>,
    nodes: usize,
    lagging: Vec<Lagging>,
    more: usize,
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

pub async fn page(State(s): State<ApiState>, caller: Caller, headers: HeaderMap) -> Response {
    let manifests = match s.fleet.manifests().await {
        Ok(m) => m,
        Err(e) => return view::failed(&caller, e.into()),
    };
    // One read of every node's report, grouped by manifest.
    let reports = match s.fleet.status().await {
        Ok(r) => r,
        Err(e) => return view::failed(&caller, e.into()),
    };
    let mut rows: Vec<ManifestRow> = manifests
        .into_iter()
        .map(|m| ManifestRow {
            selector: if m.manifest.selector.is_empty() {
                "every node".into()
            } else {
                m.manifest
                    .selector
                    .iter()
                    .map(|(k, v)| format!("{k}={v}"))
                    .collect::<Vec<_>>()
                    .join(",")
            },
            resources: m.manifest.resources.len(),
            updated: view::ago(Some(m.updated_at)),
            generation: m.generation,
            name: m.manifest.name,
            states: Vec::new(),
            nodes: 0,
            lagging: Vec::new(),
            more: 0,
        })
        .collect();
    let index: BTreeMap<String, usize> = rows
        .iter()
        .enumerate()
        .map(|(i, r)| (r.name.clone(), i))
        .collect();
    let mut counts: Vec<BTreeMap<String, (ResourceState, usize)>> =
        vec![BTreeMap::new(); rows.len()];
    for report in &reports {
        let mut seen = vec![false; rows.len()];
        for r in &report.convergence.resources {
            let Some(&i) = index.get(&r.manifest) else {
                continue;
            };
            if !seen[i] {
                seen[i] = true;
                rows[i].nodes += 1;
            }
            counts[i]
                .entry(format!("{:?}", r.state))
                .or_insert((r.state, 0))
                .1 += 1;
            if r.state != ResourceState::Ready {
                if rows[i].lagging.len() < LAGGING {
                    rows[i].lagging.push(Lagging {
                        node_id: report.node_id.clone(),
                        node: report.node_name.clone(),
                        resource: r.id.clone(),
                        state: format!("{:?}", r.state),
                        class: resource_class(r.state),
                        error: r.error.clone().unwrap_or_default(),
                    });
                } else {
                    rows[i].more += 1;
                }
            }
        }
    }
    for (row, c) in rows.iter_mut().zip(counts) {
        row.states = c
            .into_iter()
            .map(|(name, (state, n))| (name, resource_class(state), n))
            .collect();
    }
    let live = Live { rows };
    let body = Page {
        live: live.render().unwrap_or_default(),
    };
    view::live_or_page(&headers, "Manifests", Nav::Manifests, &caller, &body, &live)
}

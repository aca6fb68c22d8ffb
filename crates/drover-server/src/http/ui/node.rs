//! A node: what it is (capabilities, labels), how it is doing (recent metrics as charts), its sessions,
//! its desired state per resource, and its recent task runs.

use askama::Template;
use axum::extract::{Path, State};
use axum::http::HeaderMap;
use axum::response::Response;
use drover_types::Node;
use drover_types::gpu::{GpuReport, GpuSample};
use drover_types::manifest::ResourceState;

use super::charts::sparkline;
use super::fleet::status_class;
use super::view::{self, Nav};
use crate::http::{ApiError, Caller, HttpState};

/// Metrics samples drawn in a chart (an hour at the default history interval).
const SAMPLES: usize = 60;
/// Runs listed.
const RUNS: usize = 10;

pub struct Chart {
    title: &'static str,
    now: String,
    svg: String,
}

pub struct ResourceRow {
    id: String,
    manifest: String,
    kind: String,
    state: String,
    class: &'static str,
    error: String,
}

pub struct RunRow {
    task_id: String,
    short: String,
    command: String,
    state: String,
    class: &'static str,
    exit: String,
    when: String,
}

/// Agents send a session's payload only when it changes, so its age says when it last changed, not
/// whether it is current; the node's liveness says that.
pub struct SessionRow {
    plugin: String,
    state: String,
    /// "unchanged for 6m", or "no data yet".
    data: String,
    /// The exact time of the last change, for the tooltip.
    changed_at: String,
    /// "every 10s (node heard from 3s ago)", or why it is not checked now.
    checked: String,
}

#[derive(Template)]
#[template(path = "node_live.html")]
pub struct Live {
    node: Node,
    status_class: &'static str,
    last_seen: String,
    registered: String,
    charts: Vec<Chart>,
    facts: Vec<(&'static str, String)>,
    gpus: Vec<(String, String)>,
    /// One line per GPU from the `gpus` plugin's latest sample (utilization, memory, heat, power).
    gpu_activity: Vec<String>,
    labels: Vec<String>,
    pending: Vec<String>,
    sessions: Vec<SessionRow>,
    desired: String,
    resources: Vec<ResourceRow>,
    runs: Vec<RunRow>,
}

#[derive(Template)]
#[template(path = "node.html")]
pub struct Page<'a> {
    name: &'a str,
    live: String,
}

pub fn resource_class(s: ResourceState) -> &'static str {
    match s {
        ResourceState::Ready => "ok",
        ResourceState::Pending | ResourceState::Reconciling => "warn",
        _ => "bad",
    }
}

pub fn run_class(state: drover_types::task::RunState) -> &'static str {
    use drover_types::task::RunState::*;
    match state {
        Succeeded => "ok",
        Pending | Running => "warn",
        Cancelled => "muted",
        _ => "bad",
    }
}

fn facts(n: &Node) -> Vec<(&'static str, String)> {
    let c = &n.capabilities;
    let mut out = Vec::new();
    let mut add = |k: &'static str, v: Option<String>| {
        if let Some(v) = v.filter(|v| !v.is_empty()) {
            out.push((k, v));
        }
    };
    add("Hostname", c.hostname.clone());
    // The version names the system ("Linux (Debian GNU/Linux 12)"); the bare OS only without one.
    add("OS", c.os_version.clone().or_else(|| c.os.clone()));
    add("Kernel", c.kernel.clone());
    add("Arch", c.arch.clone());
    add("CPUs", c.cpu_count.map(|v| v.to_string()));
    add("Memory", c.mem_mb.map(view::mb));
    add("Disk", c.disk_mb.map(view::mb));
    add("IP", n.ip.clone().or_else(|| c.ips.first().cloned()));
    add("Agent", c.agent_version.clone());
    add(
        "Transport",
        Some(format!("{:?}", n.transport).to_lowercase()),
    );
    add("Node id", Some(n.id.clone()));
    out
}

/// A plugin interval as people write it: "10s", "1m", "1500ms".
fn interval(ms: u64) -> String {
    match ms {
        ms if ms % 60_000 == 0 && ms > 0 => format!("{}m", ms / 60_000),
        ms if ms % 1000 == 0 => format!("{}s", ms / 1000),
        ms => format!("{ms}ms"),
    }
}

/// The metrics charts: CPU, memory and free disk, and the load where the node reports one.
fn charts(latest: Option<&drover_types::Metrics>, points: &[&drover_types::Metrics]) -> Vec<Chart> {
    let series = |f: fn(&drover_types::Metrics) -> f64| -> Vec<f64> {
        points.iter().map(|m| f(m)).collect()
    };
    let mut charts = vec![
        Chart {
            title: "CPU",
            now: latest
                .map(|m| format!("{}%", view::pct(m.cpu_usage)))
                .unwrap_or_default(),
            svg: sparkline(&series(|m| m.cpu_usage), Some(100.0), "CPU %"),
        },
        Chart {
            title: "Memory",
            now: latest
                .map(|m| format!("{}%", view::pct(m.mem_usage)))
                .unwrap_or_default(),
            svg: sparkline(&series(|m| m.mem_usage), Some(100.0), "Memory %"),
        },
        Chart {
            title: "Disk free",
            now: latest.map(|m| view::mb(m.disk_free_mb)).unwrap_or_default(),
            svg: sparkline(&series(|m| m.disk_free_mb as f64), None, "Disk free MB"),
        },
    ];
    if points.iter().any(|m| m.load1.is_some()) {
        charts.push(Chart {
            title: "Load (1 min)",
            now: latest
                .and_then(|m| m.load1)
                .map(|l| format!("{l:.2}"))
                .unwrap_or_default(),
            svg: sparkline(&series(|m| m.load1.unwrap_or(0.0)), None, "Load 1 min"),
        });
    }
    charts
}

/// The node's sessions, each with when its data last changed and whether it is checked now.
async fn session_rows(s: &HttpState, node: &Node) -> Vec<SessionRow> {
    s.fleet
        .streams
        .sessions(&node.id)
        .await
        .unwrap_or_default()
        .into_iter()
        .map(|i| SessionRow {
            plugin: i.plugin,
            state: format!("{:?}", i.state),
            data: match i.last_update {
                Some(t) => format!(
                    "unchanged for {}",
                    view::ago(Some(t)).trim_end_matches(" ago")
                ),
                None => "no data yet".into(),
            },
            changed_at: i.last_update.map(view::time).unwrap_or_default(),
            checked: if node.status == drover_types::NodeStatus::Ready {
                format!(
                    "every {} (node heard from {})",
                    interval(i.interval_ms),
                    view::ago(node.last_seen)
                )
            } else {
                format!(
                    "not now: the node is {} (heard from {})",
                    node.status,
                    view::ago(node.last_seen)
                )
            },
        })
        .collect()
}

/// How the node stands with its desired state: a line, and a row per resource.
async fn desired_rows(s: &HttpState, id: &str) -> Result<(String, Vec<ResourceRow>), ApiError> {
    let status = s.fleet.desired.node_status(id).await?;
    let desired = if status.desired_generation == 0 {
        "No manifest selects this node.".to_string()
    } else if status.converged() {
        format!("Converged at generation {}.", status.desired_generation)
    } else {
        format!(
            "Generation {} given, {} reported.",
            status.desired_generation, status.convergence.observed_generation
        )
    };
    let resources = status
        .convergence
        .resources
        .into_iter()
        .map(|r| ResourceRow {
            class: resource_class(r.state),
            state: format!("{:?}", r.state),
            id: r.id,
            manifest: r.manifest,
            kind: r.kind.to_string(),
            error: r.error.unwrap_or_default(),
        })
        .collect();
    Ok((desired, resources))
}

/// The node's latest task runs.
async fn run_rows(s: &HttpState, id: &str) -> Result<Vec<RunRow>, ApiError> {
    Ok(s.fleet
        .tasks
        .node_task_runs(id, RUNS)
        .await?
        .into_iter()
        .map(|r| RunRow {
            short: view::short(&r.task_id).to_string(),
            command: r.spec.summary(),
            state: format!("{:?}", r.run.state),
            class: run_class(r.run.state),
            exit: r
                .run
                .shell_code()
                .map(|c| c.to_string())
                .unwrap_or_default(),
            when: view::ago(Some(r.created_at)),
            task_id: r.task_id,
        })
        .collect())
}

/// The node's GPUs: each name with its memory and driver.
fn gpus(n: &Node) -> Vec<(String, String)> {
    n.capabilities
        .gpus
        .iter()
        .map(|g| {
            let mut detail = Vec::new();
            if let Some(m) = g.mem_mb {
                detail.push(view::mb(m));
            }
            if let Some(d) = &g.driver_version {
                detail.push(format!("driver {d}"));
            }
            (g.name.clone(), detail.join(" · "))
        })
        .collect()
}

async fn live(s: &HttpState, id: &str) -> Result<Live, ApiError> {
    let node = s.fleet.nodes.node(id).await?;
    let history = s.fleet.nodes.metrics_history(&node.id, SAMPLES).await?;
    let latest = node.metrics.as_ref();
    // The history keeps a sample a minute; the latest heartbeat ends the line, so it is current.
    let mut points: Vec<&drover_types::Metrics> = history.iter().map(|m| &m.metrics).collect();
    if let (Some(m), Some(seen)) = (latest, node.last_seen)
        && history.last().is_none_or(|h| h.at < seen)
    {
        points.push(m);
    }
    let charts = charts(latest, &points);
    let sessions = session_rows(s, &node).await;
    let (desired, resources) = desired_rows(s, &node.id).await?;
    let runs = run_rows(s, &node.id).await?;
    let gpu_activity = s
        .fleet
        .streams
        .session(&node.id, crate::fleet::GPU_PLUGIN)
        .await
        .ok()
        .and_then(|d| d.payload)
        .and_then(|p| serde_json::from_value::<GpuReport>(p).ok())
        .map(|r| r.gpus.iter().map(gpu_line).collect())
        .unwrap_or_default();
    Ok(Live {
        gpu_activity,
        status_class: status_class(node.status),
        last_seen: view::ago(node.last_seen),
        registered: view::time(node.registered_at),
        charts,
        facts: facts(&node),
        gpus: gpus(&node),
        labels: node
            .labels
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect(),
        pending: node
            .pending_labels
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect(),
        sessions,
        desired,
        resources,
        runs,
        node,
    })
}

pub async fn page(
    State(s): State<HttpState>,
    caller: Caller,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Response {
    let live = match live(&s, &id).await {
        Ok(l) => l,
        Err(e) => return view::failed(&caller, e),
    };
    let html = live.render().unwrap_or_default();
    let body = Page {
        name: &live.node.name,
        live: html,
    };
    view::live_or_page(&headers, &live.node.name, Nav::Fleet, &caller, &body, &live)
}

/// `GPU 0: 97% busy · 13097 / 81559 MiB · 55 °C · 663 / 700 W · throttled: sw_power_cap`: what the sample says.
fn gpu_line(g: &GpuSample) -> String {
    let mut parts = Vec::new();
    if let Some(u) = g.utilization_pct {
        parts.push(format!("{u:.0}% busy"));
    }
    match (g.memory_used_mib, g.memory_total_mib) {
        (Some(used), Some(total)) => parts.push(format!("{used} / {total} MiB")),
        (Some(used), None) => parts.push(format!("{used} MiB used")),
        _ => {}
    }
    if let Some(t) = g.temperature_c {
        parts.push(format!("{t:.0} °C"));
    }
    match (g.power_draw_w, g.power_limit_w) {
        (Some(p), Some(l)) => parts.push(format!("{p:.0} / {l:.0} W")),
        (Some(p), None) => parts.push(format!("{p:.0} W")),
        _ => {}
    }
    if let Some(e) = g.ecc_uncorrected.filter(|e| *e > 0) {
        parts.push(format!("{e} uncorrected ECC errors"));
    }
    let throttles: Vec<&str> = g
        .throttle_reasons
        .iter()
        .map(String::as_str)
        .filter(|r| *r != "gpu_idle")
        .collect();
    if !throttles.is_empty() {
        parts.push(format!("throttled: {}", throttles.join(", ")));
    }
    format!("GPU {}: {}", g.index, parts.join(" · "))
}

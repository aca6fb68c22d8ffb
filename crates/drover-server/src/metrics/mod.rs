//! Prometheus metrics of the control plane, with the maintained `prometheus-client` crate. Two kinds:
//! events counted as they happen (heartbeats and agent messages received, runs lost, REST and store
//! latencies), kept in [`ServerMetrics`]; and the fleet's state (nodes by status, tasks and runs by state,
//! manifests, resources by state, per-node gauges, rollouts), computed at each scrape from aggregates
//! ([`crate::fleet::Nodes::observe`]) and the rollouts' status (`rollouts`) so nothing has to be kept in step. Served on the REST address at `/metrics`
//! (an operator token, viewer role) and, with `--metrics-listen`, on an address of its own without one.

mod observation;
mod rollouts;
mod timed_store;

use std::time::Duration;

use prometheus_client::encoding::text::{encode_eof, encode_registry};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

pub use observation::{NodeGauges, Observation};
pub use timed_store::TimedStore;

/// Label sets: a few fixed keys each, values from a small set (route patterns, states), never raw input.
type Labels = Vec<(&'static str, String)>;
type FloatGauge = Gauge<f64, std::sync::atomic::AtomicU64>;

/// Latency buckets of REST requests, in seconds: 0.5 ms to 10 s.
const REQUEST_BUCKETS: &[f64] = &[
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];
/// Latency buckets of store operations, in seconds: 50 µs to 5 s (a write waits for its group commit).
const STORE_BUCKETS: &[f64] = &[
    0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0,
    2.5, 5.0,
];

/// What the control plane counts as it happens.
#[derive(Debug)]
pub struct ServerMetrics {
    registry: Registry,
    /// Export per-node CPU, memory, disk and GPU gauges (a series set per node: off by default).
    per_node: bool,
    heartbeats: Family<Labels, Counter>,
    agent_messages: Family<Labels, Counter>,
    runs_lost: Counter,
    requests: Family<Labels, Histogram>,
    store: Family<Labels, Histogram>,
    agent_connections: Family<Labels, Counter>,
    agent_connect: Family<Labels, Histogram>,
}

fn request_histogram() -> Histogram {
    Histogram::new(REQUEST_BUCKETS.iter().copied())
}

fn store_histogram() -> Histogram {
    Histogram::new(STORE_BUCKETS.iter().copied())
}

impl ServerMetrics {
    pub fn new(per_node: bool) -> Self {
        let mut registry = Registry::with_prefix("drover");
        let heartbeats = Family::<Labels, Counter>::default();
        registry.register(
            "heartbeats_received",
            "Heartbeats received from nodes, by transport (grpc: drover-agent; http: MIaaS agents)",
            heartbeats.clone(),
        );
        let agent_messages = Family::<Labels, Counter>::default();
        registry.register(
            "agent_messages_received",
            "Messages received on agent streams, by type",
            agent_messages.clone(),
        );
        let runs_lost = Counter::default();
        registry.register(
            "runs_lost",
            "Task runs ended as Lost (their node went silent, or came back without them)",
            runs_lost.clone(),
        );
        let requests: Family<Labels, Histogram> = Family::new_with_constructor(request_histogram);
        registry.register(
            "http_request_duration_seconds",
            "REST API requests until the response head, by route pattern, method and status class",
            requests.clone(),
        );
        let store: Family<Labels, Histogram> = Family::new_with_constructor(store_histogram);
        registry.register(
            "store_operation_duration_seconds",
            "Store operations, by operation (a write includes waiting for its group commit)",
            store.clone(),
        );
        let agent_connections = Family::<Labels, Counter>::default();
        registry.register(
            "agent_connections",
            "Agent connections and streams by outcome: attached, or why not (handshake_failed, \
             silent_timeout, handshake_timeout, preface_timeout, unproven_busy, unproven_timeout, hello_timeout, attach_refused)",
            agent_connections.clone(),
        );
        let agent_connect: Family<Labels, Histogram> =
            Family::new_with_constructor(request_histogram);
        registry.register(
            "agent_connect_duration_seconds",
            "How long an agent waits, by stage: handshake (accepted to TLS done), welcome (stream \
             opened to Welcome sent), attach (stream opened to the hello stored and the stream registered)",
            agent_connect.clone(),
        );
        Self {
            registry,
            per_node,
            heartbeats,
            agent_messages,
            runs_lost,
            requests,
            store,
            agent_connections,
            agent_connect,
        }
    }

    /// An agent connection's or stream's outcome (one of a few fixed words).
    pub fn agent_connection(&self, outcome: &'static str) {
        self.agent_connections
            .get_or_create(&vec![("outcome", outcome.to_string())])
            .inc();
    }

    /// How long one stage of an agent's connecting took.
    pub fn agent_connect(&self, stage: &'static str, took: Duration) {
        self.agent_connect
            .get_or_create(&vec![("stage", stage.to_string())])
            .observe(took.as_secs_f64());
    }

    pub fn per_node(&self) -> bool {
        self.per_node
    }

    /// A heartbeat; one on an agent stream is also an agent message.
    pub fn heartbeat(&self, transport: &'static str) {
        self.heartbeats
            .get_or_create(&vec![("transport", transport.to_string())])
            .inc();
        if transport == "grpc" {
            self.message("heartbeat");
        }
    }

    pub fn agent_message(&self, msg: &crate::reach::message::FromAgent) {
        self.message(msg.kind());
    }

    /// An agent message of this type.
    pub fn message(&self, kind: &'static str) {
        self.agent_messages
            .get_or_create(&vec![("type", kind.to_string())])
            .inc();
    }

    pub fn runs_lost(&self, n: usize) {
        self.runs_lost.inc_by(n as u64);
    }

    pub fn request(&self, route: String, method: String, status: u16, took: Duration) {
        let class = format!("{}xx", status / 100);
        self.requests
            .get_or_create(&vec![
                ("route", route),
                ("method", method),
                ("status", class),
            ])
            .observe(took.as_secs_f64());
    }

    pub fn store_op(&self, op: &'static str, took: Duration) {
        self.store
            .get_or_create(&vec![("op", op.to_string())])
            .observe(took.as_secs_f64());
    }

    /// The exposition: what was counted, then the fleet as observed now, with its manifests' rollouts.
    pub fn encode(
        &self,
        fleet: &Observation,
        rollouts: &[drover_types::rollout::RolloutStatus],
    ) -> Result<String, std::fmt::Error> {
        let mut out = String::new();
        encode_registry(&mut out, &self.registry)?;
        let mut now = fleet_registry(fleet);
        rollouts::register(&mut now, rollouts);
        encode_registry(&mut out, &now)?;
        encode_eof(&mut out)?;
        Ok(out)
    }
}

/// Registers a gauge family under `name` and returns it to fill.
fn gauges(registry: &mut Registry, name: &str, help: &str) -> Family<Labels, FloatGauge> {
    let family = Family::<Labels, FloatGauge>::default();
    registry.register(name, help, family.clone());
    family
}

fn label(key: &'static str, value: impl Into<String>) -> (&'static str, String) {
    (key, value.into())
}

const MIB: f64 = 1024.0 * 1024.0;

/// Distinct agent versions `/metrics` labels at most; the rest count as `other`.
const AGENT_VERSIONS_LABELLED: usize = 16;

/// The nodes' reported versions as bounded labels: a node's text is a label only when it reads as a
/// version (as `MAJOR.MINOR.PATCH`), the most common first, at most `AGENT_VERSIONS_LABELLED` of them;
/// no version is `unknown`, anything else `other`.
fn agent_version_labels(reported: &[(String, u64)]) -> Vec<(String, u64)> {
    use drover_types::version::Version;
    let mut by: std::collections::BTreeMap<String, u64> = Default::default();
    let (mut unknown, mut other) = (0, 0);
    for (text, n) in reported {
        match text.parse::<Version>() {
            Ok(v) => *by.entry(v.to_string()).or_default() += n,
            Err(_) if text.is_empty() => unknown += n,
            Err(_) => other += n,
        }
    }
    let mut versions: Vec<(String, u64)> = by.into_iter().collect();
    versions.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
    other += versions
        .iter()
        .skip(AGENT_VERSIONS_LABELLED)
        .map(|(_, n)| n)
        .sum::<u64>();
    versions.truncate(AGENT_VERSIONS_LABELLED);
    versions.extend(
        [("unknown", unknown), ("other", other)]
            .into_iter()
            .filter(|(_, n)| *n > 0)
            .map(|(l, n)| (l.to_string(), n)),
    );
    versions
}

/// The fleet's state as gauges, built afresh at each scrape.
fn fleet_registry(o: &Observation) -> Registry {
    let mut r = Registry::with_prefix("drover");
    let nodes = gauges(
        &mut r,
        "nodes",
        "Nodes by status (Ready, NotReady, Offline)",
    );
    for (status, n) in &o.nodes_by_status {
        nodes
            .get_or_create(&vec![label("status", *status)])
            .set(*n as f64);
    }
    let connected = gauges(
        &mut r,
        "agents_connected",
        "drover-agent nodes with a live stream to this server",
    );
    connected.get_or_create(&vec![]).set(o.connected as f64);
    let tasks = gauges(
        &mut r,
        "tasks",
        "Tasks by state (Running, Succeeded, Failed, Cancelled)",
    );
    for (state, n) in &o.counts.tasks_by_state {
        tasks
            .get_or_create(&vec![label("state", state)])
            .set(*n as f64);
    }
    let runs = gauges(&mut r, "task_runs", "Task runs by state");
    for (state, n) in &o.counts.runs_by_state {
        runs.get_or_create(&vec![label("state", state)])
            .set(*n as f64);
    }
    let manifests = gauges(&mut r, "manifests", "Manifests applied");
    manifests
        .get_or_create(&vec![])
        .set(o.counts.manifests as f64);
    let resources = gauges(
        &mut r,
        "resources",
        "Resources by state, over every node's latest convergence report",
    );
    for (state, n) in &o.counts.resources_by_state {
        resources
            .get_or_create(&vec![label("state", state)])
            .set(*n as f64);
    }
    let versions = gauges(
        &mut r,
        "nodes_by_agent_version",
        "Nodes by the agent version they report (unknown: none; other: not a version, or past the labels kept)",
    );
    for (version, n) in agent_version_labels(&o.counts.nodes_by_agent_version) {
        versions
            .get_or_create(&vec![label("version", version)])
            .set(n as f64);
    }
    if let Some(per_node) = &o.per_node {
        per_node_gauges(&mut r, per_node);
    }
    r
}

fn per_node_gauges(r: &mut Registry, nodes: &[NodeGauges]) {
    let cpu = gauges(r, "node_cpu_usage_percent", "A node's CPU usage");
    let mem = gauges(r, "node_memory_usage_percent", "A node's memory usage");
    let mem_total = gauges(r, "node_memory_total_bytes", "A node's memory");
    let disk_free = gauges(r, "node_disk_free_bytes", "A node's free disk space");
    let disk_total = gauges(r, "node_disk_total_bytes", "A node's disk space");
    let util = gauges(r, "gpu_utilization_percent", "Time a GPU ran a kernel");
    let mem_util = gauges(
        r,
        "gpu_memory_utilization_percent",
        "Time a GPU's memory was read or written",
    );
    let gmem_used = gauges(r, "gpu_memory_used_bytes", "A GPU's memory in use");
    let gmem_total = gauges(r, "gpu_memory_total_bytes", "A GPU's memory");
    let temp = gauges(r, "gpu_temperature_celsius", "A GPU's temperature");
    let power = gauges(r, "gpu_power_draw_watts", "A GPU's power draw");
    let power_limit = gauges(r, "gpu_power_limit_watts", "A GPU's power limit");
    let ecc_c = gauges(
        r,
        "gpu_ecc_errors_corrected",
        "Corrected ECC errors since the driver loaded",
    );
    let ecc_u = gauges(
        r,
        "gpu_ecc_errors_uncorrected",
        "Uncorrected ECC errors since the driver loaded",
    );
    let throttled = gauges(
        r,
        "gpu_throttle_reason_active",
        "1 for each clock throttle reason active on a GPU",
    );
    for n in nodes {
        let node = vec![label("node", &n.name)];
        let set = |g: &Family<Labels, FloatGauge>, labels: &Labels, v: Option<f64>| {
            if let Some(v) = v {
                g.get_or_create(labels).set(v);
            }
        };
        if let Some(m) = &n.metrics {
            set(&cpu, &node, Some(m.cpu_usage));
            set(&mem, &node, Some(m.mem_usage));
            set(&disk_free, &node, Some(m.disk_free_mb as f64 * MIB));
        }
        set(&mem_total, &node, n.mem_mb.map(|v| v as f64 * MIB));
        set(&disk_total, &node, n.disk_mb.map(|v| v as f64 * MIB));
        for g in &n.gpus {
            let gpu = vec![
                label("node", &n.name),
                label("gpu", g.index.to_string()),
                label("uuid", g.uuid.clone().unwrap_or_default()),
            ];
            set(&util, &gpu, g.utilization_pct);
            set(&mem_util, &gpu, g.memory_utilization_pct);
            set(&gmem_used, &gpu, g.memory_used_mib.map(|v| v as f64 * MIB));
            set(
                &gmem_total,
                &gpu,
                g.memory_total_mib.map(|v| v as f64 * MIB),
            );
            set(&temp, &gpu, g.temperature_c);
            set(&power, &gpu, g.power_draw_w);
            set(&power_limit, &gpu, g.power_limit_w);
            set(&ecc_c, &gpu, g.ecc_corrected.map(|v| v as f64));
            set(&ecc_u, &gpu, g.ecc_uncorrected.map(|v| v as f64));
            for reason in &g.throttle_reasons {
                let mut labels = gpu.clone();
                labels.push(label("reason", reason));
                throttled.get_or_create(&labels).set(1.0);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn agent_versions_are_bounded_labels() {
        let reported = |pairs: &[(&str, u64)]| -> Vec<(String, u64)> {
            pairs.iter().map(|(t, n)| (t.to_string(), *n)).collect()
        };
        assert_eq!(
            agent_version_labels(&reported(&[
                ("0.2.0", 5),
                ("", 2),
                ("0.1.0", 7),
                ("evil\"} 1\nx", 1),
                ("0.2.0+build", 1),
            ])),
            reported(&[("0.1.0", 7), ("0.2.0", 6), ("unknown", 2), ("other", 1)])
        );
        // However many versions nodes report, at most AGENT_VERSIONS_LABELLED labels and `other`.
        let many: Vec<(String, u64)> = (0..100).map(|i| (format!("0.{i}.0"), 1)).collect();
        let labels = agent_version_labels(&many);
        assert_eq!(labels.len(), AGENT_VERSIONS_LABELLED + 1);
        assert_eq!(labels.last(), Some(&("other".to_string(), 84)));
    }
}

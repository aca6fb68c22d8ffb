//! What `/metrics` shows of the fleet's state: the fleet fills it in at each scrape
//! ([`crate::fleet::Nodes::observe`]), this module renders it. Defined here, so the fleet depends on metrics and
//! never the reverse.

use drover_types::Metrics;
use drover_types::gpu::GpuSample;

use crate::store::FleetCounts;

pub struct Observation {
    pub nodes_by_status: Vec<(&'static str, u64)>,
    pub connected: usize,
    /// The store's counts (its `nodes` already folded into `nodes_by_status`).
    pub counts: FleetCounts,
    pub per_node: Option<Vec<NodeGauges>>,
}

/// One node's gauges, for `--metrics-per-node`.
pub struct NodeGauges {
    pub name: String,
    pub metrics: Option<Metrics>,
    pub mem_mb: Option<u64>,
    pub disk_mb: Option<u64>,
    /// The latest sample of the node's `gpus` session.
    pub gpus: Vec<GpuSample>,
}

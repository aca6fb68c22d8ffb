//! The fleet as `/metrics` sees it, computed at each scrape: counts from one aggregate read of the store and
//! from memory (streams, heartbeats not written yet, session payloads), never a record per node decoded
//! unless per-node gauges were asked for.

use std::collections::BTreeMap;
use std::time::Duration;

use chrono::Utc;
use drover_types::NodeStatus;
use drover_types::gpu::{GpuReport, GpuSample};

use super::{FleetError, Nodes};
pub use crate::metrics::{NodeGauges, Observation};

/// The plugin whose payloads are GPU samples.
pub const GPU_PLUGIN: &str = "gpus";

fn status_name(s: NodeStatus) -> &'static str {
    match s {
        NodeStatus::Ready => "Ready",
        NodeStatus::NotReady => "NotReady",
        NodeStatus::Offline => "Offline",
    }
}

impl Nodes {
    pub async fn observe(&self, per_node: bool) -> Result<Observation, FleetError> {
        let mut counts = self.store.fleet_counts().await?;
        let now = Utc::now();
        let mut by_status: BTreeMap<&'static str, u64> =
            [NodeStatus::Ready, NodeStatus::NotReady, NodeStatus::Offline]
                .into_iter()
                .map(|s| (status_name(s), 0))
                .collect();
        // A heartbeat not written yet is the latest word from its node, as in node views.
        let nodes = std::mem::take(&mut counts.nodes);
        self.beats.read_pending(|pending| {
            for n in nodes {
                let last_seen = pending
                    .get(&n.id)
                    .and_then(|s| s.last())
                    .map(|(at, _)| *at)
                    .or(n.last_seen);
                let interval = Duration::from_millis(n.heartbeat_interval_ms);
                let status = self.config.liveness.status(last_seen, interval, now);
                *by_status.entry(status_name(status)).or_default() += 1;
            }
        });
        let per_node = if per_node {
            Some(self.node_gauges().await?)
        } else {
            None
        };
        Ok(Observation {
            nodes_by_status: by_status.into_iter().collect(),
            connected: self.route.local().attached_count(),
            counts,
            per_node,
        })
    }

    async fn node_gauges(&self) -> Result<Vec<NodeGauges>, FleetError> {
        let mut gpus: std::collections::HashMap<String, Vec<GpuSample>> = self
            .route
            .local()
            .latest_payloads(GPU_PLUGIN)
            .into_iter()
            .filter_map(|(id, json)| {
                let report: GpuReport = serde_json::from_str(&json).ok()?;
                Some((id, report.gpus))
            })
            .collect();
        Ok(self
            .nodes()
            .await?
            .into_iter()
            .map(|n| NodeGauges {
                gpus: gpus.remove(&n.id).unwrap_or_default(),
                name: n.name,
                metrics: n.metrics,
                mem_mb: n.capabilities.mem_mb,
                disk_mb: n.capabilities.disk_mb,
            })
            .collect())
    }
}

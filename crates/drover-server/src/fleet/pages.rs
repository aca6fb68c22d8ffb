//! Pages of large lists for the dashboard and the REST API: nodes filtered by status and labels, counted
//! by status; tasks summarized; a node's recent runs.

use chrono::Utc;
use drover_types::{Labels, Node, NodeStatus};

use super::{Fleet, FleetError};
use crate::store::{NodeCounts, NodeQuery, NodeTaskRun, TaskSummary};

/// Nodes in a page when the caller names no size.
pub const DEFAULT_PAGE: usize = 100;
/// The largest page a caller may ask for.
pub const MAX_PAGE: usize = 1000;

/// Which nodes a caller wants, and which page of them.
#[derive(Debug, Clone, Default)]
pub struct NodeFilter {
    pub status: Option<NodeStatus>,
    pub labels: Labels,
    pub offset: usize,
    /// Clamped to 1..=`MAX_PAGE`.
    pub limit: usize,
}

/// A page of nodes, by name.
#[derive(Debug, Clone)]
pub struct NodePage {
    pub nodes: Vec<Node>,
    /// Nodes matching the filter's labels in each status (whatever the status filter).
    pub counts: NodeCounts,
    /// Nodes matching the whole filter: the pages' total.
    pub total: usize,
}

impl Fleet {
    /// One page of the nodes a filter matches: the store reads the page and counts, never the whole fleet.
    pub async fn nodes_page(&self, filter: NodeFilter) -> Result<NodePage, FleetError> {
        // Heartbeats kept in memory are the newest word on liveness: written first, so statuses computed
        // by the store agree with the nodes' views.
        self.flush_heartbeats().await?;
        let query = NodeQuery {
            status: filter.status,
            labels: filter.labels,
            offset: filter.offset,
            limit: filter.limit.clamp(1, MAX_PAGE),
            now: Utc::now(),
            liveness: self.config.liveness,
            trust_reported_labels: self.config.trust_reported_labels,
        };
        let (records, counts) = self.store.list_nodes_page(&query).await?;
        Ok(NodePage {
            nodes: records.into_iter().map(|r| self.view(r)).collect(),
            total: counts.of(query.status),
            counts,
        })
    }

    /// The newest tasks, their runs counted by state.
    pub async fn task_summaries(&self, limit: usize) -> Result<Vec<TaskSummary>, FleetError> {
        Ok(self.store.task_summaries(limit).await?)
    }

    /// A node's newest runs.
    pub async fn node_task_runs(
        &self,
        node_id: &str,
        limit: usize,
    ) -> Result<Vec<NodeTaskRun>, FleetError> {
        Ok(self.store.node_task_runs(node_id, limit).await?)
    }
}

impl NodeFilter {
    /// A filter from a caller's text (query strings, forms): `status` is Ready, NotReady or Offline (any
    /// case), `labels` is `key=value[,key=value]`. Errors name the field.
    pub fn parse(
        status: Option<&str>,
        labels: Option<&str>,
        offset: Option<usize>,
        limit: Option<usize>,
    ) -> Result<Self, FleetError> {
        let status = match status.map(str::trim).filter(|s| !s.is_empty()) {
            None => None,
            Some(s) => Some(parse_status(s).ok_or_else(|| {
                FleetError::invalid(
                    "status",
                    format!("{s:?} is not one of Ready, NotReady, Offline"),
                )
            })?),
        };
        let labels = match labels.map(str::trim).filter(|s| !s.is_empty()) {
            None => Labels::new(),
            Some(text) => {
                let labels = drover_types::labels::parse_labels([text])
                    .map_err(|e| FleetError::invalid("label", e))?;
                drover_types::labels::validate_labels(&labels)
                    .map_err(|e| FleetError::invalid("label", e))?;
                labels
            }
        };
        Ok(Self {
            status,
            labels,
            offset: offset.unwrap_or(0),
            limit: limit.unwrap_or(DEFAULT_PAGE),
        })
    }
}

fn parse_status(s: &str) -> Option<NodeStatus> {
    [NodeStatus::Ready, NodeStatus::NotReady, NodeStatus::Offline]
        .into_iter()
        .find(|status| status.to_string().eq_ignore_ascii_case(s))
}

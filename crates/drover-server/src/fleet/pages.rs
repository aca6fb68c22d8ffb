//! Pages of large lists for the dashboard and the REST API: nodes filtered by status and labels, counted
//! by status; tasks summarized; a task's runs a page at a time; manifests' resources and nodes counted by
//! state and their nodes' convergence a page at a time; a node's recent runs.

use chrono::Utc;
use drover_types::manifest::{NodeStatusReport, ResourceState};
use drover_types::task::{RUN_STATES, RunState, TaskRun};
use drover_types::{Labels, Node, NodeStatus};

use super::{Desired, FleetError, Nodes, Tasks};
use crate::store::{
    ConvergencePage, ConvergenceQuery, ManifestCounts, NodeCounts, NodeQuery, NodeRecordPage,
    NodeTaskRun, RunQuery, TaskPage, TaskSummary,
};

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

impl Nodes {
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
        let NodeRecordPage { nodes, counts } = self.store.list_nodes_page(&query).await?;
        Ok(NodePage {
            nodes: nodes.into_iter().map(|r| self.view(r)).collect(),
            total: counts.of(query.status),
            counts,
        })
    }
}

impl Tasks {
    /// The newest tasks, their runs counted by state.
    pub async fn task_summaries(&self, limit: usize) -> Result<Vec<TaskSummary>, FleetError> {
        Ok(self.store.task_summaries(limit).await?)
    }

    /// The newest tasks, their runs counted by state, each with its first `runs` runs (in node order).
    pub async fn task_list(
        &self,
        limit: usize,
        runs: usize,
    ) -> Result<Vec<(TaskSummary, Vec<TaskRun>)>, FleetError> {
        let summaries = self.store.task_summaries(limit).await?;
        let mut out = Vec::with_capacity(summaries.len());
        for summary in summaries {
            let first = if runs == 0 {
                Vec::new()
            } else {
                self.store
                    .runs_in_state(&summary.id, &RUN_STATES, runs)
                    .await?
            };
            out.push((summary, first));
        }
        Ok(out)
    }

    /// A task (by id or a unique prefix) with its runs counted by state and one page of them.
    pub async fn task_page(&self, id: &str, mut query: RunQuery) -> Result<TaskPage, FleetError> {
        query.limit = query.limit.clamp(1, MAX_PAGE);
        if let Some(page) = self.store.task_page(id, &query).await? {
            return Ok(page);
        }
        let full = self.task_id_by_prefix(id).await?;
        self.store
            .task_page(&full, &query)
            .await?
            .ok_or_else(|| FleetError::TaskNotFound(id.to_string()))
    }
}

impl Desired {
    /// Every manifest's resources and nodes counted by state (one aggregate read).
    pub async fn manifest_counts(&self) -> Result<Vec<ManifestCounts>, FleetError> {
        Ok(self.store.manifest_counts().await?)
    }

    /// One page of nodes' convergence, by name, and how many the query matches. With a manifest named,
    /// each report keeps only that manifest's resources.
    pub async fn status_page(
        &self,
        mut query: ConvergenceQuery,
    ) -> Result<(Vec<NodeStatusReport>, usize), FleetError> {
        query.limit = query.limit.clamp(1, MAX_PAGE);
        let ConvergencePage { rows, total } = self.store.convergence_page(&query).await?;
        let reports = rows
            .into_iter()
            .map(|row| {
                let mut convergence = row.report.unwrap_or_default();
                if let Some(m) = &query.manifest {
                    convergence.resources.retain(|r| &r.manifest == m);
                }
                NodeStatusReport {
                    node_id: row.node_id,
                    node_name: row.node_name,
                    desired_generation: row.desired_generation,
                    convergence,
                }
            })
            .collect();
        Ok((reports, total))
    }
}

impl Tasks {
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

/// A run state from a caller's text (any case); the error names `field`.
pub fn parse_run_state(text: &str, field: &str) -> Result<RunState, FleetError> {
    RUN_STATES
        .into_iter()
        .find(|s| s.as_str().eq_ignore_ascii_case(text.trim()))
        .ok_or_else(|| {
            let all: Vec<&str> = RUN_STATES.iter().map(|s| s.as_str()).collect();
            FleetError::invalid(field, format!("{text:?} is not one of {}", all.join(", ")))
        })
}

/// A resource state from a caller's text (any case); the error names `field`.
pub fn parse_resource_state(text: &str, field: &str) -> Result<ResourceState, FleetError> {
    ResourceState::parse(text.trim()).ok_or_else(|| {
        let all: Vec<&str> = drover_types::manifest::RESOURCE_STATES
            .iter()
            .map(|s| s.as_str())
            .collect();
        FleetError::invalid(field, format!("{text:?} is not one of {}", all.join(", ")))
    })
}

fn parse_status(s: &str) -> Option<NodeStatus> {
    [NodeStatus::Ready, NodeStatus::NotReady, NodeStatus::Offline]
        .into_iter()
        .find(|status| status.to_string().eq_ignore_ascii_case(s))
}

//! What the store reads for pages of large lists (the dashboard's and the REST API's): a page of nodes with
//! counts, tasks summarized instead of loaded with every run, a page of a task's runs, manifests' resources
//! counted and a page of nodes' convergence.

use chrono::{DateTime, Utc};
use drover_types::manifest::{NodeConvergence, ResourceState};
use drover_types::signing::CommandSignature;
use drover_types::task::{RunState, Target, Task, TaskRun, TaskSpec};
use drover_types::{Labels, LivenessPolicy, NodeStatus};

/// Which nodes to list, and which page of them (by name).
#[derive(Debug, Clone)]
pub struct NodeQuery {
    /// Only nodes in this status (computed from `last_seen` as the liveness policy does).
    pub status: Option<NodeStatus>,
    /// Only nodes whose labels (as selection sees them) contain all of these.
    pub labels: Labels,
    pub offset: usize,
    pub limit: usize,
    /// The time statuses are computed at, and how.
    pub now: DateTime<Utc>,
    pub liveness: LivenessPolicy,
    /// Whether the labels nodes report count (the server's `trust_reported_labels`).
    pub trust_reported_labels: bool,
}

/// How many nodes matching a query's labels are in each status (whatever its status filter).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct NodeCounts {
    pub ready: usize,
    pub not_ready: usize,
    pub offline: usize,
}

/// One page of nodes with the counts over every node the filter matched.
#[derive(Debug, Clone)]
pub struct NodeRecordPage {
    pub nodes: Vec<super::NodeRecord>,
    pub counts: NodeCounts,
}

impl NodeCounts {
    pub fn total(&self) -> usize {
        self.ready + self.not_ready + self.offline
    }

    /// How many are in `status`, or in any when `None`.
    pub fn of(&self, status: Option<NodeStatus>) -> usize {
        match status {
            None => self.total(),
            Some(NodeStatus::Ready) => self.ready,
            Some(NodeStatus::NotReady) => self.not_ready,
            Some(NodeStatus::Offline) => self.offline,
        }
    }
}

/// A task with its runs counted by state.
#[derive(Debug, Clone, PartialEq)]
pub struct TaskSummary {
    pub id: String,
    pub target: Target,
    pub spec: TaskSpec,
    pub created_by: String,
    pub created_at: DateTime<Utc>,
    pub max_parallel: Option<u32>,
    pub signature: Option<CommandSignature>,
    /// Runs by state; states with none are left out.
    pub runs: Vec<(RunState, usize)>,
}

impl TaskSummary {
    /// The task with these of its runs (not necessarily all).
    pub fn into_task(self, runs: Vec<TaskRun>) -> Task {
        Task {
            id: self.id,
            target: self.target,
            spec: self.spec,
            created_by: self.created_by,
            created_at: self.created_at,
            max_parallel: self.max_parallel,
            signature: self.signature,
            runs,
        }
    }

    /// Runs in a final state.
    pub fn done(&self) -> usize {
        self.runs
            .iter()
            .filter(|(s, _)| s.is_final())
            .map(|(_, n)| n)
            .sum()
    }

    /// Runs in `state`, or in any when `None`.
    pub fn count(&self, state: Option<RunState>) -> usize {
        self.runs
            .iter()
            .filter(|(s, _)| state.is_none_or(|want| *s == want))
            .map(|(_, n)| n)
            .sum()
    }

    pub fn total_runs(&self) -> usize {
        self.runs.iter().map(|(_, n)| n).sum()
    }

    /// The overall state `Task::state` gives, from the counts.
    pub fn state(&self) -> &'static str {
        let count = |f: fn(RunState) -> bool| -> usize {
            self.runs
                .iter()
                .filter(|(s, _)| f(*s))
                .map(|(_, n)| n)
                .sum()
        };
        let total = self.total_runs();
        if count(|s| s.is_final()) < total {
            "Running"
        } else if count(|s| s.is_success()) == total {
            "Succeeded"
        } else if count(|s| s == RunState::Cancelled) == total {
            "Cancelled"
        } else {
            "Failed"
        }
    }
}

/// One of a node's runs, with its task's spec and time.
#[derive(Debug, Clone, PartialEq)]
pub struct NodeTaskRun {
    pub task_id: String,
    pub spec: TaskSpec,
    pub created_at: DateTime<Utc>,
    pub run: TaskRun,
}

/// Which of a task's runs to read, in the task's node order.
#[derive(Debug, Clone, Default)]
pub struct RunQuery {
    pub state: Option<RunState>,
    /// Only these nodes' runs; every node's when empty.
    pub nodes: Vec<String>,
    pub offset: usize,
    pub limit: usize,
}

/// A task with its runs counted by state, and one page of them.
#[derive(Debug, Clone, PartialEq)]
pub struct TaskPage {
    pub summary: TaskSummary,
    pub runs: Vec<TaskRun>,
    /// Runs matching the query: the pages' total.
    pub total: usize,
}

/// How a manifest stands on the nodes that report its resources.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ManifestCounts {
    pub manifest: String,
    /// Its resources on every node, by state.
    pub resources: Vec<(ResourceState, usize)>,
    /// Nodes by the worst state of their resources of it (`drover_types::manifest::RESOURCE_STATES`).
    pub nodes: Vec<(ResourceState, usize)>,
}

impl ManifestCounts {
    pub fn nodes_total(&self) -> usize {
        self.nodes.iter().map(|(_, n)| n).sum()
    }
}

/// Which nodes' convergence to read, by node name.
#[derive(Debug, Clone, Default)]
pub struct ConvergenceQuery {
    /// Only nodes reporting resources of this manifest (their state is then that of those resources).
    pub manifest: Option<String>,
    /// Only nodes whose worst resource state is this.
    pub state: Option<ResourceState>,
    pub offset: usize,
    pub limit: usize,
}

/// A node's convergence, as `convergence_of` and `convergence_page` read it.
#[derive(Debug, Clone, PartialEq)]
pub struct ConvergenceRow {
    pub node_id: String,
    pub node_name: String,
    /// The node's desired state's generation (0 when it has none).
    pub desired_generation: u64,
    /// Its latest report (`None` before its first).
    pub report: Option<NodeConvergence>,
}

/// One page of nodes' convergence, with how many rows the filter matched in all.
#[derive(Debug, Clone)]
pub struct ConvergencePage {
    pub rows: Vec<ConvergenceRow>,
    pub total: usize,
}

//! What the store reads for pages of large lists (the dashboard's and the REST API's): a page of nodes with
//! counts, and tasks summarized instead of loaded with every run.

use chrono::{DateTime, Utc};
use drover_types::task::{RunState, Target, TaskRun, TaskSpec};
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
    /// Runs by state; states with none are left out.
    pub runs: Vec<(RunState, usize)>,
}

impl TaskSummary {
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

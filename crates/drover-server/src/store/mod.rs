//! Persistent fleet state behind one trait, so the control plane is written once for every backend.
//! SQLite (embedded, the default) lives in `sqlite`; PostgreSQL (for a fleet that outgrows one machine) in
//! `postgres`. Both pass the same tests (`conformance`).

#[cfg(test)]
mod bench;
mod codec;
#[cfg(test)]
mod conformance;
mod pages;
mod postgres;
mod sqlite;
pub mod transfer;

pub use pages::{
    ConvergenceQuery, ConvergenceRow, ManifestCounts, NodeCounts, NodeQuery, NodeTaskRun, RunQuery,
    TaskPage, TaskSummary,
};
pub use postgres::{PgStore, redact_url};
pub use sqlite::SqliteStore;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use drover_types::{
    Capabilities, Labels, Metrics, MetricsSample, Transport,
    manifest::{DesiredState, Manifest, NodeConvergence, StoredManifest},
    operator::OperatorInfo,
    signing::Signature,
    task::{AuditEntry, LateExit, RunState, Task, TaskRun, TaskSpec},
    token::{JoinTokenInfo, TokenRefusal},
};

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The backend's own error (SQLite's or PostgreSQL's), kept as its source.
    #[error("database error: {0}")]
    Db(Box<dyn std::error::Error + Send + Sync>),
    #[error("cannot reach the database: {0}")]
    Unavailable(String),
    #[error("stored data is corrupt ({what}): {source}")]
    Corrupt {
        what: &'static str,
        source: serde_json::Error,
    },
    #[error("a node named {0:?} already exists")]
    NameTaken(String),
    #[error("database task failed: {0}")]
    Task(String),
    #[error("manifest {name:?} is at version {have}: {reason}")]
    ManifestVersion {
        name: String,
        have: u64,
        reason: &'static str,
    },
}

/// Data sealed with the cluster secret (see `cluster`), as PostgreSQL keeps it.
#[derive(Debug, Clone, PartialEq)]
pub struct Sealed {
    /// HKDF salt, random per sealing.
    pub salt: Vec<u8>,
    pub nonce: Vec<u8>,
    /// Ciphertext and tag.
    pub data: Vec<u8>,
}

/// What storing a manifest did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PutManifest {
    pub generation: u64,
    /// Its content changed (and so its generation went up).
    pub changed: bool,
    /// Only its signature changed (signed again, or by another key): the generation stays.
    pub resigned: bool,
    /// The version a signed write must reach (the newest signed one's); unsigned writes never raise it.
    pub signed_version: Option<u64>,
}

/// A join token as stored: its secret only as a hash.
#[derive(Debug, Clone, PartialEq)]
pub struct JoinTokenRecord {
    pub info: JoinTokenInfo,
    pub secret_sha256: String,
}

impl JoinTokenRecord {
    /// Whether the secret with this SHA-256 may use the token now (without counting a use).
    pub fn check(&self, secret_sha256: &str, now: DateTime<Utc>) -> Result<(), TokenRefusal> {
        let info = &self.info;
        if self.secret_sha256 != secret_sha256 {
            Err(TokenRefusal::Unknown)
        } else if info.revoked {
            Err(TokenRefusal::Revoked)
        } else if info.expires_at <= now {
            Err(TokenRefusal::Expired)
        } else if let Some(max) = info.max_uses.filter(|max| info.uses >= *max) {
            Err(TokenRefusal::Exhausted(max))
        } else {
            Ok(())
        }
    }
}

/// An operator as stored: its token only as a hash.
#[derive(Debug, Clone, PartialEq)]
pub struct OperatorRecord {
    pub info: OperatorInfo,
    pub token_sha256: String,
}

/// A node as stored. Liveness is not stored: it is derived from `last_seen` when read.
#[derive(Debug, Clone, PartialEq)]
pub struct NodeRecord {
    pub id: String,
    pub name: String,
    pub transport: Transport,
    /// Labels the server gave the node (from its join token; later, set or accepted by operators). They win
    /// over the others.
    pub labels: Labels,
    /// Labels the node reports about itself, replaced whenever it says hello or registers again. Selection
    /// uses them only when the server trusts reported labels.
    pub reported_labels: Labels,
    /// The labels the node reported when it enrolled (first registered): bound then, as the join token was.
    pub enrolled_labels: Labels,
    pub ip: Option<String>,
    pub registered_at: DateTime<Utc>,
    pub last_seen: Option<DateTime<Utc>>,
    pub heartbeat_interval_ms: u64,
    pub capabilities: Capabilities,
    pub metrics: Option<Metrics>,
    /// HTTP nodes authenticate heartbeats with a bearer token; only its hash is kept.
    pub node_token_sha256: Option<String>,
}

#[async_trait]
pub trait Store: Send + Sync + 'static {
    /// Whether the database answers now (`/ready`). SQLite lives in this process: always.
    async fn ping(&self) -> Result<(), StoreError> {
        Ok(())
    }
    /// Takes or keeps the lock for leader-only work (sweeps, retention) across replicas; `true` while this
    /// server holds it. SQLite has one server per data dir: it always leads.
    async fn try_lead(&self) -> Result<bool, StoreError> {
        Ok(true)
    }
    async fn insert_join_token(&self, token: &JoinTokenRecord) -> Result<(), StoreError>;
    /// Every readable token (one that cannot be read is logged and left out).
    async fn list_join_tokens(&self) -> Result<Vec<JoinTokenInfo>, StoreError>;
    async fn get_join_token(&self, id: &str) -> Result<Option<JoinTokenRecord>, StoreError>;
    /// Returns false when no such token exists.
    async fn revoke_join_token(&self, id: &str) -> Result<bool, StoreError>;
    /// Checks a token and counts one use, atomically, so a limited token cannot be overused by racing agents.
    async fn use_join_token(
        &self,
        id: &str,
        secret_sha256: &str,
        now: DateTime<Utc>,
    ) -> Result<Result<JoinTokenInfo, TokenRefusal>, StoreError>;

    /// Stores a new operator, or replaces a revoked one of the same name (a person whose token was revoked
    /// gets a new one under their name). Returns false, changing nothing, when an active one has the name.
    async fn put_operator(&self, operator: &OperatorRecord) -> Result<bool, StoreError>;
    /// Every readable operator, revoked ones included.
    async fn list_operators(&self) -> Result<Vec<OperatorInfo>, StoreError>;
    /// The operator, not revoked, whose token has this SHA-256.
    async fn operator_by_token(
        &self,
        token_sha256: &str,
    ) -> Result<Option<OperatorInfo>, StoreError>;
    /// Returns false when no active operator has the name.
    async fn revoke_operator(&self, name: &str) -> Result<bool, StoreError>;

    /// Fails with `NameTaken` when another node has the name.
    async fn insert_node(&self, node: &NodeRecord) -> Result<(), StoreError>;
    /// Changes a node in one step (read, change, write, with nothing in between): never write a whole
    /// record read earlier. Returns the node as changed, `None` when no such node exists.
    async fn modify_node(
        &self,
        id: &str,
        change: NodeChange,
    ) -> Result<Option<NodeRecord>, StoreError>;
    async fn get_node(&self, id: &str) -> Result<Option<NodeRecord>, StoreError>;
    async fn get_node_by_name(&self, name: &str) -> Result<Option<NodeRecord>, StoreError>;
    /// The HTTP node whose node token has this SHA-256.
    async fn get_node_by_token(&self, token_sha256: &str)
    -> Result<Option<NodeRecord>, StoreError>;
    async fn list_nodes(&self) -> Result<Vec<NodeRecord>, StoreError>;
    /// One page of the nodes a query matches, by name, and how many match it in each status: the store
    /// reads only the page's rows, so a page of a large fleet costs what a page of a small one does.
    async fn list_nodes_page(
        &self,
        query: &NodeQuery,
    ) -> Result<(Vec<NodeRecord>, NodeCounts), StoreError>;
    /// Returns false when no such node exists. Its metrics history goes with it.
    async fn delete_node(&self, id: &str) -> Result<bool, StoreError>;
    /// Stores the latest metrics and, as `history` says, appends them to the node's history.
    /// Returns false when no such node exists.
    async fn record_heartbeat(
        &self,
        id: &str,
        at: DateTime<Utc>,
        metrics: &Metrics,
        history: MetricsHistory,
    ) -> Result<bool, StoreError>;
    /// `record_heartbeat` for many nodes in one write; nodes that no longer exist are skipped.
    async fn record_heartbeats(
        &self,
        beats: Vec<(String, DateTime<Utc>, Metrics)>,
        history: MetricsHistory,
    ) -> Result<(), StoreError>;
    /// The newest `limit` samples, oldest first.
    async fn metrics_history(
        &self,
        id: &str,
        limit: usize,
    ) -> Result<Vec<MetricsSample>, StoreError>;

    /// Stores a new task with its runs.
    async fn insert_task(&self, task: &Task) -> Result<(), StoreError>;
    /// Moves the named runs that are in one of `from` to `patch.state`, setting the fields the patch
    /// carries, and returns them as they are now. Runs in any other state are left alone: a transition names
    /// the state it leaves, so nothing overwrites a transition it did not see.
    async fn transition_runs(
        &self,
        task_id: &str,
        node_ids: Vec<String>,
        from: &'static [RunState],
        patch: RunPatch,
    ) -> Result<Vec<TaskRun>, StoreError>;
    /// Keeps an exit that came after its run had been ended by the server (Lost, Unreachable, or cancelled
    /// on the server only); the run stays as it is. Returns the run when the exit was kept.
    async fn record_late_exit(
        &self,
        task_id: &str,
        node_id: &str,
        late: LateExit,
    ) -> Result<Option<TaskRun>, StoreError>;
    async fn get_run(&self, task_id: &str, node_id: &str) -> Result<Option<TaskRun>, StoreError>;
    /// A task's runs in one of `states`, in the task's node order, at most `limit`.
    async fn runs_in_state(
        &self,
        task_id: &str,
        states: &'static [RunState],
        limit: usize,
    ) -> Result<Vec<TaskRun>, StoreError>;
    async fn count_runs(
        &self,
        task_id: &str,
        states: &'static [RunState],
    ) -> Result<usize, StoreError>;
    /// Runs not yet final on a node, with their task's spec: to redeliver or declare lost when it comes back.
    async fn open_runs_for_node(
        &self,
        node_id: &str,
    ) -> Result<Vec<(String, TaskRun, TaskSpec)>, StoreError>;
    /// (task id, node id) of runs not yet final whose node was last heard from before `cutoff` (or never).
    async fn open_runs_silent_since(
        &self,
        cutoff: DateTime<Utc>,
    ) -> Result<Vec<(String, String)>, StoreError>;
    /// Deletes finished tasks created before `cutoff`, with their output; returns how many.
    async fn delete_finished_tasks_before(
        &self,
        cutoff: DateTime<Utc>,
    ) -> Result<usize, StoreError>;
    /// Deletes the output of the oldest finished tasks until all output takes at most `max_bytes`;
    /// returns how many tasks lost their output.
    async fn trim_output(&self, max_bytes: u64) -> Result<usize, StoreError>;
    async fn get_task(&self, id: &str) -> Result<Option<Task>, StoreError>;
    /// Ids of tasks starting with `prefix` (at most `limit`).
    async fn task_ids_with_prefix(
        &self,
        prefix: &str,
        limit: usize,
    ) -> Result<Vec<String>, StoreError>;
    /// The newest `limit` tasks, newest first.
    async fn list_tasks(&self, limit: usize) -> Result<Vec<Task>, StoreError>;
    /// The newest `limit` tasks, newest first, with their runs counted by state instead of listed.
    async fn task_summaries(&self, limit: usize) -> Result<Vec<TaskSummary>, StoreError>;
    /// A task with its runs counted by state and one page of them (`None` when no such task): the store
    /// reads the page's runs only.
    async fn task_page(&self, id: &str, query: &RunQuery) -> Result<Option<TaskPage>, StoreError>;
    /// A node's newest `limit` runs, newest task first.
    async fn node_task_runs(
        &self,
        node_id: &str,
        limit: usize,
    ) -> Result<Vec<NodeTaskRun>, StoreError>;
    /// Stores output chunks; ones already stored (same task, node and seq) are ignored.
    async fn insert_output(
        &self,
        task_id: &str,
        chunks: Vec<OutputRecord>,
    ) -> Result<(), StoreError>;
    /// Stored output in arrival order, after `after` (a row cursor), at most `limit` rows.
    async fn output(
        &self,
        task_id: &str,
        after: i64,
        limit: usize,
    ) -> Result<Vec<(i64, OutputRecord)>, StoreError>;
    /// Stored output in arrival order after `after`, at most `limit` rows, ending with the row that
    /// reaches `max_bytes` of data (the first row always comes): a reader holds about `max_bytes` however
    /// large the rows are.
    async fn output_within(
        &self,
        task_id: &str,
        after: i64,
        limit: usize,
        max_bytes: usize,
    ) -> Result<Vec<(i64, OutputRecord)>, StoreError>;
    /// One past the highest output seq stored for a task on a node (0 when none).
    async fn stored_seq(&self, task_id: &str, node_id: &str) -> Result<u64, StoreError>;
    /// Appends audit entries, in their order, in one write.
    async fn insert_audits(&self, entries: Vec<AuditEntry>) -> Result<(), StoreError>;

    /// Stores a manifest and its signature; its generation goes up when its content changed. A version
    /// lower than the stored one is refused, and so is new signed content without a higher version.
    async fn put_manifest(
        &self,
        manifest: &Manifest,
        signature: Option<&Signature>,
        now: DateTime<Utc>,
    ) -> Result<PutManifest, StoreError>;
    async fn list_manifests(&self) -> Result<Vec<StoredManifest>, StoreError>;
    /// Returns false when no such manifest exists.
    async fn delete_manifest(&self, name: &str) -> Result<bool, StoreError>;
    /// A node's desired state and the hash of its content.
    async fn get_desired(
        &self,
        node_id: &str,
    ) -> Result<Option<(DesiredState, String)>, StoreError>;
    /// Whether a node's desired state has a File resource with this content: what a node may fetch. Read
    /// without decoding the whole state (every node of a fleet-wide apply asks once per file).
    async fn desired_names_blob(&self, node_id: &str, sha256: &str) -> Result<bool, StoreError>;
    /// Every stored desired state's node id, generation and content hash, in one read (a fleet-wide
    /// recomputation compares against these instead of reading each node's state).
    async fn desired_versions(&self) -> Result<Vec<(String, u64, String)>, StoreError>;
    /// Stores a node's desired state if the stored one still has generation `state.generation - 1` (none
    /// counts as 0); returns false, changing nothing, when another change got there first.
    async fn put_desired(
        &self,
        node_id: &str,
        state: &DesiredState,
        hash: &str,
    ) -> Result<bool, StoreError>;
    /// Stores a node's report unless the stored one is for a newer generation (reports can cross).
    async fn put_convergence(
        &self,
        node_id: &str,
        report: &NodeConvergence,
    ) -> Result<(), StoreError>;
    async fn get_convergence(&self, node_id: &str) -> Result<Option<NodeConvergence>, StoreError>;
    /// Every node's (id, name), desired generation (0 when none) and latest report, or only those of the
    /// nodes with these ids (ids of no node are skipped), by name, in one read.
    async fn convergence_of(
        &self,
        ids: Option<&[String]>,
    ) -> Result<Vec<(String, String, u64, Option<NodeConvergence>)>, StoreError>;
    /// Every manifest's resources and nodes counted by state, over the nodes' latest reports, in one
    /// aggregate read (manifests no node reports are left out).
    async fn manifest_counts(&self) -> Result<Vec<ManifestCounts>, StoreError>;
    /// One page of the nodes' convergence a query matches, by node name, and how many it matches.
    async fn convergence_page(
        &self,
        query: &ConvergenceQuery,
    ) -> Result<(Vec<ConvergenceRow>, usize), StoreError>;
    /// Stores content under its SHA-256 (storing it twice is harmless).
    async fn put_blob(&self, sha256: &str, data: Vec<u8>) -> Result<(), StoreError>;
    async fn get_blob(&self, sha256: &str) -> Result<Option<Vec<u8>>, StoreError>;
    async fn list_audit(&self, filter: &AuditFilter) -> Result<Vec<AuditEntry>, StoreError>;

    /// What `/metrics` counts, in one read: aggregates, never a record per node decoded.
    async fn fleet_counts(&self) -> Result<FleetCounts, StoreError>;
}

/// Counts for `/metrics`.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct FleetCounts {
    /// Every node's liveness inputs (its status is derived from them, as in views).
    pub nodes: Vec<NodeLiveness>,
    /// (run state, runs)
    pub runs_by_state: Vec<(String, u64)>,
    /// (task state as `Task::state` names it, tasks)
    pub tasks_by_state: Vec<(String, u64)>,
    pub manifests: u64,
    /// (resource state, resources) over every node's latest convergence report.
    pub resources_by_state: Vec<(String, u64)>,
}

/// What a node's status is derived from.
#[derive(Debug, Clone, PartialEq)]
pub struct NodeLiveness {
    pub id: String,
    pub last_seen: Option<DateTime<Utc>>,
    pub heartbeat_interval_ms: u64,
}

/// The error of a run cancelled by the server alone, its node being away; a later exit is kept beside it.
pub const SERVER_ONLY_CANCEL: &str = "the node is not connected; cancelled on the server only";

/// Which heartbeats a node's metrics history keeps. Every beat updates the node's latest metrics; the
/// history takes at most one sample per `every` of the clock, so at fleet size a beat usually costs one row
/// update instead of an insert, an index entry and a prune.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct MetricsHistory {
    /// Samples kept per node, newest first.
    pub keep: usize,
    /// One sample per this much of the clock (a beat in the same slot as the newest sample is not kept).
    pub every: std::time::Duration,
}

impl MetricsHistory {
    /// Every beat is a sample.
    #[cfg(test)]
    pub fn every_beat(keep: usize) -> Self {
        Self {
            keep,
            every: std::time::Duration::ZERO,
        }
    }

    /// Whether a beat at `at` becomes a sample, the node's newest sample being at `newest`.
    pub fn samples(&self, newest: Option<DateTime<Utc>>, at: DateTime<Utc>) -> bool {
        let every = i64::try_from(self.every.as_millis()).unwrap_or(i64::MAX);
        let slot = |t: DateTime<Utc>| t.timestamp_millis().div_euclid(every.max(1));
        every == 0 || newest.is_none_or(|newest| slot(newest) != slot(at))
    }
}

/// A change to a node, applied to the stored record inside the store's write.
pub type NodeChange = Box<dyn FnOnce(&mut NodeRecord) + Send>;

/// What a run transition sets besides the state; `None` leaves a field as it is.
#[derive(Debug, Clone, PartialEq)]
pub struct RunPatch {
    pub state: RunState,
    pub exit_code: Option<i32>,
    pub signal: Option<i32>,
    pub error: Option<String>,
    pub started_at: Option<DateTime<Utc>>,
    pub finished_at: Option<DateTime<Utc>>,
}

impl RunPatch {
    pub fn to(state: RunState) -> Self {
        Self {
            state,
            exit_code: None,
            signal: None,
            error: None,
            started_at: None,
            finished_at: None,
        }
    }

    /// To a final state, now, with a reason.
    pub fn end(state: RunState, error: impl Into<String>) -> Self {
        Self {
            error: Some(error.into()),
            finished_at: Some(Utc::now()),
            ..Self::to(state)
        }
    }
}

/// One output chunk as stored.
#[derive(Debug, Clone, PartialEq)]
pub struct OutputRecord {
    pub node_id: String,
    pub seq: u64,
    /// 1 stdout, 2 stderr
    pub stream: u8,
    pub data: Vec<u8>,
}

/// Which audit entries to list.
#[derive(Debug, Clone, Default)]
pub struct AuditFilter {
    pub actor: Option<String>,
    pub action: Option<String>,
    /// Entries whose target contains this.
    pub target: Option<String>,
    pub since: Option<DateTime<Utc>>,
    pub limit: usize,
}

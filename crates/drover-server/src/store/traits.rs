//! The store's traits, one per aggregate. `Store` is their sum: every backend implements each of them, and
//! `Arc<dyn Store>` is one handle to one database (SQLite keeps its one group-committing writer for all).
//! Calling a method needs its trait in scope: `use crate::store::prelude::*`.

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use drover_types::{
    Metrics, MetricsSample,
    manifest::{DesiredState, Manifest, NodeConvergence, StoredManifest},
    operator::OperatorInfo,
    rollout::Rollout,
    signing::Signature,
    task::{AuditEntry, LateExit, RunState, Task, TaskRun},
    token::JoinTokenInfo,
};

use super::{
    AuditFilter, ConvergencePage, ConvergenceQuery, ConvergenceRow, DesiredVersion, FleetCounts,
    Heartbeat, JoinTokenRecord, ManifestCounts, MetricsHistory, NodeChange, NodeQuery, NodeRecord,
    NodeRecordPage, NodeTaskRun, OpenRun, OperatorRecord, OutputRecord, PutManifest, RunPatch,
    RunQuery, SilentRun, StoreError, StoredDesired, StoredOutput, TaskPage, TaskSummary, TokenUse,
};

/// The store as a whole: whether the database answers, the leader lock, fleet-wide counts.
#[async_trait]
pub trait FleetStore: Send + Sync + 'static {
    /// Whether the database answers now (`/ready`). SQLite lives in this process: always.
    async fn ping(&self) -> Result<(), StoreError> {
        Ok(())
    }
    /// Takes or keeps the lock for leader-only work (sweeps, retention) across replicas; `true` while this
    /// server holds it. SQLite has one server per data dir: it always leads.
    async fn try_lead(&self) -> Result<bool, StoreError> {
        Ok(true)
    }
    /// What `/metrics` counts, in one read: aggregates, never a record per node decoded.
    async fn fleet_counts(&self) -> Result<FleetCounts, StoreError>;
}

/// Join tokens: issued, listed, revoked, and used once per enrolment.
#[async_trait]
pub trait JoinTokenStore: Send + Sync + 'static {
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
    ) -> Result<TokenUse, StoreError>;
}

/// Operators and their tokens (stored as hashes).
#[async_trait]
pub trait OperatorStore: Send + Sync + 'static {
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
}

/// Nodes: their records, heartbeats and metrics history.
#[async_trait]
pub trait NodeStore: Send + Sync + 'static {
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
    async fn list_nodes_page(&self, query: &NodeQuery) -> Result<NodeRecordPage, StoreError>;
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
        beats: Vec<Heartbeat>,
        history: MetricsHistory,
    ) -> Result<(), StoreError>;
    /// The newest `limit` samples, oldest first.
    async fn metrics_history(
        &self,
        id: &str,
        limit: usize,
    ) -> Result<Vec<MetricsSample>, StoreError>;
}

/// Tasks and their runs on nodes.
#[async_trait]
pub trait TaskStore: Send + Sync + 'static {
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
    async fn open_runs_for_node(&self, node_id: &str) -> Result<Vec<OpenRun>, StoreError>;
    /// (task id, node id) of runs not yet final whose node was last heard from before `cutoff` (or never).
    async fn open_runs_silent_since(
        &self,
        cutoff: DateTime<Utc>,
    ) -> Result<Vec<SilentRun>, StoreError>;
    /// Deletes finished tasks created before `cutoff`, with their output; returns how many.
    async fn delete_finished_tasks_before(
        &self,
        cutoff: DateTime<Utc>,
    ) -> Result<usize, StoreError>;
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
}

/// Tasks' output, as chunks per node, and its retention.
#[async_trait]
pub trait OutputStore: Send + Sync + 'static {
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
    ) -> Result<Vec<StoredOutput>, StoreError>;
    /// Stored output in arrival order after `after`, at most `limit` rows, ending with the row that
    /// reaches `max_bytes` of data (the first row always comes): a reader holds about `max_bytes` however
    /// large the rows are.
    async fn output_within(
        &self,
        task_id: &str,
        after: i64,
        limit: usize,
        max_bytes: usize,
    ) -> Result<Vec<StoredOutput>, StoreError>;
    /// One past the highest output seq stored for a task on a node (0 when none).
    async fn stored_seq(&self, task_id: &str, node_id: &str) -> Result<u64, StoreError>;
    /// Deletes the output of the oldest finished tasks until all output takes at most `max_bytes`;
    /// returns how many tasks lost their output.
    async fn trim_output(&self, max_bytes: u64) -> Result<usize, StoreError>;
}

/// The audit log.
#[async_trait]
pub trait AuditStore: Send + Sync + 'static {
    /// Appends audit entries, in their order, in one write.
    async fn insert_audits(&self, entries: Vec<AuditEntry>) -> Result<(), StoreError>;
    async fn list_audit(&self, filter: &AuditFilter) -> Result<Vec<AuditEntry>, StoreError>;
}

/// Manifests (the fleet's declared resources) and how far nodes have converged on each.
#[async_trait]
pub trait ManifestStore: Send + Sync + 'static {
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
    /// Every manifest's resources and nodes counted by state, over the nodes' latest reports, in one
    /// aggregate read (manifests no node reports are left out).
    async fn manifest_counts(&self) -> Result<Vec<ManifestCounts>, StoreError>;
}

/// Each node's desired state, computed from the manifests that select it.
#[async_trait]
pub trait DesiredStore: Send + Sync + 'static {
    /// A node's desired state and the hash of its content.
    async fn get_desired(&self, node_id: &str) -> Result<Option<StoredDesired>, StoreError>;
    /// Whether a node's desired state has a File resource with this content: what a node may fetch. Read
    /// without decoding the whole state (every node of a fleet-wide apply asks once per file).
    async fn desired_names_blob(&self, node_id: &str, sha256: &str) -> Result<bool, StoreError>;
    /// Every stored desired state's node id, generation and content hash, in one read (a fleet-wide
    /// recomputation compares against these instead of reading each node's state).
    async fn desired_versions(&self) -> Result<Vec<DesiredVersion>, StoreError>;
    /// Stores a node's desired state if the stored one still has generation `state.generation - 1` (none
    /// counts as 0); returns false, changing nothing, when another change got there first.
    async fn put_desired(
        &self,
        node_id: &str,
        state: &DesiredState,
        hash: &str,
    ) -> Result<bool, StoreError>;
}

/// Each node's latest convergence report.
#[async_trait]
pub trait ConvergenceStore: Send + Sync + 'static {
    /// Stores a node's report unless the stored one is for a newer generation (reports can cross).
    async fn put_convergence(
        &self,
        node_id: &str,
        report: &NodeConvergence,
    ) -> Result<(), StoreError>;
    async fn get_convergence(&self, node_id: &str) -> Result<Option<NodeConvergence>, StoreError>;
    /// Every node's convergence (its desired generation and latest report), or only that of the nodes
    /// with these ids (ids of no node are skipped), by name, in one read.
    async fn convergence_of(
        &self,
        ids: Option<&[String]>,
    ) -> Result<Vec<ConvergenceRow>, StoreError>;
    /// One page of the nodes' convergence a query matches, by node name, and how many it matches.
    async fn convergence_page(
        &self,
        query: &ConvergenceQuery,
    ) -> Result<ConvergencePage, StoreError>;
}

/// Content (file resources) by SHA-256.
#[async_trait]
pub trait BlobStore: Send + Sync + 'static {
    /// Stores content under its SHA-256 (storing it twice is harmless).
    async fn put_blob(&self, sha256: &str, data: Vec<u8>) -> Result<(), StoreError>;
    async fn get_blob(&self, sha256: &str) -> Result<Option<Vec<u8>>, StoreError>;
}

/// Rollouts, one document a manifest, and the manifests' recent revisions.
#[async_trait]
pub trait RolloutStore: Send + Sync + 'static {
    async fn put_rollout(&self, rollout: &Rollout) -> Result<(), StoreError>;
    async fn get_rollout(&self, manifest: &str) -> Result<Option<Rollout>, StoreError>;
    async fn list_rollouts(&self) -> Result<Vec<Rollout>, StoreError>;
    /// Returns false when the manifest had none.
    async fn delete_rollout(&self, manifest: &str) -> Result<bool, StoreError>;
    /// Keeps a manifest revision (a generation already kept stays as it was), and of the manifest's
    /// revisions only the newest `keep`.
    async fn put_manifest_revision(
        &self,
        manifest: &StoredManifest,
        keep: usize,
    ) -> Result<(), StoreError>;
    async fn manifest_revision(
        &self,
        name: &str,
        generation: u64,
    ) -> Result<Option<StoredManifest>, StoreError>;
    /// A manifest's kept revisions, newest first, at most `limit`.
    async fn manifest_revisions(
        &self,
        name: &str,
        limit: usize,
    ) -> Result<Vec<StoredManifest>, StoreError>;
}

/// What a service keeps, named by the service: each holds only its own (`fleet::Access` holds an
/// `AccessStore`, ...). All are views of the one store: `Store` is their sum, so one handle upcasts to each.
macro_rules! service_store {
    ($(#[$doc:meta])* $name:ident: $first:ident $(+ $rest:ident)*) => {
        $(#[$doc])*
        pub trait $name: $first $(+ $rest)* {}
        impl<T: $first $(+ $rest)* + ?Sized> $name for T {}
    };
}

service_store!(
    /// Join tokens, operators and the audit log (`fleet::Access`).
    AccessStore: JoinTokenStore + OperatorStore + AuditStore
);
service_store!(
    /// Nodes, their heartbeats and the fleet-wide counts (`fleet::Nodes`).
    NodesStore: FleetStore + NodeStore
);
service_store!(
    /// Tasks, their runs and output, and the audit entries of their ends (`fleet::Tasks`).
    TasksStore: TaskStore + OutputStore + AuditStore
);
service_store!(
    /// Manifests, desired states, convergence reports, blobs, and the nodes they are computed for
    /// (`fleet::Desired`).
    DesiredStateStore: ManifestStore + DesiredStore + ConvergenceStore + BlobStore + NodeStore
        + RolloutStore
);

/// Everything the server stores, over one database: the sum of the services' stores (and so of every
/// aggregate's trait), implemented for every type that implements them all.
pub trait Store: AccessStore + NodesStore + TasksStore + DesiredStateStore {}

impl<T> Store for T where T: AccessStore + NodesStore + TasksStore + DesiredStateStore + ?Sized {}

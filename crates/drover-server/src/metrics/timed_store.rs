//! The store, timed: every `Store` operation's latency goes to `drover_store_operation_duration_seconds`,
//! labelled by the operation's name, measured at the trait boundary so every backend is timed the same way
//! (a write's time includes waiting for its group commit, which is what callers wait for).

use std::sync::Arc;
use std::time::Instant;

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

use super::ServerMetrics;
use crate::store::prelude::*;
use crate::store::{
    AuditFilter, ConvergencePage, ConvergenceQuery, ConvergenceRow, DesiredVersion, FleetCounts,
    Heartbeat, JoinTokenRecord, ManifestCounts, MetricsHistory, NodeChange, NodeQuery, NodeRecord,
    NodeRecordPage, NodeTaskRun, OpenRun, OperatorRecord, OutputRecord, PutManifest, RunPatch,
    RunQuery, SilentRun, StoreError, StoredDesired, StoredOutput, TaskPage, TaskSummary, TokenUse,
};

pub struct TimedStore {
    inner: Arc<dyn Store>,
    metrics: Arc<ServerMetrics>,
}

impl TimedStore {
    pub fn new(inner: Arc<dyn Store>, metrics: Arc<ServerMetrics>) -> Self {
        Self { inner, metrics }
    }
}

/// Implements each store trait by timing each listed operation around the inner store's (`Store`, their sum,
/// follows from its blanket impl).
macro_rules! timed {
    ($(impl $store:ident { $($name:ident($($arg:ident: $ty:ty),*) -> $ret:ty;)* })*) => {
        $(
            #[async_trait]
            impl $store for TimedStore {
                $(
                    async fn $name(&self, $($arg: $ty),*) -> Result<$ret, StoreError> {
                        let start = Instant::now();
                        let result = self.inner.$name($($arg),*).await;
                        self.metrics.store_op(stringify!($name), start.elapsed());
                        result
                    }
                )*
            }
        )*
    };
}

timed! {
    impl FleetStore {
        ping() -> ();
        try_lead() -> bool;
        fleet_counts() -> FleetCounts;
    }

    impl JoinTokenStore {
        insert_join_token(token: &JoinTokenRecord) -> ();
        list_join_tokens() -> Vec<JoinTokenInfo>;
        get_join_token(id: &str) -> Option<JoinTokenRecord>;
        revoke_join_token(id: &str) -> bool;
        use_join_token(id: &str, secret_sha256: &str, now: DateTime<Utc>) -> TokenUse;
    }

    impl OperatorStore {
        put_operator(operator: &OperatorRecord) -> bool;
        list_operators() -> Vec<OperatorInfo>;
        operator_by_token(token_sha256: &str) -> Option<OperatorInfo>;
        revoke_operator(name: &str) -> bool;
    }

    impl NodeStore {
        insert_node(node: &NodeRecord) -> ();
        modify_node(id: &str, change: NodeChange) -> Option<NodeRecord>;
        get_node(id: &str) -> Option<NodeRecord>;
        get_node_by_name(name: &str) -> Option<NodeRecord>;
        get_node_by_token(token_sha256: &str) -> Option<NodeRecord>;
        list_nodes() -> Vec<NodeRecord>;
        list_nodes_page(query: &NodeQuery) -> NodeRecordPage;
        delete_node(id: &str) -> bool;
        record_heartbeat(id: &str, at: DateTime<Utc>, metrics: &Metrics, history: MetricsHistory) -> bool;
        record_heartbeats(beats: Vec<Heartbeat>, history: MetricsHistory) -> ();
        metrics_history(id: &str, limit: usize) -> Vec<MetricsSample>;
    }

    impl TaskStore {
        insert_task(task: &Task) -> ();
        transition_runs(task_id: &str, node_ids: Vec<String>, from: &'static [RunState], patch: RunPatch) -> Vec<TaskRun>;
        record_late_exit(task_id: &str, node_id: &str, late: LateExit) -> Option<TaskRun>;
        get_run(task_id: &str, node_id: &str) -> Option<TaskRun>;
        runs_in_state(task_id: &str, states: &'static [RunState], limit: usize) -> Vec<TaskRun>;
        count_runs(task_id: &str, states: &'static [RunState]) -> usize;
        open_runs_for_node(node_id: &str) -> Vec<OpenRun>;
        open_runs_silent_since(cutoff: DateTime<Utc>) -> Vec<SilentRun>;
        delete_finished_tasks_before(cutoff: DateTime<Utc>) -> usize;
        get_task(id: &str) -> Option<Task>;
        task_ids_with_prefix(prefix: &str, limit: usize) -> Vec<String>;
        list_tasks(limit: usize) -> Vec<Task>;
        task_summaries(limit: usize) -> Vec<TaskSummary>;
        task_page(id: &str, query: &RunQuery) -> Option<TaskPage>;
        node_task_runs(node_id: &str, limit: usize) -> Vec<NodeTaskRun>;
    }

    impl OutputStore {
        insert_output(task_id: &str, chunks: Vec<OutputRecord>) -> ();
        output(task_id: &str, after: i64, limit: usize) -> Vec<StoredOutput>;
        output_within(task_id: &str, after: i64, limit: usize, max_bytes: usize) -> Vec<StoredOutput>;
        stored_seq(task_id: &str, node_id: &str) -> u64;
        trim_output(max_bytes: u64) -> usize;
    }

    impl AuditStore {
        insert_audits(entries: Vec<AuditEntry>) -> ();
        list_audit(filter: &AuditFilter) -> Vec<AuditEntry>;
    }

    impl ManifestStore {
        put_manifest(manifest: &Manifest, signature: Option<&Signature>, now: DateTime<Utc>) -> PutManifest;
        list_manifests() -> Vec<StoredManifest>;
        delete_manifest(name: &str) -> bool;
        manifest_counts() -> Vec<ManifestCounts>;
    }

    impl DesiredStore {
        get_desired(node_id: &str) -> Option<StoredDesired>;
        desired_names_blob(node_id: &str, sha256: &str) -> bool;
        desired_versions() -> Vec<DesiredVersion>;
        put_desired(node_id: &str, state: &DesiredState, hash: &str) -> bool;
    }

    impl ConvergenceStore {
        put_convergence(node_id: &str, report: &NodeConvergence) -> ();
        get_convergence(node_id: &str) -> Option<NodeConvergence>;
        convergence_of(ids: Option<&[String]>) -> Vec<ConvergenceRow>;
        convergence_page(query: &ConvergenceQuery) -> ConvergencePage;
    }

    impl RolloutStore {
        put_rollout(rollout: &Rollout) -> ();
        get_rollout(manifest: &str) -> Option<Rollout>;
        list_rollouts() -> Vec<Rollout>;
        delete_rollout(manifest: &str) -> bool;
        put_manifest_revision(manifest: &StoredManifest, keep: usize) -> ();
        manifest_revision(name: &str, generation: u64) -> Option<StoredManifest>;
        manifest_revisions(name: &str, limit: usize) -> Vec<StoredManifest>;
    }

    impl BlobStore {
        put_blob(sha256: &str, data: Vec<u8>) -> ();
        get_blob(sha256: &str) -> Option<Vec<u8>>;
    }
}

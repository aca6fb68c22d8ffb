//! Persistent fleet state behind one trait per aggregate (their sum is `Store`), so the control plane is
//! written once for every backend.
//! SQLite (embedded, the default) lives in `sqlite`; PostgreSQL (for a fleet that outgrows one machine) in
//! `postgres`. Both pass the same tests (`conformance`).

#[cfg(test)]
mod bench;
mod codec;
#[cfg(test)]
mod conformance;
mod pages;
mod postgres;
mod sql;
mod sqlite;
mod traits;
pub mod transfer;

pub use pages::{
    ConvergencePage, ConvergenceQuery, ConvergenceRow, ManifestCounts, NodeCounts, NodeQuery,
    NodeRecordPage, NodeTaskRun, RunQuery, TaskPage, TaskSummary,
};
pub use postgres::{PgStore, redact_url};
pub use sqlite::SqliteStore;
pub use traits::{
    AccessStore, AuditStore, BlobStore, ConvergenceStore, DesiredStateStore, DesiredStore,
    FleetStore, JoinTokenStore, ManifestStore, NodeStore, NodesStore, OperatorStore, OutputStore,
    RolloutStore, Store, TaskStore, TasksStore,
};

/// The store's traits, to call their methods on an `Arc<dyn Store>`: `use crate::store::prelude::*`.
pub mod prelude {
    pub use super::traits::{
        AuditStore, BlobStore, ConvergenceStore, DesiredStore, FleetStore, JoinTokenStore,
        ManifestStore, NodeStore, OperatorStore, OutputStore, RolloutStore, Store, TaskStore,
    };
}

use chrono::{DateTime, Utc};
use drover_types::{
    Capabilities, Labels, Metrics, Transport,
    operator::OperatorInfo,
    task::{RunState, TaskRun, TaskSpec},
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

/// What using a join token did: counted one use, or refused it (changing nothing).
#[derive(Debug, Clone, PartialEq)]
pub enum TokenUse {
    Used(JoinTokenInfo),
    Refused(TokenRefusal),
}

impl TokenUse {
    pub fn into_result(self) -> Result<JoinTokenInfo, TokenRefusal> {
        match self {
            TokenUse::Used(info) => Ok(info),
            TokenUse::Refused(refusal) => Err(refusal),
        }
    }
}

/// A node's desired state's version, as `desired_versions` reads it.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct DesiredVersion {
    pub node_id: String,
    pub generation: u64,
    /// The hash of its content.
    pub hash: String,
}

/// A run not yet final, with its task's id and spec, as `open_runs_for_node` reads it.
#[derive(Debug, Clone, PartialEq)]
pub struct OpenRun {
    pub task_id: String,
    pub run: TaskRun,
    pub spec: TaskSpec,
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
    /// (agent version as the node reports it, empty when it does not; nodes).
    pub nodes_by_agent_version: Vec<(String, u64)>,
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

/// A stored piece of output and its row, the cursor a reader resumes after.
#[derive(Debug, Clone, PartialEq)]
pub struct StoredOutput {
    pub row: i64,
    pub record: OutputRecord,
}

/// A run still open on a node silent since a cutoff (`TaskStore::open_runs_silent_since`).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SilentRun {
    pub task_id: String,
    pub node_id: String,
}

/// A node's stored desired state and the hash of its content.
#[derive(Debug, Clone, PartialEq)]
pub struct StoredDesired {
    pub state: drover_types::manifest::DesiredState,
    pub hash: String,
}

/// A heartbeat to record: which node, when, what it measured.
#[derive(Debug, Clone, PartialEq)]
pub struct Heartbeat {
    pub node_id: String,
    pub at: DateTime<Utc>,
    pub metrics: Metrics,
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

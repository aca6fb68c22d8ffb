//! Persistent fleet state behind one trait, so the control plane is written once for every backend.
//! SQLite (embedded, the default) lives in `sqlite`; PostgreSQL will sit beside it.

mod sqlite;

pub use sqlite::SqliteStore;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use drover_types::{
    Capabilities, Labels, Metrics, MetricsSample, Transport,
    token::{JoinTokenInfo, TokenRefusal},
};

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("database error: {0}")]
    Db(#[from] rusqlite::Error),
    #[error("stored data is corrupt ({what}): {source}")]
    Corrupt {
        what: &'static str,
        source: serde_json::Error,
    },
    #[error("a node named {0:?} already exists")]
    NameTaken(String),
    #[error("database task failed: {0}")]
    Task(String),
}

/// A join token as stored: its secret only as a hash.
#[derive(Debug, Clone, PartialEq)]
pub struct JoinTokenRecord {
    pub info: JoinTokenInfo,
    pub secret_sha256: String,
}

/// A node as stored. Liveness is not stored: it is derived from `last_seen` when read.
#[derive(Debug, Clone, PartialEq)]
pub struct NodeRecord {
    pub id: String,
    pub name: String,
    pub transport: Transport,
    /// Labels the server gave the node (from its join token; later, from operators). They win over reported ones.
    pub labels: Labels,
    /// Labels the node reports about itself, replaced whenever it says hello or registers again.
    pub reported_labels: Labels,
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
    async fn insert_join_token(&self, token: &JoinTokenRecord) -> Result<(), StoreError>;
    async fn list_join_tokens(&self) -> Result<Vec<JoinTokenInfo>, StoreError>;
    /// Returns false when no such token exists.
    async fn revoke_join_token(&self, id: &str) -> Result<bool, StoreError>;
    /// Checks a token and counts one use, atomically, so a limited token cannot be overused by racing agents.
    async fn use_join_token(
        &self,
        id: &str,
        secret_sha256: &str,
        now: DateTime<Utc>,
    ) -> Result<Result<JoinTokenInfo, TokenRefusal>, StoreError>;

    /// Fails with `NameTaken` when another node has the name.
    async fn insert_node(&self, node: &NodeRecord) -> Result<(), StoreError>;
    async fn update_node(&self, node: &NodeRecord) -> Result<(), StoreError>;
    async fn get_node(&self, id: &str) -> Result<Option<NodeRecord>, StoreError>;
    async fn get_node_by_name(&self, name: &str) -> Result<Option<NodeRecord>, StoreError>;
    async fn list_nodes(&self) -> Result<Vec<NodeRecord>, StoreError>;
    /// Returns false when no such node exists. Its metrics history goes with it.
    async fn delete_node(&self, id: &str) -> Result<bool, StoreError>;
    /// Stores the latest metrics and appends them to the history, keeping the newest `keep` samples.
    /// Returns false when no such node exists.
    async fn record_heartbeat(
        &self,
        id: &str,
        at: DateTime<Utc>,
        metrics: &Metrics,
        keep: usize,
    ) -> Result<bool, StoreError>;
    /// The newest `limit` samples, oldest first.
    async fn metrics_history(
        &self,
        id: &str,
        limit: usize,
    ) -> Result<Vec<MetricsSample>, StoreError>;
}

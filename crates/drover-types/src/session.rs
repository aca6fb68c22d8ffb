//! Daemon-plugin sessions: one per node and plugin, carrying a stream of payloads.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

/// A session as the server sees it. (The agent also has Empty: no session requested yet.)
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub enum SessionState {
    /// Created on the server; the plugin's initial payload has not arrived yet.
    Pending,
    /// Data is flowing.
    Active,
}

/// One session, as listed by `drover sessions NODE`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct SessionInfo {
    pub plugin: String,
    pub session_id: String,
    pub state: SessionState,
    pub created_at: DateTime<Utc>,
    pub last_update: Option<DateTime<Utc>>,
    /// Sequence number of the latest payload (0 is the initial one).
    pub seq: u64,
    /// Plugin calls that missed their deadline and were cancelled, as counted by the agent.
    pub deadline_misses: u64,
    /// Update interval and deadline the agent runs the plugin with, in milliseconds.
    pub interval_ms: u64,
    pub deadline_ms: u64,
}

/// A session with its latest payload.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct SessionDetail {
    #[serde(flatten)]
    pub info: SessionInfo,
    pub payload: Option<serde_json::Value>,
}

/// One entry of a session's history.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct SessionSample {
    pub at: DateTime<Utc>,
    pub seq: u64,
    pub payload: serde_json::Value,
}

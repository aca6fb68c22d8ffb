//! Bodies of the REST API shared by the server and the CLI.

use serde::{Deserialize, Serialize};

use crate::{Capabilities, Labels, Metrics, token::JoinTokenInfo};

/// Every error response: a message for people, the offending field when there is one.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ErrorBody {
    pub error: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub field: Option<String>,
    /// For action calls: the typed error (`{"kind": "DeadlineExceeded", ...}`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub action_error: Option<crate::action::ActionError>,
}

/// `POST /api/v1/tokens`
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CreateTokenRequest {
    /// Lifetime such as `1h` or `3600` (seconds); default one hour.
    #[serde(default)]
    pub ttl: Option<String>,
    #[serde(default)]
    pub max_uses: Option<u32>,
    /// Labels every node joining with this token receives.
    #[serde(default)]
    pub labels: Labels,
}

/// Answer to `POST /api/v1/tokens`: the only time the secret is shown.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CreatedToken {
    pub token: String,
    #[serde(flatten)]
    pub info: JoinTokenInfo,
}

/// `POST /api/v1/nodes/register` (MIaaS contract).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RegisterRequest {
    pub name: String,
    #[serde(default)]
    pub ip: Option<String>,
    #[serde(default)]
    pub capabilities: Capabilities,
    #[serde(default)]
    pub labels: Labels,
    /// Seconds between heartbeats the agent promises; liveness is measured in it (default 30, the MIaaS default).
    #[serde(default)]
    pub heartbeat_interval: Option<f64>,
}

/// Answer to a registration.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RegisterResponse {
    pub node_id: String,
    pub node_token: String,
}

/// `POST /api/v1/nodes/{node_id}/heartbeat` (MIaaS contract) is a bare [`Metrics`].
pub type HeartbeatRequest = Metrics;

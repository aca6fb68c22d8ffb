//! Bodies of the REST API shared by the server and the CLI.

use serde::{Deserialize, Serialize};

use crate::{Capabilities, Labels, Metrics, token::JoinTokenInfo};

/// Every error response: a message for people, the offending field when there is one.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
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
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
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
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct CreatedToken {
    pub token: String,
    #[serde(flatten)]
    pub info: JoinTokenInfo,
}

/// `POST /api/v1/nodes/register` (MIaaS contract). `ip` and `capabilities` (with `os`, `cpu_count` and
/// `mem_mb`) are required as MIaaS requires them; [`RegisterRequest::missing_field`] names the first one
/// absent, since serde lets an `Option` be missing.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct RegisterRequest {
    pub name: String,
    #[serde(default)]
    pub ip: Option<String>,
    pub capabilities: Capabilities,
    #[serde(default)]
    pub labels: Labels,
    /// Seconds between heartbeats the agent promises; liveness is measured in it (default 30, the MIaaS default).
    #[serde(default)]
    pub heartbeat_interval: Option<f64>,
}

impl RegisterRequest {
    /// The first field MIaaS requires that this registration lacks (`ip`, `capabilities.os`,
    /// `capabilities.cpu_count`, `capabilities.mem_mb`); `name` and `capabilities` are required by serde.
    pub fn missing_field(&self) -> Option<&'static str> {
        let caps = &self.capabilities;
        [
            ("ip", self.ip.is_none()),
            ("capabilities.os", caps.os.is_none()),
            ("capabilities.cpu_count", caps.cpu_count.is_none()),
            ("capabilities.mem_mb", caps.mem_mb.is_none()),
        ]
        .into_iter()
        .find(|(_, missing)| *missing)
        .map(|(field, _)| field)
    }
}

/// Answer to a registration.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct RegisterResponse {
    pub node_id: String,
    pub node_token: String,
    /// Where the agent reaches the control plane (`drover server --advertise-url`).
    pub control_plane_url: String,
}

/// Answer to a heartbeat (MIaaS contract).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct HeartbeatResponse {
    /// Always `ok`.
    pub status: String,
    /// The server's clock, seconds since the Unix epoch.
    pub timestamp: f64,
}

/// `POST /api/v1/nodes/{node_id}/heartbeat` (MIaaS contract) is a bare [`Metrics`].
pub type HeartbeatRequest = Metrics;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_registration_names_the_first_field_miaas_requires_and_lacks() {
        let parse = |v: serde_json::Value| serde_json::from_value::<RegisterRequest>(v).unwrap();
        let full = serde_json::json!({"name": "w", "ip": "10.0.0.1",
            "capabilities": {"os": "linux", "cpu_count": 2, "mem_mb": 512}});
        assert_eq!(parse(full.clone()).missing_field(), None);
        for field in ["os", "cpu_count", "mem_mb"] {
            let mut body = full.clone();
            body["capabilities"].as_object_mut().unwrap().remove(field);
            assert_eq!(
                parse(body).missing_field(),
                Some(format!("capabilities.{field}").as_str())
            );
        }
        let mut body = full;
        body["ip"] = serde_json::Value::Null;
        assert_eq!(parse(body).missing_field(), Some("ip"));
    }
}

//! A node as the server knows it: identity, labels, capabilities, the latest metrics and liveness.
//! Field names of capabilities and metrics follow the MIaaS agent's HTTP contract.

use crate::limits::{
    LimitError, MAX_EXTRA_CAPABILITIES, MAX_GPUS, MAX_IPS, MAX_RUNNING_CONTAINERS, MAX_TEXT,
    check_count, check_len,
};
use crate::{Labels, NodeStatus};
use chrono::{DateTime, Utc};
use serde::{Deserialize, Deserializer, Serialize};

/// How a node talks to the server.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "lowercase")]
pub enum Transport {
    /// A `drover-agent` on its mTLS gRPC stream.
    Grpc,
    /// A plain HTTP agent using the MIaaS register/heartbeat contract.
    Http,
}

/// What fleet commands say of an HTTP node they select: it has no stream to carry a manifest or a task.
pub const HTTP_NODE_TAKES_NO_WORK: &str = "HTTP node: takes no manifests or tasks";

impl Transport {
    /// Whether a node on this transport takes manifests and tasks: only a drover-agent's stream carries
    /// them, so HTTP nodes are never their targets (`HTTP_NODE_TAKES_NO_WORK`).
    pub fn takes_work(&self) -> bool {
        matches!(self, Transport::Grpc)
    }

    pub fn as_str(&self) -> &'static str {
        match self {
            Transport::Grpc => "grpc",
            Transport::Http => "http",
        }
    }
}

/// What a node is. Every field may be missing (HTTP agents send what they know); unknown fields are kept.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Capabilities {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hostname: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub os: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub os_version: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub arch: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kernel: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cpu_count: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mem_mb: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub disk_mb: Option<u64>,
    #[serde(default)]
    pub gpus: Vec<Gpu>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ips: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub agent_version: Option<String>,
    /// Capabilities this build does not know, kept as sent.
    #[serde(flatten)]
    pub extra: serde_json::Map<String, serde_json::Value>,
}

impl Capabilities {
    /// Refuses a report larger than any real node's (see `limits`), so one node cannot grow the store.
    pub fn validate(&self) -> Result<(), LimitError> {
        check_count("capabilities.gpus", self.gpus.len(), MAX_GPUS)?;
        check_count("capabilities.ips", self.ips.len(), MAX_IPS)?;
        let texts = [
            ("capabilities.hostname", &self.hostname),
            ("capabilities.os", &self.os),
            ("capabilities.os_version", &self.os_version),
            ("capabilities.arch", &self.arch),
            ("capabilities.kernel", &self.kernel),
            ("capabilities.agent_version", &self.agent_version),
        ];
        for (field, text) in texts {
            check_len(field, text.as_deref().unwrap_or_default(), MAX_TEXT)?;
        }
        for ip in &self.ips {
            check_len("capabilities.ips", ip, MAX_TEXT)?;
        }
        for gpu in &self.gpus {
            let texts = [
                Some(gpu.name.as_str()),
                gpu.uuid.as_deref(),
                gpu.driver_version.as_deref(),
            ];
            for text in texts.into_iter().flatten() {
                check_len("capabilities.gpus", text, MAX_TEXT)?;
            }
        }
        if !self.extra.is_empty() {
            let extra = serde_json::to_string(&self.extra).unwrap_or_default();
            check_len("capabilities", &extra, MAX_EXTRA_CAPABILITIES)?;
        }
        Ok(())
    }
}

/// One GPU. HTTP agents may send just a name as a string.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Gpu {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub index: Option<u32>,
    pub name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub uuid: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mem_mb: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub driver_version: Option<String>,
}

#[derive(Deserialize)]
struct GpuFields {
    #[serde(default)]
    index: Option<u32>,
    #[serde(default)]
    name: String,
    #[serde(default)]
    uuid: Option<String>,
    #[serde(default)]
    mem_mb: Option<u64>,
    #[serde(default)]
    driver_version: Option<String>,
}

impl<'de> Deserialize<'de> for Gpu {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        match NameOr::<GpuFields>::deserialize(d)? {
            NameOr::Name(name) => Ok(Gpu {
                name,
                ..Gpu::default()
            }),
            NameOr::Fields(f) => Ok(Gpu {
                index: f.index,
                name: f.name,
                uuid: f.uuid,
                mem_mb: f.mem_mb,
                driver_version: f.driver_version,
            }),
        }
    }
}

/// A list item sent either as a bare name or as an object.
#[derive(Deserialize)]
#[serde(untagged)]
enum NameOr<T> {
    Name(String),
    Fields(T),
}

/// A running container. HTTP agents may send just a name as a string.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct RunningContainer {
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub id: String,
    pub name: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub image: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub state: String,
}

#[derive(Deserialize)]
struct ContainerFields {
    #[serde(default)]
    id: String,
    #[serde(default)]
    name: String,
    #[serde(default)]
    image: String,
    #[serde(default)]
    state: String,
}

impl<'de> Deserialize<'de> for RunningContainer {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        match NameOr::<ContainerFields>::deserialize(d)? {
            NameOr::Name(name) => Ok(RunningContainer {
                name,
                ..RunningContainer::default()
            }),
            NameOr::Fields(f) => Ok(RunningContainer {
                id: f.id,
                name: f.name,
                image: f.image,
                state: f.state,
            }),
        }
    }
}

/// One heartbeat's metrics.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Metrics {
    /// CPU utilisation, percent of all cores (0-100).
    pub cpu_usage: f64,
    /// Memory in use, percent (0-100).
    pub mem_usage: f64,
    /// Free space on the root filesystem, MB.
    pub disk_free_mb: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub load1: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub load5: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub load15: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub uptime_s: Option<u64>,
    /// Empty when the node runs no container engine.
    #[serde(default)]
    pub running_containers: Vec<RunningContainer>,
}

#[derive(Debug, thiserror::Error, PartialEq)]
#[error("field `{field}`: {reason}")]
pub struct MetricsError {
    pub field: &'static str,
    pub reason: String,
}

impl Metrics {
    /// Refuses values no real node reports, so one bad agent cannot poison fleet views.
    pub fn validate(&self) -> Result<(), MetricsError> {
        for (field, value) in [("cpu_usage", self.cpu_usage), ("mem_usage", self.mem_usage)] {
            if !(0.0..=100.0).contains(&value) {
                return Err(MetricsError {
                    field,
                    reason: format!("{value} is not a percentage between 0 and 100"),
                });
            }
        }
        for (field, value) in [
            ("load1", self.load1),
            ("load5", self.load5),
            ("load15", self.load15),
        ] {
            if let Some(v) = value
                && !(v.is_finite() && v >= 0.0)
            {
                return Err(MetricsError {
                    field,
                    reason: format!("{v} is not a load average"),
                });
            }
        }
        let containers = &self.running_containers;
        let limit = check_count(
            "running_containers",
            containers.len(),
            MAX_RUNNING_CONTAINERS,
        )
        .and_then(|()| {
            containers.iter().try_for_each(|c| {
                [&c.id, &c.name, &c.image, &c.state]
                    .into_iter()
                    .try_for_each(|t| check_len("running_containers", t, MAX_TEXT))
            })
        });
        limit.map_err(|e| MetricsError {
            field: "running_containers",
            reason: e.reason,
        })
    }
}

/// One entry of a node's metrics history.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct MetricsSample {
    pub at: DateTime<Utc>,
    pub metrics: Metrics,
}

/// A node as listed by `drover nodes` and the REST API.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Node {
    pub id: String,
    pub name: String,
    pub status: NodeStatus,
    pub transport: Transport,
    /// The labels selection uses: only those the operator controls (bound at enrollment, set with
    /// `drover nodes label`, or accepted), plus the reported ones when the server trusts them.
    pub labels: Labels,
    /// Labels the node reported after it enrolled that selection does not use until an operator accepts
    /// them (`drover nodes accept-labels`).
    #[serde(default, skip_serializing_if = "Labels::is_empty")]
    pub pending_labels: Labels,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ip: Option<String>,
    pub registered_at: DateTime<Utc>,
    pub last_seen: Option<DateTime<Utc>>,
    /// The heartbeat interval the node promised, in milliseconds; liveness is measured in it.
    pub heartbeat_interval_ms: u64,
    /// Whether an agent stream is attached to this server right now (always false for HTTP nodes).
    pub connected: bool,
    /// The agent's version (its `capabilities.agent_version`), at the top for scripts and the skew policy
    /// (`drover_types::version`); null when the node does not say (HTTP nodes may not).
    #[serde(default)]
    pub agent_version: Option<String>,
    pub capabilities: Capabilities,
    /// The latest heartbeat's metrics.
    pub metrics: Option<Metrics>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn capabilities_keep_unknown_fields_and_accept_missing_ones() {
        let caps: Capabilities =
            serde_json::from_str(r#"{"os":"linux","gpus":["A100"],"tpu":"v5"}"#).unwrap();
        assert_eq!(caps.os.as_deref(), Some("linux"));
        assert_eq!(caps.cpu_count, None);
        assert_eq!(caps.gpus[0].name, "A100");
        assert_eq!(caps.extra["tpu"], "v5");
        let back = serde_json::to_value(&caps).unwrap();
        assert_eq!(back["tpu"], "v5");
    }

    #[test]
    fn metrics_require_the_miaas_fields() {
        let err = serde_json::from_str::<Metrics>(r#"{"cpu_usage":1,"mem_usage":2}"#).unwrap_err();
        assert!(err.to_string().contains("disk_free_mb"), "{err}");
        let m: Metrics = serde_json::from_str(
            r#"{"cpu_usage":1,"mem_usage":2,"disk_free_mb":3,"running_containers":["web"]}"#,
        )
        .unwrap();
        assert_eq!(m.running_containers[0].name, "web");
    }

    #[test]
    fn metrics_validation_names_the_field() {
        let m = Metrics {
            cpu_usage: 250.0,
            ..Metrics::default()
        };
        assert_eq!(m.validate().unwrap_err().field, "cpu_usage");
        let m = Metrics {
            running_containers: vec![RunningContainer::default(); MAX_RUNNING_CONTAINERS + 1],
            ..Metrics::default()
        };
        assert_eq!(m.validate().unwrap_err().field, "running_containers");
    }

    #[test]
    fn capabilities_beyond_the_limits_are_refused() {
        let caps = Capabilities {
            gpus: vec![Gpu::default(); MAX_GPUS + 1],
            ..Capabilities::default()
        };
        assert_eq!(caps.validate().unwrap_err().field, "capabilities.gpus");
        let caps = Capabilities {
            hostname: Some("h".repeat(MAX_TEXT + 1)),
            ..Capabilities::default()
        };
        assert_eq!(caps.validate().unwrap_err().field, "capabilities.hostname");
        assert!(Capabilities::default().validate().is_ok());
    }
}

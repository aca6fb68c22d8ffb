//! Actions: typed RPC the server calls on a node, and the errors every caller can rely on.

use serde::{Deserialize, Serialize};

/// Default time an action may take before it is cancelled.
pub const DEFAULT_DEADLINE_MS: u64 = 30_000;

/// An action a node offers, advertised in its hello.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct ActionInfo {
    pub name: String,
    pub version: u32,
}

/// Why an action call did not return a result.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(tag = "kind")]
pub enum ActionError {
    #[error("invalid arguments{}: {message}", field.as_ref().map(|f| format!(" (field `{f}`)")).unwrap_or_default())]
    InvalidArgs {
        #[serde(default, skip_serializing_if = "Option::is_none")]
        field: Option<String>,
        message: String,
    },
    #[error("unknown action {name:?}; this node offers: {}", known.join(", "))]
    UnknownAction { name: String, known: Vec<String> },
    #[error("the node is not connected to the server, so it cannot run actions now")]
    NodeUnavailable,
    #[error("the action was cancelled")]
    Cancelled,
    #[error("the action did not finish within its deadline of {deadline_ms} ms and was cancelled")]
    DeadlineExceeded { deadline_ms: u64 },
    #[error("the node refused: {message}")]
    Denied { message: String },
    #[error("the action failed: {message}")]
    Failed { message: String },
}

impl ActionError {
    pub fn failed(message: impl std::fmt::Display) -> Self {
        ActionError::Failed {
            message: message.to_string(),
        }
    }

    pub fn denied(message: impl std::fmt::Display) -> Self {
        ActionError::Denied {
            message: message.to_string(),
        }
    }

    pub fn invalid(field: Option<&str>, message: impl std::fmt::Display) -> Self {
        ActionError::InvalidArgs {
            field: field.map(str::to_string),
            message: message.to_string(),
        }
    }
}

/// The answer to a call through the REST API.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct ActionReply {
    pub call_id: String,
    pub result: serde_json::Value,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errors_carry_their_kind_on_the_wire() {
        let e = ActionError::UnknownAction {
            name: "x".into(),
            known: vec!["ping".into()],
        };
        let v = serde_json::to_value(&e).unwrap();
        assert_eq!(v["kind"], "UnknownAction");
        assert_eq!(serde_json::from_value::<ActionError>(v).unwrap(), e);
        assert!(e.to_string().contains("ping"));
    }
}

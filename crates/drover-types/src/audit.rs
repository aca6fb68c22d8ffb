//! What the audit log records: the one list of actions the server writes.

use std::fmt;

use serde::{Deserialize, Serialize};

/// Every action the server writes to the audit log, serialized as the exact string each entry carries
/// (`AuditEntry::action`, the `action` filter of `GET /api/v1/audit`).
///
/// A closed set, with no `Other`: only this server writes these, so it never has to take one it does
/// not know. The log itself keeps whatever older servers wrote, so `AuditEntry::action` and the audit
/// filter stay strings; [`AuditAction::parse`] tells whether one of those is an action this build writes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum AuditAction {
    /// An operator called an action on a node.
    #[serde(rename = "action.call")]
    ActionCall,
    /// An operator cancelled an action call in flight.
    #[serde(rename = "action.cancel")]
    ActionCancel,
    /// An operator uploaded content to the blob store.
    #[serde(rename = "blob.put")]
    BlobPut,
    /// A manifest was created, or its content changed.
    #[serde(rename = "manifest.apply")]
    ManifestApply,
    /// A manifest was deleted.
    #[serde(rename = "manifest.delete")]
    ManifestDelete,
    /// A manifest was applied again with the same content and a new signature.
    #[serde(rename = "manifest.sign")]
    ManifestSign,
    /// An admin accepted the labels a node reports.
    #[serde(rename = "node.accept_labels")]
    NodeAcceptLabels,
    /// A node was deleted.
    #[serde(rename = "node.delete")]
    NodeDelete,
    /// A drover-agent enrolled with a join token.
    #[serde(rename = "node.enroll")]
    NodeEnroll,
    /// An operator set or removed a node's labels.
    #[serde(rename = "node.label")]
    NodeLabel,
    /// An HTTP (MIaaS) node registered.
    #[serde(rename = "node.register")]
    NodeRegister,
    /// An admin created an operator.
    #[serde(rename = "operator.create")]
    OperatorCreate,
    /// An admin revoked an operator's token.
    #[serde(rename = "operator.revoke")]
    OperatorRevoke,
    /// An operator sent a message to a node's plugin session.
    #[serde(rename = "session.message")]
    SessionMessage,
    /// An operator terminated a node's plugin sessions (all of them, or one plugin's).
    #[serde(rename = "session.terminate")]
    SessionTerminate,
    /// An operator cancelled a task.
    #[serde(rename = "task.cancel")]
    TaskCancel,
    /// An operator created a task.
    #[serde(rename = "task.create")]
    TaskCreate,
    /// A task's run on one node ended (one entry per node).
    #[serde(rename = "task.finish")]
    TaskFinish,
    /// An admin created a join token.
    #[serde(rename = "token.create")]
    TokenCreate,
    /// An admin revoked a join token.
    #[serde(rename = "token.revoke")]
    TokenRevoke,
    /// A changed manifest with a rollout policy began its first wave.
    #[serde(rename = "rollout.start")]
    RolloutStart,
    /// A rollout's next wave began (its bake passed, or an operator promoted it).
    #[serde(rename = "rollout.wave")]
    RolloutWave,
    /// A rollout paused: an operator, or its cause (a tripped wave, an infrastructure failure).
    #[serde(rename = "rollout.pause")]
    RolloutPause,
    /// An operator resumed a paused rollout.
    #[serde(rename = "rollout.resume")]
    RolloutResume,
    /// An operator aborted a rollout.
    #[serde(rename = "rollout.abort")]
    RolloutAbort,
    /// A tripped wave (or every wave) was put back on the previous revision.
    #[serde(rename = "rollout.revert")]
    RolloutRevert,
    /// Every wave of a rollout went through.
    #[serde(rename = "rollout.complete")]
    RolloutComplete,
    /// An operator put the whole fleet back on the previous revision.
    #[serde(rename = "rollout.undo")]
    RolloutUndo,
}

impl AuditAction {
    pub const ALL: [AuditAction; 28] = [
        Self::ActionCall,
        Self::ActionCancel,
        Self::BlobPut,
        Self::ManifestApply,
        Self::ManifestDelete,
        Self::ManifestSign,
        Self::NodeAcceptLabels,
        Self::NodeDelete,
        Self::NodeEnroll,
        Self::NodeLabel,
        Self::NodeRegister,
        Self::OperatorCreate,
        Self::OperatorRevoke,
        Self::SessionMessage,
        Self::SessionTerminate,
        Self::TaskCancel,
        Self::TaskCreate,
        Self::TaskFinish,
        Self::TokenCreate,
        Self::TokenRevoke,
        Self::RolloutStart,
        Self::RolloutWave,
        Self::RolloutPause,
        Self::RolloutResume,
        Self::RolloutAbort,
        Self::RolloutRevert,
        Self::RolloutComplete,
        Self::RolloutUndo,
    ];

    /// The action as the log records it.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::ActionCall => "action.call",
            Self::ActionCancel => "action.cancel",
            Self::BlobPut => "blob.put",
            Self::ManifestApply => "manifest.apply",
            Self::ManifestDelete => "manifest.delete",
            Self::ManifestSign => "manifest.sign",
            Self::NodeAcceptLabels => "node.accept_labels",
            Self::NodeDelete => "node.delete",
            Self::NodeEnroll => "node.enroll",
            Self::NodeLabel => "node.label",
            Self::NodeRegister => "node.register",
            Self::OperatorCreate => "operator.create",
            Self::OperatorRevoke => "operator.revoke",
            Self::SessionMessage => "session.message",
            Self::SessionTerminate => "session.terminate",
            Self::TaskCancel => "task.cancel",
            Self::TaskCreate => "task.create",
            Self::TaskFinish => "task.finish",
            Self::TokenCreate => "token.create",
            Self::TokenRevoke => "token.revoke",
            Self::RolloutStart => "rollout.start",
            Self::RolloutWave => "rollout.wave",
            Self::RolloutPause => "rollout.pause",
            Self::RolloutResume => "rollout.resume",
            Self::RolloutAbort => "rollout.abort",
            Self::RolloutRevert => "rollout.revert",
            Self::RolloutComplete => "rollout.complete",
            Self::RolloutUndo => "rollout.undo",
        }
    }

    /// The action a logged string names, if this build writes it.
    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|a| a.as_str() == s)
    }
}

impl fmt::Display for AuditAction {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl AsRef<str> for AuditAction {
    fn as_ref(&self) -> &str {
        self.as_str()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The strings the server writes today (its `audit` calls and the task-end entry), each exactly once.
    const WRITTEN: [&str; 28] = [
        "action.call",
        "action.cancel",
        "blob.put",
        "manifest.apply",
        "manifest.delete",
        "manifest.sign",
        "node.accept_labels",
        "node.delete",
        "node.enroll",
        "node.label",
        "node.register",
        "operator.create",
        "operator.revoke",
        "session.message",
        "session.terminate",
        "task.cancel",
        "task.create",
        "task.finish",
        "token.create",
        "token.revoke",
        "rollout.start",
        "rollout.wave",
        "rollout.pause",
        "rollout.resume",
        "rollout.abort",
        "rollout.revert",
        "rollout.complete",
        "rollout.undo",
    ];

    #[test]
    fn every_action_is_the_exact_string_the_server_writes() {
        let names: Vec<&str> = AuditAction::ALL.iter().map(|a| a.as_str()).collect();
        assert_eq!(names, WRITTEN);
        for a in AuditAction::ALL {
            let json = serde_json::to_string(&a).unwrap();
            assert_eq!(json, format!("\"{a}\""));
            assert_eq!(serde_json::from_str::<AuditAction>(&json).unwrap(), a);
            assert_eq!(AuditAction::parse(a.as_str()), Some(a));
        }
        assert_eq!(AuditAction::parse("task.delete"), None);
        assert!(serde_json::from_str::<AuditAction>("\"Task.Create\"").is_err());
    }
}

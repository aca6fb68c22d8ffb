//! The audit log: who changed what. Every change an operator or a node makes is written here, by the fleet
//! call that makes it or by the REST route that knows the caller.

use chrono::Utc;
use drover_types::audit::AuditAction;
use drover_types::task::AuditEntry;

use super::FleetError;
use crate::store::AuditFilter;

/// The actor of what a node does on its own behalf (enrolls, registers, opens sessions).
pub fn node_actor(name: &str) -> String {
    format!("node:{name}")
}

/// Who may do what, and what they did: join tokens, operators and the audit log.
pub struct Access {
    pub(super) store: std::sync::Arc<dyn crate::store::AccessStore>,
    pub(super) pki: std::sync::Arc<crate::pki::Pki>,
}

impl Access {
    /// Writes one entry. A failed write is logged, never fatal: the change it records has happened.
    pub async fn audit(
        &self,
        actor: &str,
        action: AuditAction,
        target: &str,
        detail: serde_json::Value,
    ) {
        let entry = AuditEntry {
            id: 0,
            at: Utc::now(),
            actor: actor.to_string(),
            action: action.as_str().to_string(),
            target: target.to_string(),
            detail,
        };
        if let Err(e) = self.store.insert_audits(vec![entry]).await {
            tracing::error!("cannot write the audit log: {e}");
        }
    }

    pub async fn audit_log(&self, filter: AuditFilter) -> Result<Vec<AuditEntry>, FleetError> {
        Ok(self.store.list_audit(&filter).await?)
    }
}

//! Action calls: typed RPC to one node, with a deadline, cancellation and a caller that may leave.

use std::time::Duration;

use drover_types::action::{ActionError, ActionInfo};
use drover_types::audit::AuditAction;

use super::FleetError;
use crate::reach::{self, Call, Reach};

/// The longest an action call may be given: calls hold a caller and a slot on the node while they run.
pub const MAX_ACTION_DEADLINE: Duration = Duration::from_secs(3600);
/// Arguments up to this size (as JSON) are kept whole in the audit log; larger ones by their size only.
const AUDITED_ARGS_BYTES: usize = 4096;

/// What comes with an action call besides the action: the caller's id for it (to cancel it while it
/// waits) and, for nodes that pin signing keys, the operator's signature over the action and its arguments.
#[derive(Debug, Default)]
pub struct CallTicket {
    pub call_id: Option<String>,
    pub signature: Option<drover_types::signing::CommandSignature>,
}

/// What lives with a node's stream: action calls and daemon-plugin sessions (`sessions.rs`).
pub struct Streams {
    pub(super) route: std::sync::Arc<crate::reach::Route>,
    pub(super) access: std::sync::Arc<super::Access>,
    pub(super) nodes: std::sync::Arc<super::Nodes>,
}

impl Streams {
    // ---- actions ----

    /// The actions a connected node offers.
    pub async fn node_actions(&self, id_or_name: &str) -> Result<Vec<ActionInfo>, FleetError> {
        let node = self.nodes.find(id_or_name).await?;
        self.route
            .ask(&node.id, reach::Actions {})
            .await
            .ok_or(FleetError::Action(ActionError::NodeUnavailable))
    }

    /// Calls an action on a node and waits for its outcome. If the caller stops waiting (drops this
    /// future), the call is cancelled on the node.
    pub async fn call_action(
        &self,
        actor: &str,
        id_or_name: &str,
        name: &str,
        args: serde_json::Value,
        deadline: Duration,
        ticket: CallTicket,
    ) -> Result<(String, serde_json::Value), FleetError> {
        let CallTicket { call_id, signature } = ticket;
        if deadline.is_zero() || deadline > MAX_ACTION_DEADLINE {
            return Err(FleetError::invalid(
                "timeout",
                format!(
                    "{deadline:?} is not between 1 ms and {}",
                    humantime::format_duration(MAX_ACTION_DEADLINE)
                ),
            ));
        }
        let node = self.nodes.find(id_or_name).await?;
        // Not attached here: the replica that holds the node checks the action's name (`--nats`).
        let local = self.route.local().actions(&node.id);
        if let Some(known) = &local
            && !known.iter().any(|a| a.name == name)
        {
            return Err(ActionError::UnknownAction {
                name: name.to_string(),
                known: known.iter().map(|a| a.name.clone()).collect(),
            }
            .into());
        }
        let call_id = match call_id {
            Some(id)
                if !id.is_empty()
                    && id.len() <= 64
                    && id.chars().all(|c| c.is_ascii_alphanumeric() || c == '-') =>
            {
                id
            }
            Some(id) => {
                return Err(FleetError::invalid(
                    "call_id",
                    format!("{id:?} is not 1-64 letters, digits or '-'"),
                ));
            }
            None => uuid::Uuid::new_v4().to_string(),
        };
        let mut detail = serde_json::json!({"action": name, "call": call_id, "timeout_ms": deadline.as_millis() as u64});
        if let Some(sig) = &signature {
            detail["signed_by"] = sig.signature.key.clone().into();
        }
        // Signed by the operator for nodes that pin keys; the node checks it, the server only carries it.
        let signature_json = signature
            .map(|s| serde_json::to_string(&s).unwrap_or_default())
            .unwrap_or_default();
        let args_bytes = args.to_string().len();
        if args_bytes <= AUDITED_ARGS_BYTES {
            detail["args"] = args.clone();
        } else {
            detail["args_bytes"] = args_bytes.into();
        }
        self.access
            .audit(actor, AuditAction::ActionCall, &node.name, detail)
            .await;
        // Within MAX_ACTION_DEADLINE, so neither this nor the margin below can overflow.
        let deadline_ms = u64::try_from(deadline.as_millis()).unwrap_or(u64::MAX);
        let call = Call {
            call_id,
            name: name.to_string(),
            args,
            deadline_ms,
            signature_json,
        };
        let outcome = self
            .route
            .call(&node.id, &call)
            .await
            .unwrap_or(Err(ActionError::NodeUnavailable));
        Ok((call.call_id, outcome?))
    }

    /// Cancels a call running on the node (through any replica); its caller receives Cancelled.
    pub async fn cancel_call(&self, id_or_name: &str, call_id: &str) -> Result<(), FleetError> {
        let node = self.nodes.find(id_or_name).await?;
        let ask = reach::CancelCall {
            call_id: call_id.to_string(),
        };
        if self.route.ask(&node.id, ask).await.unwrap_or(false) {
            Ok(())
        } else {
            Err(FleetError::CallNotFound(call_id.to_string()))
        }
    }
}

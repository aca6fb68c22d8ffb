//! What lives only with a node's stream (the actions it offers, its daemon-plugin sessions, dry-run plans,
//! running action calls) is read and controlled through one question type, [`Ask`]: answered here when the
//! node's stream is here, else by the replica that holds it (`drover.node.<id>.ask`, route.rs). One path
//! for both, so a replica answers the same for a node it holds as for one another replica holds.

use std::time::Duration;

use drover_proto::v1::{self, server_message::Msg};
use serde::{Deserialize, Serialize, de::DeserializeOwned};
use serde_json::{Value, json};

use super::Fleet;

/// How long a node may take to answer a dry-run plan.
pub(super) const PLAN_PATIENCE: Duration = Duration::from_secs(20);

/// A question about a node's stream. Each has one answer type (see [`Fleet::answer_here`]).
#[derive(Debug, Serialize, Deserialize)]
#[serde(tag = "ask", rename_all = "snake_case")]
pub(crate) enum Ask {
    /// `Vec<ActionInfo>`.
    Actions,
    /// `Vec<SessionInfo>`.
    Sessions,
    /// `Option<SessionDetail>`.
    Session { plugin: String },
    /// `Option<Vec<SessionSample>>`.
    SessionHistory { plugin: String },
    /// `usize`: how many were terminated.
    TerminateSessions { plugin: Option<String> },
    /// `Option<bool>`: `None` when the plugin has no session, else whether it was sent.
    SessionMessage { plugin: String, body_json: String },
    /// `Result<String, String>`: the plan's JSON, or why there is none.
    Plan { state_json: String },
    /// `bool`: whether such a call ran on the node and was asked to stop.
    CancelCall { call_id: String },
}

impl Ask {
    /// How long the holder may take to answer.
    pub(super) fn patience(&self) -> Duration {
        match self {
            // The node's own time, plus the trip there and back.
            Ask::Plan { .. } => PLAN_PATIENCE.saturating_add(Duration::from_secs(2)),
            _ => super::route::ROUTE_PATIENCE,
        }
    }
}

impl Fleet {
    /// Asks about a node's stream, here or at the replica that holds it; `None` when no replica holds it
    /// (or its holder did not answer in time).
    pub(crate) async fn ask<T: DeserializeOwned>(&self, node_id: &str, ask: Ask) -> Option<T> {
        let answer = if self.links.is_attached(node_id) || self.nats().is_none() {
            self.answer_here(node_id, ask).await?
        } else {
            self.ask_elsewhere(node_id, &ask).await?
        };
        serde_json::from_value(answer)
            .inspect_err(|e| tracing::warn!(node = %node_id, "unreadable answer from the node's replica: {e}"))
            .ok()
    }

    /// Answers for a node whose stream is here; `None` when it is not.
    pub(super) async fn answer_here(&self, node_id: &str, ask: Ask) -> Option<Value> {
        if !self.links.is_attached(node_id) {
            return None;
        }
        let links = &self.links;
        Some(match ask {
            Ask::Actions => json!(links.actions(node_id)?),
            Ask::Sessions => json!(links.sessions(node_id)),
            Ask::Session { plugin } => json!(links.session(node_id, &plugin)),
            Ask::SessionHistory { plugin } => json!(links.session_history(node_id, &plugin)),
            Ask::TerminateSessions { plugin } => json!(
                links
                    .terminate_sessions(node_id, plugin.as_deref(), "terminated by an operator")
                    .await
            ),
            Ask::SessionMessage { plugin, body_json } => {
                let sent = match links.session(node_id, &plugin) {
                    None => None,
                    Some(detail) => {
                        let m = v1::SessionMessage {
                            plugin,
                            session_id: detail.info.session_id,
                            body_json,
                        };
                        Some(links.send(node_id, Msg::SessionMessage(m)).await)
                    }
                };
                json!(sent)
            }
            Ask::Plan { state_json } => json!(self.plan_here(node_id, state_json).await),
            Ask::CancelCall { call_id } => json!(links.cancel_call(node_id, &call_id).await),
        })
    }

    /// Asks a node attached here what it would change for `state_json`.
    async fn plan_here(&self, node_id: &str, state_json: String) -> Result<String, String> {
        let Some((request_id, rx)) = self.links.start_plan(node_id, state_json).await else {
            return Err("not connected".into());
        };
        let answer = tokio::time::timeout(PLAN_PATIENCE, rx).await;
        self.links.forget_plan(&request_id);
        match answer {
            Ok(Ok(json)) => Ok(json),
            _ => Err("no plan in time".into()),
        }
    }
}

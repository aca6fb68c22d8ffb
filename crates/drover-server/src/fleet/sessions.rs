//! Daemon-plugin sessions: what agents ask for and send, what operators see and send. The sessions
//! themselves live in `Links`.

use drover_types::action::ActionError;
use drover_types::session::{SessionDetail, SessionInfo, SessionSample};

use super::{FleetError, Streams};
use crate::reach::local::SessionRejected;
use crate::reach::message::{CreateSession, SessionData, SessionStatus, ToAgent};
use crate::reach::{self, Reach};

impl Streams {
    // ---- sessions ----

    /// A node's sessions; none when no replica holds its stream.
    pub async fn sessions(&self, id_or_name: &str) -> Result<Vec<SessionInfo>, FleetError> {
        let node = self.nodes.find(id_or_name).await?;
        Ok(self
            .route
            .ask(&node.id, reach::Sessions {})
            .await
            .unwrap_or_default())
    }

    pub async fn session(
        &self,
        id_or_name: &str,
        plugin: &str,
    ) -> Result<SessionDetail, FleetError> {
        let node = self.nodes.find(id_or_name).await?;
        let ask = reach::Session {
            plugin: plugin.to_string(),
        };
        self.route
            .ask(&node.id, ask)
            .await
            .flatten()
            .ok_or(FleetError::SessionNotFound {
                node: node.name,
                plugin: plugin.to_string(),
            })
    }

    pub async fn session_history(
        &self,
        id_or_name: &str,
        plugin: &str,
    ) -> Result<Vec<SessionSample>, FleetError> {
        let node = self.nodes.find(id_or_name).await?;
        let ask = reach::SessionHistory {
            plugin: plugin.to_string(),
        };
        self.route
            .ask(&node.id, ask)
            .await
            .flatten()
            .ok_or(FleetError::SessionNotFound {
                node: node.name,
                plugin: plugin.to_string(),
            })
    }

    /// Terminates one plugin's session or all of a node's; the agent recreates them.
    pub async fn terminate_sessions(
        &self,
        id_or_name: &str,
        plugin: Option<&str>,
    ) -> Result<usize, FleetError> {
        let node = self.nodes.find(id_or_name).await?;
        let ask = reach::TerminateSessions {
            plugin: plugin.map(str::to_string),
        };
        let n = self.route.ask(&node.id, ask).await.unwrap_or(0);
        match plugin {
            Some(p) if n == 0 => Err(FleetError::SessionNotFound {
                node: node.name,
                plugin: p.to_string(),
            }),
            _ => Ok(n),
        }
    }

    /// Sends a message to a plugin's handler on the node.
    pub async fn session_message(
        &self,
        id_or_name: &str,
        plugin: &str,
        body: serde_json::Value,
    ) -> Result<(), FleetError> {
        let node = self.nodes.find(id_or_name).await?;
        let ask = reach::SessionMessage {
            plugin: plugin.to_string(),
            body_json: body.to_string(),
        };
        match self.route.ask(&node.id, ask).await.flatten() {
            Some(true) => Ok(()),
            Some(false) => Err(ActionError::NodeUnavailable.into()),
            None => Err(FleetError::SessionNotFound {
                node: node.name,
                plugin: plugin.to_string(),
            }),
        }
    }

    /// An agent asks for a session for one of its plugins (Empty -> Pending); the answer carries its id.
    pub(super) async fn create_session(&self, node_id: &str, name: &str, c: CreateSession) {
        let valid = !c.plugin.is_empty()
            && c.plugin.len() <= drover_types::limits::MAX_NAME
            && c.plugin
                .chars()
                .all(|ch| ch.is_ascii_alphanumeric() || ch == '_' || ch == '-');
        if !valid {
            tracing::warn!(node = %name, "ignored a session request for an invalid plugin name");
            return;
        }
        let session_id = match self
            .route
            .local()
            .create_session(node_id, &c.plugin, c.interval, c.deadline)
        {
            Ok(id) => id,
            Err(e) => {
                tracing::warn!(node = %name, plugin = %c.plugin, "refused a session: {e}");
                let refusal = ToAgent::TerminateSession {
                    plugin: c.plugin,
                    session_id: String::new(),
                    reason: format!("session refused: {e}"),
                };
                self.route.local().send(node_id, refusal).await;
                return;
            }
        };
        tracing::debug!(node = %name, plugin = %c.plugin, %session_id, "session created");
        let created = ToAgent::SessionCreated {
            plugin: c.plugin,
            session_id,
        };
        self.route.local().send(node_id, created).await;
    }

    /// A payload; data for a session this server does not know makes the agent recreate it.
    pub(super) async fn session_data(&self, node_id: &str, name: &str, d: SessionData) {
        match self.route.local().session_data(node_id, &d) {
            Ok(()) => {}
            Err(SessionRejected::Unknown(_)) => {
                tracing::info!(node = %name, plugin = %d.plugin, "data for an unknown session; asking the agent to recreate it");
                self.route
                    .local()
                    .reject_session(node_id, &d.plugin, &d.session_id)
                    .await;
            }
            Err(e) => tracing::warn!(node = %name, plugin = %d.plugin, "ignored session data: {e}"),
        }
    }

    pub(super) async fn session_status(&self, node_id: &str, st: SessionStatus) {
        if self.route.local().session_status(node_id, &st).is_err() {
            self.route
                .local()
                .reject_session(node_id, &st.plugin, &st.session_id)
                .await;
        }
    }
}

//! Reaching a node: the one port the services use to talk to agents, [`Reach`], and its adapters.
//!
//! - `local`: the streams of agents attached to this server (`Links`).
//! - `nats`: the other replicas over NATS (`drover server --nats`), which hold the streams of the rest.
//! - [`Route`]: both, as the services see them: a node attached here is reached through its stream, any
//!   other through the replica that holds it. A service never knows which.
//!
//! What goes to and comes from a node is typed ([`message`]); `wire` is the one translation to the
//! protocol. A question about a node's stream ([`Ask`]) names its answer's type ([`Question`]).

mod ask;
pub mod local;
pub mod message;
pub mod nats;
pub mod wire;

use std::collections::HashSet;
use std::future::Future;
use std::sync::{Arc, OnceLock};

use drover_types::action::ActionError;
use futures_util::StreamExt;
use serde::{Deserialize, Serialize};
use serde_json::Value;

pub use ask::{
    Actions, Ask, CancelCall, Plan, Question, Session, SessionHistory, SessionMessage, Sessions,
    TerminateSessions,
};
pub use local::Links;
pub use message::ToAgent;
pub use nats::{Nats, NatsError, NatsOptions, StateObserver};

/// Holders asked at once when a task is created for nodes not attached here.
const HELD_ASKS: usize = 256;

/// An action call as it goes to the node (checked and audited by the service before).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Call {
    pub call_id: String,
    pub name: String,
    pub args: Value,
    pub deadline_ms: u64,
    pub signature_json: String,
}

/// The port: send to a node, ask about its stream, run an action call on it. `None` / `false` when this
/// way does not reach the node (no stream here, no replica holding it, or no answer in time).
pub trait Reach: Send + Sync {
    /// Whether this way reaches the node now.
    fn holds(&self, node_id: &str) -> impl Future<Output = bool> + Send;
    /// Puts a message in the node's stream; true once it is there.
    fn send(&self, node_id: &str, msg: ToAgent) -> impl Future<Output = bool> + Send;
    /// Asks about the node's stream; the answer as JSON (see [`Reach::ask`] for the typed form).
    fn ask_json(&self, node_id: &str, ask: Ask) -> impl Future<Output = Option<Value>> + Send;
    /// Runs an action call on the node and waits for its outcome; a caller that leaves cancels it.
    fn call(
        &self,
        node_id: &str,
        call: &Call,
    ) -> impl Future<Output = Option<Result<Value, ActionError>>> + Send;

    /// Asks a typed question about the node's stream.
    fn ask<Q: Question + Send>(
        &self,
        node_id: &str,
        question: Q,
    ) -> impl Future<Output = Option<Q::Answer>> + Send {
        async move {
            let answer = self.ask_json(node_id, question.into()).await?;
            serde_json::from_value(answer)
                .inspect_err(
                    |e| tracing::warn!(node = %node_id, "unreadable answer about the node: {e}"),
                )
                .ok()
        }
    }
}

/// Every node, wherever its stream is: here first, else through the replicas (when `--nats` is set).
#[derive(Default)]
pub struct Route {
    local: Arc<Links>,
    remote: OnceLock<Nats>,
}

impl Route {
    /// The streams attached here.
    pub fn local(&self) -> &Arc<Links> {
        &self.local
    }

    /// The other replicas, when this server has them.
    pub fn remote(&self) -> Option<&Nats> {
        self.remote.get()
    }

    /// Connects to the other replicas; false when already connected.
    pub fn set_remote(&self, nats: Nats) -> bool {
        self.remote.set(nats).is_ok()
    }

    /// Whether the node's stream is attached to this server.
    pub fn here(&self, node_id: &str) -> bool {
        self.local.is_attached(node_id)
    }

    /// The way that reaches `node_id`: local when its stream is here or there are no replicas.
    fn remote_for(&self, node_id: &str) -> Option<&Nats> {
        if self.here(node_id) {
            None
        } else {
            self.remote()
        }
    }

    /// Why this replica cannot reach the others now, when it is set up to and its connection is down.
    pub fn problem(&self) -> Option<String> {
        self.remote()?.problem()
    }

    /// Of `node_ids` (none attached here), those another replica holds.
    pub async fn held_elsewhere(&self, node_ids: Vec<String>) -> HashSet<String> {
        let Some(nats) = self.remote() else {
            return HashSet::new();
        };
        futures_util::stream::iter(node_ids)
            .map(|id| async move { nats.holds(&id).await.then_some(id) })
            .buffer_unordered(HELD_ASKS)
            .filter_map(|id| async move { id })
            .collect()
            .await
    }

    /// After the store took a node's desired state: for the replica that holds its stream (NATS KV).
    pub async fn desired_written(&self, node_id: &str, update: &message::DesiredUpdate) {
        if let Some(nats) = self.remote() {
            nats.state_kv().desired_written(node_id, update).await;
        }
    }

    /// After the store took a node's report: for the other replicas' status followers (NATS KV).
    pub async fn actual_written(
        &self,
        node_id: &str,
        report: &drover_types::manifest::NodeConvergence,
    ) {
        if let Some(nats) = self.remote() {
            nats.state_kv().actual_written(node_id, report).await;
        }
    }

    /// Tells followers on other replicas that the store has news for the task.
    pub fn poke(&self, task_id: &str) {
        if let Some(nats) = self.remote() {
            nats.poke(task_id);
        }
    }
}

impl Reach for Route {
    async fn holds(&self, node_id: &str) -> bool {
        match self.remote_for(node_id) {
            Some(nats) => nats.holds(node_id).await,
            None => self.local.holds(node_id).await,
        }
    }

    async fn send(&self, node_id: &str, msg: ToAgent) -> bool {
        match self.remote_for(node_id) {
            Some(nats) => nats.send(node_id, msg).await,
            None => self.local.send(node_id, msg).await,
        }
    }

    async fn ask_json(&self, node_id: &str, ask: Ask) -> Option<Value> {
        match self.remote_for(node_id) {
            Some(nats) => nats.ask_json(node_id, ask).await,
            None => self.local.ask_json(node_id, ask).await,
        }
    }

    async fn call(&self, node_id: &str, call: &Call) -> Option<Result<Value, ActionError>> {
        match self.remote_for(node_id) {
            Some(nats) => nats.call(node_id, call).await,
            None => self.local.call(node_id, call).await,
        }
    }
}

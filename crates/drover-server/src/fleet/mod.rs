//! The fleet: every decision about nodes, tokens, tasks, desired state and sessions is made here, one
//! concern per file; the gateway (gRPC) and the API (REST) only translate to and from it.

mod actions;
mod ask;
mod audit;
pub mod desired;
mod fold;
mod nodes;
mod observe;
mod operators;
pub mod pages;
mod route;
mod sessions;
mod state_kv;
#[cfg(feature = "tamper")]
pub mod tamper;
pub mod tasks;
mod tokens;

use std::sync::Arc;
use std::time::Duration;

use drover_proto::v1::agent_message;
use drover_types::{
    Capabilities, Labels, LivenessPolicy, Metrics,
    action::{ActionError, ActionInfo},
    labels::LabelError,
    limits::LimitError,
    token::{TokenFormatError, TokenRefusal},
};
use sha2::{Digest, Sha256};

use crate::links::Links;
use crate::pki::{Pki, PkiError};
use crate::store::{MetricsHistory, Store, StoreError};

pub use actions::{CallTicket, MAX_ACTION_DEADLINE};
pub use audit::node_actor;
pub use nodes::{HttpRegistration, MAX_HEARTBEAT_INTERVAL, Registrant};
pub use observe::{GPU_PLUGIN, NodeGauges, Observation};
pub use operators::BOOTSTRAP_ADMIN;
pub use route::{Nats, NatsError, NatsOptions};
pub use tokens::{CheckedToken, MAX_TOKEN_TTL};

/// Default lifetime of a join token.
pub const DEFAULT_TOKEN_TTL: Duration = Duration::from_secs(3600);
/// Liveness of HTTP agents that promise no interval is measured in the MIaaS default.
pub const DEFAULT_HTTP_INTERVAL: Duration = Duration::from_secs(30);

#[derive(Debug, thiserror::Error)]
pub enum FleetError {
    #[error("no node has the id or name {0:?}")]
    NodeNotFound(String),
    #[error("no join token has the id {0:?}")]
    TokenNotFound(String),
    #[error("no active operator is named {0:?}")]
    OperatorNotFound(String),
    #[error("an active operator is named {0:?}: revoke it first to give that name a new token")]
    OperatorExists(String),
    #[error(transparent)]
    TokenFormat(#[from] TokenFormatError),
    #[error(transparent)]
    TokenRefused(#[from] TokenRefusal),
    #[error(
        "a join token is required (as `Authorization: Bearer <token>`); this server does not allow open registration"
    )]
    TokenRequired,
    #[error("the node token is missing or wrong: register again to get a new one")]
    BadNodeToken,
    #[error("the name {0:?} belongs to a drover-agent node; choose another name")]
    NameOwnedByAgent(String),
    #[error("field `{field}`: {reason}")]
    Invalid { field: String, reason: String },
    #[error(transparent)]
    Action(#[from] ActionError),
    #[error("no action call {0:?} is running")]
    CallNotFound(String),
    #[error("no task has the id {0:?}")]
    TaskNotFound(String),
    #[error("no manifest is named {0:?}")]
    ManifestNotFound(String),
    #[error("{}", .0.iter().map(|e| e.to_string()).collect::<Vec<_>>().join("; "))]
    ManifestInvalid(Vec<drover_types::manifest::ManifestError>),
    #[error("node {node:?} has no session for plugin {plugin:?}")]
    SessionNotFound { node: String, plugin: String },
    #[error(transparent)]
    Pki(#[from] PkiError),
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl FleetError {
    pub(crate) fn invalid(field: impl Into<String>, reason: impl std::fmt::Display) -> Self {
        FleetError::Invalid {
            field: field.into(),
            reason: reason.to_string(),
        }
    }
}

impl From<LabelError> for FleetError {
    fn from(e: LabelError) -> Self {
        FleetError::invalid("labels", e)
    }
}

impl From<LimitError> for FleetError {
    fn from(e: LimitError) -> Self {
        FleetError::Invalid {
            field: e.field,
            reason: e.reason,
        }
    }
}

pub struct FleetConfig {
    pub liveness: LivenessPolicy,
    /// Which heartbeats each node's metrics history keeps.
    pub metrics_history: MetricsHistory,
    /// Accept MIaaS registrations without a join token (labs only).
    pub open_registration: bool,
    /// Selection also uses the labels nodes report after enrolling (the behaviour before pending labels).
    pub trust_reported_labels: bool,
    /// What `/metrics` counts as it happens (shared with the store's timing wrapper).
    pub metrics: Arc<crate::metrics::ServerMetrics>,
}

/// What an enrolled agent receives.
pub struct Enrollment {
    pub node_id: String,
    pub name: String,
    pub cert_pem: String,
}

/// What an agent says about itself when its stream opens.
pub struct AgentHello {
    pub capabilities: Capabilities,
    pub labels: Labels,
    pub heartbeat_interval: Duration,
    pub metrics: Option<Metrics>,
    pub ip: Option<String>,
    pub actions: Vec<ActionInfo>,
}

pub struct Fleet {
    store: Arc<dyn Store>,
    pki: Arc<Pki>,
    config: FleetConfig,
    links: Links,
    live: crate::tasks::TaskLive,
    pub(crate) status_events: desired::StatusEvents,
    beats: nodes::Heartbeats,
    blobs: desired::BlobCache,
    /// The fleet as the manifests page last read it (`Fleet::manifest_targets`).
    targets: desired::TargetsCache,
    /// Set with `--nats`: the other replicas.
    nats: std::sync::OnceLock<Nats>,
    /// Whether this replica runs the leader-only sweeps now (`server::leader`); one server alone always does.
    leader: std::sync::atomic::AtomicBool,
    #[cfg(feature = "tamper")]
    tamper: tamper::Tamper,
}

/// Keeps a node's stream registered while alive; a newer stream for the same node takes over.
pub struct Attachment {
    fleet: Arc<Fleet>,
    node_id: String,
    serial: u64,
    /// Other replicas reach the node through this one while it lives (dropped after the detach).
    _held: Option<route::Held>,
}

impl Drop for Attachment {
    fn drop(&mut self) {
        self.fleet.links.detach(&self.node_id, self.serial);
    }
}

/// Gives up on an action call when its caller goes away before the answer.
struct CallGuard<'a> {
    fleet: &'a Fleet,
    call_id: String,
    done: bool,
}

impl Drop for CallGuard<'_> {
    fn drop(&mut self) {
        if !self.done {
            self.fleet.links.abandon_call(&self.call_id);
        }
    }
}

fn sha256_hex(s: &str) -> String {
    hex::encode(Sha256::digest(s.as_bytes()))
}

fn random_hex<const N: usize>() -> String {
    hex::encode(rand::random::<[u8; N]>())
}

fn new_node_id() -> String {
    uuid::Uuid::new_v4().to_string()
}

fn validate_name(name: &str) -> Result<(), FleetError> {
    let ok = !name.is_empty()
        && name.len() <= 253
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'));
    if ok {
        Ok(())
    } else {
        Err(FleetError::invalid(
            "name",
            format!("{name:?} is not a valid node name (1-253 letters, digits, '-', '_' or '.')"),
        ))
    }
}

impl Fleet {
    pub fn new(store: Arc<dyn Store>, pki: Arc<Pki>, config: FleetConfig) -> Arc<Self> {
        Arc::new(Self {
            store,
            pki,
            config,
            links: Links::default(),
            live: Default::default(),
            status_events: Default::default(),
            beats: Default::default(),
            blobs: Default::default(),
            targets: Default::default(),
            nats: Default::default(),
            leader: std::sync::atomic::AtomicBool::new(true),
            #[cfg(feature = "tamper")]
            tamper: Default::default(),
        })
    }

    pub fn is_leader(&self) -> bool {
        self.leader.load(std::sync::atomic::Ordering::Relaxed)
    }

    pub(crate) fn set_leader(&self, leader: bool) {
        self.leader
            .store(leader, std::sync::atomic::Ordering::Relaxed);
    }

    #[cfg(feature = "tamper")]
    pub(crate) fn tamper(&self) -> &tamper::Tamper {
        &self.tamper
    }

    pub fn metrics(&self) -> &crate::metrics::ServerMetrics {
        &self.config.metrics
    }

    pub fn pki(&self) -> &Pki {
        &self.pki
    }

    /// The live streams: for the gateway to route what agents send.
    pub(crate) fn links(&self) -> &Links {
        &self.links
    }

    pub(crate) fn live(&self) -> &crate::tasks::TaskLive {
        &self.live
    }

    pub(crate) fn store(&self) -> &dyn Store {
        self.store.as_ref()
    }

    /// What an attached agent sends besides hellos and heartbeats.
    pub async fn agent_message(
        self: &Arc<Self>,
        node_id: &str,
        name: &str,
        msg: agent_message::Msg,
    ) {
        use agent_message::Msg;
        self.config.metrics.agent_message(&msg);
        match msg {
            Msg::ActionResult(r) => self.action_result(node_id, r),
            Msg::CreateSession(c) => self.create_session(node_id, name, c).await,
            Msg::SessionData(d) => self.session_data(node_id, name, d).await,
            Msg::SessionStatus(st) => self.session_status(node_id, st).await,
            Msg::TaskOutput(o) => self.task_output(node_id, o).await,
            Msg::TaskExit(e) => self.task_exit(node_id, e).await,
            Msg::ConvergenceReport(r) => self.convergence_report(node_id, &r.report_json).await,
            Msg::PlanResult(p) => self.links.finish_plan(node_id, &p.request_id, p.plan_json),
            Msg::BlobRequest(r) => self.blob_request(node_id, r).await,
            Msg::Hello(_) | Msg::Heartbeat(_) => {}
        }
    }
}

//! The fleet: every decision about nodes, tokens, tasks, desired state and sessions is made here, one
//! concern per file; the gateway (gRPC) and the API (REST) only translate to and from it.

mod actions;
mod audit;
pub mod desired;
mod fold;
mod nodes;
mod observe;
mod operators;
pub mod pages;
mod rollouts;
mod sessions;
#[cfg(feature = "tamper")]
pub mod tamper;
pub mod tasks;
mod tokens;

use std::sync::Arc;
use std::time::Duration;

use drover_types::{
    Capabilities, Labels, LivenessPolicy, Metrics,
    action::{ActionError, ActionInfo},
    labels::LabelError,
    limits::LimitError,
    token::{TokenFormatError, TokenRefusal},
};
use sha2::{Digest, Sha256};

use crate::pki::{Pki, PkiError};
use crate::reach::Route;
use crate::reach::message::FromAgent;
use crate::store::{MetricsHistory, Store, StoreError};
pub use actions::Streams;
pub use audit::Access;
pub use desired::Desired;
pub use nodes::Nodes;
pub use rollouts::Rollouts;
pub use tasks::Tasks;

pub use crate::reach::{Nats, NatsError, NatsOptions};
pub use actions::{CallTicket, MAX_ACTION_DEADLINE};
pub use audit::node_actor;
pub use nodes::{HttpRegistration, MAX_HEARTBEAT_INTERVAL, Registrant};
pub use observe::{GPU_PLUGIN, NodeGauges, Observation};
pub use operators::BOOTSTRAP_ADMIN;
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
    #[error("the manifest {0:?} has no rollout (apply it with a `rollout:` policy to start one)")]
    RolloutNotFound(String),
    #[error("{}", .0.iter().map(|e| e.to_string()).collect::<Vec<_>>().join("; "))]
    ManifestInvalid(Vec<drover_types::manifest::ManifestError>),
    #[error("node {node:?} has no session for plugin {plugin:?}")]
    SessionNotFound { node: String, plugin: String },
    #[error(transparent)]
    Pki(#[from] PkiError),
    #[error(transparent)]
    Store(#[from] StoreError),
    /// A write folded with others (`fold`) failed.
    #[error(transparent)]
    Write(#[from] fold::FoldFailure),
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

/// The control plane's front: the services, each owning its state, and what spans them (an agent's
/// stream: its messages go to the service they concern; its attach touches nodes, tasks and desired state).
pub struct Fleet {
    /// Join tokens, operators and the audit log.
    pub access: Arc<Access>,
    /// Enrollment, registration, liveness and heartbeats.
    pub nodes: Arc<Nodes>,
    /// Tasks: dispatch, output, ends, cancellation, redelivery and retention.
    pub tasks: Arc<Tasks>,
    /// Manifests, each node's desired state, convergence reports, labels and blobs.
    pub desired: Arc<Desired>,
    /// Action calls and daemon-plugin sessions, which live with a node's stream.
    pub streams: Arc<Streams>,
    /// Rollouts: their state, the leader's driving and operators' commands.
    pub rollouts: Arc<Rollouts>,
    /// How this server reaches each node: its stream here, or the replica that holds it.
    route: Arc<Route>,
    store: Arc<dyn Store>,
    pki: Arc<Pki>,
    config: Arc<FleetConfig>,
    /// Whether this replica runs the leader-only sweeps now (`server::leader`); one server alone always does.
    leader: std::sync::atomic::AtomicBool,
}

/// Keeps a node's stream registered while alive; a newer stream for the same node takes over.
pub struct Attachment {
    route: Arc<Route>,
    node_id: String,
    serial: u64,
    /// Other replicas reach the node through this one while it lives (dropped after the detach).
    _held: Option<crate::reach::nats::Held>,
}

impl Drop for Attachment {
    fn drop(&mut self) {
        self.route.local().detach(&self.node_id, self.serial);
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
        let config = Arc::new(config);
        let route = Arc::new(Route::default());
        let access = Arc::new(Access {
            store: store.clone(),
            pki: pki.clone(),
        });
        let nodes = Arc::new(Nodes {
            store: store.clone(),
            pki: pki.clone(),
            config: config.clone(),
            route: route.clone(),
            access: access.clone(),
            beats: Default::default(),
        });
        let tasks = Arc::new(Tasks {
            store: store.clone(),
            config: config.clone(),
            route: route.clone(),
            access: access.clone(),
            nodes: nodes.clone(),
            live: Default::default(),
        });
        let desired = Arc::new(Desired {
            store: store.clone(),
            route: route.clone(),
            access: access.clone(),
            nodes: nodes.clone(),
            status_events: Default::default(),
            blobs: Default::default(),
            targets: Default::default(),
            rollout_views: Default::default(),
            #[cfg(feature = "tamper")]
            tamper: Default::default(),
        });
        let rollouts = Arc::new(Rollouts {
            desired: desired.clone(),
            statuses: Default::default(),
        });
        let streams = Arc::new(Streams {
            route: route.clone(),
            access: access.clone(),
            nodes: nodes.clone(),
        });
        Arc::new(Self {
            access,
            nodes,
            tasks,
            desired,
            streams,
            rollouts,
            route,
            store,
            pki,
            config,
            leader: std::sync::atomic::AtomicBool::new(true),
        })
    }

    pub fn is_leader(&self) -> bool {
        self.leader.load(std::sync::atomic::Ordering::Relaxed)
    }

    pub(crate) fn set_leader(&self, leader: bool) {
        self.leader
            .store(leader, std::sync::atomic::Ordering::Relaxed);
    }

    pub fn metrics(&self) -> &crate::metrics::ServerMetrics {
        &self.config.metrics
    }

    pub fn pki(&self) -> &Pki {
        &self.pki
    }

    pub(crate) fn store(&self) -> &dyn Store {
        self.store.as_ref()
    }

    /// A node's stream is attached and registered (`Nodes::attach`): it gets its runs again and its
    /// desired state. `open_tasks` and `hello_at` as in `Tasks::tasks_on_attach`.
    pub async fn attached(
        &self,
        node_id: &str,
        name: &str,
        open_tasks: Option<std::collections::HashSet<String>>,
        hello_at: chrono::DateTime<chrono::Utc>,
    ) {
        self.tasks
            .tasks_on_attach(node_id, name, open_tasks, hello_at)
            .await;
        self.desired.desired_on_attach(node_id).await;
    }

    /// What an attached agent sends besides hellos and heartbeats.
    pub async fn agent_message(&self, node_id: &str, name: &str, msg: FromAgent) {
        self.config.metrics.agent_message(&msg);
        let links = self.route.local();
        match msg {
            FromAgent::ActionResult { call_id, outcome } => {
                links.finish_call(node_id, &call_id, outcome)
            }
            FromAgent::PlanResult {
                request_id,
                plan_json,
            } => links.finish_plan(node_id, &request_id, plan_json),
            FromAgent::CreateSession(c) => self.streams.create_session(node_id, name, c).await,
            FromAgent::SessionData(d) => self.streams.session_data(node_id, name, d).await,
            FromAgent::SessionStatus(st) => self.streams.session_status(node_id, st).await,
            FromAgent::TaskOutput(o) => self.tasks.task_output(node_id, o).await,
            FromAgent::TaskExit(e) => self.tasks.task_exit(node_id, e).await,
            FromAgent::ConvergenceReport { report_json } => {
                self.desired.convergence_report(node_id, &report_json).await
            }
            FromAgent::BlobRequest { request_id, sha256 } => {
                self.desired.blob_request(node_id, request_id, sha256).await
            }
        }
    }
}

impl Fleet {
    /// Connects this server to the other replicas, and starts watching the node-state buckets.
    pub fn set_nats(&self, nats: Nats) {
        let observer: std::sync::Weak<dyn crate::reach::StateObserver> =
            Arc::downgrade(&self.desired) as std::sync::Weak<Desired>;
        nats.watch_state(observer, self.store.clone());
        if !self.route.set_remote(nats) {
            tracing::warn!("NATS was already set up; keeping the first connection");
        }
    }

    /// Why this replica cannot route to the others now, when it is set up to (`--nats`) and its
    /// connection is down.
    pub fn nats_problem(&self) -> Option<String> {
        self.route.problem()
    }
}

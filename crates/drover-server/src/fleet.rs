//! The fleet: enrollment, registration, heartbeats and the node views built from the store.
//! Everything that decides something about a node lives here; the gateway and the API only translate.

use std::sync::Arc;
use std::time::Duration;

use chrono::Utc;
use drover_types::{
    Capabilities, Labels, LivenessPolicy, Metrics, MetricsSample, Node, Transport,
    action::{ActionError, ActionInfo},
    api::{CreateTokenRequest, CreatedToken, RegisterRequest, RegisterResponse},
    duration::{DurationError, parse_duration},
    labels::{LabelError, validate_labels},
    session::{SessionDetail, SessionInfo, SessionSample},
    token::{JoinToken, JoinTokenInfo, TokenFormatError, TokenRefusal},
};
use sha2::{Digest, Sha256};

use crate::links::Links;
use crate::pki::{Pki, PkiError};
use crate::store::{JoinTokenRecord, NodeRecord, Store, StoreError};

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

impl From<DurationError> for FleetError {
    fn from(e: DurationError) -> Self {
        FleetError::invalid("ttl", e)
    }
}

pub struct FleetConfig {
    pub liveness: LivenessPolicy,
    /// Metrics samples kept per node.
    pub metrics_history: usize,
    /// Accept MIaaS registrations without a join token (labs only).
    pub open_registration: bool,
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
    /// The tasks the agent runs or holds unacknowledged exits of; `None` from agents that do not say.
    pub open_tasks: Option<Vec<String>>,
}

pub struct Fleet {
    store: Arc<dyn Store>,
    pki: Arc<Pki>,
    config: FleetConfig,
    links: Links,
    live: crate::tasks::TaskLive,
    pub(crate) status_events: crate::desired::StatusEvents,
}

/// Keeps a node's stream registered while alive; a newer stream for the same node takes over.
pub struct Attachment {
    fleet: Arc<Fleet>,
    node_id: String,
    serial: u64,
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
        })
    }

    pub fn pki(&self) -> &Pki {
        &self.pki
    }

    // ---- join tokens ----

    pub async fn create_token(&self, req: CreateTokenRequest) -> Result<CreatedToken, FleetError> {
        let ttl = match req.ttl.as_deref() {
            Some(t) => parse_duration(t)?,
            None => DEFAULT_TOKEN_TTL,
        };
        let ttl =
            chrono::Duration::from_std(ttl).map_err(|_| FleetError::invalid("ttl", "too long"))?;
        if req.max_uses == Some(0) {
            return Err(FleetError::invalid("max_uses", "must be at least 1"));
        }
        validate_labels(&req.labels)?;
        let now = Utc::now();
        let token = JoinToken {
            id: random_hex::<4>(),
            secret: random_hex::<16>(),
            ca_fingerprint: self.pki.fingerprint().to_string(),
        };
        let info = JoinTokenInfo {
            id: token.id.clone(),
            created_at: now,
            expires_at: now
                .checked_add_signed(ttl)
                .ok_or_else(|| FleetError::invalid("ttl", "too long"))?,
            max_uses: req.max_uses,
            uses: 0,
            labels: req.labels,
            revoked: false,
        };
        self.store
            .insert_join_token(&JoinTokenRecord {
                info: info.clone(),
                secret_sha256: sha256_hex(&token.secret),
            })
            .await?;
        Ok(CreatedToken {
            token: token.to_string(),
            info,
        })
    }

    pub async fn list_tokens(&self) -> Result<Vec<JoinTokenInfo>, FleetError> {
        Ok(self.store.list_join_tokens().await?)
    }

    pub async fn revoke_token(&self, id: &str) -> Result<(), FleetError> {
        if self.store.revoke_join_token(id).await? {
            Ok(())
        } else {
            Err(FleetError::TokenNotFound(id.to_string()))
        }
    }

    /// Checks a join token (full, or without its fingerprint) and counts one use.
    async fn use_token(&self, presented: &str) -> Result<JoinTokenInfo, FleetError> {
        let token = JoinToken::parse(presented, false)?;
        if !token.ca_fingerprint.is_empty() && token.ca_fingerprint != self.pki.fingerprint() {
            return Err(TokenRefusal::Unknown.into());
        }
        Ok(self
            .store
            .use_join_token(&token.id, &sha256_hex(&token.secret), Utc::now())
            .await??)
    }

    /// Finds a free name: the wanted one, else the wanted one with a short suffix.
    async fn free_name(&self, wanted: &str, id: &str) -> Result<String, FleetError> {
        if self.store.get_node_by_name(wanted).await?.is_none() {
            return Ok(wanted.to_string());
        }
        Ok(format!("{wanted}-{}", &id[..8.min(id.len())]))
    }

    // ---- drover-agent nodes ----

    /// Trades a join token and a CSR for a client certificate naming a new node.
    pub async fn enroll(
        &self,
        token: &str,
        csr_pem: &str,
        name: &str,
        labels: Labels,
    ) -> Result<Enrollment, FleetError> {
        validate_name(name)?;
        validate_labels(&labels)?;
        let token = self.use_token(token).await?;
        let id = new_node_id();
        let cert_pem = self.pki.sign_node_csr(csr_pem, &id)?;
        let name = self.free_name(name, &id).await?;
        self.store
            .insert_node(&NodeRecord {
                id: id.clone(),
                name: name.clone(),
                transport: Transport::Grpc,
                labels: token.labels,
                reported_labels: labels,
                ip: None,
                registered_at: Utc::now(),
                last_seen: None,
                heartbeat_interval_ms: 10_000,
                capabilities: Capabilities::default(),
                metrics: None,
                node_token_sha256: None,
            })
            .await?;
        Ok(Enrollment {
            node_id: id,
            name,
            cert_pem,
        })
    }

    /// Records an agent's hello and registers its stream until the returned guard drops.
    pub async fn attach(
        self: &Arc<Self>,
        node_id: &str,
        hello: AgentHello,
        tx: tokio::sync::mpsc::Sender<drover_proto::v1::ServerMessage>,
    ) -> Result<(NodeRecord, Attachment), FleetError> {
        let mut node = self
            .store
            .get_node(node_id)
            .await?
            .ok_or_else(|| FleetError::NodeNotFound(node_id.to_string()))?;
        validate_labels(&hello.labels)?;
        node.reported_labels = hello.labels;
        node.capabilities = hello.capabilities;
        node.heartbeat_interval_ms = hello
            .heartbeat_interval
            .as_millis()
            .clamp(1, u64::MAX as u128) as u64;
        node.ip = hello.ip.or(node.ip);
        self.store.update_node(&node).await?;
        if let Some(metrics) = hello.metrics {
            self.heartbeat(node_id, metrics).await?;
        }
        let serial = self.links.attach(node_id, tx, hello.actions);
        Ok((
            node,
            Attachment {
                fleet: self.clone(),
                node_id: node_id.to_string(),
                serial,
            },
        ))
    }

    /// The live streams: for the gateway to route what agents send.
    pub fn links(&self) -> &Links {
        &self.links
    }

    pub(crate) fn live(&self) -> &crate::tasks::TaskLive {
        &self.live
    }

    pub(crate) fn store(&self) -> &dyn Store {
        self.store.as_ref()
    }

    pub async fn heartbeat(&self, node_id: &str, metrics: Metrics) -> Result<(), FleetError> {
        metrics
            .validate()
            .map_err(|e| FleetError::invalid(e.field, e.reason))?;
        let found = self
            .store
            .record_heartbeat(node_id, Utc::now(), &metrics, self.config.metrics_history)
            .await?;
        if found {
            Ok(())
        } else {
            Err(FleetError::NodeNotFound(node_id.to_string()))
        }
    }

    // ---- MIaaS HTTP nodes ----

    /// `POST /api/v1/nodes/register`. Registering again under the same name returns the same node with a
    /// fresh node token (the old one stops working).
    pub async fn register_http(
        &self,
        bearer: Option<&str>,
        req: RegisterRequest,
    ) -> Result<RegisterResponse, FleetError> {
        validate_name(&req.name)?;
        validate_labels(&req.labels)?;
        let interval = match req.heartbeat_interval {
            None => DEFAULT_HTTP_INTERVAL,
            Some(s) if s.is_finite() && s > 0.0 && s < 1e7 => Duration::from_secs_f64(s),
            Some(s) => {
                return Err(FleetError::invalid(
                    "heartbeat_interval",
                    format!("{s} is not a positive number of seconds"),
                ));
            }
        };
        let token_labels = match bearer {
            Some(t) => self.use_token(t).await?.labels,
            None if self.config.open_registration => Labels::new(),
            None => return Err(FleetError::TokenRequired),
        };
        let node_token = random_hex::<24>();
        let existing = self.store.get_node_by_name(&req.name).await?;
        let id = match existing {
            Some(node) if node.transport == Transport::Grpc => {
                return Err(FleetError::NameOwnedByAgent(req.name));
            }
            Some(mut node) => {
                node.labels.extend(token_labels);
                node.reported_labels = req.labels;
                node.capabilities = req.capabilities;
                node.ip = req.ip;
                node.heartbeat_interval_ms = interval.as_millis() as u64;
                node.node_token_sha256 = Some(sha256_hex(&node_token));
                self.store.update_node(&node).await?;
                node.id
            }
            None => {
                let id = new_node_id();
                self.store
                    .insert_node(&NodeRecord {
                        id: id.clone(),
                        name: req.name,
                        transport: Transport::Http,
                        labels: token_labels,
                        reported_labels: req.labels,
                        ip: req.ip,
                        registered_at: Utc::now(),
                        // Registration is a sign of life: the node is Ready until its first heartbeat is due.
                        last_seen: Some(Utc::now()),
                        heartbeat_interval_ms: interval.as_millis() as u64,
                        capabilities: req.capabilities,
                        metrics: None,
                        node_token_sha256: Some(sha256_hex(&node_token)),
                    })
                    .await?;
                id
            }
        };
        Ok(RegisterResponse {
            node_id: id,
            node_token,
        })
    }

    /// `POST /api/v1/nodes/{node_id}/heartbeat`.
    pub async fn http_heartbeat(
        &self,
        node_id: &str,
        bearer: Option<&str>,
        metrics: Metrics,
    ) -> Result<(), FleetError> {
        let node = self
            .store
            .get_node(node_id)
            .await?
            .ok_or_else(|| FleetError::NodeNotFound(node_id.to_string()))?;
        let presented = bearer.map(sha256_hex);
        if node.node_token_sha256.is_none() || presented != node.node_token_sha256 {
            return Err(FleetError::BadNodeToken);
        }
        self.heartbeat(node_id, metrics).await
    }

    // ---- views ----

    fn view(&self, record: NodeRecord) -> Node {
        let now = Utc::now();
        let interval = Duration::from_millis(record.heartbeat_interval_ms);
        let connected = self.links.is_attached(&record.id);
        Node {
            status: self.config.liveness.status(record.last_seen, interval, now),
            id: record.id,
            name: record.name,
            transport: record.transport,
            labels: {
                let mut labels = record.reported_labels;
                labels.extend(record.labels);
                labels
            },
            ip: record.ip,
            registered_at: record.registered_at,
            last_seen: record.last_seen,
            heartbeat_interval_ms: record.heartbeat_interval_ms,
            connected,
            capabilities: record.capabilities,
            metrics: record.metrics,
        }
    }

    async fn find(&self, id_or_name: &str) -> Result<NodeRecord, FleetError> {
        if let Some(n) = self.store.get_node(id_or_name).await? {
            return Ok(n);
        }
        self.store
            .get_node_by_name(id_or_name)
            .await?
            .ok_or_else(|| FleetError::NodeNotFound(id_or_name.to_string()))
    }

    pub async fn nodes(&self) -> Result<Vec<Node>, FleetError> {
        let records = self.store.list_nodes().await?;
        Ok(records.into_iter().map(|r| self.view(r)).collect())
    }

    pub async fn node(&self, id_or_name: &str) -> Result<Node, FleetError> {
        Ok(self.view(self.find(id_or_name).await?))
    }

    /// Forgets a node. A drover-agent of a deleted node is refused until it enrolls again.
    pub async fn delete_node(&self, id_or_name: &str) -> Result<Node, FleetError> {
        let node = self.find(id_or_name).await?;
        self.store.delete_node(&node.id).await?;
        self.links.forget(&node.id);
        Ok(self.view(node))
    }

    pub async fn metrics_history(
        &self,
        id_or_name: &str,
        limit: usize,
    ) -> Result<Vec<MetricsSample>, FleetError> {
        let node = self.find(id_or_name).await?;
        Ok(self.store.metrics_history(&node.id, limit).await?)
    }

    // ---- actions ----

    /// The actions a connected node offers.
    pub async fn node_actions(&self, id_or_name: &str) -> Result<Vec<ActionInfo>, FleetError> {
        let node = self.find(id_or_name).await?;
        self.links
            .actions(&node.id)
            .ok_or(FleetError::Action(ActionError::NodeUnavailable))
    }

    /// Calls an action on a node and waits for its outcome. If the caller stops waiting (drops this
    /// future), the call is cancelled on the node.
    pub async fn call_action(
        &self,
        id_or_name: &str,
        name: &str,
        args: serde_json::Value,
        deadline: Duration,
        call_id: Option<String>,
    ) -> Result<(String, serde_json::Value), FleetError> {
        let node = self.find(id_or_name).await?;
        let known = self
            .links
            .actions(&node.id)
            .ok_or(ActionError::NodeUnavailable)?;
        if !known.iter().any(|a| a.name == name) {
            return Err(ActionError::UnknownAction {
                name: name.to_string(),
                known: known.into_iter().map(|a| a.name).collect(),
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
        let deadline_ms = deadline.as_millis().clamp(1, u64::MAX as u128) as u64;
        let reply = self
            .links
            .start_call(&node.id, &call_id, name, &args, deadline_ms)
            .await?;
        let mut guard = CallGuard {
            fleet: self,
            call_id: call_id.clone(),
            done: false,
        };
        // The agent enforces the deadline; the margin covers the trip there and back.
        let outcome = match tokio::time::timeout(deadline + Duration::from_secs(2), reply).await {
            Ok(Ok(outcome)) => outcome,
            Ok(Err(_)) => Err(ActionError::NodeUnavailable),
            Err(_) => {
                self.links.abandon_call(&call_id);
                Err(ActionError::DeadlineExceeded { deadline_ms })
            }
        };
        guard.done = true;
        Ok((call_id, outcome?))
    }

    /// Cancels a running call; its caller receives Cancelled.
    pub async fn cancel_call(&self, call_id: &str) -> Result<(), FleetError> {
        if self.links.cancel_call(call_id).await {
            Ok(())
        } else {
            Err(FleetError::CallNotFound(call_id.to_string()))
        }
    }

    // ---- sessions ----

    pub async fn sessions(&self, id_or_name: &str) -> Result<Vec<SessionInfo>, FleetError> {
        let node = self.find(id_or_name).await?;
        Ok(self.links.sessions(&node.id))
    }

    pub async fn session(
        &self,
        id_or_name: &str,
        plugin: &str,
    ) -> Result<SessionDetail, FleetError> {
        let node = self.find(id_or_name).await?;
        self.links
            .session(&node.id, plugin)
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
        let node = self.find(id_or_name).await?;
        self.links
            .session_history(&node.id, plugin)
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
        let node = self.find(id_or_name).await?;
        let n = self
            .links
            .terminate_sessions(&node.id, plugin, "terminated by an operator")
            .await;
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
        let detail = self.session(id_or_name, plugin).await?;
        let node = self.find(id_or_name).await?;
        let m = drover_proto::v1::SessionMessage {
            plugin: plugin.to_string(),
            session_id: detail.info.session_id,
            body_json: body.to_string(),
        };
        if self
            .links
            .send(
                &node.id,
                drover_proto::v1::server_message::Msg::SessionMessage(m),
            )
            .await
        {
            Ok(())
        } else {
            Err(ActionError::NodeUnavailable.into())
        }
    }
}

//! The fleet: enrollment, registration, heartbeats and the node views built from the store.
//! Everything that decides something about a node lives here; the gateway and the API only translate.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use chrono::Utc;
use drover_types::{
    Capabilities, Labels, LivenessPolicy, Metrics, MetricsSample, Node, Transport,
    api::{CreateTokenRequest, CreatedToken, RegisterRequest, RegisterResponse},
    duration::{DurationError, parse_duration},
    labels::{LabelError, validate_labels},
    token::{JoinToken, JoinTokenInfo, TokenFormatError, TokenRefusal},
};
use sha2::{Digest, Sha256};

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
    Invalid { field: &'static str, reason: String },
    #[error(transparent)]
    Pki(#[from] PkiError),
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl FleetError {
    fn invalid(field: &'static str, reason: impl std::fmt::Display) -> Self {
        FleetError::Invalid {
            field,
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
}

pub struct Fleet {
    store: Arc<dyn Store>,
    pki: Arc<Pki>,
    config: FleetConfig,
    /// Node id -> serial of the stream attached to this server now.
    attached: Mutex<HashMap<String, u64>>,
    next_serial: std::sync::atomic::AtomicU64,
}

/// Marks a node attached while alive; a newer stream for the same node takes over the mark.
pub struct Attachment {
    fleet: Arc<Fleet>,
    node_id: String,
    serial: u64,
}

impl Drop for Attachment {
    fn drop(&mut self) {
        let mut attached = self
            .fleet
            .attached
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        if attached.get(&self.node_id) == Some(&self.serial) {
            attached.remove(&self.node_id);
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
            attached: Mutex::new(HashMap::new()),
            next_serial: Default::default(),
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

    /// Records an agent's hello and marks its stream attached until the returned guard drops.
    pub async fn attach(
        self: &Arc<Self>,
        node_id: &str,
        hello: AgentHello,
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
        let serial = self
            .next_serial
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        self.attached
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(node_id.to_string(), serial);
        Ok((
            node,
            Attachment {
                fleet: self.clone(),
                node_id: node_id.to_string(),
                serial,
            },
        ))
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
        let connected = self
            .attached
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .contains_key(&record.id);
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
}

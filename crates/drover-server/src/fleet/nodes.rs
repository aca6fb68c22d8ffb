//! Nodes: enrollment, attachment of agent streams, heartbeats, MIaaS HTTP nodes and the views built from the store.

use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use drover_types::api::RegisterRequest;
use drover_types::audit::AuditAction;
use drover_types::labels::{pending_labels, validate_labels};
use drover_types::limits::{MAX_ACTIONS, MAX_NAME, check_count, check_len};
use drover_types::{Capabilities, Labels, Metrics, MetricsSample, Node, Transport};

use crate::sync::lock;

/// Heartbeats written per store write.
const FLUSH_SLICE: usize = 256;
/// Heartbeats kept per node between two flushes.
const BEATS_PER_FLUSH: usize = 16;

/// Stream heartbeats not yet written, and deleted nodes whose stream is still open.
#[derive(Default)]
pub(super) struct Heartbeats(std::sync::Mutex<PendingBeats>);

#[derive(Default)]
pub(super) struct PendingBeats {
    /// Per node, oldest first, at most `BEATS_PER_FLUSH` (a node beating faster keeps its newest).
    latest: std::collections::HashMap<String, Vec<(chrono::DateTime<Utc>, Metrics)>>,
    deleted: std::collections::HashSet<String>,
}

impl Heartbeats {
    /// Runs `f` over the heartbeats not written yet (per node, oldest first), under their lock.
    pub(super) fn read_pending<R>(
        &self,
        f: impl FnOnce(&std::collections::HashMap<String, Vec<(chrono::DateTime<Utc>, Metrics)>>) -> R,
    ) -> R {
        f(&lock(&self.0).latest)
    }
}

use super::tokens::CheckedToken;

/// A node's own labels under the server's, which win.
fn bound_labels(own: &Labels, server: &Labels) -> Labels {
    let mut labels = own.clone();
    labels.extend(server.iter().map(|(k, v)| (k.clone(), v.clone())));
    labels
}

/// The labels the operator controls: the server's (join token, set or accepted by an operator) over those
/// the node reported when it enrolled. Unless the server trusts reported labels, selection uses these.
pub(super) fn controlled_labels(record: &NodeRecord) -> Labels {
    bound_labels(&record.enrolled_labels, &record.labels)
}

/// Refuses a hello larger than any real agent's (see `drover_types::limits`).
fn check_hello(hello: &AgentHello) -> Result<(), FleetError> {
    validate_labels(&hello.labels)?;
    hello.capabilities.validate()?;
    check_count("actions", hello.actions.len(), MAX_ACTIONS)?;
    for a in &hello.actions {
        check_len("actions.name", &a.name, MAX_NAME)?;
    }
    Ok(())
}

use super::{
    AgentHello, Attachment, DEFAULT_HTTP_INTERVAL, Enrollment, FleetError, new_node_id, node_actor,
    random_hex, sha256_hex, validate_name,
};

/// The longest heartbeat interval a node may promise (liveness is measured in it).
pub const MAX_HEARTBEAT_INTERVAL: Duration = Duration::from_secs(24 * 3600);

/// What a registration gives an HTTP node; the API adds where to reach the control plane.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HttpRegistration {
    pub node_id: String,
    pub node_token: String,
}

/// Who registers an HTTP node: proven by its bearer before the request is read.
pub enum Registrant {
    /// A join token, checked and not yet spent.
    JoinToken(CheckedToken),
    /// The node's own node token: it may register again under its own name only.
    Node(Box<NodeRecord>),
    /// No token, on a server with open registration.
    Open,
}
use crate::store::{Heartbeat, NodeRecord};

/// Nodes: enrollment, MIaaS registration, attaching streams, liveness and heartbeats.
pub struct Nodes {
    pub(super) store: Arc<dyn crate::store::NodesStore>,
    pub(super) pki: Arc<crate::pki::Pki>,
    pub(super) config: Arc<super::FleetConfig>,
    pub(super) route: Arc<crate::reach::Route>,
    pub(super) access: Arc<super::Access>,
    pub(super) beats: Heartbeats,
}

impl Nodes {
    // ---- drover-agent nodes ----

    /// Finds a free name: the wanted one, else the wanted one with a short suffix.
    async fn free_name(&self, wanted: &str, id: &str) -> Result<String, FleetError> {
        if self.store.get_node_by_name(wanted).await?.is_none() {
            return Ok(wanted.to_string());
        }
        Ok(format!("{wanted}-{}", &id[..8.min(id.len())]))
    }

    /// Trades a join token and a CSR for a client certificate naming a new node. The token is checked first
    /// and spent last: a request refused for its name, labels or CSR costs no use of it.
    pub async fn enroll(
        &self,
        token: &str,
        csr_pem: &str,
        name: &str,
        labels: Labels,
    ) -> Result<Enrollment, FleetError> {
        let token = self.access.check_token(token).await?;
        validate_name(name)?;
        validate_labels(&labels)?;
        let id = new_node_id();
        let cert_pem = self.pki.sign_node_csr(csr_pem, &id)?;
        let token = self.access.spend_token(token).await?;
        let wanted = name;
        let name = self.free_name(wanted, &id).await?;
        if name != wanted {
            // Often a second agent on the same host (a copied state dir, a test VM): say so, or the
            // operator finds a node under a name nobody chose.
            tracing::warn!(
                node = %name,
                id = %id,
                "a node enrolled as {name}: the name {wanted} is taken by another node (start the agent with --name to choose one)"
            );
        }
        self.store
            .insert_node(&NodeRecord {
                id: id.clone(),
                name: name.clone(),
                transport: Transport::Grpc,
                labels: token.labels,
                // The labels an agent asks for at its first enrollment are bound, under the token's:
                // whoever holds the join token speaks for the operator. Later ones wait for acceptance.
                enrolled_labels: labels.clone(),
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
        self.access
            .audit(
                &node_actor(&name),
                AuditAction::NodeEnroll,
                &name,
                serde_json::json!({"node": id, "token": token.id}),
            )
            .await;
        Ok(Enrollment {
            node_id: id,
            name,
            cert_pem,
        })
    }

    /// Whether a node may open a stream, by a read: its Welcome waits for nothing else. `attach` then writes
    /// the hello and registers the stream (a reconnecting fleet's writes queue up; its agents must not).
    pub async fn admit(&self, node_id: &str, hello: &AgentHello) -> Result<NodeRecord, FleetError> {
        check_hello(hello)?;
        self.store
            .get_node(node_id)
            .await?
            .ok_or_else(|| FleetError::NodeNotFound(node_id.to_string()))
    }

    /// Records an agent's hello and registers its stream until the returned guard drops.
    pub async fn attach(
        self: &Arc<Self>,
        node_id: &str,
        hello: AgentHello,
        tx: crate::reach::local::LinkSender,
    ) -> Result<(NodeRecord, Attachment), FleetError> {
        self.config.metrics.message("hello");
        check_hello(&hello)?;
        let interval_ms = hello
            .heartbeat_interval
            .as_millis()
            .clamp(1, u64::MAX as u128) as u64;
        let (labels, capabilities, ip) = (hello.labels, hello.capabilities, hello.ip);
        let node = self
            .store
            .modify_node(
                node_id,
                Box::new(move |node| {
                    node.reported_labels = labels;
                    node.capabilities = capabilities;
                    node.heartbeat_interval_ms = interval_ms;
                    if ip.is_some() {
                        node.ip = ip;
                    }
                }),
            )
            .await?
            .ok_or_else(|| FleetError::NodeNotFound(node_id.to_string()))?;
        let pending = pending_labels(&controlled_labels(&node), &node.reported_labels);
        if !pending.is_empty() && !self.config.trust_reported_labels {
            tracing::info!(node = %node.name, ?pending, "the node reports labels that selection does not use until accepted (drover nodes accept-labels)");
        }
        if let Some(metrics) = hello.metrics {
            self.stream_heartbeat(node_id, metrics)?;
        }
        let serial = self.route.local().attach(node_id, tx, hello.actions);
        let held = match self.route.remote() {
            Some(nats) => nats.hold(self.route.local().clone(), node_id, serial).await,
            None => None,
        };
        Ok((
            node,
            Attachment {
                route: self.route.clone(),
                node_id: node_id.to_string(),
                serial,
                _held: held,
            },
        ))
    }

    /// A heartbeat on an agent's stream: kept in memory and written with every other node's in one store
    /// write a second (`flush_heartbeats`), so an idle fleet costs one commit a second, not one per beat.
    /// Fails with NodeNotFound once the node was deleted, which ends its stream.
    pub fn stream_heartbeat(&self, node_id: &str, metrics: Metrics) -> Result<(), FleetError> {
        metrics
            .validate()
            .map_err(|e| FleetError::invalid(e.field, e.reason))?;
        let mut beats = lock(&self.beats.0);
        if beats.deleted.remove(node_id) {
            return Err(FleetError::NodeNotFound(node_id.to_string()));
        }
        let pending = beats.latest.entry(node_id.to_string()).or_default();
        if pending.len() >= BEATS_PER_FLUSH {
            pending.remove(0);
        }
        pending.push((Utc::now(), metrics));
        Ok(())
    }

    /// Writes the heartbeats kept since the last flush.
    pub async fn flush_heartbeats(&self) -> Result<usize, FleetError> {
        let batch: Vec<_> = {
            let mut beats = lock(&self.beats.0);
            beats
                .latest
                .drain()
                .flat_map(|(id, samples)| {
                    samples.into_iter().map(move |(at, metrics)| Heartbeat {
                        node_id: id.clone(),
                        at,
                        metrics,
                    })
                })
                .collect()
        };
        let n = batch.len();
        // In slices, one after another: every write queued meanwhile commits with the next slice instead
        // of waiting for a whole fleet's heartbeats (a reconnecting fleet's attaches wait on those writes).
        let mut rest = batch;
        while !rest.is_empty() {
            let tail = rest.split_off(rest.len().min(FLUSH_SLICE));
            self.store
                .record_heartbeats(rest, self.config.metrics_history)
                .await?;
            rest = tail;
        }
        Ok(n)
    }

    pub async fn heartbeat(&self, node_id: &str, metrics: Metrics) -> Result<(), FleetError> {
        self.config.metrics.heartbeat("http");
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

    /// Who is registering an HTTP node, from its bearer alone: checked before the request body is read.
    pub async fn registrant(&self, bearer: Option<&str>) -> Result<Registrant, FleetError> {
        match bearer {
            Some(t) if t.starts_with("drv1.") => {
                Ok(Registrant::JoinToken(self.access.check_token(t).await?))
            }
            Some(t) => self
                .store
                .get_node_by_token(&sha256_hex(t))
                .await?
                .map(|n| Registrant::Node(Box::new(n)))
                .ok_or(FleetError::BadNodeToken),
            None if self.config.open_registration => Ok(Registrant::Open),
            None => Err(FleetError::TokenRequired),
        }
    }

    /// `POST /api/v1/nodes/register`. Registering again under the same name (the MIaaS agent's way back
    /// after losing its node token) returns the same node with a fresh node token; the old one stops working.
    /// It takes a join token or that node's own token; with open registration, nothing (labs only).
    pub async fn register_http(
        &self,
        registrant: Registrant,
        req: RegisterRequest,
    ) -> Result<HttpRegistration, FleetError> {
        validate_name(&req.name)?;
        validate_labels(&req.labels)?;
        req.capabilities.validate()?;
        let interval = http_interval(req.heartbeat_interval)?;
        let existing = self.store.get_node_by_name(&req.name).await?;
        may_register(existing.as_ref(), &registrant, &req.name)?;
        let open = matches!(registrant, Registrant::Open);
        // Checked everything: only now is a join token spent.
        let (token_labels, credential) = self.spend_registrant(registrant).await?;
        let node_token = random_hex::<24>();
        let interval_ms = u64::try_from(interval.as_millis()).unwrap_or(u64::MAX);
        let (id, again) = match existing {
            Some(node) => {
                if open {
                    tracing::warn!(node = %node.name, "an HTTP node re-registered without any token (open registration): it may be another machine taking the name over");
                }
                let token_sha256 = sha256_hex(&node_token);
                self.store
                    .modify_node(
                        &node.id,
                        Box::new(move |node| {
                            node.labels.extend(token_labels);
                            node.reported_labels = req.labels;
                            node.capabilities = req.capabilities;
                            node.ip = req.ip;
                            node.heartbeat_interval_ms = interval_ms;
                            node.node_token_sha256 = Some(token_sha256);
                        }),
                    )
                    .await?
                    .ok_or_else(|| FleetError::NodeNotFound(req.name.clone()))?;
                (node.id, true)
            }
            None => {
                let id = new_node_id();
                self.store
                    .insert_node(&NodeRecord {
                        id: id.clone(),
                        name: req.name.clone(),
                        transport: Transport::Http,
                        labels: token_labels,
                        enrolled_labels: req.labels.clone(),
                        reported_labels: req.labels,
                        ip: req.ip,
                        registered_at: Utc::now(),
                        // Registration is a sign of life: the node is Ready until its first heartbeat is due.
                        last_seen: Some(Utc::now()),
                        heartbeat_interval_ms: interval_ms,
                        capabilities: req.capabilities,
                        metrics: None,
                        node_token_sha256: Some(sha256_hex(&node_token)),
                    })
                    .await?;
                (id, false)
            }
        };
        self.access
            .audit(
                &node_actor(&req.name),
                AuditAction::NodeRegister,
                &req.name,
                serde_json::json!({"node": id, "credential": credential, "again": again}),
            )
            .await;
        Ok(HttpRegistration {
            node_id: id,
            node_token,
        })
    }

    /// Spends what a registrant registers with: the labels its join token gives, and its credential as
    /// the audit log names it.
    async fn spend_registrant(
        &self,
        registrant: Registrant,
    ) -> Result<(Labels, String), FleetError> {
        Ok(match registrant {
            Registrant::JoinToken(t) => {
                let info = self.access.spend_token(t).await?;
                (info.labels, format!("join token {}", info.id))
            }
            Registrant::Node(_) => (Labels::new(), "node token".to_string()),
            Registrant::Open => (Labels::new(), "open registration".to_string()),
        })
    }

    /// Checks an HTTP node's bearer (its node token) before anything it sent is read.
    pub async fn authenticate_http_node(
        &self,
        node_id: &str,
        bearer: Option<&str>,
    ) -> Result<(), FleetError> {
        // An unknown node is told so (404): the MIaaS agent registers again, as after a deletion.
        let node = self
            .store
            .get_node(node_id)
            .await?
            .ok_or_else(|| FleetError::NodeNotFound(node_id.to_string()))?;
        let presented = bearer.map(sha256_hex);
        if node.node_token_sha256.is_none() || presented != node.node_token_sha256 {
            return Err(FleetError::BadNodeToken);
        }
        Ok(())
    }

    // ---- views ----

    pub(super) fn view(&self, mut record: NodeRecord) -> Node {
        // A heartbeat not written yet is still the latest word from the node.
        if let Some((at, metrics)) = lock(&self.beats.0)
            .latest
            .get(&record.id)
            .and_then(|s| s.last())
        {
            record.last_seen = Some(*at);
            record.metrics = Some(metrics.clone());
        }
        let now = Utc::now();
        let interval = Duration::from_millis(record.heartbeat_interval_ms);
        let connected = self.route.local().is_attached(&record.id)
            || self.streams_elsewhere(record.transport, record.last_seen, interval, now);
        let labels = if self.config.trust_reported_labels {
            bound_labels(&record.reported_labels, &record.labels)
        } else {
            controlled_labels(&record)
        };
        Node {
            status: self.config.liveness.status(record.last_seen, interval, now),
            id: record.id,
            name: record.name,
            transport: record.transport,
            pending_labels: pending_labels(&labels, &record.reported_labels),
            labels,
            ip: record.ip,
            registered_at: record.registered_at,
            last_seen: record.last_seen,
            heartbeat_interval_ms: record.heartbeat_interval_ms,
            connected,
            agent_version: record.capabilities.agent_version.clone(),
            capabilities: record.capabilities,
            metrics: record.metrics,
        }
    }

    /// Whether a node not attached here has its stream on another replica: its heartbeats (which only
    /// come over a stream) keep reaching the shared store. Judged from the store, so a list of any size
    /// costs no question to other replicas; it turns false within two heartbeats of the stream ending.
    fn streams_elsewhere(
        &self,
        transport: Transport,
        last_seen: Option<DateTime<Utc>>,
        interval: Duration,
        now: DateTime<Utc>,
    ) -> bool {
        if self.route.remote().is_none() || transport != Transport::Grpc {
            return false;
        }
        // Two beats, plus the holder's one-second write batching and some clock skew between replicas.
        let window = interval
            .saturating_mul(2)
            .saturating_add(Duration::from_secs(3));
        let window = chrono::Duration::from_std(window).unwrap_or(chrono::Duration::MAX);
        last_seen.is_some_and(|at| now.signed_duration_since(at) <= window)
    }

    pub(super) async fn find(&self, id_or_name: &str) -> Result<NodeRecord, FleetError> {
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
    pub async fn delete_node(&self, actor: &str, id_or_name: &str) -> Result<Node, FleetError> {
        let node = self.find(id_or_name).await?;
        self.store.delete_node(&node.id).await?;
        self.access
            .audit(
                actor,
                AuditAction::NodeDelete,
                &node.name,
                serde_json::json!({"node": node.id}),
            )
            .await;
        self.route.local().forget(&node.id);
        {
            let mut beats = lock(&self.beats.0);
            beats.latest.remove(&node.id);
            if self.route.local().is_attached(&node.id) {
                // Its stream ends at its next heartbeat.
                beats.deleted.insert(node.id.clone());
            }
        }
        Ok(self.view(node))
    }

    pub async fn metrics_history(
        &self,
        id_or_name: &str,
        limit: usize,
    ) -> Result<Vec<MetricsSample>, FleetError> {
        let node = self.find(id_or_name).await?;
        // Heartbeats not written yet are the newest samples. Read before the store: one flushed in between
        // then shows up in both and is dropped below, never missed.
        let pending: Vec<MetricsSample> = lock(&self.beats.0)
            .latest
            .get(&node.id)
            .map(|beats| {
                beats
                    .iter()
                    .map(|(at, metrics)| MetricsSample {
                        at: *at,
                        metrics: metrics.clone(),
                    })
                    .collect()
            })
            .unwrap_or_default();
        let mut samples = self.store.metrics_history(&node.id, limit).await?;
        // Only those the history will keep once written (a sample a minute by default).
        let mut newest = samples.last().map(|s| s.at);
        for p in pending {
            if newest.is_none_or(|t| p.at > t) && self.config.metrics_history.samples(newest, p.at)
            {
                newest = Some(p.at);
                samples.push(p);
            }
        }
        let skip = samples.len().saturating_sub(limit);
        Ok(samples.split_off(skip))
    }
}

/// Whether a registrant may register under a name: not one an agent holds, and with a node token only
/// its own node's.
fn may_register(
    existing: Option<&NodeRecord>,
    registrant: &Registrant,
    name: &str,
) -> Result<(), FleetError> {
    if existing.is_some_and(|n| n.transport == Transport::Grpc) {
        return Err(FleetError::NameOwnedByAgent(name.to_string()));
    }
    if let Registrant::Node(node) = registrant
        && node.name != name
    {
        // A node token speaks for its own node only.
        return Err(FleetError::BadNodeToken);
    }
    Ok(())
}

/// An HTTP node's heartbeat interval in seconds, checked (the default when it names none).
fn http_interval(secs: Option<f64>) -> Result<Duration, FleetError> {
    match secs {
        None => Ok(DEFAULT_HTTP_INTERVAL),
        Some(s) if s.is_finite() && s > 0.0 && s <= MAX_HEARTBEAT_INTERVAL.as_secs_f64() => {
            Ok(Duration::from_secs_f64(s))
        }
        Some(s) => Err(FleetError::invalid(
            "heartbeat_interval",
            format!(
                "{s} is not a number of seconds above 0 and at most {}",
                MAX_HEARTBEAT_INTERVAL.as_secs()
            ),
        )),
    }
}

//! Desired state on the server: manifests, each node's computed desired state (pushed when it changes),
//! the convergence nodes report, and operator labels that change what a node gets.

use std::collections::BTreeMap;
use std::sync::Arc;

use crate::reach::message::{BlobData, DesiredUpdate, InlineBlob, ToAgent};
use chrono::Utc;
use drover_types::audit::AuditAction;
use drover_types::limits::{
    LimitError, MAX_DRIFT_EVENTS, MAX_REPORT_BYTES, MAX_REPORT_CONDITIONS, MAX_REPORT_RESOURCES,
    check_count, check_len,
};
use drover_types::manifest::{
    Applied, ApplyManifest, DesiredState, Fallback, Manifest, ManifestProof, NodeConvergence,
    NodePlan, NodeStatusReport, PlanItem, StoredManifest, desired_for,
};
use drover_types::node::HTTP_NODE_TAKES_NO_WORK;
use drover_types::{Labels, Node};
use sha2::{Digest, Sha256};

use crate::fleet::FleetError;
use crate::fleet::nodes::controlled_labels;
use crate::fleet::rollouts::RolloutView;
use crate::reach::{self, Reach};
use crate::store::NodeRecord;
use crate::store::StoreError;
use crate::sync::lock;

/// A node's desired state from the stored manifests (generation left at 0): the resources of those that
/// select it, the signed payload and signature of each signed one among them, for pinned nodes, and the
/// rollout health checks of those that have some.
fn desired_state(labels: &Labels, stored: &[StoredManifest]) -> DesiredState {
    let manifests: Vec<Manifest> = stored.iter().map(|m| m.manifest.clone()).collect();
    let (resources, conflicts) = desired_for(labels, &manifests);
    let signed = stored
        .iter()
        .filter(|m| m.manifest.selects(labels))
        .filter_map(|m| {
            let signature = m.signature.clone()?;
            // A payload that cannot be made was never signed: the node sees the manifest unsigned.
            let payload = m.manifest.signed_payload().ok()?;
            Some(ManifestProof {
                manifest: m.manifest.name.clone(),
                payload,
                signature,
            })
        })
        .collect();
    // The checks travel beside the resources (and, signed, in the payload, which a pinned node goes by).
    let health = stored
        .iter()
        .filter(|m| m.manifest.selects(labels))
        .filter_map(|m| {
            let checks = &m.manifest.rollout.as_ref()?.health;
            (!checks.is_empty()).then(|| (m.manifest.name.clone(), checks.clone()))
        })
        .collect();
    DesiredState {
        generation: 0,
        resources,
        conflicts,
        signed,
        health,
        fallback: BTreeMap::new(),
    }
}

/// What a node released by unfinished rollouts may go back to on its own: for each, the previous
/// revision as the node would get it.
fn fallbacks(labels: &Labels, node_id: &str, view: &RolloutView) -> BTreeMap<String, Fallback> {
    view.fallbacks(node_id)
        .filter(|(_, previous)| previous.manifest.selects(labels))
        .map(|(rollout, previous)| {
            let mut state = desired_state(labels, std::slice::from_ref(previous));
            let name = &rollout.manifest;
            let fallback = Fallback {
                revision: rollout.revision,
                previous_revision: previous.generation,
                resources: state.resources.into_iter().map(|r| r.resource).collect(),
                health: state.health.remove(name).unwrap_or_default(),
                signed: state.signed.pop(),
            };
            (name.clone(), fallback)
        })
        .collect()
}

/// The nodes a manifest selects, told apart by what they can do with it: `drover apply` and the dashboard
/// count the same targets.
#[derive(Debug, Default, Clone)]
pub struct Targets {
    /// Selected nodes that take manifests (drover-agent nodes), by name.
    pub nodes: Vec<String>,
    /// Of those, the ones not connected now: they converge once they reconnect.
    pub offline: Vec<String>,
    /// Selected HTTP nodes: not targets (`HTTP_NODE_TAKES_NO_WORK`).
    pub http_nodes: Vec<String>,
}

impl Targets {
    /// The targets among `nodes` of a manifest selecting by `selects`.
    fn of<'a>(
        nodes: impl IntoIterator<Item = &'a Selectable>,
        selects: impl Fn(&Labels) -> bool,
    ) -> Self {
        let mut targets = Targets::default();
        for n in nodes.into_iter().filter(|n| selects(&n.labels)) {
            if !n.transport.takes_work() {
                targets.http_nodes.push(n.name.clone());
                continue;
            }
            if !n.connected {
                targets.offline.push(n.name.clone());
            }
            targets.nodes.push(n.name.clone());
        }
        targets
    }
}

/// What deciding a node's part in a manifest needs of it (a small part of a `Node`).
pub struct Selectable {
    name: String,
    labels: Labels,
    transport: drover_types::Transport,
    connected: bool,
}

impl From<Node> for Selectable {
    fn from(n: Node) -> Self {
        Selectable {
            name: n.name,
            labels: n.labels,
            transport: n.transport,
            connected: n.connected,
        }
    }
}

/// Fleets up to this many nodes are read afresh for every manifests page, so it agrees with `drover apply`
/// at once; a larger fleet is read for it at most every `TARGETS_TTL` (the page is refreshed every 10 s, and
/// reading every node costs a few hundred ms at 19,000 nodes, where the rest of the page costs ~20 ms).
const TARGETS_FRESH_MAX: usize = 2_000;
const TARGETS_TTL: std::time::Duration = std::time::Duration::from_secs(30);

/// The fleet as the manifests page last read it, when it was larger than `TARGETS_FRESH_MAX`.
#[derive(Default)]
pub struct TargetsCache(std::sync::Mutex<Option<(std::time::Instant, Arc<Vec<Selectable>>)>>);

/// Desired state: manifests, each node's desired state and its delivery, convergence reports and their
/// followers, labels, and the blobs files name.
pub struct Desired {
    pub(super) store: Arc<dyn crate::store::DesiredStateStore>,
    pub(super) route: Arc<crate::reach::Route>,
    pub(super) access: Arc<super::Access>,
    pub(super) nodes: Arc<super::Nodes>,
    pub(crate) status_events: StatusEvents,
    pub(super) blobs: BlobCache,
    /// The fleet as the manifests page last read it (`Desired::manifest_targets`).
    pub(super) targets: TargetsCache,
    /// The rollouts in force, as desired-state computations read them (`rollouts.rs`).
    pub(super) rollout_views: super::rollouts::ViewCache,
    #[cfg(feature = "tamper")]
    pub(super) tamper: super::tamper::Tamper,
}

/// A node's stored desired generation and content hash (none before its first).
type Stored = Option<(u64, String)>;

/// Bytes per BlobData piece.
const BLOB_PIECE: usize = 1024 * 1024;
/// Content this small goes inside a desired state update, when the blob cache holds it, instead of each
/// node fetching it: at 19,000 nodes, an apply of a small file then costs no blob round trip per node.
const INLINE_BLOB_MAX: usize = 4 * 1024;
/// ... and at most this much content in one update (the fleet's updates queue at once during an apply).
const INLINE_BYTES_MAX: usize = 8 * 1024;
/// Nodes whose desired state is recomputed at once, at most: their writes share the store's group commits
/// (up to 1,024 writes each), so a fleet-wide recomputation takes about nodes / this many commits.
const RECOMPUTE_AT_ONCE: usize = 1024;
/// ... and at least, however large the manifests.
const RECOMPUTE_AT_ONCE_MIN: usize = 64;
/// Manifest bytes in flight during a recomputation, about: with large manifests fewer nodes are recomputed
/// at once (a node's state is at most every manifest's resources, held a few times over while it is
/// hashed, stored and sent).
const RECOMPUTE_BYTES: usize = 16 * 1024 * 1024;
/// Attempts at a node's compare-and-set before giving up (each loses only to a newer change).
const RECOMPUTE_TRIES: usize = 5;

/// Followers of convergence (`GET /api/v1/status/events`) hear the id of every node whose desired generation
/// or convergence report changed. Each follower keeps the set of nodes changed since it last looked (a node
/// that changes twice is in it once), so a follower never falls behind, whatever the burst, and holds at
/// most one entry per node.
#[derive(Default)]
pub struct StatusEvents(std::sync::Mutex<Vec<std::sync::Weak<StatusFollower>>>);

/// One follower's changed nodes; dropping it unsubscribes.
#[derive(Default)]
pub struct StatusFollower {
    changed: std::sync::Mutex<std::collections::HashSet<String>>,
    wake: tokio::sync::Notify,
}

impl StatusFollower {
    /// Waits until some node's status changed, then takes every node changed since the last call.
    pub async fn changed(&self) -> Vec<String> {
        loop {
            let taken = std::mem::take(&mut *lock(&self.changed));
            if !taken.is_empty() {
                return taken.into_iter().collect();
            }
            // A change made after the take leaves a permit, so this returns at once.
            self.wake.notified().await;
        }
    }
}

impl StatusEvents {
    fn subscribe(&self) -> Arc<StatusFollower> {
        let follower = Arc::new(StatusFollower::default());
        lock(&self.0).push(Arc::downgrade(&follower));
        follower
    }

    fn changed(&self, node_id: &str) {
        lock(&self.0).retain(|f| {
            let Some(f) = f.upgrade() else {
                return false; // its stream ended
            };
            if lock(&f.changed).insert(node_id.to_string()) {
                f.wake.notify_one();
            }
            true
        });
    }
}

impl Desired {
    pub fn subscribe_status(&self) -> Arc<StatusFollower> {
        self.status_events.subscribe()
    }

    pub(super) fn status_changed(&self, node_id: &str) {
        self.status_events.changed(node_id);
    }
}

impl Desired {
    fn check_manifest(manifest: &Manifest) -> Result<(), FleetError> {
        manifest.validate().map_err(FleetError::ManifestInvalid)?;
        if let Some(r) = manifest
            .resources
            .iter()
            .find(|r| r.file.as_ref().is_some_and(|f| f.source.is_some()))
        {
            return Err(FleetError::ManifestInvalid(vec![drover_types::manifest::ManifestError {
                manifest: manifest.name.clone(),
                resource: Some(r.id.clone()),
                field: "file.source".into(),
                reason: "`drover apply` uploads sources; through the API, upload to /api/v1/blobs/{sha256} and give sha256".into(),
            }]));
        }
        Ok(())
    }

    /// Asks every node the manifest would touch what it would change; nothing is stored or changed.
    pub async fn plan_manifest(&self, apply: ApplyManifest) -> Result<Vec<NodePlan>, FleetError> {
        let manifest = apply.manifest;
        Self::check_manifest(&manifest)?;
        let mut manifests = self.manifests().await?;
        let old = manifests
            .iter()
            .position(|m| m.manifest.name == manifest.name)
            .map(|i| manifests.remove(i).manifest);
        manifests.push(StoredManifest {
            generation: 0,
            updated_at: Utc::now(),
            manifest: manifest.clone(),
            signature: apply.signature,
        });
        let nodes: Vec<Node> = self
            .nodes
            .nodes()
            .await?
            .into_iter()
            .filter(|n| {
                manifest.selects(&n.labels) || old.as_ref().is_some_and(|o| o.selects(&n.labels))
            })
            .collect();
        let asks = nodes.iter().map(|node| {
            let state = desired_state(&node.labels, &manifests);
            async move {
                if !node.transport.takes_work() {
                    return NodePlan {
                        node: node.name.clone(),
                        plan: vec![],
                        error: Some(HTTP_NODE_TAKES_NO_WORK.into()),
                    };
                }
                let state_json = serde_json::to_string(&state).unwrap_or_default();
                let answer = self.route.ask(&node.id, reach::Plan { state_json }).await;
                let unplanned = |error: String| NodePlan {
                    node: node.name.clone(),
                    plan: vec![],
                    error: Some(error),
                };
                match answer {
                    None => unplanned("not connected".into()),
                    Some(Err(e)) => unplanned(e.0),
                    Some(Ok(json)) => match serde_json::from_str::<Vec<PlanItem>>(&json) {
                        Ok(plan) => NodePlan {
                            node: node.name.clone(),
                            plan,
                            error: None,
                        },
                        Err(e) => unplanned(format!("unreadable plan: {e}")),
                    },
                }
            }
        });
        Ok(futures_util::future::join_all(asks).await)
    }

    /// Validates and stores a manifest (checking its signature, if any, against the key it names), then
    /// recomputes every node's desired state.
    pub async fn apply_manifest(
        self: &Arc<Self>,
        actor: &str,
        apply: ApplyManifest,
    ) -> Result<Applied, FleetError> {
        let ApplyManifest {
            manifest,
            signature,
        } = apply;
        Self::check_manifest(&manifest)?;
        if let Some(sig) = &signature {
            manifest
                .check_signature(sig)
                .map_err(|e| FleetError::invalid("signature", e))?;
        }
        let previous = match self.manifest(&manifest.name).await {
            Ok(m) => Some(m),
            Err(FleetError::ManifestNotFound(_)) => None,
            Err(e) => return Err(e),
        };
        let put = self
            .store
            .put_manifest(&manifest, signature.as_ref(), Utc::now())
            .await
            .map_err(|e| match e {
                StoreError::ManifestVersion { .. } => FleetError::invalid("version", e),
                e => e.into(),
            })?;
        let generation = put.generation;
        let mut rollout = None;
        if put.changed || put.resigned {
            self.access.audit(
                actor,
                if put.changed { AuditAction::ManifestApply } else { AuditAction::ManifestSign },
                &manifest.name,
                serde_json::json!({"generation": generation, "version": manifest.version, "signed_by": signature.as_ref().map(|s| &s.key)}),
            )
            .await;
            tracing::info!(manifest = %manifest.name, generation, signed = signature.is_some(), "manifest applied");
            if put.changed {
                let stored = self.manifest(&manifest.name).await?;
                rollout = self.revision_applied(actor, &stored, previous).await?;
            }
            self.recompute_all_detached().await?;
            if let Some(r) = &rollout {
                self.rollout_recomputed(&r.manifest, r.revision).await?;
            }
        }
        let nodes: Vec<Selectable> = self
            .nodes
            .nodes()
            .await?
            .into_iter()
            .map(Into::into)
            .collect();
        let targets = Targets::of(&nodes, |labels| manifest.selects(labels));
        Ok(Applied {
            name: manifest.name,
            generation,
            changed: put.changed,
            nodes: targets.nodes,
            offline: targets.offline,
            http_nodes: targets.http_nodes,
            rollout: rollout.map(|r| drover_types::manifest::AppliedRollout {
                waves: r.plan.waves.iter().map(Vec::len).collect(),
                covered: r.plan.covered,
            }),
        })
    }

    pub async fn manifests(&self) -> Result<Vec<StoredManifest>, FleetError> {
        Ok(self.store.list_manifests().await?)
    }

    /// Each manifest's targets (as `drover apply` reports them), the fleet read once for all (a large one at
    /// most every `TARGETS_TTL`).
    pub async fn manifest_targets(
        &self,
        manifests: &[StoredManifest],
    ) -> Result<Vec<Targets>, FleetError> {
        let cached = lock(&self.targets.0)
            .as_ref()
            .filter(|(at, _)| at.elapsed() < TARGETS_TTL)
            .map(|(_, nodes)| nodes.clone());
        let nodes = match cached {
            Some(nodes) => nodes,
            None => {
                let nodes: Arc<Vec<Selectable>> = Arc::new(
                    self.nodes
                        .nodes()
                        .await?
                        .into_iter()
                        .map(Into::into)
                        .collect(),
                );
                if nodes.len() > TARGETS_FRESH_MAX {
                    *lock(&self.targets.0) = Some((std::time::Instant::now(), nodes.clone()));
                }
                nodes
            }
        };
        Ok(manifests
            .iter()
            .map(|m| Targets::of(nodes.iter(), |labels| m.manifest.selects(labels)))
            .collect())
    }

    pub async fn manifest(&self, name: &str) -> Result<StoredManifest, FleetError> {
        self.manifests()
            .await?
            .into_iter()
            .find(|m| m.manifest.name == name)
            .ok_or_else(|| FleetError::ManifestNotFound(name.to_string()))
    }

    /// Deletes a manifest; the agents garbage-collect what it gave them.
    pub async fn delete_manifest(
        self: &Arc<Self>,
        actor: &str,
        name: &str,
    ) -> Result<(), FleetError> {
        if !self.store.delete_manifest(name).await? {
            return Err(FleetError::ManifestNotFound(name.to_string()));
        }
        self.access
            .audit(
                actor,
                AuditAction::ManifestDelete,
                name,
                serde_json::json!({}),
            )
            .await;
        self.manifest_gone(name).await?;
        self.recompute_all_detached().await
    }

    /// [`Fleet::recompute_all`] in a task of its own, awaited: a caller that goes away (an HTTP client
    /// giving up on a large fleet) does not stop it halfway, with the manifest stored and only part of the
    /// fleet given its new desired state.
    async fn recompute_all_detached(self: &Arc<Self>) -> Result<(), FleetError> {
        let fleet = self.clone();
        tokio::spawn(async move { fleet.recompute_all().await })
            .await
            .map_err(|e| FleetError::Store(StoreError::Task(e.to_string())))?
    }

    /// Recomputes every node's desired state, many nodes at once: their writes share transactions and no
    /// push waits for another node. Every node's stored generation is read (in one read) before the nodes'
    /// labels and the manifests (see `recompute_node`).
    pub(crate) async fn recompute_all(&self) -> Result<(), FleetError> {
        self.recompute_some(None).await
    }

    /// [`Self::recompute_all`] for the nodes among `only` (all when `None`): a rollout's new wave changes
    /// only its own nodes' states.
    pub(crate) async fn recompute_some(
        &self,
        only: Option<&std::collections::HashSet<&str>>,
    ) -> Result<(), FleetError> {
        let mut stored: std::collections::HashMap<String, (u64, String)> = self
            .store
            .desired_versions()
            .await?
            .into_iter()
            .map(|v| (v.node_id, (v.generation, v.hash)))
            .collect();
        let mut nodes = self.nodes.nodes().await?;
        if let Some(only) = only {
            nodes.retain(|n| only.contains(n.id.as_str()));
        }
        let manifests = self.manifests().await?;
        // Read once for every node: a view read again per node, as each finds it older than its TTL on
        // a fleet that takes seconds to recompute, would be read thousands of times.
        let view = self.rollout_view().await?;
        let manifest_bytes: usize = manifests
            .iter()
            .map(|m| serde_json::to_vec(&m.manifest).map_or(0, |v| v.len()))
            .sum();
        let at_once = (RECOMPUTE_BYTES / manifest_bytes.max(1))
            .clamp(RECOMPUTE_AT_ONCE_MIN, RECOMPUTE_AT_ONCE);
        let slots = tokio::sync::Semaphore::new(at_once);
        let work = nodes.iter().map(|node| {
            // None: no desired state yet (or one written since the read: the compare-and-set finds out).
            let previous = stored.remove(&node.id);
            let (manifests, slots, view) = (&manifests, &slots, &view);
            async move {
                let _slot = slots.acquire().await;
                self.recompute_node(&node.id, Some((previous, node, manifests, view)))
                    .await
            }
        });
        let began = std::time::Instant::now();
        let done: Result<(), FleetError> = futures_util::future::join_all(work)
            .await
            .into_iter()
            .collect();
        tracing::info!(nodes = nodes.len(), took = ?began.elapsed(), "recomputed {} desired state", if only.is_some() { "some nodes'" } else { "every node's" });
        done
    }

    /// A node's stored desired generation and content hash.
    async fn stored_desired(&self, node_id: &str) -> Result<Stored, FleetError> {
        Ok(self
            .store
            .get_desired(node_id)
            .await?
            .map(|d| (d.state.generation, d.hash)))
    }

    /// Recomputes one node's desired state; a change gets a new generation and is pushed. The write is a
    /// compare-and-set on the generation, so two recomputations of one node never both win. Each attempt
    /// reads the stored generation before the node's labels and the manifests (`first`: read so already),
    /// so a state that wins was computed from what was there after the state it replaces was written: it
    /// never undoes a manifest or label change that one had (two applies at once, through two replicas).
    async fn recompute_node(
        &self,
        node_id: &str,
        mut first: Option<(Stored, &Node, &[StoredManifest], &Arc<RolloutView>)>,
    ) -> Result<(), FleetError> {
        let mut name = node_id.to_string();
        for _ in 0..RECOMPUTE_TRIES {
            let (node_read, manifests_read, view_read);
            let (previous, node, manifests, view) = match first.take() {
                Some(first) => first,
                None => {
                    let previous = self.stored_desired(node_id).await?;
                    node_read = self.nodes.node(node_id).await?;
                    manifests_read = self.manifests().await?;
                    view_read = self.rollout_view().await?;
                    (previous, &node_read, manifests_read.as_slice(), &view_read)
                }
            };
            name.clone_from(&node.name);
            // An HTTP node has no stream to take a desired state: it gets none (one stored before it was
            // told apart is emptied, so `drover status` waits on nothing there).
            if !node.transport.takes_work() && previous.is_none() {
                return Ok(());
            }
            #[allow(unused_mut)]
            let mut state = match node.transport.takes_work() {
                true => {
                    let mut state = desired_state(&node.labels, &view.for_node(node_id, manifests));
                    state.fallback = fallbacks(&node.labels, node_id, view);
                    state
                }
                false => DesiredState::default(),
            };
            #[cfg(feature = "tamper")]
            self.tamper.desired(&mut state);
            // Health checks count only when there are some: a state without them hashes as before.
            let content = match (state.health.is_empty(), state.fallback.is_empty()) {
                (true, true) => {
                    serde_json::to_vec(&(&state.resources, &state.conflicts, &state.signed))
                }
                (false, true) => serde_json::to_vec(&(
                    &state.resources,
                    &state.conflicts,
                    &state.signed,
                    &state.health,
                )),
                _ => serde_json::to_vec(&(
                    &state.resources,
                    &state.conflicts,
                    &state.signed,
                    &state.health,
                    &state.fallback,
                )),
            }
            .unwrap_or_default();
            let hash = hex::encode(Sha256::digest(&content));
            if previous.as_ref().is_some_and(|(_, h)| *h == hash) {
                return Ok(());
            }
            state.generation = previous.map(|(g, _)| g).unwrap_or(0) + 1;
            if self.store.put_desired(node_id, &state, &hash).await? {
                self.status_changed(node_id);
                tracing::debug!(node = %node.name, generation = state.generation, resources = state.resources.len(), "desired state changed");
                self.push_desired(node_id, &state).await;
                return Ok(());
            }
        }
        Err(FleetError::invalid(
            "desired state",
            format!("node {name} changed too often to recompute; try again"),
        ))
    }

    /// Sends a node its desired state if its stream is here; with `--nats`, also writes it to the
    /// `desired-state` bucket, whose watch on the replica holding the stream delivers it there.
    async fn push_desired(&self, node_id: &str, state: &DesiredState) {
        let update = self.desired_message(state);
        self.route.desired_written(node_id, &update).await;
        self.route
            .local()
            .send(node_id, ToAgent::DesiredState(update))
            .await;
    }

    /// A node (re)attached: make sure its desired state is current, and send it (bringing the KV entry up to
    /// the store's generation if it is behind: a lost bucket is rebuilt this way).
    pub async fn desired_on_attach(&self, node_id: &str) {
        let result = async {
            self.recompute_node(node_id, None).await?;
            if let Some(d) = self.store.get_desired(node_id).await? {
                self.push_desired(node_id, &d.state).await;
            }
            Ok::<(), FleetError>(())
        }
        .await;
        if let Err(e) = result {
            tracing::error!("cannot send desired state: {e}");
        }
    }

    /// Records what a node reports about its convergence; one larger than any real node's is refused.
    pub async fn convergence_report(&self, node_id: &str, json: &str) {
        let report = check_len("report_json", json, MAX_REPORT_BYTES)
            .map_err(|e| e.to_string())
            .and_then(|()| serde_json::from_str::<NodeConvergence>(json).map_err(|e| e.to_string()))
            .and_then(|r| check_report(&r).map(|()| r).map_err(|e| e.to_string()));
        match report {
            Ok(mut report) => {
                report.reported_at = Some(Utc::now());
                match self.store.put_convergence(node_id, &report).await {
                    Ok(()) => self.route.actual_written(node_id, &report).await,
                    Err(e) => tracing::error!("cannot store a convergence report: {e}"),
                }
                self.status_changed(node_id);
            }
            Err(e) => {
                tracing::warn!(node = %node_id, "refused a convergence report: {e}")
            }
        }
    }

    /// Convergence of every node, read in one go.
    pub async fn status(&self) -> Result<Vec<NodeStatusReport>, FleetError> {
        self.statuses(None).await
    }

    /// Convergence of these nodes (by id; a node deleted meanwhile is left out), read in one go.
    pub async fn statuses_of(&self, ids: &[String]) -> Result<Vec<NodeStatusReport>, FleetError> {
        self.statuses(Some(ids)).await
    }

    async fn statuses(&self, ids: Option<&[String]>) -> Result<Vec<NodeStatusReport>, FleetError> {
        Ok(self
            .store
            .convergence_of(ids)
            .await?
            .into_iter()
            .map(|row| NodeStatusReport {
                node_id: row.node_id,
                node_name: row.node_name,
                desired_generation: row.desired_generation,
                convergence: row.report.unwrap_or_default(),
            })
            .collect())
    }

    pub async fn node_status(&self, id_or_name: &str) -> Result<NodeStatusReport, FleetError> {
        let node = self.nodes.node(id_or_name).await?;
        self.statuses_of(std::slice::from_ref(&node.id))
            .await?
            .pop()
            .ok_or_else(|| FleetError::NodeNotFound(id_or_name.to_string()))
    }

    /// Sets and removes a node's server-side labels (the ones selection uses; they win over reported ones).
    pub async fn label_node(
        &self,
        actor: &str,
        id_or_name: &str,
        set: Labels,
        remove: Vec<String>,
    ) -> Result<Node, FleetError> {
        drover_types::labels::validate_labels(&set)?;
        let node = self.nodes.node(id_or_name).await?;
        let (to_set, to_remove) = (set.clone(), remove.clone());
        self.modify_labels(&node.id, id_or_name, move |record| {
            for k in &to_remove {
                record.labels.remove(k);
                record.enrolled_labels.remove(k);
            }
            record.labels.extend(to_set);
        })
        .await?;
        self.access
            .audit(
                actor,
                AuditAction::NodeLabel,
                &node.name,
                serde_json::json!({"set": set, "remove": remove}),
            )
            .await;
        self.relabeled(&node.id).await
    }

    /// Makes the labels a node reported after enrolling count in selection (`drover nodes accept-labels`).
    pub async fn accept_labels(&self, actor: &str, id_or_name: &str) -> Result<Node, FleetError> {
        let node = self.nodes.find(id_or_name).await?;
        let accepted = self
            .modify_labels(&node.id, id_or_name, |record| {
                let pending = drover_types::labels::pending_labels(
                    &controlled_labels(record),
                    &record.reported_labels,
                );
                record.labels.extend(pending);
            })
            .await?;
        if !accepted.is_empty() {
            self.access
                .audit(
                    actor,
                    AuditAction::NodeAcceptLabels,
                    &node.name,
                    serde_json::json!({"accepted": accepted}),
                )
                .await;
            tracing::info!(node = %node.name, ?accepted, "reported labels accepted");
        }
        self.relabeled(&node.id).await
    }

    /// Changes the labels the operator controls on a node, in one store write, unless the change would
    /// leave more than a node may hold. Returns the labels added or changed.
    async fn modify_labels(
        &self,
        node_id: &str,
        id_or_name: &str,
        change: impl FnOnce(&mut NodeRecord) + Send + 'static,
    ) -> Result<Labels, FleetError> {
        let outcome = Arc::new(std::sync::Mutex::new(Ok(Labels::new())));
        let result = outcome.clone();
        self.store
            .modify_node(
                node_id,
                Box::new(move |record| {
                    let mut changed = record.clone();
                    change(&mut changed);
                    let after = controlled_labels(&changed);
                    let checked = drover_types::labels::validate_labels(&after).map(|()| {
                        drover_types::labels::pending_labels(&controlled_labels(record), &after)
                    });
                    if checked.is_ok() {
                        *record = changed;
                    }
                    *lock(&result) = checked;
                }),
            )
            .await?
            .ok_or_else(|| FleetError::NodeNotFound(id_or_name.to_string()))?;
        let outcome = std::mem::replace(&mut *lock(&outcome), Ok(Labels::new()));
        Ok(outcome?)
    }

    /// A node's labels changed: its desired state follows.
    async fn relabeled(&self, node_id: &str) -> Result<Node, FleetError> {
        self.recompute_node(node_id, None).await?;
        self.nodes.node(node_id).await
    }

    /// Stores uploaded content after checking it hashes to the name it was given.
    pub async fn put_blob(&self, sha256: &str, data: Vec<u8>) -> Result<(), FleetError> {
        let actual = hex::encode(Sha256::digest(&data));
        if actual != sha256.to_ascii_lowercase() {
            return Err(FleetError::invalid(
                "sha256",
                format!("the content's SHA-256 is {actual}, not {sha256}"),
            ));
        }
        // `drover apply` uploads a manifest's content just before it: small content is then sent inline.
        let small = (data.len() <= INLINE_BLOB_MAX).then(|| data.clone());
        self.store.put_blob(&actual, data).await?;
        if let Some(small) = small {
            self.blobs.put(&actual, &small);
        }
        Ok(())
    }

    /// The message that gives a node its desired state, with the small content it names.
    pub(super) fn desired_message(&self, state: &DesiredState) -> DesiredUpdate {
        DesiredUpdate {
            blobs: self.inline_blobs(state),
            ..DesiredUpdate::bare(state)
        }
    }

    /// The small content that a state's File resources name and the blob cache holds, to send inside the
    /// state's update (`INLINE_BLOB_MAX`, `INLINE_BYTES_MAX`). Only from the cache: a push never waits on the
    /// store, and content not sent along is fetched by the node as before.
    pub(super) fn inline_blobs(&self, state: &DesiredState) -> Vec<InlineBlob> {
        let mut inline: Vec<InlineBlob> = Vec::new();
        let mut total = 0;
        let named = state
            .resources
            .iter()
            .filter_map(|r| r.resource.file.as_ref()?.sha256.as_deref());
        for sha256 in named {
            if inline.iter().any(|b| b.sha256 == sha256) {
                continue;
            }
            let Some(data) = self.blobs.get(sha256) else {
                continue;
            };
            if data.len() > INLINE_BLOB_MAX || total + data.len() > INLINE_BYTES_MAX {
                continue;
            }
            total += data.len();
            inline.push(InlineBlob {
                sha256: sha256.to_string(),
                data,
            });
        }
        inline
    }

    /// A node asks for a blob. Served in a task of its own (pieces wait for room in the node's stream; the
    /// stream's other messages must not), at most `BLOBS_PER_NODE` at once per node: more are refused.
    pub(super) async fn blob_request(
        self: &Arc<Self>,
        node_id: &str,
        request_id: String,
        sha256: String,
    ) {
        let Some(slot) = self.blobs.slot(node_id) else {
            let refusal = BlobData {
                request_id,
                offset: 0,
                data: vec![],
                last: true,
                error: format!("more than {BLOBS_PER_NODE} fetches at once; retry later"),
            };
            self.route
                .local()
                .send(node_id, ToAgent::BlobData(refusal))
                .await;
            return;
        };
        let (fleet, node_id) = (self.clone(), node_id.to_string());
        tokio::spawn(async move {
            let _slot = slot;
            fleet.serve_blob(&node_id, &request_id, &sha256).await
        });
    }

    /// Sends a blob to a node over its stream, in pieces, when its desired state references it.
    async fn serve_blob(&self, node_id: &str, request_id: &str, sha256: &str) {
        let piece = |offset: u64, data: Vec<u8>, last: bool, error: String| {
            ToAgent::BlobData(BlobData {
                request_id: request_id.to_string(),
                offset,
                data,
                last,
                error,
            })
        };
        let blob = match self.blob_for_node(node_id, sha256).await {
            Ok(Some(blob)) => blob,
            Ok(None) => {
                let why = format!("no blob {sha256} in this node's desired state");
                self.route
                    .local()
                    .send(node_id, piece(0, vec![], true, why))
                    .await;
                return;
            }
            Err(e) => {
                tracing::error!("cannot read a blob: {e}");
                let why = "the server cannot read it; see its log".to_string();
                self.route
                    .local()
                    .send(node_id, piece(0, vec![], true, why))
                    .await;
                return;
            }
        };
        let mut offset = 0;
        let mut pieces = blob.chunks(BLOB_PIECE).peekable();
        if pieces.peek().is_none() {
            self.route
                .local()
                .send(node_id, piece(0, vec![], true, String::new()))
                .await;
            return;
        }
        while let Some(data) = pieces.next() {
            let last = pieces.peek().is_none();
            if !self
                .route
                .local()
                .send(node_id, piece(offset, data.to_vec(), last, String::new()))
                .await
            {
                return;
            }
            offset += data.len() as u64;
        }
    }

    /// A blob for a node, only when its desired state references it.
    pub async fn blob_for_node(
        &self,
        node_id: &str,
        sha256: &str,
    ) -> Result<Option<Vec<u8>>, FleetError> {
        if !self.store.desired_names_blob(node_id, sha256).await? {
            return Ok(None);
        }
        if let Some(hit) = self.blobs.get(sha256) {
            return Ok(Some(hit.to_vec()));
        }
        let blob = self.store.get_blob(sha256).await?;
        if let Some(b) = &blob {
            self.blobs.put(sha256, b);
        }
        Ok(blob)
    }
}

/// Refuses a convergence report with more entries than any real node's.
fn check_report(report: &NodeConvergence) -> Result<(), LimitError> {
    check_count("resources", report.resources.len(), MAX_REPORT_RESOURCES)?;
    check_count("conditions", report.conditions.len(), MAX_REPORT_CONDITIONS)?;
    // One entry a manifest at most, and a node holds no more manifests than resources.
    check_count("health", report.health.len(), MAX_REPORT_RESOURCES)?;
    check_count(
        "self_reverted",
        report.self_reverted.len(),
        MAX_REPORT_RESOURCES,
    )?;
    report
        .resources
        .iter()
        .try_for_each(|r| check_count("resources.drift", r.drift.len(), MAX_DRIFT_EVENTS))
}

/// The blobs served last, so a fleet-wide apply reads each from the store once, not once per node; and
/// the fetches each node has in flight.
#[derive(Default)]
pub struct BlobCache(
    std::sync::Mutex<std::collections::VecDeque<(String, std::sync::Arc<[u8]>)>>,
    Arc<std::sync::Mutex<std::collections::HashMap<String, usize>>>,
);

/// Blob fetches one node may have in flight.
const BLOBS_PER_NODE: usize = 4;

/// One of a node's blob fetches in flight; frees its place when dropped.
pub struct BlobSlot {
    node_id: String,
    serving: Arc<std::sync::Mutex<std::collections::HashMap<String, usize>>>,
}

impl Drop for BlobSlot {
    fn drop(&mut self) {
        let mut serving = lock(&self.serving);
        if let Some(n) = serving.get_mut(&self.node_id) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                serving.remove(&self.node_id);
            }
        }
    }
}

/// Bytes the blob cache holds at most.
const BLOB_CACHE_BYTES: usize = 64 * 1024 * 1024;

impl BlobCache {
    fn lock(
        &self,
    ) -> std::sync::MutexGuard<'_, std::collections::VecDeque<(String, std::sync::Arc<[u8]>)>> {
        lock(&self.0)
    }

    fn slot(&self, node_id: &str) -> Option<BlobSlot> {
        let mut serving = lock(&self.1);
        let n = serving.entry(node_id.to_string()).or_default();
        if *n >= BLOBS_PER_NODE {
            return None;
        }
        *n += 1;
        Some(BlobSlot {
            node_id: node_id.to_string(),
            serving: self.1.clone(),
        })
    }

    fn get(&self, sha256: &str) -> Option<std::sync::Arc<[u8]>> {
        self.lock()
            .iter()
            .find(|(k, _)| k == sha256)
            .map(|(_, v)| v.clone())
    }

    fn put(&self, sha256: &str, data: &[u8]) {
        if data.len() > BLOB_CACHE_BYTES {
            return;
        }
        let mut cache = self.lock();
        cache.retain(|(k, _)| k != sha256);
        cache.push_front((sha256.to_string(), data.into()));
        let mut total = 0;
        cache.retain(|(_, v)| {
            total += v.len();
            total <= BLOB_CACHE_BYTES
        });
    }
}

impl crate::reach::StateObserver for Desired {
    fn changed(&self, node_id: &str) {
        self.status_changed(node_id);
    }

    fn desired_elsewhere(self: Arc<Self>, node: String, generation: u64, state_json: String) {
        if !self.route.here(&node) {
            return;
        }
        // On its own: a node whose stream is full must not hold up the others' changes.
        tokio::spawn(async move {
            let update = if state_json.is_empty() {
                // Too large for NATS: read from the store.
                match self.store.get_desired(&node).await {
                    Ok(Some(d)) => self.desired_message(&d.state),
                    Ok(None) => return,
                    Err(e) => {
                        tracing::warn!(node = %node, "cannot read a node's desired state to send it: {e}");
                        return;
                    }
                }
            } else {
                // The content it names goes along as from the replica that wrote it.
                let blobs = serde_json::from_str(&state_json)
                    .map(|state| self.inline_blobs(&state))
                    .unwrap_or_default();
                crate::reach::message::DesiredUpdate {
                    generation,
                    state_json,
                    blobs,
                }
            };
            self.route
                .local()
                .send(&node, crate::reach::ToAgent::DesiredState(update))
                .await;
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_report_with_more_entries_than_a_node_has_is_refused_naming_the_field() {
        let revert = drover_types::manifest::SelfRevert {
            manifest: "web".into(),
            revision: 2,
            previous_revision: 1,
            reason: "x".into(),
            at: Utc::now(),
        };
        let mut report = NodeConvergence {
            self_reverted: vec![revert; MAX_REPORT_RESOURCES],
            ..Default::default()
        };
        assert!(check_report(&report).is_ok());
        report.self_reverted.push(report.self_reverted[0].clone());
        let refused = check_report(&report).unwrap_err().to_string();
        assert!(refused.contains("self_reverted"), "{refused}");
    }

    #[tokio::test]
    async fn a_status_follower_gets_each_changed_node_once_and_never_falls_behind() {
        let events = StatusEvents::default();
        let (a, b) = (events.subscribe(), events.subscribe());
        // More changes than any queue would hold, over a few nodes.
        for i in 0..100_000 {
            events.changed(&format!("n{}", i % 3));
        }
        let mut changed = a.changed().await;
        changed.sort();
        assert_eq!(changed, ["n0", "n1", "n2"]);
        // A follower waits for the next change, and hears it.
        let waiting = tokio::spawn(async move { a.changed().await });
        tokio::task::yield_now().await;
        events.changed("n9");
        assert_eq!(
            tokio::time::timeout(std::time::Duration::from_secs(10), waiting)
                .await
                .unwrap()
                .unwrap(),
            ["n9"]
        );
        drop(b);
        events.changed("n1");
        assert_eq!(lock(&events.0).len(), 0, "ended followers are let go");
    }

    #[test]
    fn a_node_has_a_bounded_number_of_blob_fetches_in_flight() {
        let cache = BlobCache::default();
        let slots: Vec<BlobSlot> = (0..BLOBS_PER_NODE)
            .map(|_| cache.slot("n").unwrap())
            .collect();
        assert!(cache.slot("n").is_none(), "one more is refused");
        assert!(cache.slot("other").is_some(), "other nodes are not held up");
        drop(slots);
        assert!(
            cache.slot("n").is_some(),
            "finished fetches free their place"
        );
    }

    #[test]
    fn the_blob_cache_keeps_the_newest_within_its_size() {
        let cache = BlobCache::default();
        cache.put("a", b"one");
        cache.put("b", &vec![0u8; BLOB_CACHE_BYTES]);
        assert!(cache.get("b").is_some());
        assert!(cache.get("a").is_none(), "the oldest went to make room");
        cache.put("c", &vec![0u8; BLOB_CACHE_BYTES + 1]);
        assert!(cache.get("c").is_none(), "too large to cache");
    }
}

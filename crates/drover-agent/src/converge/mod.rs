//! Convergence: the agent makes the node match the last desired state it received, keeps doing so while
//! the server is away and across its own restarts, and reports where each resource stands.
//!
//! Each kind has a [`Reconciler`](reconciler::Reconciler): observe, plan, apply, delete. This runtime owns
//! the rest: the node's policy, asked once per resource before any kind observes or changes anything (so a
//! new kind cannot forget it); the persisted desired state; the ledger of what this agent owns (for garbage
//! collection across restarts); per-resource backoff; periodic re-observation that catches drift; each
//! manifest's rollout health checks once its resources are ready (`health`); and reporting.

mod blobs;
pub(crate) mod container;
pub(crate) mod fallback;
mod file;
pub mod health;
pub mod ledger;
pub mod reconciler;
pub mod registry;
mod shell_job;
mod signed;
mod unit;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use drover_proto::v1::{self, AgentMessage, agent_message::Msg};
use drover_types::manifest::{
    Condition, ConditionKind, Conflict, DriftEvent, ManifestHealth, ManifestProof, NodeConvergence,
    PlanAction, PlanItem, Resource, ResourceKind, ResourceState, ResourceStatus,
};
use drover_types::rollout::HealthCheck;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use sha2::{Digest, Sha256};
use tokio::sync::mpsc;

use crate::policy::{Policy, Refusal};
pub use blobs::{BlobError, Blobs, FetchError, Fetcher, verified_inline};
pub use ledger::{Held, LedgerEntry};
use reconciler::ConvergeError;
use registry::Registry;

/// What reconcilers may touch, from the node's own policy, and where content comes from.
#[derive(Clone)]
pub struct ConvergeCtx {
    pub policy: Arc<Policy>,
    pub blobs: Blobs,
}

/// The desired state as it travels: resources stay JSON until each is understood, so one resource of a kind
/// this agent does not know becomes an UnknownKind status instead of refusing everything.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct WireDesired {
    pub generation: u64,
    #[serde(default)]
    pub resources: Vec<Value>,
    #[serde(default)]
    pub conflicts: Vec<Conflict>,
    /// Signed manifests' payloads and signatures, checked when the node pins keys.
    #[serde(default)]
    pub signed: Vec<ManifestProof>,
    /// Each manifest's rollout health checks, JSON until read (a check this agent does not know fails
    /// that manifest's health, not the whole state).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub health: BTreeMap<String, Vec<Value>>,
    /// Per manifest under an unfinished rollout, the revision to go back to on its own (`fallback`).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub fallback: BTreeMap<String, fallback::WireFallback>,
}

const DESIRED_FILE: &str = "desired.json";
const LEDGER_FILE: &str = "ledger.json";
const BACKOFF_BASE: Duration = Duration::from_secs(10);
const BACKOFF_CAP: Duration = Duration::from_secs(300);
const DRIFT_KEPT: usize = 10;
/// A pass still at work this long after it began reports its changed resources as Reconciling; one done
/// sooner reports only its result, so a fleet-wide apply of quick changes costs the server one report a
/// node, not two, and slow work (an image pull) still shows while it runs.
pub const RECONCILING_AFTER: Duration = Duration::from_secs(1);

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

fn spec_hash(r: &Value) -> String {
    hex::encode(Sha256::digest(r.to_string().as_bytes()))
}

/// A manifest's health checks as last run.
struct Checked {
    /// The desired generation and the checks (or why none run) they were run for.
    generation: u64,
    checks: Result<Vec<HealthCheck>, String>,
    at: std::time::Instant,
    result: ManifestHealth,
}

/// What the runtime is told.
enum Command {
    Desired(WireDesired),
    Plan(WireDesired, tokio::sync::oneshot::Sender<Vec<PlanItem>>),
}

/// The converger's handle: give it desired states, tell it where to report.
#[derive(Clone)]
pub struct Converger {
    updates: mpsc::Sender<Command>,
    link: Arc<Mutex<Option<mpsc::Sender<AgentMessage>>>>,
    last_report: Arc<Mutex<Option<NodeConvergence>>>,
    /// Since when the agent has had no stream to the server (`None`: it has one).
    offline_since: Arc<Mutex<Option<Instant>>>,
}

impl Converger {
    /// Starts the loop, first enforcing whatever desired state was persisted before a restart.
    pub fn start(state_dir: PathBuf, ctx: ConvergeCtx, resync: Duration) -> Self {
        let (updates, rx) = mpsc::channel(8);
        let link = Arc::new(Mutex::new(None));
        let last_report = Arc::new(Mutex::new(None));
        let offline_since = Arc::new(Mutex::new(Some(Instant::now())));
        let runtime = Runtime {
            desired: read_json(&state_dir.join(DESIRED_FILE)).unwrap_or_default(),
            applied: WireDesired::default(),
            reverts: fallback::load(&state_dir),
            offline_since: offline_since.clone(),
            ledger: read_json(&state_dir.join(LEDGER_FILE)).unwrap_or_default(),
            versions: signed::load(&state_dir),
            verdicts: signed::Verdicts::default(),
            state_dir,
            ctx,
            registry: Registry::new(),
            statuses: BTreeMap::new(),
            hashes: BTreeMap::new(),
            health: BTreeMap::new(),
            link: link.clone(),
            last_report: last_report.clone(),
            resync,
            reconciling_after: RECONCILING_AFTER,
        };
        tokio::spawn(runtime.run(rx));
        Self {
            updates,
            link,
            last_report,
            offline_since,
        }
    }

    pub async fn desired(&self, update: v1::DesiredStateUpdate) {
        match serde_json::from_str::<WireDesired>(&update.state_json) {
            Ok(d) => {
                let _ = self.updates.send(Command::Desired(d)).await;
            }
            Err(e) => tracing::warn!("ignored a desired state this agent cannot read: {e}"),
        }
    }

    /// A new stream: report to it, starting with where things stand now.
    pub async fn connected(&self, tx: mpsc::Sender<AgentMessage>) {
        *lock(&self.link) = Some(tx.clone());
        *lock(&self.offline_since) = None;
        let report = lock(&self.last_report).clone();
        if let Some(r) = report {
            let _ = tx.send(report_message(&r)).await;
        }
    }

    pub fn disconnected(&self) {
        *lock(&self.link) = None;
        *lock(&self.offline_since) = Some(Instant::now());
    }

    /// A dry run: what would change for this desired state, from observation only.
    pub async fn plan(&self, request: v1::PlanRequest) -> AgentMessage {
        let items = match serde_json::from_str::<WireDesired>(&request.state_json) {
            Ok(d) => {
                let (tx, rx) = tokio::sync::oneshot::channel();
                let _ = self.updates.send(Command::Plan(d, tx)).await;
                rx.await.unwrap_or_default()
            }
            Err(e) => vec![PlanItem {
                id: String::new(),
                kind: ResourceKind::NONE,
                action: PlanAction::Fail,
                detail: format!("unreadable desired state: {e}"),
            }],
        };
        AgentMessage {
            msg: Some(Msg::PlanResult(v1::PlanResult {
                request_id: request.request_id,
                plan_json: serde_json::to_string(&items).unwrap_or_default(),
            })),
        }
    }
}

pub fn report_message(r: &NodeConvergence) -> AgentMessage {
    crate::metrics_listen::converge_report(r);
    AgentMessage {
        msg: Some(Msg::ConvergenceReport(v1::ConvergenceReport {
            report_json: serde_json::to_string(r).unwrap_or_default(),
        })),
    }
}

fn read_json<T: serde::de::DeserializeOwned>(path: &std::path::Path) -> Option<T> {
    let bytes = std::fs::read(path).ok()?;
    match serde_json::from_slice(&bytes) {
        Ok(v) => Some(v),
        Err(e) => {
            tracing::warn!("ignoring unreadable {}: {e}", path.display());
            None
        }
    }
}

struct Runtime {
    state_dir: PathBuf,
    ctx: ConvergeCtx,
    registry: Registry,
    /// The desired state as the server sent it (and as persisted).
    desired: WireDesired,
    /// What the node runs: `desired` with its own reverts (`fallback::effective`), set each pass.
    applied: WireDesired,
    /// Manifests this node put back on their previous revision on its own.
    reverts: fallback::Reverts,
    offline_since: Arc<Mutex<Option<Instant>>>,
    ledger: BTreeMap<String, LedgerEntry>,
    /// The newest version of each signed manifest this node applied (no going back).
    versions: signed::Versions,
    /// This pass's verdict on each manifest's signature.
    verdicts: signed::Verdicts,
    statuses: BTreeMap<String, ResourceStatus>,
    /// Spec hash each status was reached with, to tell drift from a change of spec.
    hashes: BTreeMap<String, String>,
    /// Per manifest with health checks and every resource ready, the checks' last run.
    health: BTreeMap<String, Checked>,
    link: Arc<Mutex<Option<mpsc::Sender<AgentMessage>>>>,
    last_report: Arc<Mutex<Option<NodeConvergence>>>,
    resync: Duration,
    /// `RECONCILING_AFTER` (tests set their own).
    reconciling_after: Duration,
}

impl Runtime {
    async fn run(mut self, mut updates: mpsc::Receiver<Command>) {
        let mut due = true;
        loop {
            // A pass that made the node go back on its own runs again at once, to apply it.
            while due {
                due = self.pass().await;
            }
            let wait = self.next_wake();
            let could_go_back = self.could_go_back();
            due = tokio::select! {
                command = updates.recv() => match command {
                    Some(Command::Desired(d)) => { self.accept(d); true }
                    Some(Command::Plan(d, reply)) => { let _ = reply.send(self.plan(&d).await); false }
                    None => return,
                },
                _ = tokio::time::sleep(wait) => true,
                _ = tokio::time::sleep(fallback::CHECK_EVERY), if could_go_back => {
                    self.check_health(fallback::CHECK_EVERY).await;
                    let back = self.fall_back();
                    if !back {
                        self.report().await;
                    }
                    back
                }
            };
        }
    }

    /// With the server gone, whether a manifest could still go back on its own (its health checks are
    /// then run every `CHECK_EVERY`, between passes).
    fn could_go_back(&self) -> bool {
        lock(&self.offline_since).is_some()
            && self
                .desired
                .fallback
                .keys()
                .any(|name| !self.reverts.contains_key(name))
    }

    /// Puts each manifest whose rollout could go back, and whose checks fail for the state the server
    /// sent, on its previous revision, once the server has been gone `FALLBACK_AFTER`. True when any went.
    fn fall_back(&mut self) -> bool {
        let gone =
            lock(&self.offline_since).is_some_and(|t| t.elapsed() >= fallback::FALLBACK_AFTER);
        if !gone {
            return false;
        }
        let mut went = false;
        for (name, back) in &self.desired.fallback {
            let failing = self
                .health
                .get(name)
                .filter(|c| c.generation == self.desired.generation && !c.result.healthy);
            let Some(failing) = failing else { continue };
            if self.reverts.contains_key(name) {
                continue;
            }
            let reason = failing
                .result
                .reason
                .clone()
                .unwrap_or_else(|| "failing".into());
            tracing::warn!(
                manifest = %name,
                "the server is unreachable and revision {} fails its health checks ({reason}): going back to revision {}",
                back.revision,
                back.previous_revision
            );
            self.reverts.insert(
                name.clone(),
                drover_types::manifest::SelfRevert {
                    manifest: name.clone(),
                    revision: back.revision,
                    previous_revision: back.previous_revision,
                    reason,
                    at: Utc::now(),
                },
            );
            went = true;
        }
        if went {
            fallback::save(&self.state_dir, &self.reverts);
        }
        went
    }

    /// What a pass over `desired` would do: the policy, then each kind's observe and plan, nothing else.
    async fn plan(&self, desired: &WireDesired) -> Vec<PlanItem> {
        let mut items = Vec::new();
        let (verdicts, _) = self.judge(desired, &mut self.versions.clone(), false);
        let mut wanted = std::collections::BTreeSet::new();
        for raw in &desired.resources {
            let (id, _, resource) = parse_resource(raw);
            wanted.insert(id.clone());
            let item = |kind: ResourceKind, action: PlanAction, detail: String| PlanItem {
                id: id.clone(),
                kind,
                action,
                detail,
            };
            let resource = match resource {
                Ok(r) => r,
                Err(e) => {
                    items.push(item(ResourceKind::Unknown, PlanAction::Fail, e.to_string()));
                    continue;
                }
            };
            let kind = resource.resource_kind();
            let manifest = raw["manifest"].as_str().unwrap_or_default();
            if let Err(refusal) = verdicts
                .admit(manifest, &resource)
                .and_then(|()| self.ctx.policy.admit(&resource))
            {
                items.push(item(kind, PlanAction::Refuse, refusal.to_string()));
                continue;
            }
            let planned = match self.registry.for_resource(&resource) {
                Ok(k) => k.plan(&self.ctx, &resource, &spec_hash(raw)).await,
                Err(e) => Err(e),
            };
            items.push(match planned {
                Ok(p) => {
                    let s = p.summary;
                    let action = match (s.changes.is_empty(), s.creates) {
                        (true, _) => PlanAction::None,
                        (false, true) => PlanAction::Create,
                        (false, false) => PlanAction::Update,
                    };
                    item(kind, action, s.changes.join(", "))
                }
                Err(e) => item(kind, PlanAction::Fail, e.to_string()),
            });
        }
        for c in &desired.conflicts {
            items.push(PlanItem {
                id: c.id.clone(),
                kind: ResourceKind::Unknown,
                action: PlanAction::Fail,
                detail: format!("conflict between {}", c.manifests.join(", ")),
            });
        }
        for (id, entry) in self.ledger.iter().filter(|(id, _)| !wanted.contains(*id)) {
            for held in &entry.held {
                items.push(PlanItem {
                    id: id.clone(),
                    kind: held.kind.clone(),
                    action: if held.created {
                        PlanAction::Delete
                    } else {
                        PlanAction::None
                    },
                    detail: format!("no manifest wants {}", held.handle),
                });
            }
        }
        items
    }

    fn accept(&mut self, desired: WireDesired) {
        self.mark_pending(&desired);
        if desired.generation < self.desired.generation {
            return; // an older state arriving late
        }
        if desired.generation != self.desired.generation {
            // A new generation retries failed resources at once.
            for s in self.statuses.values_mut() {
                s.retry_at = None;
            }
        }
        if fallback::keep_current(&mut self.reverts, &desired) {
            fallback::save(&self.state_dir, &self.reverts);
        }
        self.desired = desired;
        let json = serde_json::to_vec(&self.desired).unwrap_or_default();
        if let Err(e) = drover_files::write_atomic(&self.state_dir.join(DESIRED_FILE), &json, true)
        {
            tracing::warn!("cannot persist the desired state: {e}");
        }
    }

    /// New resources show as Pending at once, before a pass gets to them.
    fn mark_pending(&mut self, desired: &WireDesired) {
        for raw in &desired.resources {
            let (id, manifest, resource) = parse_resource(raw);
            if !self.statuses.contains_key(&id) {
                let kind = resource
                    .as_ref()
                    .map_or(ResourceKind::Unknown, Resource::resource_kind);
                self.set(
                    &id,
                    &manifest,
                    kind,
                    ResourceState::Pending,
                    Value::Null,
                    None,
                );
            }
        }
    }

    fn next_wake(&self) -> Duration {
        let now = Utc::now();
        self.statuses
            .values()
            .filter_map(|s| s.retry_at)
            .map(|t| (t - now).to_std().unwrap_or(Duration::ZERO))
            .fold(self.resync, Duration::min)
            .max(Duration::from_millis(50))
    }

    fn save_ledger(&self) {
        let json = serde_json::to_vec_pretty(&self.ledger).unwrap_or_default();
        if let Err(e) = drover_files::write_atomic(&self.state_dir.join(LEDGER_FILE), &json, true) {
            tracing::warn!("cannot persist the ledger: {e}");
        }
    }

    /// Judges the signed manifests of `desired` (when this node pins keys).
    fn judge(
        &self,
        desired: &WireDesired,
        versions: &mut signed::Versions,
        record: bool,
    ) -> (signed::Verdicts, bool) {
        // A manifest with health checks and no resource here is judged too: its checks are signed.
        let names = desired
            .resources
            .iter()
            .map(|r| r["manifest"].as_str().unwrap_or_default().to_string())
            .chain(desired.health.keys().cloned());
        signed::Verdicts::judge(
            &self.ctx.policy.manifest_keys,
            names,
            &desired.signed,
            &desired.fallback,
            versions,
            record,
        )
    }

    /// One pass: reconcile every due resource, collect what is no longer desired, report. True when the
    /// node decided to go back on its own (`fall_back`): another pass applies it.
    async fn pass(&mut self) -> bool {
        let now = Utc::now();
        self.applied = fallback::effective(&self.desired, &self.reverts);
        let mut versions = std::mem::take(&mut self.versions);
        let (verdicts, changed) = self.judge(&self.applied, &mut versions, true);
        if changed {
            signed::save(&self.state_dir, &versions);
        }
        self.versions = versions;
        self.verdicts = verdicts;
        let conflicted: std::collections::BTreeSet<String> = self
            .applied
            .conflicts
            .iter()
            .map(|c| c.id.clone())
            .collect();
        let resources = self.applied.resources.clone();
        // Resources whose spec is new or changed show as Reconciling while the pass works on them (reported
        // once the pass has taken RECONCILING_AFTER).
        let mut touched = false;
        for raw in &resources {
            let (id, _, _) = parse_resource(raw);
            if self.hashes.get(&id) != Some(&spec_hash(raw))
                && let Some(s) = self.statuses.get_mut(&id)
                && s.state != ResourceState::Reconciling
            {
                s.state = ResourceState::Reconciling;
                touched = true;
            }
        }
        // What to say if the pass is slow, taken now: the pass itself holds `self`.
        let early = touched.then(|| {
            let at_start = self.current_report();
            (at_start, self.link.clone(), self.last_report.clone())
        });
        let after = self.reconciling_after;
        let work = self.work(&resources, &conflicted, now);
        match early {
            None => work.await,
            Some((early, link, last_report)) => {
                tokio::pin!(work);
                tokio::select! {
                    () = &mut work => {}
                    () = tokio::time::sleep(after) => {
                        send_report(&last_report, &link, early).await;
                        work.await;
                    }
                }
            }
        }
        self.check_health(self.resync).await;
        if self.fall_back() {
            return true;
        }
        self.report().await;
        false
    }

    /// Runs the health checks of each manifest whose resources are all ready: when they are new to it (a
    /// new desired state, resources just ready, other checks) and again once `max_age` has passed since
    /// their last run. A manifest not ready has no result, so the server waits for one.
    async fn check_health(&mut self, max_age: Duration) {
        let mut names: std::collections::BTreeSet<String> = self
            .applied
            .health
            .iter()
            .filter(|(_, checks)| !checks.is_empty())
            .map(|(name, _)| name.clone())
            .collect();
        names.extend(self.verdicts.signed_checks().map(String::from));
        let generation = self.desired.generation;
        let mut last = std::mem::take(&mut self.health);
        let mut runs = tokio::task::JoinSet::new();
        names.retain(|name| self.ready(name));
        for name in names {
            let sent = self
                .applied
                .health
                .get(&name)
                .map_or(&[][..], Vec::as_slice);
            let checks = self.verdicts.health(&name, sent);
            match last.remove(&name) {
                Some(c)
                    if c.generation == generation
                        && c.checks == checks
                        && c.at.elapsed() < max_age =>
                {
                    self.health.insert(name, c);
                }
                previous => {
                    let policy = self.ctx.policy.clone();
                    let was = previous.map(|c| c.result);
                    runs.spawn(async move {
                        let result = match &checks {
                            Ok(list) => health::check_manifest(&name, list.clone(), policy).await,
                            Err(why) => ManifestHealth {
                                manifest: name.clone(),
                                healthy: false,
                                reason: Some(why.clone()),
                            },
                        };
                        (name, checks, result, was)
                    });
                }
            }
        }
        while let Some(done) = runs.join_next().await {
            // A run that panicked leaves no result: the manifest is checked again next pass.
            let Ok((name, checks, result, was)) = done else {
                continue;
            };
            if was.as_ref() != Some(&result) {
                match &result.reason {
                    Some(why) => tracing::warn!(manifest = %name, "health checks failing: {why}"),
                    None => tracing::info!(manifest = %name, "health checks pass"),
                }
            }
            let checked = Checked {
                generation,
                checks,
                at: std::time::Instant::now(),
                result,
            };
            self.health.insert(name, checked);
        }
    }

    /// Whether every resource of `manifest` on this node is Ready (a conflict names all its manifests).
    fn ready(&self, manifest: &str) -> bool {
        self.statuses
            .values()
            .filter(|s| s.manifest.split(',').any(|m| m == manifest))
            .all(|s| s.state == ResourceState::Ready)
    }

    /// The body of a pass, after its changed resources are marked Reconciling: reconcile every due resource,
    /// mark conflicts, collect what is no longer desired.
    async fn work(
        &mut self,
        resources: &[Value],
        conflicted: &std::collections::BTreeSet<String>,
        now: DateTime<Utc>,
    ) {
        let mut wanted = std::collections::BTreeSet::new();
        for raw in resources {
            let (id, manifest, resource) = parse_resource(raw);
            wanted.insert(id.clone());
            let resource = match resource {
                Ok(r) => r,
                Err(e) => {
                    self.set(
                        &id,
                        &manifest,
                        ResourceKind::Unknown,
                        ResourceState::UnknownKind,
                        Value::Null,
                        Some(e.to_string()),
                    );
                    continue;
                }
            };
            let hash = spec_hash(raw);
            let previous = self.statuses.get(&id).cloned();
            if previous.as_ref().is_some_and(|s| {
                s.state == ResourceState::Failed && s.retry_at.is_some_and(|t| t > now)
            }) && self.hashes.get(&id) == Some(&hash)
            {
                continue;
            }
            self.reconcile(&resource, &manifest, &hash, previous).await;
        }
        for c in self.applied.conflicts.clone() {
            let msg = format!(
                "manifests {} all give this resource; none is applied until one stops",
                c.manifests.join(", ")
            );
            self.set(
                &c.id,
                &c.manifests.join(","),
                ResourceKind::Unknown,
                ResourceState::Conflict,
                Value::Null,
                Some(msg),
            );
        }
        // Garbage collection: what this agent applied and no manifest wants any more (conflicts keep theirs).
        let gone: Vec<String> = self
            .ledger
            .keys()
            .filter(|id| !wanted.contains(*id) && !conflicted.contains(*id))
            .cloned()
            .collect();
        for id in gone {
            let Some(entry) = self.ledger.get(&id).cloned() else {
                continue;
            };
            let left = self.release(&id, entry.held).await;
            if left == 0 {
                tracing::info!(resource = %id, "removed a resource no manifest wants");
                self.ledger.remove(&id);
                self.save_ledger();
            }
        }
        let keep: std::collections::BTreeSet<&String> =
            wanted.iter().chain(conflicted.iter()).collect();
        self.statuses.retain(|id, _| keep.contains(id));
    }

    /// Deletes what the agent created among `held` (what it took over is only forgotten) and drops each
    /// from the resource's ledger entry once done; returns how many are left (their delete failed).
    async fn release(&mut self, id: &str, held: Vec<Held>) -> usize {
        let mut left = 0;
        for h in held {
            let result = match (h.created, self.registry.get(&h.kind)) {
                (false, _) => Ok(()),
                (true, Some(kind)) => kind.delete(&self.ctx, &h.handle).await,
                (true, None) => Err(ConvergeError::NoKind(h.kind.clone())),
            };
            match result {
                Ok(()) => {
                    if h.created {
                        tracing::info!(resource = %id, kind = %h.kind, handle = %h.handle, "removed what the agent created");
                    }
                    if let Some(entry) = self.ledger.get_mut(id) {
                        entry.release(&h);
                    }
                    self.save_ledger();
                }
                Err(e) => {
                    left += 1;
                    tracing::warn!(resource = %id, handle = %h.handle, "cannot remove what the agent created: {e}");
                }
            }
        }
        left
    }

    async fn reconcile(
        &mut self,
        resource: &Resource,
        manifest: &str,
        hash: &str,
        previous: Option<ResourceStatus>,
    ) {
        let id = resource.id.clone();
        let kind = resource.resource_kind();
        let same_spec = self.hashes.get(&id).map(String::as_str) == Some(hash);
        self.hashes.insert(id.clone(), hash.to_string());
        // The manifest's signature (on a node that pins keys), then the node's policy, once, before any
        // kind looks at the resource.
        if let Err(refusal) = self
            .verdicts
            .admit(manifest, resource)
            .and_then(|()| self.ctx.policy.admit(resource))
        {
            self.refused(&id, manifest, kind, &refusal, previous);
            return;
        }
        let result = self.converge(resource, manifest, hash).await;
        match result {
            Ok(outcome) => {
                let mut drift = previous
                    .as_ref()
                    .map(|p| p.drift.clone())
                    .unwrap_or_default();
                if let Some(what) = &outcome.changed
                    && same_spec
                    && previous
                        .as_ref()
                        .is_some_and(|p| p.state == ResourceState::Ready)
                {
                    tracing::warn!(resource = %id, "drift corrected: {what}");
                    drift.push(DriftEvent {
                        at: Utc::now(),
                        what: what.clone(),
                    });
                    if drift.len() > DRIFT_KEPT {
                        drift.remove(0);
                    }
                }
                let mut status = ResourceStatus::new(&id, manifest, kind, ResourceState::Ready);
                status.details = outcome.details;
                status.drift = drift;
                self.statuses.insert(id, status);
            }
            Err(error) => {
                let attempts = if same_spec {
                    previous.as_ref().map(|p| p.attempts).unwrap_or(0) + 1
                } else {
                    1
                };
                let delay = BACKOFF_BASE
                    .saturating_mul(1 << (attempts - 1).min(8))
                    .min(BACKOFF_CAP);
                let retry_at = Utc::now() + chrono::Duration::from_std(delay).unwrap_or_default();
                tracing::warn!(resource = %id, attempts, "resource failed: {error}; retrying in {delay:?}");
                let mut status = ResourceStatus::new(&id, manifest, kind, ResourceState::Failed);
                status.error = Some(error.to_string());
                status.attempts = attempts;
                status.retry_at = Some(retry_at);
                status.drift = previous.map(|p| p.drift).unwrap_or_default();
                self.statuses.insert(id, status);
            }
        }
    }

    /// Plans, lets go of what an earlier spec held elsewhere (a changed path: the old is deleted if the agent
    /// created it), applies, and records what the resource holds now.
    async fn converge(
        &mut self,
        resource: &Resource,
        manifest: &str,
        hash: &str,
    ) -> Result<reconciler::Outcome, ConvergeError> {
        let id = resource.id.as_str();
        let kind = self.registry.for_resource(resource)?;
        let planned = kind.plan(&self.ctx, resource, hash).await?;
        let handle = planned.summary.handle.clone();
        let stale = self
            .ledger
            .get(id)
            .map(|e| e.stale(&kind.name(), &handle))
            .unwrap_or_default();
        if !stale.is_empty() {
            // A failed delete stays in the ledger and is tried again on the next pass.
            self.release(id, stale).await;
        }
        let kind = self.registry.for_resource(resource)?;
        let outcome = kind.apply(&self.ctx, resource, hash, planned).await?;
        let entry = self
            .ledger
            .entry(id.to_string())
            .or_insert_with(|| LedgerEntry {
                manifest: manifest.to_string(),
                held: Vec::new(),
            });
        let before = entry.clone();
        entry.manifest = manifest.to_string();
        entry.hold(kind.name(), &handle, outcome.created);
        if *entry != before {
            self.save_ledger();
        }
        Ok(outcome)
    }

    /// The node's policy refused the resource: final until the spec or the policy changes, so no backoff.
    fn refused(
        &mut self,
        id: &str,
        manifest: &str,
        kind: ResourceKind,
        refusal: &Refusal,
        previous: Option<ResourceStatus>,
    ) {
        if previous
            .as_ref()
            .is_none_or(|p| p.state != ResourceState::Refused)
        {
            tracing::warn!(resource = %id, "{refusal}");
        }
        let mut status = ResourceStatus::new(id, manifest, kind, ResourceState::Refused);
        status.error = Some(refusal.to_string());
        status.details = serde_json::json!({ "rule": refusal.rule() });
        status.drift = previous.map(|p| p.drift).unwrap_or_default();
        self.statuses.insert(id.to_string(), status);
    }

    fn set(
        &mut self,
        id: &str,
        manifest: &str,
        kind: ResourceKind,
        state: ResourceState,
        details: Value,
        error: Option<String>,
    ) {
        let mut status = ResourceStatus::new(id, manifest, kind, state);
        status.details = details;
        status.error = error;
        self.statuses.insert(id.to_string(), status);
    }

    async fn report(&mut self) {
        send_report(&self.last_report, &self.link, self.current_report()).await;
    }

    fn current_report(&self) -> NodeConvergence {
        let resources: Vec<ResourceStatus> = self.statuses.values().cloned().collect();
        let mut report = node_convergence(self.desired.generation, resources);
        // Only results for the state reported: an older one may judge checks since replaced.
        report.health = self
            .health
            .values()
            .filter(|c| c.generation == self.desired.generation)
            .map(|c| c.result.clone())
            .collect();
        report.self_reverted = self.reverts.values().cloned().collect();
        report
    }
}

/// Sends a report to the server, unless it is the one sent last.
async fn send_report(
    last_report: &Mutex<Option<NodeConvergence>>,
    link: &Mutex<Option<mpsc::Sender<AgentMessage>>>,
    report: NodeConvergence,
) {
    {
        let mut last = lock(last_report);
        if last.as_ref() == Some(&report) {
            return;
        }
        *last = Some(report.clone());
    }
    let tx = lock(link).clone();
    if let Some(tx) = tx {
        let _ = tx.send(report_message(&report)).await;
    }
}

/// The report for these statuses at this generation, with its Ready / Reconciling / Degraded conditions.
pub fn node_convergence(generation: u64, resources: Vec<ResourceStatus>) -> NodeConvergence {
    let any = |s: ResourceState| resources.iter().any(|r| r.state == s);
    let degraded = any(ResourceState::Failed)
        || any(ResourceState::UnknownKind)
        || any(ResourceState::Conflict)
        || any(ResourceState::Refused);
    let reconciling = any(ResourceState::Pending) || any(ResourceState::Reconciling);
    let failed: Vec<&str> = resources
        .iter()
        .filter(|r| r.state != ResourceState::Ready)
        .map(|r| r.id.as_str())
        .collect();
    let conditions = vec![
        Condition {
            kind: ConditionKind::Ready,
            status: !degraded && !reconciling,
            message: String::new(),
        },
        Condition {
            kind: ConditionKind::Reconciling,
            status: reconciling,
            message: String::new(),
        },
        Condition {
            kind: ConditionKind::Degraded,
            status: degraded,
            message: if degraded {
                format!("not ready: {}", failed.join(", "))
            } else {
                String::new()
            },
        },
    ];
    NodeConvergence {
        observed_generation: generation,
        conditions,
        resources,
        health: Vec::new(),
        self_reverted: Vec::new(),
        reported_at: None,
    }
}

/// A desired resource this agent cannot read: of a kind it does not know, or malformed.
#[derive(Debug, thiserror::Error)]
#[error("this agent does not understand this resource: {0}")]
pub struct UnreadableResource(#[from] serde_json::Error);

/// Splits a desired resource as it travels into its id, its manifest's name and the resource itself.
pub fn parse_resource(raw: &Value) -> (String, String, Result<Resource, UnreadableResource>) {
    let id = raw["id"].as_str().unwrap_or_default().to_string();
    let manifest = raw["manifest"].as_str().unwrap_or_default().to_string();
    // The manifest's name travels beside the resource's own fields.
    let mut fields = raw.clone();
    if let Some(obj) = fields.as_object_mut() {
        obj.remove("manifest");
    }
    let resource = serde_json::from_value(fields).map_err(UnreadableResource);
    (id, manifest, resource)
}

/// Time as the reports carry it.
pub fn now() -> DateTime<Utc> {
    Utc::now()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn runtime(dir: &std::path::Path, desired: WireDesired) -> Runtime {
        Runtime {
            state_dir: dir.to_path_buf(),
            ctx: ConvergeCtx {
                policy: Arc::new(Policy::new(&[dir.to_path_buf()])),
                blobs: Blobs::new(dir.join("blobs")),
            },
            registry: Registry::new(),
            desired,
            applied: WireDesired::default(),
            reverts: Default::default(),
            offline_since: Arc::new(Mutex::new(None)),
            ledger: BTreeMap::new(),
            versions: Default::default(),
            verdicts: Default::default(),
            statuses: BTreeMap::new(),
            hashes: BTreeMap::new(),
            health: BTreeMap::new(),
            link: Arc::new(Mutex::new(None)),
            last_report: Arc::new(Mutex::new(None)),
            resync: Duration::from_secs(30),
            reconciling_after: RECONCILING_AFTER,
        }
    }

    /// The reports a runtime sent since the last call.
    fn sent(rx: &mut mpsc::Receiver<AgentMessage>) -> Vec<NodeConvergence> {
        std::iter::from_fn(|| rx.try_recv().ok())
            .filter_map(|m| match m.msg {
                Some(Msg::ConvergenceReport(r)) => serde_json::from_str(&r.report_json).ok(),
                _ => None,
            })
            .collect()
    }

    #[tokio::test]
    async fn a_quick_pass_reports_its_result_only_and_a_slow_one_says_reconciling_first() {
        let dir = tempfile::tempdir().unwrap();
        let (f, done) = (dir.path().join("f"), dir.path().join("done"));
        let mut rt = runtime(dir.path(), WireDesired::default());
        let mut policy =
            Policy::new(&[dir.path().to_path_buf()]).with_kinds(&[ResourceKind::ShellJob]);
        policy.allow_shell = true;
        rt.ctx.policy = Arc::new(policy);
        let (tx, mut rx) = mpsc::channel(16);
        *rt.link.lock().unwrap() = Some(tx);
        let state = |generation, resources| WireDesired {
            generation,
            resources,
            ..Default::default()
        };
        // A pass done before the threshold: one report, the result.
        rt.reconciling_after = Duration::from_secs(3600);
        rt.accept(state(1, vec![file("f", &f, "x")]));
        rt.pass().await;
        rt.accept(state(2, vec![file("f", &f, "y")]));
        rt.pass().await;
        let reports = sent(&mut rx);
        let states = |r: &NodeConvergence| -> Vec<ResourceState> {
            r.resources.iter().map(|s| s.state).collect()
        };
        assert_eq!(reports.len(), 2, "one report a pass: {reports:?}");
        assert_eq!(
            (reports[1].observed_generation, states(&reports[1])),
            (2, vec![ResourceState::Ready])
        );
        // A pass still at work past the threshold says which resources it is working on, then the result.
        rt.reconciling_after = Duration::from_millis(100);
        let slow = serde_json::json!({"id": "job", "manifest": "m", "shell_job": {
            "command": format!("sleep 2; touch {}", done.display()), "creates": done}});
        rt.accept(state(3, vec![file("f", &f, "y"), slow]));
        rt.pass().await;
        let reports = sent(&mut rx);
        assert_eq!(reports.len(), 2, "{reports:?}");
        assert_eq!(
            (reports[0].observed_generation, states(&reports[0])),
            (3, vec![ResourceState::Ready, ResourceState::Reconciling])
        );
        assert_eq!(
            states(&reports[1]),
            [ResourceState::Ready, ResourceState::Ready]
        );
        assert!(done.exists());
    }

    #[tokio::test]
    async fn an_unknown_kind_is_reported_and_the_rest_still_converges() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("f");
        let desired = WireDesired {
            generation: 3,
            resources: vec![
                serde_json::json!({"id": "new", "manifest": "m", "volume": {"size": 1}}),
                serde_json::json!({"id": "f", "manifest": "m", "file": {"path": file, "content": "x"}}),
            ],
            ..Default::default()
        };
        let mut rt = runtime(dir.path(), desired);
        rt.pass().await;
        assert_eq!(rt.statuses["new"].state, ResourceState::UnknownKind);
        assert!(
            rt.statuses["new"]
                .error
                .as_deref()
                .unwrap()
                .contains("volume")
        );
        assert_eq!(rt.statuses["f"].state, ResourceState::Ready);
        assert_eq!(std::fs::read_to_string(&file).unwrap(), "x");
        let report = rt.last_report.lock().unwrap().clone().unwrap();
        assert_eq!(report.observed_generation, 3);
        assert!(
            report
                .conditions
                .iter()
                .any(|c| c.kind == ConditionKind::Degraded && c.status)
        );
        // The ledger went to disk, for garbage collection after a restart.
        let ledger: BTreeMap<String, LedgerEntry> =
            read_json(&dir.path().join(LEDGER_FILE)).unwrap();
        assert!(ledger["f"].current().unwrap().created);
    }

    fn file(id: &str, path: &std::path::Path, content: &str) -> Value {
        serde_json::json!({"id": id, "manifest": "m", "file": {"path": path, "content": content}})
    }

    #[tokio::test]
    async fn a_changed_path_deletes_the_old_file_only_if_created_and_takes_the_new_one_over() {
        let dir = tempfile::tempdir().unwrap();
        let (first, second) = (dir.path().join("first"), dir.path().join("second"));
        std::fs::write(&second, "before drover").unwrap();
        let mut rt = runtime(
            dir.path(),
            WireDesired {
                generation: 1,
                resources: vec![file("f", &first, "x")],
                ..Default::default()
            },
        );
        rt.pass().await;
        assert_eq!(std::fs::read_to_string(&first).unwrap(), "x");
        // The path moves onto a file that existed before: the old one (the agent's) goes, the new is taken over.
        rt.accept(WireDesired {
            generation: 2,
            resources: vec![file("f", &second, "y")],
            ..Default::default()
        });
        rt.pass().await;
        assert!(
            !first.exists(),
            "the agent's own file at the old path is removed"
        );
        assert_eq!(std::fs::read_to_string(&second).unwrap(), "y");
        let held = rt.ledger["f"].held.clone();
        assert_eq!(held.len(), 1, "{held:?}");
        assert!(!held[0].created, "taken over, not created");
        // No manifest wants it any more: the taken-over file stays.
        rt.accept(WireDesired {
            generation: 3,
            resources: vec![],
            ..Default::default()
        });
        rt.pass().await;
        assert!(second.exists(), "never deletes what it did not create");
        assert!(rt.ledger.is_empty());
    }

    #[tokio::test]
    async fn health_checks_run_once_their_manifest_is_ready_and_their_result_is_reported() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("f");
        let closed = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .to_string();
        let tcp = |address: &str| vec![serde_json::json!({"tcp": {"address": address}})];
        let refused = serde_json::json!({"id": "out", "manifest": "other", "file": {"path": "/etc/drover-never", "content": "x"}});
        let mut rt = runtime(dir.path(), WireDesired::default());
        rt.accept(WireDesired {
            generation: 1,
            resources: vec![file("f", &f, "x"), refused.clone()],
            health: [
                ("m".to_string(), tcp(&closed)),
                ("other".to_string(), tcp(&closed)),
            ]
            .into(),
            ..Default::default()
        });
        rt.pass().await;
        let report = rt.last_report.lock().unwrap().clone().unwrap();
        // `other` has a refused resource: not ready, not checked.
        assert_eq!(report.health.len(), 1, "{:?}", report.health);
        let health = &report.health[0];
        assert_eq!((health.manifest.as_str(), health.healthy), ("m", false));
        let reason = health.reason.clone().unwrap_or_default();
        assert!(
            reason.starts_with(&format!("tcp {closed}: cannot connect")),
            "{reason}"
        );
        // A new desired state runs them again at once: now something answers.
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let open = listener.local_addr().unwrap().to_string();
        rt.accept(WireDesired {
            generation: 2,
            resources: vec![file("f", &f, "x")],
            health: [("m".to_string(), tcp(&open))].into(),
            ..Default::default()
        });
        rt.pass().await;
        let report = rt.last_report.lock().unwrap().clone().unwrap();
        assert_eq!(report.health.len(), 1);
        assert!(report.health[0].healthy, "{:?}", report.health);
        // A check this agent cannot read fails its manifest's health rather than the whole state.
        let state: WireDesired = serde_json::from_value(serde_json::json!({
            "generation": 3,
            "resources": [file("f", &f, "x")],
            "health": {"m": [{"grpc": {"port": 1}}]},
        }))
        .unwrap();
        rt.accept(state);
        rt.pass().await;
        let report = rt.last_report.lock().unwrap().clone().unwrap();
        assert!(!report.health[0].healthy);
        assert_eq!(rt.statuses["f"].state, ResourceState::Ready);
        // A state without checks reports none, as before checks existed.
        rt.accept(WireDesired {
            generation: 4,
            resources: vec![file("f", &f, "x")],
            ..Default::default()
        });
        rt.pass().await;
        let report = rt.last_report.lock().unwrap().clone().unwrap();
        assert!(report.health.is_empty());
        assert!(!serde_json::to_string(&report).unwrap().contains("health"));
    }

    #[tokio::test]
    async fn a_node_without_its_server_whose_new_revision_fails_its_checks_goes_back_and_says_so() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("f");
        let closed = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .to_string();
        let mut new = file("f", &f, "new");
        new["manifest"] = "web".into();
        let state = |generation: u64, revision: u64| -> WireDesired {
            serde_json::from_value(serde_json::json!({
                "generation": generation,
                "resources": [new.clone()],
                "health": {"web": [{"tcp": {"address": closed.clone()}}]},
                "fallback": {"web": {
                    "revision": revision, "previous_revision": 6,
                    "resources": [{"id": "f", "file": {"path": f.display().to_string(), "content": "old"}}],
                }},
            }))
            .unwrap()
        };
        let mut rt = runtime(dir.path(), WireDesired::default());
        rt.accept(state(2, 7));
        // Connected: the failing check is for the server to judge; the node stays.
        assert!(!rt.pass().await);
        assert_eq!(std::fs::read_to_string(&f).unwrap(), "new");
        // Gone only a moment: it stays too.
        *rt.offline_since.lock().unwrap() = Some(Instant::now());
        assert!(!rt.pass().await);
        // Gone longer than FALLBACK_AFTER: it goes back, and the next pass applies the previous revision.
        let long_ago = Instant::now().checked_sub(fallback::FALLBACK_AFTER * 2);
        *rt.offline_since.lock().unwrap() = long_ago;
        assert!(rt.pass().await, "it decides to go back");
        assert!(!rt.pass().await);
        assert_eq!(std::fs::read_to_string(&f).unwrap(), "old");
        let report = rt.last_report.lock().unwrap().clone().unwrap();
        assert_eq!(report.self_reverted.len(), 1, "{report:?}");
        let back = &report.self_reverted[0];
        assert_eq!(
            (
                back.manifest.as_str(),
                back.revision,
                back.previous_revision
            ),
            ("web", 7, 6)
        );
        assert!(back.reason.contains(&closed), "{}", back.reason);
        assert_eq!(report.observed_generation, 2);
        // Kept across a restart, and while the server rolls out the same revision.
        assert_eq!(fallback::load(dir.path()).len(), 1);
        rt.accept(state(3, 7));
        assert!(!rt.pass().await);
        assert_eq!(std::fs::read_to_string(&f).unwrap(), "old");
        // Another revision of the manifest: the revert ends, the node runs what the server says.
        *rt.offline_since.lock().unwrap() = None;
        rt.accept(state(4, 8));
        assert!(!rt.pass().await);
        assert_eq!(std::fs::read_to_string(&f).unwrap(), "new");
        assert!(
            rt.last_report
                .lock()
                .unwrap()
                .clone()
                .unwrap()
                .self_reverted
                .is_empty()
        );
        assert!(fallback::load(dir.path()).is_empty());
    }

    #[tokio::test]
    async fn the_policy_refuses_before_any_kind_runs_and_names_the_rule() {
        let dir = tempfile::tempdir().unwrap();
        let marker = dir.path().join("ran");
        let desired = WireDesired {
            generation: 1,
            resources: vec![
                serde_json::json!({"id": "job", "manifest": "m", "shell_job": {"command": format!("touch {}", marker.display()), "unless": format!("touch {}", marker.display())}}),
                serde_json::json!({"id": "out", "manifest": "m", "file": {"path": "/etc/drover-never", "content": "x"}}),
            ],
            ..Default::default()
        };
        let mut rt = runtime(dir.path(), desired.clone());
        rt.pass().await;
        let job = &rt.statuses["job"];
        assert_eq!(job.state, ResourceState::Refused);
        assert_eq!(job.details["rule"], "allow-kind");
        assert!(job.retry_at.is_none(), "a refusal is final, not retried");
        assert!(!marker.exists(), "not even the guard ran");
        assert_eq!(rt.statuses["out"].details["rule"], "allow-path");
        assert!(!std::path::Path::new("/etc/drover-never").exists());
        let plan = rt.plan(&desired).await;
        assert!(
            plan.iter().all(|i| i.action == PlanAction::Refuse),
            "{plan:?}"
        );
        assert!(!marker.exists());
        let report = rt.last_report.lock().unwrap().clone().unwrap();
        assert!(
            report
                .conditions
                .iter()
                .any(|c| c.kind == ConditionKind::Degraded && c.status)
        );
    }
}

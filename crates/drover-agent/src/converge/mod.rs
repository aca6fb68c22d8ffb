//! Convergence: the agent makes the node match the last desired state it received, keeps doing so while
//! the server is away and across its own restarts, and reports where each resource stands.
//!
//! Each kind has a reconciler, a plain async function from the desired resource to an outcome (observe,
//! then change only what differs), and a delete. This runtime owns the rest: the persisted desired state,
//! the ledger of what this agent owns (for garbage collection across restarts), per-resource backoff,
//! periodic re-observation that catches drift, and reporting.

mod blobs;
mod container;
mod file;
mod shell_job;
mod unit;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use chrono::{DateTime, Utc};
use drover_proto::v1::{self, AgentMessage, agent_message::Msg};
use drover_types::manifest::{
    Condition, Conflict, DriftEvent, Kind, NodeConvergence, PlanItem, Resource, ResourceState,
    ResourceStatus,
};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use sha2::{Digest, Sha256};
use tokio::sync::mpsc;

use crate::policy::Policy;
pub use blobs::{Blobs, Fetcher};

/// What reconcilers may touch, from the node's own policy, and where content comes from.
#[derive(Clone)]
pub struct ConvergeCtx {
    pub policy: Arc<Policy>,
    pub allow_shell: bool,
    pub blobs: Blobs,
}

/// What a reconcile did.
pub struct Outcome {
    /// What had to change, when the resource did not match (drift, if it matched before).
    pub changed: Option<String>,
    pub details: Value,
    /// Whether this agent created the thing (so garbage collection may delete it).
    pub created: bool,
    /// The handle garbage collection needs (a path, a container name, a unit name).
    pub handle: String,
}

/// A resource this agent applied, persisted so garbage collection is right across restarts.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LedgerEntry {
    pub manifest: String,
    pub kind: String,
    pub handle: String,
    /// Things that existed before the agent took them over are never deleted by it.
    pub created: bool,
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
}

const DESIRED_FILE: &str = "desired.json";
const LEDGER_FILE: &str = "ledger.json";
const BACKOFF_BASE: Duration = Duration::from_secs(10);
const BACKOFF_CAP: Duration = Duration::from_secs(300);
const DRIFT_KEPT: usize = 10;

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

fn spec_hash(r: &Value) -> String {
    hex::encode(Sha256::digest(r.to_string().as_bytes()))
}

/// The converger's handle: give it desired states, tell it where to report.
/// What the runtime is told.
enum Command {
    Desired(WireDesired),
    Plan(WireDesired, tokio::sync::oneshot::Sender<Vec<PlanItem>>),
}

#[derive(Clone)]
pub struct Converger {
    updates: mpsc::Sender<Command>,
    link: Arc<Mutex<Option<mpsc::Sender<AgentMessage>>>>,
    last_report: Arc<Mutex<Option<NodeConvergence>>>,
}

impl Converger {
    /// Starts the loop, first enforcing whatever desired state was persisted before a restart.
    pub fn start(state_dir: PathBuf, ctx: ConvergeCtx, resync: Duration) -> Self {
        let (updates, rx) = mpsc::channel(8);
        let link = Arc::new(Mutex::new(None));
        let last_report = Arc::new(Mutex::new(None));
        let runtime = Runtime {
            desired: read_json(&state_dir.join(DESIRED_FILE)).unwrap_or_default(),
            ledger: read_json(&state_dir.join(LEDGER_FILE)).unwrap_or_default(),
            state_dir,
            ctx,
            statuses: BTreeMap::new(),
            hashes: BTreeMap::new(),
            link: link.clone(),
            last_report: last_report.clone(),
            resync,
        };
        tokio::spawn(runtime.run(rx));
        Self {
            updates,
            link,
            last_report,
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
        let report = lock(&self.last_report).clone();
        if let Some(r) = report {
            let _ = tx.send(report_message(&r)).await;
        }
    }

    pub fn disconnected(&self) {
        *lock(&self.link) = None;
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
                kind: String::new(),
                action: "fail".into(),
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
    desired: WireDesired,
    ledger: BTreeMap<String, LedgerEntry>,
    statuses: BTreeMap<String, ResourceStatus>,
    /// Spec hash each status was reached with, to tell drift from a change of spec.
    hashes: BTreeMap<String, String>,
    link: Arc<Mutex<Option<mpsc::Sender<AgentMessage>>>>,
    last_report: Arc<Mutex<Option<NodeConvergence>>>,
    resync: Duration,
}

impl Runtime {
    async fn run(mut self, mut updates: mpsc::Receiver<Command>) {
        let mut due = true;
        loop {
            if due {
                self.pass().await;
            }
            let wait = self.next_wake();
            due = tokio::select! {
                command = updates.recv() => match command {
                    Some(Command::Desired(d)) => { self.accept(d); true }
                    Some(Command::Plan(d, reply)) => { let _ = reply.send(self.plan(&d).await); false }
                    None => return,
                },
                _ = tokio::time::sleep(wait) => true,
            };
        }
    }

    /// What a pass over `desired` would do, changing nothing.
    async fn plan(&self, desired: &WireDesired) -> Vec<PlanItem> {
        let mut items = Vec::new();
        let mut wanted = std::collections::BTreeSet::new();
        for raw in &desired.resources {
            let (id, _, resource) = parse_resource(raw);
            wanted.insert(id.clone());
            let item = match resource {
                Err(e) => PlanItem {
                    id,
                    kind: "unknown".into(),
                    action: "fail".into(),
                    detail: e,
                },
                Ok(r) => match run_kind(&r, &self.ctx, &spec_hash(raw), true).await {
                    Ok(o) => PlanItem {
                        kind: r.kind_name().into(),
                        action: match (&o.changed, o.created) {
                            (None, _) => "none".into(),
                            (Some(_), true) => "create".into(),
                            (Some(_), false) => "update".into(),
                        },
                        detail: o.changed.unwrap_or_default(),
                        id,
                    },
                    Err(e) => PlanItem {
                        id,
                        kind: r.kind_name().into(),
                        action: "fail".into(),
                        detail: e,
                    },
                },
            };
            items.push(item);
        }
        for c in &desired.conflicts {
            items.push(PlanItem {
                id: c.id.clone(),
                kind: "unknown".into(),
                action: "fail".into(),
                detail: format!("conflict between {}", c.manifests.join(", ")),
            });
        }
        for (id, entry) in self.ledger.iter().filter(|(id, _)| !wanted.contains(*id)) {
            let action = if entry.created { "delete" } else { "none" };
            items.push(PlanItem {
                id: id.clone(),
                kind: entry.kind.clone(),
                action: action.into(),
                detail: format!("no manifest wants {}", entry.handle),
            });
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
                    .map(|r| r.kind_name())
                    .unwrap_or("unknown");
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

    /// One pass: reconcile every due resource, collect what is no longer desired, report.
    async fn pass(&mut self) {
        let now = Utc::now();
        let mut wanted = std::collections::BTreeSet::new();
        let conflicted: std::collections::BTreeSet<String> = self
            .desired
            .conflicts
            .iter()
            .map(|c| c.id.clone())
            .collect();
        let resources = self.desired.resources.clone();
        // Resources whose spec is new or changed show as Reconciling while the pass works on them.
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
        if touched {
            self.report().await;
        }
        for raw in &resources {
            let (id, manifest, resource) = parse_resource(raw);
            wanted.insert(id.clone());
            let resource = match resource {
                Ok(r) => r,
                Err(e) => {
                    self.set(
                        &id,
                        &manifest,
                        "unknown",
                        ResourceState::UnknownKind,
                        Value::Null,
                        Some(e),
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
        for c in self.desired.conflicts.clone() {
            let msg = format!(
                "manifests {} all give this resource; none is applied until one stops",
                c.manifests.join(", ")
            );
            self.set(
                &c.id,
                &c.manifests.join(","),
                "unknown",
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
            let result = if entry.created {
                delete(&entry, &self.ctx).await
            } else {
                Ok(())
            };
            match result {
                Ok(()) => {
                    tracing::info!(resource = %id, kind = %entry.kind, "removed a resource no manifest wants");
                    self.ledger.remove(&id);
                    self.save_ledger();
                }
                Err(e) => {
                    tracing::warn!(resource = %id, "cannot remove a resource no manifest wants: {e}")
                }
            }
        }
        let keep: std::collections::BTreeSet<&String> =
            wanted.iter().chain(conflicted.iter()).collect();
        self.statuses.retain(|id, _| keep.contains(id));
        self.report().await;
    }

    async fn reconcile(
        &mut self,
        resource: &Resource,
        manifest: &str,
        hash: &str,
        previous: Option<ResourceStatus>,
    ) {
        let id = resource.id.clone();
        let kind = resource.kind_name();
        let result = run_kind(resource, &self.ctx, hash, false).await;
        let same_spec = self.hashes.get(&id).map(String::as_str) == Some(hash);
        self.hashes.insert(id.clone(), hash.to_string());
        match result {
            Ok(outcome) => {
                let entry = LedgerEntry {
                    manifest: manifest.to_string(),
                    kind: kind.to_string(),
                    handle: outcome.handle.clone(),
                    created: outcome.created || self.ledger.get(&id).is_some_and(|e| e.created),
                };
                if self.ledger.get(&id) != Some(&entry) {
                    self.ledger.insert(id.clone(), entry);
                    self.save_ledger();
                }
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
                status.error = Some(error);
                status.attempts = attempts;
                status.retry_at = Some(retry_at);
                status.drift = previous.map(|p| p.drift).unwrap_or_default();
                self.statuses.insert(id, status);
            }
        }
    }

    fn set(
        &mut self,
        id: &str,
        manifest: &str,
        kind: &str,
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
        let resources: Vec<ResourceStatus> = self.statuses.values().cloned().collect();
        let report = node_convergence(self.desired.generation, resources);
        let changed = lock(&self.last_report).as_ref() != Some(&report);
        if !changed {
            return;
        }
        *lock(&self.last_report) = Some(report.clone());
        let tx = lock(&self.link).clone();
        if let Some(tx) = tx {
            let _ = tx.send(report_message(&report)).await;
        }
    }
}

/// The report for these statuses at this generation, with its Ready / Reconciling / Degraded conditions.
pub fn node_convergence(generation: u64, resources: Vec<ResourceStatus>) -> NodeConvergence {
    let any = |s: ResourceState| resources.iter().any(|r| r.state == s);
    let degraded = any(ResourceState::Failed)
        || any(ResourceState::UnknownKind)
        || any(ResourceState::Conflict);
    let reconciling = any(ResourceState::Pending) || any(ResourceState::Reconciling);
    let failed: Vec<&str> = resources
        .iter()
        .filter(|r| r.state != ResourceState::Ready)
        .map(|r| r.id.as_str())
        .collect();
    let conditions = vec![
        Condition {
            kind: "Ready".into(),
            status: !degraded && !reconciling,
            message: String::new(),
        },
        Condition {
            kind: "Reconciling".into(),
            status: reconciling,
            message: String::new(),
        },
        Condition {
            kind: "Degraded".into(),
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
        reported_at: None,
    }
}

/// Dispatches to the kind's reconciler; `dry` only observes and says what it would change.
async fn run_kind(
    resource: &Resource,
    ctx: &ConvergeCtx,
    hash: &str,
    dry: bool,
) -> Result<Outcome, String> {
    match resource.kind() {
        Some(Kind::File(spec)) => file::reconcile(spec, ctx, dry).await,
        Some(Kind::ShellJob(spec)) => shell_job::reconcile(spec, ctx, dry).await,
        Some(Kind::Container(spec)) => container::reconcile(&resource.id, spec, hash, dry).await,
        Some(Kind::SystemdUnit(spec)) => unit::reconcile(spec, dry).await,
        None => Err("no kind".to_string()),
    }
}

/// Splits a desired resource as it travels into its id, its manifest's name and the resource itself.
pub fn parse_resource(raw: &Value) -> (String, String, Result<Resource, String>) {
    let id = raw["id"].as_str().unwrap_or_default().to_string();
    let manifest = raw["manifest"].as_str().unwrap_or_default().to_string();
    // The manifest's name travels beside the resource's own fields.
    let mut fields = raw.clone();
    if let Some(obj) = fields.as_object_mut() {
        obj.remove("manifest");
    }
    let resource = serde_json::from_value(fields)
        .map_err(|e| format!("this agent does not understand this resource: {e}"));
    (id, manifest, resource)
}

async fn delete(entry: &LedgerEntry, ctx: &ConvergeCtx) -> Result<(), String> {
    match entry.kind.as_str() {
        "file" => file::delete(&entry.handle, ctx).await,
        "container" => container::delete(&entry.handle).await,
        "systemd_unit" => unit::delete(&entry.handle).await,
        // A shell job cannot be undone; forgetting it is all there is.
        _ => Ok(()),
    }
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
                allow_shell: false,
                blobs: Blobs::new(dir.join("blobs")),
            },
            desired,
            ledger: BTreeMap::new(),
            statuses: BTreeMap::new(),
            hashes: BTreeMap::new(),
            link: Arc::new(Mutex::new(None)),
            last_report: Arc::new(Mutex::new(None)),
            resync: Duration::from_secs(30),
        }
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
            conflicts: vec![],
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
                .any(|c| c.kind == "Degraded" && c.status)
        );
        // The ledger went to disk, for garbage collection after a restart.
        let ledger: BTreeMap<String, LedgerEntry> =
            read_json(&dir.path().join(LEDGER_FILE)).unwrap();
        assert!(ledger["f"].created);
    }
}

//! Rollouts: a changed manifest with a `rollout:` policy reaches its nodes wave by wave. The rollout is a
//! document in the store (`drover_types::rollout::Rollout`); which nodes have the new revision follows from
//! it (`Rollout::releases`), and every desired-state computation asks it (`RolloutView`), so a node not yet
//! in a wave, or in a reverted one, keeps the previous revision. The leader drives each rollout once a
//! tick (`Rollouts::drive_rollouts`): it judges the wave under way from the nodes' reports and moves it on,
//! bakes it, pauses it or reverts it, and writes the document again. A server that restarts, or a new
//! leader, goes on from the document.

use std::borrow::Cow;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use chrono::Utc;
use drover_types::audit::AuditAction;
use drover_types::manifest::{ApplyManifest, StoredManifest};
use drover_types::outcome::NodeJudging;
use drover_types::rollout::{
    Completed, FailingNode, OnFailure, OnUnreachable, Outcome, Rollout, RolloutCommand,
    RolloutState, RolloutStatus, WaveStatus, plan_waves,
};
use drover_types::{Node, Transport};

use super::{Desired, FleetError};
use crate::store::ConvergenceRow;
use crate::sync::lock;

/// Revisions of each manifest kept (for reverts, `undo` and `history`).
pub const KEPT_REVISIONS: usize = 10;
/// How long a replica computes desired states from a rollout view before reading the store again: the
/// leader's transitions reach the other replicas' computations within this.
const VIEW_TTL: Duration = Duration::from_secs(1);
/// How long a rollout may wait for the apply that started it to give nodes their states before the
/// leader does it (the applying replica went away).
const RECOMPUTE_STALLED: Duration = Duration::from_secs(60);
/// Failing nodes a status lists at most.
const FAILING_SHOWN: usize = 50;

/// The rollouts that decide which revision nodes get, ready for a computation over many nodes.
#[derive(Default)]
pub struct RolloutView {
    rollouts: HashMap<String, ViewEntry>,
}

struct ViewEntry {
    rollout: Rollout,
    waves: HashMap<String, usize>,
    /// The revision nodes keep until released (none: a new manifest, which they do not get yet).
    previous: Option<StoredManifest>,
}

impl RolloutView {
    /// The manifests as `node_id` gets them: a manifest under a rollout that has not released the node
    /// is its previous revision, or absent when it has none.
    pub fn for_node<'a>(
        &self,
        node_id: &str,
        manifests: &'a [StoredManifest],
    ) -> Cow<'a, [StoredManifest]> {
        let held: Vec<&ViewEntry> = manifests
            .iter()
            .filter_map(|m| self.rollouts.get(&m.manifest.name))
            .filter(|e| !e.rollout.releases(node_id, e.waves.get(node_id).copied()))
            .collect();
        if held.is_empty() {
            return Cow::Borrowed(manifests);
        }
        let owned = manifests
            .iter()
            .filter_map(
                |m| match held.iter().find(|e| e.rollout.manifest == m.manifest.name) {
                    None => Some(m.clone()),
                    Some(e) => e.previous.clone(),
                },
            )
            .collect();
        Cow::Owned(owned)
    }
}

impl RolloutView {
    /// The unfinished rollouts (under way or paused) that gave `node_id` their revision, each with the
    /// revision the node held before: what it may go back to on its own.
    pub fn fallbacks<'a>(
        &'a self,
        node_id: &'a str,
    ) -> impl Iterator<Item = (&'a Rollout, &'a StoredManifest)> + 'a {
        self.rollouts.values().filter_map(move |e| {
            let unfinished = matches!(
                e.rollout.state,
                RolloutState::Progressing | RolloutState::Baking | RolloutState::Paused
            );
            let released = e.rollout.releases(node_id, e.waves.get(node_id).copied());
            (unfinished && released)
                .then_some(e.previous.as_ref())
                .flatten()
                .map(|p| (&e.rollout, p))
        })
    }
}

/// The view, read again when older than `VIEW_TTL` or after this replica wrote a rollout.
#[derive(Default)]
pub struct ViewCache(Mutex<Option<(Instant, Arc<RolloutView>)>>);

impl ViewCache {
    fn fresh(&self) -> Option<Arc<RolloutView>> {
        lock(&self.0)
            .as_ref()
            .filter(|(at, _)| at.elapsed() < VIEW_TTL)
            .map(|(_, v)| v.clone())
    }

    fn put(&self, view: Arc<RolloutView>) {
        *lock(&self.0) = Some((Instant::now(), view));
    }

    fn forget(&self) {
        *lock(&self.0) = None;
    }
}

/// A rollout's nodes judged now: each node's outcome and reason, by wave.
struct Judged {
    waves: Vec<WaveStatus>,
    failing: Vec<FailingNode>,
    /// Node ids of the wave under way that could not be reached.
    unreachable: Vec<String>,
}

/// How a node of wave `wave` is judged from its row (taken as connected). Drift counts from the start of
/// the wave under way; a wave that went through is not judged on drift again.
fn judging<'a>(r: &'a Rollout, wave: usize, row: Option<&'a ConvergenceRow>) -> NodeJudging<'a> {
    NodeJudging {
        manifest: &r.manifest,
        revision: r.revision,
        desired_generation: row.map_or(0, |row| row.desired_generation),
        report: row.and_then(|row| row.report.as_ref()),
        connected: true,
        checks: !r.policy.health.is_empty(),
        drift_since: (wave == r.wave).then_some(r.wave_started_at),
    }
}

impl Desired {
    /// The rollouts in force, for a desired-state computation.
    pub(super) async fn rollout_view(&self) -> Result<Arc<RolloutView>, FleetError> {
        if let Some(view) = self.rollout_views.fresh() {
            return Ok(view);
        }
        let mut view = RolloutView::default();
        for rollout in self.store.list_rollouts().await? {
            // A completed rollout without reverted waves gives every node the revision: no entry needed.
            if rollout.state == RolloutState::Complete && rollout.held.is_empty() {
                continue;
            }
            let previous = match rollout.previous_revision {
                Some(g) => self.store.manifest_revision(&rollout.manifest, g).await?,
                None => None,
            };
            let waves = rollout
                .waves_by_node()
                .into_iter()
                .map(|(id, w)| (id.to_string(), w))
                .collect();
            view.rollouts.insert(
                rollout.manifest.clone(),
                ViewEntry {
                    rollout,
                    waves,
                    previous,
                },
            );
        }
        let view = Arc::new(view);
        self.rollout_views.put(view.clone());
        Ok(view)
    }

    /// After an apply changed a manifest: keeps its revisions, and starts a rollout when it has a policy
    /// (one under way for it is replaced; its nodes keep the revision it started from until their wave).
    /// Without a policy, a rollout the manifest had ends: every node gets the revision at once.
    pub(super) async fn revision_applied(
        &self,
        actor: &str,
        stored: &StoredManifest,
        previous: Option<StoredManifest>,
    ) -> Result<Option<Rollout>, FleetError> {
        if let Some(p) = &previous {
            self.store.put_manifest_revision(p, KEPT_REVISIONS).await?;
        }
        self.store
            .put_manifest_revision(stored, KEPT_REVISIONS)
            .await?;
        let name = &stored.manifest.name;
        let replaced = self.store.get_rollout(name).await?;
        let Some(policy) = stored.manifest.rollout.clone() else {
            if replaced.is_some() {
                self.store.delete_rollout(name).await?;
                self.rollout_views.forget();
            }
            return Ok(None);
        };
        // A rollout replaced before it completed says what its nodes keep (never a revision it
        // reverted); otherwise, the revision this apply replaced.
        let previous_revision = match &replaced {
            Some(r) if r.state != RolloutState::Complete => r.kept_revision(),
            _ => previous.as_ref().map(|p| p.generation),
        };
        let targets: Vec<Node> = self
            .nodes
            .nodes()
            .await?
            .into_iter()
            .filter(|n| n.transport.takes_work() && stored.manifest.selects(&n.labels))
            .collect();
        let plan = plan_waves(&policy, &targets);
        let now = Utc::now();
        let rollout = Rollout {
            manifest: name.clone(),
            revision: stored.generation,
            previous_revision,
            state: RolloutState::Progressing,
            policy,
            plan,
            wave: 0,
            wave_started_at: now,
            baking_since: None,
            reverted_waves: Default::default(),
            held: Default::default(),
            in_wave: Default::default(),
            reason: None,
            started_by: actor.to_string(),
            started_at: now,
            updated_at: now,
            recomputing: true,
            completed: None,
        };
        self.store.put_rollout(&rollout).await?;
        self.rollout_views.forget();
        let sizes: Vec<usize> = rollout.plan.waves.iter().map(Vec::len).collect();
        self.access
            .audit(
                actor,
                AuditAction::RolloutStart,
                name,
                serde_json::json!({"revision": rollout.revision, "previous_revision": rollout.previous_revision, "waves": sizes, "covered": rollout.plan.covered}),
            )
            .await;
        tracing::info!(manifest = %name, revision = rollout.revision, waves = ?sizes, "rollout started");
        Ok(Some(rollout))
    }

    /// The apply that started the rollout of `revision` has given every node its desired state: the
    /// rollout is judged from now on, its first wave's time starting now.
    pub(super) async fn rollout_recomputed(
        &self,
        name: &str,
        revision: u64,
    ) -> Result<(), FleetError> {
        let Some(mut r) = self.store.get_rollout(name).await? else {
            return Ok(());
        };
        if !r.recomputing || r.revision != revision {
            return Ok(());
        }
        r.recomputing = false;
        r.wave_started_at = Utc::now();
        r.updated_at = r.wave_started_at;
        self.store.put_rollout(&r).await?;
        self.rollout_views.forget();
        Ok(())
    }

    /// A manifest was deleted: so is its rollout.
    pub(super) async fn manifest_gone(&self, name: &str) -> Result<(), FleetError> {
        if self.store.delete_rollout(name).await? {
            self.rollout_views.forget();
        }
        Ok(())
    }
}

/// The rollouts' service: their state for operators, the leader's driving, and operators' commands. The
/// revisions nodes get are the desired-state service's to compute (`Desired::rollout_view`); this one moves
/// rollouts on and asks it to recompute.
pub struct Rollouts {
    pub(super) desired: Arc<Desired>,
    /// Every rollout as last judged, for `/metrics` scrapes and dashboard refreshes that come often:
    /// judging reads every node of every rollout (`STATUS_TTL`; dropped at each transition here).
    pub(super) statuses: StatusCache,
}

/// How long a judged list of rollouts is served again.
const STATUS_TTL: Duration = Duration::from_secs(2);

#[derive(Default)]
pub struct StatusCache(Mutex<Option<(Instant, Arc<Vec<RolloutStatus>>)>>);

impl Rollouts {
    /// Every rollout, judged (at most `STATUS_TTL` ago).
    pub async fn rollouts(&self) -> Result<Vec<RolloutStatus>, FleetError> {
        let cached = lock(&self.statuses.0)
            .as_ref()
            .filter(|(at, _)| at.elapsed() < STATUS_TTL)
            .map(|(_, s)| s.clone());
        if let Some(statuses) = cached {
            return Ok(statuses.to_vec());
        }
        let rollouts = self.desired.store.list_rollouts().await?;
        let mut statuses = Vec::with_capacity(rollouts.len());
        for r in rollouts {
            statuses.push(self.status_of(&r).await?);
        }
        *lock(&self.statuses.0) = Some((Instant::now(), Arc::new(statuses.clone())));
        Ok(statuses)
    }

    pub async fn rollout_status(&self, name: &str) -> Result<RolloutStatus, FleetError> {
        let rollout = self.rollout(name).await?;
        self.status_of(&rollout).await
    }

    /// A manifest's kept revisions, newest first.
    pub async fn manifest_history(&self, name: &str) -> Result<Vec<StoredManifest>, FleetError> {
        let revisions = self
            .desired
            .store
            .manifest_revisions(name, KEPT_REVISIONS)
            .await?;
        if revisions.is_empty() {
            self.desired.manifest(name).await?;
        }
        Ok(revisions)
    }

    async fn rollout(&self, name: &str) -> Result<Rollout, FleetError> {
        self.desired
            .store
            .get_rollout(name)
            .await?
            .ok_or_else(|| FleetError::RolloutNotFound(name.to_string()))
    }

    async fn status_of(&self, r: &Rollout) -> Result<RolloutStatus, FleetError> {
        let judged = match &r.completed {
            Some(done) => Judged {
                waves: done.waves.clone(),
                failing: done.failing.clone(),
                unreachable: Vec::new(),
            },
            None => self.judge(r, None).await?,
        };
        Ok(RolloutStatus {
            manifest: r.manifest.clone(),
            state: r.state,
            revision: r.revision,
            previous_revision: r.previous_revision,
            wave: r.wave + 1,
            waves: judged.waves,
            covered: r.plan.covered.clone(),
            failing: judged.failing,
            held: r.held.len(),
            reason: r.reason.clone(),
            baking_since: r.baking_since,
            started_by: r.started_by.clone(),
            started_at: r.started_at,
            updated_at: r.updated_at,
        })
    }

    /// Judges a rollout's nodes (only wave `only`'s when given): waves not released yet count as pending.
    async fn judge(&self, r: &Rollout, only: Option<usize>) -> Result<Judged, FleetError> {
        let ids: Vec<String> = match only {
            Some(w) => r.plan.waves.get(w).cloned().unwrap_or_default(),
            None => r.plan.waves.iter().flatten().cloned().collect(),
        };
        let rows: HashMap<String, _> = self
            .desired
            .store
            .convergence_of(Some(&ids))
            .await?
            .into_iter()
            .map(|row| (row.node_id.clone(), row))
            .collect();
        let connected = self.connected(&ids).await?;
        let mut judged = Judged {
            waves: vec![WaveStatus::default(); r.plan.waves.len()],
            failing: Vec::new(),
            unreachable: Vec::new(),
        };
        for (w, wave) in r.plan.waves.iter().enumerate() {
            let status = &mut judged.waves[w];
            status.nodes = wave.len();
            status.reverted = r.reverted_waves.contains(&w);
            if only.is_some_and(|o| o != w) {
                continue;
            }
            for id in wave {
                let row = rows.get(id);
                let (outcome, reason) = if !r.releases(id, Some(w)) {
                    (Outcome::Pending, None)
                } else {
                    NodeJudging {
                        connected: connected.get(id.as_str()).copied().unwrap_or(false),
                        ..judging(r, w, row)
                    }
                    .outcome()
                };
                status.count(outcome);
                if outcome == Outcome::Unreachable && w == r.wave {
                    judged.unreachable.push(id.clone());
                }
                if matches!(outcome, Outcome::ChangeFailed | Outcome::InfraFailed)
                    && judged.failing.len() < FAILING_SHOWN
                {
                    judged.failing.push(FailingNode {
                        node: row.map_or_else(|| id.clone(), |row| row.node_name.clone()),
                        wave: w + 1,
                        outcome,
                        reason,
                    });
                }
            }
        }
        Ok(judged)
    }

    /// Whether each of `ids` is connected (to any replica).
    async fn connected(&self, ids: &[String]) -> Result<HashMap<String, bool>, FleetError> {
        let wanted: std::collections::HashSet<&str> = ids.iter().map(String::as_str).collect();
        Ok(self
            .desired
            .nodes
            .nodes()
            .await?
            .into_iter()
            .filter(|n| wanted.contains(n.id.as_str()))
            .map(|n| (n.id, n.connected && n.transport == Transport::Grpc))
            .collect())
    }

    /// One step of every rollout under way (the leader's tick).
    pub async fn drive_rollouts(&self) -> Result<(), FleetError> {
        for rollout in self.desired.store.list_rollouts().await? {
            if matches!(
                rollout.state,
                RolloutState::Progressing | RolloutState::Baking
            ) {
                let name = rollout.manifest.clone();
                if let Err(e) = self.drive(rollout).await {
                    tracing::warn!(manifest = %name, "cannot drive the rollout: {e}");
                }
            }
        }
        Ok(())
    }

    /// Judges the wave under way and moves the rollout on: trips it (more failures than its budget, once
    /// enough nodes finished), pauses it on an infrastructure failure, bakes a wave whose nodes all
    /// finished (leaving unreachable ones behind at the deadline), and starts the next wave after the bake.
    async fn drive(&self, mut r: Rollout) -> Result<(), FleetError> {
        if r.recomputing {
            // The applying replica is still at it; one that went away left it to the leader.
            let stalled =
                (Utc::now() - r.updated_at).to_std().unwrap_or_default() >= RECOMPUTE_STALLED;
            if !stalled {
                return Ok(());
            }
            self.desired.recompute_all().await?;
            return self
                .desired
                .rollout_recomputed(&r.manifest, r.revision)
                .await;
        }
        let judged = self.judge(&r, Some(r.wave)).await?;
        let Some(wave) = judged.waves.get(r.wave).cloned() else {
            return self.finish(r, RolloutState::Complete, None, "system").await;
        };
        let size = wave.nodes;
        let allowed = r.policy.failures_allowed(size);
        let now = Utc::now();
        let deadline = r.policy.wave_deadline().unwrap_or_default();
        let overdue = (now - r.wave_started_at).to_std().unwrap_or_default() >= deadline;
        if wave.finished() >= r.policy.sample(size) && wave.change_failed > allowed {
            let why = format!(
                "wave {}: {} of {} failed, more than the {} allowed",
                r.wave + 1,
                wave.change_failed,
                size,
                allowed
            );
            return self.trip(r, why).await;
        }
        if wave.infra_failed > 0 {
            let first = judged
                .failing
                .iter()
                .find(|f| f.outcome == Outcome::InfraFailed)
                .and_then(|f| f.reason.clone())
                .unwrap_or_default();
            let why = format!(
                "wave {}: infrastructure failed on {} node(s) ({first}); fix it and resume",
                r.wave + 1,
                wave.infra_failed
            );
            return self
                .finish(r, RolloutState::Paused, Some(why), "system")
                .await;
        }
        if r.state == RolloutState::Progressing && self.release_more(&mut r).await? {
            return Ok(());
        }
        let waiting_for_unreachable = wave.unreachable > 0 && !overdue;
        let done = wave.pending == 0 && !waiting_for_unreachable;
        if overdue && wave.pending > 0 {
            let why = format!(
                "wave {}: {} node(s) did not converge within the wave deadline",
                r.wave + 1,
                wave.pending
            );
            return self.trip(r, why).await;
        }
        match (r.state, done) {
            (RolloutState::Progressing, true) => {
                if r.policy.on_unreachable == OnUnreachable::Hold {
                    r.held.extend(judged.unreachable);
                }
                r.state = RolloutState::Baking;
                r.baking_since = Some(now);
                r.updated_at = now;
                self.save(&r).await?;
                if !r.held.is_empty() {
                    self.desired.recompute_all().await?;
                }
                Ok(())
            }
            (RolloutState::Baking, _) => {
                let bake = r.policy.bake().unwrap_or_default();
                let baked = r
                    .baking_since
                    .is_some_and(|t| (now - t).to_std().unwrap_or_default() >= bake);
                if baked {
                    self.next_wave(r, "system").await
                } else {
                    Ok(())
                }
            }
            _ => Ok(()),
        }
    }

    /// With `max_in_flight`: releases the wave's next nodes while fewer than that many are still at work
    /// (released, not finished). True when it released some (the rollout was saved and nodes recomputed).
    async fn release_more(&self, r: &mut Rollout) -> Result<bool, FleetError> {
        let Some(max) = r.policy.max_in_flight else {
            return Ok(false);
        };
        let wave = r.plan.waves.get(r.wave).cloned().unwrap_or_default();
        if wave.iter().all(|id| r.in_wave.contains(id)) {
            return Ok(false);
        }
        let rows: HashMap<String, _> = self
            .desired
            .store
            .convergence_of(Some(&wave))
            .await?
            .into_iter()
            .map(|row| (row.node_id.clone(), row))
            .collect();
        let at_work = r
            .in_wave
            .iter()
            .filter(|id| {
                let row = rows.get(id.as_str());
                let (outcome, _) = judging(r, r.wave, row).outcome();
                outcome == Outcome::Pending
            })
            .count();
        let room = (max as usize).saturating_sub(at_work);
        let next: Vec<String> = wave
            .into_iter()
            .filter(|id| !r.in_wave.contains(id))
            .take(room)
            .collect();
        if next.is_empty() {
            return Ok(false);
        }
        r.in_wave.extend(next.iter().cloned());
        r.updated_at = Utc::now();
        self.save(r).await?;
        let released: std::collections::HashSet<&str> = next.iter().map(String::as_str).collect();
        self.desired.recompute_some(Some(&released)).await?;
        Ok(true)
    }

    /// A wave failed: what the policy says (pause, or revert the wave or every wave).
    async fn trip(&self, mut r: Rollout, why: String) -> Result<(), FleetError> {
        tracing::warn!(manifest = %r.manifest, "rollout tripped: {why}");
        match r.policy.on_failure {
            OnFailure::Pause => {
                self.finish(r, RolloutState::Paused, Some(why), "system")
                    .await
            }
            OnFailure::RevertWave => {
                r.reverted_waves.insert(r.wave);
                self.finish(r, RolloutState::Reverted, Some(why), "system")
                    .await
            }
            OnFailure::RevertAll => {
                r.reverted_waves.extend(0..=r.wave);
                self.finish(r, RolloutState::Reverted, Some(why), "system")
                    .await
            }
        }
    }

    /// Starts the next wave, or completes the rollout after the last.
    async fn next_wave(&self, mut r: Rollout, actor: &str) -> Result<(), FleetError> {
        if r.wave + 1 >= r.plan.waves.len() {
            return self.finish(r, RolloutState::Complete, None, actor).await;
        }
        r.wave += 1;
        r.in_wave.clear();
        r.state = RolloutState::Progressing;
        r.wave_started_at = Utc::now();
        r.baking_since = None;
        r.reason = None;
        r.updated_at = r.wave_started_at;
        self.save(&r).await?;
        self.desired
            .access
            .audit(
                actor,
                AuditAction::RolloutWave,
                &r.manifest,
                serde_json::json!({"wave": r.wave + 1, "nodes": r.plan.waves.get(r.wave).map_or(0, Vec::len)}),
            )
            .await;
        // Only the new wave's nodes get another state (the others' stay as they are).
        let wave: std::collections::HashSet<&str> = r
            .plan
            .waves
            .get(r.wave)
            .into_iter()
            .flatten()
            .map(String::as_str)
            .collect();
        self.desired.recompute_some(Some(&wave)).await
    }

    /// Moves a rollout to `state` (with why), audits the transition and gives nodes what it releases now.
    async fn finish(
        &self,
        mut r: Rollout,
        state: RolloutState,
        reason: Option<String>,
        actor: &str,
    ) -> Result<(), FleetError> {
        let action = match state {
            RolloutState::Paused => AuditAction::RolloutPause,
            RolloutState::Reverted => AuditAction::RolloutRevert,
            RolloutState::Aborted => AuditAction::RolloutAbort,
            RolloutState::Complete => AuditAction::RolloutComplete,
            RolloutState::Progressing | RolloutState::Baking => AuditAction::RolloutResume,
        };
        if state == RolloutState::Complete {
            let judged = self.judge(&r, None).await?;
            r.completed = Some(Completed {
                waves: judged.waves,
                failing: judged.failing,
            });
        }
        r.state = state;
        r.reason = reason;
        r.baking_since = None;
        r.updated_at = Utc::now();
        self.save(&r).await?;
        self.desired
            .access
            .audit(
                actor,
                action,
                &r.manifest,
                serde_json::json!({"wave": r.wave + 1, "reason": r.reason}),
            )
            .await;
        tracing::info!(manifest = %r.manifest, state = state.as_str(), reason = ?r.reason, "rollout {}", state.as_str());
        self.desired.recompute_all().await
    }

    async fn save(&self, r: &Rollout) -> Result<(), FleetError> {
        self.desired.store.put_rollout(r).await?;
        self.desired.rollout_views.forget();
        *lock(&self.statuses.0) = None;
        Ok(())
    }

    /// An operator's command on a rollout.
    pub async fn rollout_command(
        &self,
        actor: &str,
        name: &str,
        command: RolloutCommand,
    ) -> Result<RolloutStatus, FleetError> {
        let mut r = self.rollout(name).await?;
        let refuse = |why: &str| {
            Err(FleetError::invalid(
                "command",
                format!(
                    "cannot {} the rollout of {name}: it is {} ({why})",
                    command.as_str(),
                    r.state.as_str()
                ),
            ))
        };
        match command {
            RolloutCommand::Pause => match r.state {
                RolloutState::Progressing | RolloutState::Baking => {
                    let why = format!("paused by {actor}");
                    self.finish(r, RolloutState::Paused, Some(why), actor)
                        .await?;
                }
                _ => return refuse("only a rollout under way pauses"),
            },
            RolloutCommand::Resume => match r.state {
                RolloutState::Paused => {
                    r.wave_started_at = Utc::now();
                    self.finish(r, RolloutState::Progressing, None, actor)
                        .await?;
                }
                _ => return refuse("only a paused rollout resumes"),
            },
            RolloutCommand::Abort => match r.state {
                s if s.is_final() => return refuse("it has ended already"),
                _ => {
                    let why = format!("aborted by {actor}");
                    self.finish(r, RolloutState::Aborted, Some(why), actor)
                        .await?;
                }
            },
            RolloutCommand::Promote => match r.state {
                RolloutState::Complete if !r.held.is_empty() => {
                    r.held.clear();
                    // The held nodes take the revision now: judged live again.
                    r.completed = None;
                    self.save(&r).await?;
                    self.desired
                        .access
                        .audit(
                            actor,
                            AuditAction::RolloutWave,
                            name,
                            serde_json::json!({"held": "released"}),
                        )
                        .await;
                    self.desired.recompute_all().await?;
                }
                s if s.is_final() => return refuse("it has ended already"),
                _ => {
                    r.held.clear();
                    self.next_wave(r, actor).await?;
                }
            },
            RolloutCommand::Undo => self.undo(actor, r).await?,
        }
        self.rollout_status(name).await
    }

    /// The whole fleet back to the rollout's previous revision, as a new revision rolled out with the same
    /// policy. A signed manifest needs a newly signed, higher version instead.
    async fn undo(&self, actor: &str, r: Rollout) -> Result<(), FleetError> {
        let Some(previous) = r.previous_revision else {
            return Err(FleetError::invalid(
                "command",
                format!(
                    "the rollout of {} has no previous revision to go back to: delete the manifest instead",
                    r.manifest
                ),
            ));
        };
        let current = self.desired.manifest(&r.manifest).await?;
        if current.signature.is_some() {
            return Err(FleetError::invalid(
                "command",
                "the manifest is signed: apply the previous content as a newly signed, higher version (drover apply --sign-key)",
            ));
        }
        let Some(old) = self
            .desired
            .store
            .manifest_revision(&r.manifest, previous)
            .await?
        else {
            return Err(FleetError::invalid(
                "command",
                format!("revision {previous} of {} is no longer kept", r.manifest),
            ));
        };
        let mut manifest = old.manifest;
        // The version only goes up, and the rollout policy is the one in force now.
        manifest.version = current.manifest.version;
        manifest.rollout = current.manifest.rollout.clone().or(Some(r.policy.clone()));
        self.desired
            .access
            .audit(
                actor,
                AuditAction::RolloutUndo,
                &r.manifest,
                serde_json::json!({"from": r.revision, "to": previous}),
            )
            .await;
        self.desired
            .apply_manifest(
                actor,
                ApplyManifest {
                    manifest,
                    signature: None,
                },
            )
            .await?;
        Ok(())
    }
}

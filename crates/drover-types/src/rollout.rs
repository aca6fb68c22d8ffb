//! A manifest's rollout policy (`rollout:`): the waves a changed manifest reaches the fleet in, how long
//! each wave bakes, what stops it, and the health checks that judge it; and the wave plan, a pure function
//! from the selected nodes to the nodes of each wave. The server drives a rollout; this is its shape.
//!
//! Defaults, chosen for safety (docs/desired-state.md, "Rollouts"): one failure trips a wave
//! (`max_failures: 0`, judged after `min_sample: 1`), a wave bakes 30 s, waits 10 min for its nodes, and a
//! tripped wave pauses the rollout. Waves whose targets stop short of every selected node are followed by
//! an implicit last wave of the rest, so a rollout that completes has reached every node.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::Labels;
use crate::duration::{DurationError, parse_duration_at_most};
use crate::node::Node;

/// Waves a policy may list.
pub const MAX_WAVES: usize = 64;
/// Facets a policy may spread its first wave over.
pub const MAX_SPREAD: usize = 8;
/// Health checks a policy may list.
pub const MAX_HEALTH_CHECKS: usize = 16;
/// The longest bake or wave deadline.
pub const MAX_ROLLOUT_WAIT: Duration = Duration::from_secs(7 * 24 * 3600);
/// A bake when the policy names none.
pub const DEFAULT_BAKE: Duration = Duration::from_secs(30);
/// How long a wave waits for its nodes when the policy names no deadline.
pub const DEFAULT_WAVE_DEADLINE: Duration = Duration::from_secs(600);

/// `rollout:` on a manifest.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct RolloutPolicy {
    /// Cumulative targets, in order (none: one wave of every node).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub waves: Vec<Wave>,
    /// Facets whose every value the fleet has goes into the first wave: `arch`, `os`, `gpu`, `label:KEY`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[cfg_attr(feature = "openapi", schema(value_type = Vec<String>))]
    pub spread_by: Vec<Facet>,
    /// Nodes of a wave changing at once (none: the whole wave).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_in_flight: Option<u32>,
    /// How long a wave's nodes stay converged and healthy before the next wave starts (`30s` unless set).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bake: Option<String>,
    /// How long a wave waits for its nodes to finish (`10m` unless set); unreachable ones are left behind.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub wave_deadline: Option<String>,
    /// Failures a wave tolerates: a count (`2`) or a percent of the wave (`"5%"`). None: 0.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_failures: Option<Budget>,
    /// Nodes of a wave that must have finished before its failures are judged (1 unless set; at most
    /// the wave's size).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub min_sample: Option<u32>,
    #[serde(default, skip_serializing_if = "is_default")]
    pub on_failure: OnFailure,
    #[serde(default, skip_serializing_if = "is_default")]
    pub on_unreachable: OnUnreachable,
    /// Checks every node of a wave runs on itself after converging; all must pass for it to count as
    /// healthy. Signed with the manifest.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub health: Vec<HealthCheck>,
}

fn is_zero(n: &usize) -> bool {
    *n == 0
}

fn is_default<T: Default + PartialEq>(v: &T) -> bool {
    *v == T::default()
}

/// One wave's cumulative target.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(untagged, deny_unknown_fields)]
pub enum Wave {
    /// This many of the selected nodes in all (this wave and those before).
    Count { count: u32 },
    /// This percent of the selected nodes in all, rounded up, at least one.
    Percent { percent: f64 },
    /// The nodes matching this selector, besides those of earlier waves.
    Selector { selector: Labels },
}

// Percents are finite (`validate`), so every wave equals itself.
impl Eq for Wave {}

/// What a wave's nodes are grouped by for the first wave's canaries.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub enum Facet {
    Arch,
    Os,
    /// The model of the node's first GPU (`none` without one).
    Gpu,
    Label(String),
}

impl Facet {
    /// The node's value of this facet; `None` when it has none (an unreported arch, a missing label).
    pub fn of(&self, node: &Node) -> Option<String> {
        match self {
            Facet::Arch => node.capabilities.arch.clone(),
            Facet::Os => node.capabilities.os.clone(),
            Facet::Gpu => Some(
                node.capabilities
                    .gpus
                    .first()
                    .map_or_else(|| "none".to_string(), |g| g.name.clone()),
            ),
            Facet::Label(key) => node.labels.get(key).cloned(),
        }
    }
}

impl TryFrom<String> for Facet {
    type Error = RolloutError;

    fn try_from(s: String) -> Result<Self, Self::Error> {
        match s.as_str() {
            "arch" => Ok(Facet::Arch),
            "os" => Ok(Facet::Os),
            "gpu" => Ok(Facet::Gpu),
            other => match other.strip_prefix("label:") {
                Some(key) if crate::labels::validate_label(key, "x").is_ok() => {
                    Ok(Facet::Label(key.to_string()))
                }
                _ => Err(RolloutError::invalid(
                    "spread_by",
                    format!("{s:?} is not a facet: use arch, os, gpu or label:KEY"),
                )),
            },
        }
    }
}

impl From<Facet> for String {
    fn from(f: Facet) -> String {
        match f {
            Facet::Arch => "arch".into(),
            Facet::Os => "os".into(),
            Facet::Gpu => "gpu".into(),
            Facet::Label(key) => format!("label:{key}"),
        }
    }
}

/// Failures a wave tolerates.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(untagged)]
pub enum Budget {
    Count(u32),
    /// `"5%"`.
    Percent(String),
}

impl Budget {
    /// The failures tolerated in a wave of `size` nodes (a percent rounds down: `5%` of 10 is 0).
    pub fn allowed(&self, size: usize) -> Result<usize, RolloutError> {
        match self {
            Budget::Count(n) => Ok(*n as usize),
            Budget::Percent(p) => {
                let pct = parse_percent(p, "max_failures")?;
                Ok((size as f64 * pct / 100.0).floor() as usize)
            }
        }
    }
}

fn parse_percent(text: &str, field: &str) -> Result<f64, RolloutError> {
    let number = text.trim().strip_suffix('%').unwrap_or(text).trim();
    match number.parse::<f64>() {
        Ok(p) if p.is_finite() && (0.0..=100.0).contains(&p) => Ok(p),
        _ => Err(RolloutError::invalid(
            field,
            format!("{text:?} is not a percent between 0% and 100%"),
        )),
    }
}

/// What a tripped wave does.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "snake_case")]
pub enum OnFailure {
    /// Stop where it is; the nodes changed keep the new revision until someone acts.
    #[default]
    Pause,
    /// Put the tripped wave's nodes back on the previous revision, then stop.
    RevertWave,
    /// Put every node that took the new revision back on the previous one, then stop.
    RevertAll,
}

/// What happens to a node that could not be reached while its wave ran.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "snake_case")]
pub enum OnUnreachable {
    /// It gets the revision when it comes back.
    #[default]
    Proceed,
    /// It keeps the previous revision until someone promotes it.
    Hold,
}

/// A check a node runs on itself; all of a policy's must pass.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema), schema(as = RolloutHealthCheck))]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
pub enum HealthCheck {
    /// An HTTP GET answering `expect_status` (200 unless set).
    Http {
        url: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        expect_status: Option<u16>,
    },
    /// A TCP connection that opens.
    Tcp { address: String },
    /// A command exiting 0, run as the node's policy allows (`--allow-exec` / `--allow-shell`).
    Command(Vec<String>),
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("rollout.{field}: {reason}")]
pub struct RolloutError {
    pub field: String,
    pub reason: String,
}

impl RolloutError {
    fn invalid(field: impl Into<String>, reason: impl Into<String>) -> Self {
        RolloutError {
            field: field.into(),
            reason: reason.into(),
        }
    }
}

impl From<DurationError> for RolloutError {
    fn from(e: DurationError) -> Self {
        RolloutError::invalid("bake", e.to_string())
    }
}

impl RolloutPolicy {
    /// Every field within its range; a policy that passes has a bake, a deadline and a budget.
    pub fn validate(&self) -> Result<(), RolloutError> {
        if self.waves.len() > MAX_WAVES {
            return Err(RolloutError::invalid(
                "waves",
                format!("{} waves; at most {MAX_WAVES}", self.waves.len()),
            ));
        }
        for (i, wave) in self.waves.iter().enumerate() {
            let field = format!("waves[{i}]");
            match wave {
                Wave::Count { count: 0 } => {
                    return Err(RolloutError::invalid(field, "count must be at least 1"));
                }
                Wave::Percent { percent } if !(*percent > 0.0 && *percent <= 100.0) => {
                    return Err(RolloutError::invalid(
                        field,
                        format!("percent {percent} is not above 0 and at most 100"),
                    ));
                }
                Wave::Selector { selector } if selector.is_empty() => {
                    return Err(RolloutError::invalid(
                        field,
                        "a selector wave needs a label",
                    ));
                }
                Wave::Selector { selector } => crate::labels::validate_labels(selector)
                    .map_err(|e| RolloutError::invalid(field, e.to_string()))?,
                _ => {}
            }
        }
        if self.spread_by.len() > MAX_SPREAD {
            return Err(RolloutError::invalid(
                "spread_by",
                format!("at most {MAX_SPREAD} facets"),
            ));
        }
        if self.max_in_flight == Some(0) {
            return Err(RolloutError::invalid("max_in_flight", "must be at least 1"));
        }
        if self.min_sample == Some(0) {
            return Err(RolloutError::invalid("min_sample", "must be at least 1"));
        }
        self.bake()?;
        self.wave_deadline()?;
        if let Some(budget) = &self.max_failures {
            budget.allowed(0)?;
        }
        self.validate_health()
    }

    fn validate_health(&self) -> Result<(), RolloutError> {
        if self.health.len() > MAX_HEALTH_CHECKS {
            return Err(RolloutError::invalid(
                "health",
                format!("at most {MAX_HEALTH_CHECKS} checks"),
            ));
        }
        for (i, check) in self.health.iter().enumerate() {
            let field = format!("health[{i}]");
            let bad = match check {
                HealthCheck::Http { url, .. } => (!(url.starts_with("http://")
                    || url.starts_with("https://")))
                .then_some("url must start with http:// or https://"),
                HealthCheck::Tcp { address } => {
                    (!address.contains(':')).then_some("address must be HOST:PORT")
                }
                HealthCheck::Command(argv) => argv
                    .first()
                    .is_none_or(String::is_empty)
                    .then_some("command needs a program"),
            };
            if let Some(reason) = bad {
                return Err(RolloutError::invalid(field, reason));
            }
        }
        Ok(())
    }

    /// How long each wave bakes.
    pub fn bake(&self) -> Result<Duration, RolloutError> {
        wait(self.bake.as_deref(), DEFAULT_BAKE, "bake")
    }

    /// How long each wave waits for its nodes.
    pub fn wave_deadline(&self) -> Result<Duration, RolloutError> {
        wait(
            self.wave_deadline.as_deref(),
            DEFAULT_WAVE_DEADLINE,
            "wave_deadline",
        )
    }

    /// Failures tolerated in a wave of `size` nodes.
    pub fn failures_allowed(&self, size: usize) -> usize {
        self.max_failures
            .as_ref()
            .and_then(|b| b.allowed(size).ok())
            .unwrap_or(0)
    }

    /// Finished nodes a wave of `size` needs before its failures are judged.
    pub fn sample(&self, size: usize) -> usize {
        (self.min_sample.unwrap_or(1) as usize).min(size).max(1)
    }
}

fn wait(text: Option<&str>, default: Duration, field: &str) -> Result<Duration, RolloutError> {
    match text {
        None => Ok(default),
        Some(t) => parse_duration_at_most(t, MAX_ROLLOUT_WAIT)
            .map_err(|e| RolloutError::invalid(field, e.to_string())),
    }
}

/// Which nodes each wave holds, and the facet values its first wave covers.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WavePlan {
    /// Node ids, wave by wave; each node in exactly one wave.
    pub waves: Vec<Vec<String>>,
    /// Per spread facet (`arch`, `label:site`, ...), the values the first wave covers.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub covered: BTreeMap<String, BTreeSet<String>>,
}

/// Splits `nodes` (the manifest's selected nodes) into the policy's waves: the first wave holds its
/// target and, for each `spread_by` facet, one node of every value the nodes have; each later wave adds
/// nodes until its cumulative target; nodes no wave reached make a last wave. The order within the fleet
/// is the nodes' ids (stable across servers and restarts), so the same fleet gets the same plan.
pub fn plan_waves(policy: &RolloutPolicy, nodes: &[Node]) -> WavePlan {
    let mut order: Vec<&Node> = nodes.iter().collect();
    order.sort_by(|a, b| a.id.cmp(&b.id));
    let total = order.len();
    let mut taken: BTreeSet<&str> = BTreeSet::new();
    let mut waves: Vec<Vec<String>> = Vec::new();
    let mut covered: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    let targets: Vec<&Wave> = policy.waves.iter().collect();
    for (i, wave) in targets.iter().enumerate() {
        let mut this: Vec<String> = Vec::new();
        if i == 0 {
            for facet in &policy.spread_by {
                let seen = covered.entry(String::from(facet.clone())).or_default();
                for node in &order {
                    if let Some(value) = facet.of(node)
                        && seen.insert(value)
                        && taken.insert(&node.id)
                    {
                        this.push(node.id.clone());
                    }
                }
            }
        }
        match wave {
            Wave::Selector { selector } => {
                for node in &order {
                    let matches = selector.iter().all(|(k, v)| node.labels.get(k) == Some(v));
                    if matches && taken.insert(&node.id) {
                        this.push(node.id.clone());
                    }
                }
            }
            Wave::Count { .. } | Wave::Percent { .. } => {
                let target = match wave {
                    Wave::Count { count } => (*count as usize).min(total),
                    Wave::Percent { percent } => {
                        ((total as f64 * percent / 100.0).ceil() as usize).clamp(1, total.max(1))
                    }
                    Wave::Selector { .. } => 0,
                };
                for node in &order {
                    if taken.len() >= target {
                        break;
                    }
                    if taken.insert(&node.id) {
                        this.push(node.id.clone());
                    }
                }
            }
        }
        if !this.is_empty() {
            waves.push(this);
        }
    }
    let rest: Vec<String> = order
        .iter()
        .filter(|n| !taken.contains(n.id.as_str()))
        .map(|n| n.id.clone())
        .collect();
    if !rest.is_empty() {
        waves.push(rest);
    }
    WavePlan { waves, covered }
}

/// Where a rollout stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum RolloutState {
    /// A wave's nodes are taking the revision.
    Progressing,
    /// A wave's nodes all finished; they must stay converged and healthy for `bake`.
    Baking,
    /// Stopped by an operator, a tripped wave (`on_failure: pause`) or an infrastructure failure.
    Paused,
    /// A tripped wave (or every wave) was put back on the previous revision.
    Reverted,
    /// Stopped by an operator for good; nodes keep what they have.
    Aborted,
    /// Every wave went through.
    Complete,
}

impl RolloutState {
    /// Whether the rollout still decides which nodes have the revision (a finished one gives it to all,
    /// or, reverted, to the waves that kept it).
    pub fn is_final(self) -> bool {
        matches!(
            self,
            RolloutState::Aborted | RolloutState::Complete | RolloutState::Reverted
        )
    }

    pub fn as_str(self) -> &'static str {
        match self {
            RolloutState::Progressing => "Progressing",
            RolloutState::Baking => "Baking",
            RolloutState::Paused => "Paused",
            RolloutState::Reverted => "Reverted",
            RolloutState::Aborted => "Aborted",
            RolloutState::Complete => "Complete",
        }
    }
}

/// A manifest's rollout as the server keeps it: the revision, the plan, and which waves have it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Rollout {
    pub manifest: String,
    /// The manifest generation rolled out.
    pub revision: u64,
    /// The generation nodes keep until their wave (none: the manifest is new, and they get nothing).
    pub previous_revision: Option<u64>,
    pub state: RolloutState,
    pub policy: RolloutPolicy,
    pub plan: WavePlan,
    /// The wave under way (an index into `plan.waves`); waves before it went through.
    pub wave: usize,
    pub wave_started_at: DateTime<Utc>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub baking_since: Option<DateTime<Utc>>,
    /// Waves put back on the previous revision.
    #[serde(default, skip_serializing_if = "BTreeSet::is_empty")]
    pub reverted_waves: BTreeSet<usize>,
    /// Nodes kept on the previous revision (unreachable while their wave ran, `on_unreachable: hold`)
    /// until promoted.
    #[serde(default, skip_serializing_if = "BTreeSet::is_empty")]
    pub held: BTreeSet<String>,
    /// With `max_in_flight`: the nodes of the wave under way released so far (the others wait their turn).
    #[serde(default, skip_serializing_if = "BTreeSet::is_empty")]
    pub in_wave: BTreeSet<String>,
    /// Why it is paused, reverted or aborted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    pub started_by: String,
    pub started_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    /// Set while the apply that started it is still giving nodes their desired states: until then a
    /// node's report may predate its revision, so the rollout is not judged.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub recomputing: bool,
    /// Its nodes as judged when it completed: what its status shows from then on (completing lets go
    /// of the nodes' fallbacks, so each takes its desired state once more).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub completed: Option<Completed>,
}

/// A complete rollout's nodes, counted when it completed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Completed {
    pub waves: Vec<WaveStatus>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub failing: Vec<FailingNode>,
}

impl Rollout {
    /// The wave of each node of the plan.
    pub fn waves_by_node(&self) -> std::collections::HashMap<&str, usize> {
        self.plan
            .waves
            .iter()
            .enumerate()
            .flat_map(|(i, ids)| ids.iter().map(move |id| (id.as_str(), i)))
            .collect()
    }

    /// The revision a rollout that replaces this one keeps on the nodes it has not released yet (and goes
    /// back to): this one's previous revision when it stopped short (paused, reverted, aborted) or
    /// released only some of its nodes; its own revision once every node has it (complete, or its last
    /// wave under way), or when it had no previous one (a new manifest: nodes keep what they got rather
    /// than lose it).
    pub fn kept_revision(&self) -> Option<u64> {
        let last_wave = self.wave + 1 >= self.plan.waves.len();
        match self.state {
            RolloutState::Complete => Some(self.revision),
            RolloutState::Progressing | RolloutState::Baking
                if last_wave || self.previous_revision.is_none() =>
            {
                Some(self.revision)
            }
            _ => self.previous_revision,
        }
    }

    /// Whether a node in wave `wave` (`None`: not in the plan, selected since) has the revision.
    pub fn releases(&self, node_id: &str, wave: Option<usize>) -> bool {
        if self.held.contains(node_id) {
            return false;
        }
        match (self.state, wave) {
            // Selected after the plan was made: it joins when the rollout completes.
            (RolloutState::Complete, None) => true,
            (_, None) => false,
            (RolloutState::Complete, Some(w)) => !self.reverted_waves.contains(&w),
            (_, Some(w)) if self.reverted_waves.contains(&w) => false,
            (_, Some(w)) if w == self.wave && self.policy.max_in_flight.is_some() => {
                self.in_wave.contains(node_id)
            }
            (_, Some(w)) => w <= self.wave,
        }
    }
}

/// How one node of a wave did.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    /// Took the revision, every resource of the manifest ready.
    Converged,
    /// The revision failed there: a resource failed or was refused by the node's policy.
    ChangeFailed,
    /// Something around the change failed (a registry or blob fetch timing out or refused, a network
    /// error): the rollout pauses rather than revert.
    InfraFailed,
    /// Not connected and not done: never counted as a failure.
    Unreachable,
    /// Working on it, or not given the revision yet.
    Pending,
}

/// A wave as `drover rollout status` shows it: its nodes counted by outcome.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct WaveStatus {
    pub nodes: usize,
    pub converged: usize,
    pub change_failed: usize,
    pub infra_failed: usize,
    pub unreachable: usize,
    pub pending: usize,
    /// Put back on the previous revision.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub reverted: bool,
}

impl WaveStatus {
    pub fn count(&mut self, outcome: Outcome) {
        match outcome {
            Outcome::Converged => self.converged += 1,
            Outcome::ChangeFailed => self.change_failed += 1,
            Outcome::InfraFailed => self.infra_failed += 1,
            Outcome::Unreachable => self.unreachable += 1,
            Outcome::Pending => self.pending += 1,
        }
    }

    /// Nodes that finished, well or not (what a failure budget is judged on).
    pub fn finished(&self) -> usize {
        self.converged + self.change_failed + self.infra_failed
    }
}

/// A failing node of a rollout, with why.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct FailingNode {
    pub node: String,
    pub wave: usize,
    pub outcome: Outcome,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

/// `GET /api/v1/rollouts/{name}`: a rollout with its waves counted.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct RolloutStatus {
    pub manifest: String,
    #[cfg_attr(feature = "openapi", schema(value_type = String))]
    pub state: RolloutState,
    pub revision: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub previous_revision: Option<u64>,
    /// The wave under way, counted from 1.
    pub wave: usize,
    pub waves: Vec<WaveStatus>,
    /// Per spread facet, the values the first wave covers.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub covered: BTreeMap<String, BTreeSet<String>>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub failing: Vec<FailingNode>,
    /// Nodes kept on the previous revision until promoted (`on_unreachable: hold`).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub held: usize,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub baking_since: Option<DateTime<Utc>>,
    pub started_by: String,
    pub started_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

/// What an operator does to a rollout (`POST /api/v1/rollouts/{name}/{command}`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RolloutCommand {
    Pause,
    Resume,
    Abort,
    /// Skip the bake: the next wave starts now (and held nodes get the revision).
    Promote,
    /// The whole fleet back to the previous revision, itself a rollout.
    Undo,
}

impl RolloutCommand {
    pub fn parse(s: &str) -> Option<Self> {
        serde_json::from_value(serde_json::Value::String(s.to_string())).ok()
    }

    pub fn as_str(self) -> &'static str {
        match self {
            RolloutCommand::Pause => "pause",
            RolloutCommand::Resume => "resume",
            RolloutCommand::Abort => "abort",
            RolloutCommand::Promote => "promote",
            RolloutCommand::Undo => "undo",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node(id: &str, arch: &str, site: &str) -> Node {
        let mut n: Node = serde_json::from_value(serde_json::json!({
            "id": id, "name": id, "status": "Ready", "transport": "grpc",
            "registered_at": "2026-01-01T00:00:00Z", "heartbeat_interval_ms": 1000,
            "connected": true, "capabilities": {"arch": arch}, "labels": {},
        }))
        .unwrap();
        n.labels.insert("site".into(), site.into());
        n
    }

    fn fleet(n: usize) -> Vec<Node> {
        (0..n)
            .map(|i| {
                let arch = match i % 33 {
                    0 => "aarch64",
                    1 => "armv7",
                    _ => "x86_64",
                };
                node(
                    &format!("n{i:05}"),
                    arch,
                    if i % 2 == 0 { "a" } else { "b" },
                )
            })
            .collect()
    }

    fn policy(yaml: &str) -> RolloutPolicy {
        let p: RolloutPolicy = serde_saphyr::from_str(yaml).unwrap();
        p.validate().unwrap();
        p
    }

    #[test]
    fn waves_are_cumulative_targets_and_every_node_is_in_exactly_one() {
        let p = policy("waves: [{count: 1}, {percent: 10}, {percent: 50}]");
        let plan = plan_waves(&p, &fleet(200));
        let sizes: Vec<usize> = plan.waves.iter().map(Vec::len).collect();
        assert_eq!(
            sizes,
            [1, 19, 80, 100],
            "the rest make an implicit last wave"
        );
        let all: BTreeSet<&String> = plan.waves.iter().flatten().collect();
        assert_eq!(all.len(), 200);
        // A percent rounds up, to at least one node.
        let plan = plan_waves(&policy("waves: [{percent: 1}, {percent: 100}]"), &fleet(10));
        assert_eq!(plan.waves[0].len(), 1);
        assert_eq!(plan.waves.len(), 2);
    }

    #[test]
    fn the_first_wave_holds_one_node_of_every_value_of_each_spread_facet() {
        let p = policy("waves: [{count: 1}, {percent: 100}]\nspread_by: [arch, 'label:site']");
        let plan = plan_waves(&p, &fleet(100));
        let first = &plan.waves[0];
        let nodes = fleet(100);
        let archs: BTreeSet<String> = first
            .iter()
            .filter_map(|id| nodes.iter().find(|n| &n.id == id))
            .filter_map(|n| n.capabilities.arch.clone())
            .collect();
        assert_eq!(
            archs,
            ["aarch64", "armv7", "x86_64"].map(String::from).into()
        );
        assert_eq!(plan.covered["arch"].len(), 3);
        assert_eq!(plan.covered["label:site"].len(), 2);
        assert!(first.len() <= 4, "canaries only, no more: {first:?}");
    }

    #[test]
    fn a_selector_wave_takes_the_nodes_it_matches() {
        let p = policy("waves: [{selector: {site: a}}, {percent: 100}]");
        let plan = plan_waves(&p, &fleet(10));
        assert_eq!(plan.waves[0].len(), 5);
        assert_eq!(plan.waves[1].len(), 5);
    }

    #[test]
    fn the_same_fleet_gets_the_same_plan_in_any_order() {
        let p = policy("waves: [{count: 3}, {percent: 50}]\nspread_by: [arch]");
        let mut nodes = fleet(50);
        let a = plan_waves(&p, &nodes);
        nodes.reverse();
        assert_eq!(plan_waves(&p, &nodes), a);
    }

    #[test]
    fn bad_policies_name_their_field() {
        for (yaml, field) in [
            ("waves: [{count: 0}]", "waves[0]"),
            ("waves: [{percent: 0}]", "waves[0]"),
            ("waves: [{percent: 101}]", "waves[0]"),
            ("bake: soon", "bake"),
            ("wave_deadline: '0'", "wave_deadline"),
            ("max_failures: '120%'", "max_failures"),
            ("max_in_flight: 0", "max_in_flight"),
            ("health: [{http: {url: 'ftp://x'}}]", "health[0]"),
            ("health: [{command: []}]", "health[0]"),
        ] {
            let p: RolloutPolicy = serde_saphyr::from_str(yaml).unwrap();
            let e = p.validate().unwrap_err();
            assert_eq!(e.field, field, "{yaml}: {e}");
        }
        assert!(serde_saphyr::from_str::<RolloutPolicy>("spread_by: [colour]").is_err());
        assert!(serde_saphyr::from_str::<RolloutPolicy>("on_failure: explode").is_err());
        assert!(serde_saphyr::from_str::<RolloutPolicy>("wavez: []").is_err());
    }

    #[test]
    fn a_rollout_releases_waves_before_its_own_and_with_max_in_flight_only_the_nodes_let_in() {
        let now = chrono::Utc::now();
        let mut r = Rollout {
            manifest: "web".into(),
            revision: 2,
            previous_revision: Some(1),
            state: RolloutState::Progressing,
            policy: policy("max_in_flight: 1"),
            plan: WavePlan {
                waves: vec![vec!["a".into()], vec!["b".into(), "c".into()]],
                covered: Default::default(),
            },
            wave: 1,
            wave_started_at: now,
            baking_since: None,
            reverted_waves: Default::default(),
            held: Default::default(),
            in_wave: ["b".to_string()].into(),
            reason: None,
            started_by: "admin".into(),
            started_at: now,
            updated_at: now,
            recomputing: false,
            completed: None,
        };
        // Replaced now, on its last wave: the nodes keep its revision; on an earlier one, or stopped
        // short, its previous one; a new manifest's nodes keep what they got.
        assert_eq!(r.kept_revision(), Some(2));
        r.wave = 0;
        assert_eq!(r.kept_revision(), Some(1));
        r.previous_revision = None;
        assert_eq!(r.kept_revision(), Some(2));
        r.previous_revision = Some(1);
        r.wave = 1;
        for stopped in [
            RolloutState::Paused,
            RolloutState::Reverted,
            RolloutState::Aborted,
        ] {
            r.state = stopped;
            assert_eq!(r.kept_revision(), Some(1), "{stopped:?}");
        }
        r.state = RolloutState::Complete;
        assert_eq!(r.kept_revision(), Some(2));
        r.state = RolloutState::Progressing;
        assert!(r.releases("a", Some(0)));
        assert!(r.releases("b", Some(1)));
        assert!(!r.releases("c", Some(1)), "not let in yet");
        assert!(
            !r.releases("new", None),
            "selected after the plan: at the end"
        );
        r.reverted_waves.insert(0);
        assert!(!r.releases("a", Some(0)));
        r.state = RolloutState::Complete;
        r.reverted_waves.clear();
        assert!(r.releases("c", Some(1)) && r.releases("new", None));
        r.held.insert("c".into());
        assert!(!r.releases("c", Some(1)), "held until promoted");
    }

    #[test]
    fn budgets_and_samples_follow_the_wave() {
        let p = policy("max_failures: '5%'\nmin_sample: 10");
        assert_eq!(p.failures_allowed(100), 5);
        assert_eq!(p.failures_allowed(10), 0);
        assert_eq!(p.sample(4), 4, "capped at the wave's size");
        assert_eq!(p.sample(50), 10);
        let p = policy("max_failures: 2");
        assert_eq!(p.failures_allowed(3), 2);
        assert_eq!(
            policy("{}").failures_allowed(1000),
            0,
            "one failure trips by default"
        );
        assert_eq!(policy("{}").bake().unwrap(), DEFAULT_BAKE);
    }
}

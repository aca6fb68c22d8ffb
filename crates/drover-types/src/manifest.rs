//! Manifests: named sets of typed resources for the nodes a label selector chooses, and the status nodes
//! report as they converge.

use std::collections::{BTreeMap, BTreeSet};

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::Labels;
use crate::labels::validate_labels;
use crate::signing::{MANIFEST_CONTEXT, PublicKey, SignError, Signature, canonical_json};

mod names;
pub use names::{ConditionKind, PlanAction, ResourceKind};

/// A manifest as written by an operator.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct Manifest {
    pub name: String,
    /// Nodes whose labels contain all of these (empty: every node).
    #[serde(default)]
    pub selector: Labels,
    /// Only goes up: the server refuses a lower one for a manifest it has, and a pinned node refuses a
    /// signed manifest older than the newest it has seen (no replay of what an operator replaced).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub version: u64,
    pub resources: Vec<Resource>,
    /// How a change reaches the selected nodes: in waves, judged as it goes (`rollout`). None: every
    /// node at once.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rollout: Option<crate::rollout::RolloutPolicy>,
}

fn is_zero(v: &u64) -> bool {
    *v == 0
}

impl Manifest {
    /// What a signature covers: the canonical JSON (RFC 8785) of the name, selector, version and
    /// resources, the same whichever YAML form the manifest was written in.
    /// A rollout's health checks are signed too (a node runs them); the payload names them only when
    /// there are some, so what was signed before rollouts existed still verifies.
    pub fn signed_payload(&self) -> Result<String, SignError> {
        let mut payload = serde_json::json!({
            "name": self.name,
            "selector": self.selector,
            "version": self.version,
            "resources": self.resources,
        });
        if let Some(health) = self.rollout.as_ref().map(|r| &r.health)
            && !health.is_empty()
        {
            payload["health"] = serde_json::json!(health);
        }
        canonical_json(&payload)
    }

    /// Checks `signature` over this manifest by the key it names (any key: the server pins none).
    pub fn check_signature(&self, signature: &Signature) -> Result<(), SignError> {
        signature.verify_self(MANIFEST_CONTEXT, &self.signed_payload()?)
    }
}

/// `POST /api/v1/manifests`: a manifest and, when its operator signed it, the signature.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ApplyManifest {
    #[serde(flatten)]
    pub manifest: Manifest,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub signature: Option<Signature>,
}

// By hand: serde's `flatten` would let unknown fields of the manifest through.
impl<'de> Deserialize<'de> for ApplyManifest {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        use serde::de::Error;
        let mut fields = serde_json::Map::<String, serde_json::Value>::deserialize(d)?;
        let signature = fields
            .remove("signature")
            .map(serde_json::from_value)
            .transpose()
            .map_err(|e| D::Error::custom(format!("signature: {e}")))?;
        let manifest =
            serde_json::from_value(serde_json::Value::Object(fields)).map_err(D::Error::custom)?;
        Ok(Self {
            manifest,
            signature,
        })
    }
}

/// What a node needs to check a signed manifest: the signed payload itself and its signature. The node
/// checks the signature against its pinned keys, then that every resource it is given from this manifest
/// is the one in the payload.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ManifestProof {
    pub manifest: String,
    /// The canonical JSON that was signed (see [`Manifest::signed_payload`]).
    pub payload: String,
    pub signature: Signature,
}

impl ManifestProof {
    /// The signed manifest, once its signature checks out against `pinned`.
    pub fn verify(&self, pinned: &[PublicKey]) -> Result<Manifest, SignError> {
        self.signature
            .verify(pinned, MANIFEST_CONTEXT, &self.payload)?;
        let malformed = |e: serde_json::Error| {
            SignError::Malformed(format!("the signed payload is not a manifest: {e}"))
        };
        let mut payload: serde_json::Value =
            serde_json::from_str(&self.payload).map_err(malformed)?;
        // The rollout's health checks are signed beside the manifest's fields (`signed_payload`).
        if let Some(fields) = payload.as_object_mut() {
            fields.remove("health");
        }
        serde_json::from_value(payload).map_err(malformed)
    }
}

/// One resource: a stable id and exactly one kind.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct Resource {
    pub id: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub file: Option<FileSpec>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub container: Option<ContainerSpec>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub systemd_unit: Option<UnitSpec>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub shell_job: Option<ShellJobSpec>,
}

/// The kinds, for matching.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind<'a> {
    File(&'a FileSpec),
    Container(&'a ContainerSpec),
    SystemdUnit(&'a UnitSpec),
    ShellJob(&'a ShellJobSpec),
}

impl Kind<'_> {
    /// The kind's name.
    pub fn resource_kind(&self) -> ResourceKind {
        match self {
            Kind::File(_) => ResourceKind::File,
            Kind::Container(_) => ResourceKind::Container,
            Kind::SystemdUnit(_) => ResourceKind::SystemdUnit,
            Kind::ShellJob(_) => ResourceKind::ShellJob,
        }
    }
}

impl Resource {
    /// The resource's kind; `None` unless exactly one is set.
    pub fn kind(&self) -> Option<Kind<'_>> {
        let kinds: Vec<Kind<'_>> = [
            self.file.as_ref().map(Kind::File),
            self.container.as_ref().map(Kind::Container),
            self.systemd_unit.as_ref().map(Kind::SystemdUnit),
            self.shell_job.as_ref().map(Kind::ShellJob),
        ]
        .into_iter()
        .flatten()
        .collect();
        match kinds.as_slice() {
            [one] => Some(*one),
            _ => None,
        }
    }

    /// The name of the resource's kind; [`ResourceKind::Unknown`] unless exactly one is set.
    pub fn resource_kind(&self) -> ResourceKind {
        self.kind()
            .map_or(ResourceKind::Unknown, |k| k.resource_kind())
    }

    /// [`Resource::resource_kind`] as text.
    pub fn kind_name(&self) -> &'static str {
        // Never `Other`: a resource's kind is one this build knows, or Unknown.
        self.resource_kind().known_name().unwrap_or_default()
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct FileSpec {
    pub path: String,
    /// Inline content.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub content: Option<String>,
    /// A local file `drover apply` uploads to the server's blob store; replaced by `sha256` on the way.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source: Option<String>,
    /// Content from the server's blob store, by its SHA-256.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sha256: Option<String>,
    /// Octal permissions, like "0644".
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mode: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub owner: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub group: Option<String>,
    /// The file must not exist.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub absent: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "snake_case")]
pub enum PullPolicy {
    Always,
    #[default]
    IfNotPresent,
    Never,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct ContainerSpec {
    pub image: String,
    #[serde(default)]
    pub pull: PullPolicy,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub command: Vec<String>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub env: BTreeMap<String, String>,
    /// `[HOST_IP:]HOST_PORT:CONTAINER_PORT`
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ports: Vec<String>,
    /// `HOST_PATH:CONTAINER_PATH[:ro]`
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub volumes: Vec<String>,
    /// `no`, `always`, `on-failure`, `unless-stopped`
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub restart: Option<String>,
    /// Run by the agent itself inside the container.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub health: Option<HealthCheck>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct HealthCheck {
    pub command: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub interval: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retries: Option<u32>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct UnitSpec {
    /// Unit name, like `myapp.service`.
    pub name: String,
    /// The unit file's text.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub content: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub enabled: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub active: Option<bool>,
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub absent: bool,
}

/// The audited escape hatch: a command with a guard that makes it idempotent.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct ShellJobSpec {
    pub command: String,
    /// Skip when this path exists.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub creates: Option<String>,
    /// Skip when this command succeeds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub unless: Option<String>,
}

/// One validation problem, naming the document, the resource and the field.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[error("manifest {manifest:?}{}: field `{field}`: {reason}", resource.as_ref().map(|r| format!(", resource {r:?}")).unwrap_or_default())]
pub struct ManifestError {
    pub manifest: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resource: Option<String>,
    pub field: String,
    pub reason: String,
}

fn valid_name(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 128
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
}

fn parse_mode(mode: &str) -> Option<u32> {
    (mode.len() <= 5 && !mode.is_empty())
        .then(|| u32::from_str_radix(mode, 8).ok())
        .flatten()
        .filter(|m| *m <= 0o7777)
}

/// The mode of a file spec as a number (validated manifests always parse).
pub fn file_mode(spec: &FileSpec) -> Option<u32> {
    spec.mode.as_deref().and_then(parse_mode)
}

/// The largest manifest version: 2^53-1, the largest integer every JSON reader (a browser, jq) keeps
/// exactly, so a version shown or signed elsewhere is the version stored.
pub const MAX_VERSION: u64 = (1 << 53) - 1;

impl Manifest {
    /// Every problem at once, so an operator fixes a file in one go.
    pub fn validate(&self) -> Result<(), Vec<ManifestError>> {
        let mut errors = Vec::new();
        let mut err = |resource: Option<&str>, field: &str, reason: String| {
            errors.push(ManifestError {
                manifest: self.name.clone(),
                resource: resource.map(str::to_string),
                field: field.to_string(),
                reason,
            })
        };
        if !valid_name(&self.name) {
            err(
                None,
                "name",
                "use 1-128 letters, digits, '-', '_' or '.'".into(),
            );
        }
        if let Err(e) = validate_labels(&self.selector) {
            err(None, "selector", e.to_string());
        }
        if self.version > MAX_VERSION {
            err(
                None,
                "version",
                format!(
                    "{} is above the largest version, {MAX_VERSION} (2^53-1: JSON readers lose precision past it)",
                    self.version
                ),
            );
        }
        let mut ids = BTreeSet::new();
        for (i, r) in self.resources.iter().enumerate() {
            validate_resource(i, r, &mut ids, &mut err);
        }
        if let Some(Err(e)) = self.rollout.as_ref().map(|r| r.validate()) {
            err(None, &format!("rollout.{}", e.field), e.reason);
        }
        if errors.is_empty() {
            Ok(())
        } else {
            Err(errors)
        }
    }

    /// Whether the manifest applies to a node with these labels.
    pub fn selects(&self, labels: &Labels) -> bool {
        self.selector.iter().all(|(k, v)| labels.get(k) == Some(v))
    }
}

/// The checks on one resource of a manifest: its id, then its kind's fields.
fn validate_resource<'a>(
    i: usize,
    r: &'a Resource,
    ids: &mut BTreeSet<&'a str>,
    err: &mut impl FnMut(Option<&str>, &str, String),
) {
    let id = r.id.as_str();
    if !valid_name(id) {
        err(
            Some(id),
            &format!("resources[{i}].id"),
            "use 1-128 letters, digits, '-', '_' or '.'".into(),
        );
    }
    if !ids.insert(id) {
        err(
            Some(id),
            &format!("resources[{i}].id"),
            "duplicate id: ids must be unique in a manifest".into(),
        );
    }
    let Some(kind) = r.kind() else {
        err(
            Some(id),
            &format!("resources[{i}]"),
            format!(
                "give exactly one kind: {}",
                one_of(&ResourceKind::RESOURCES)
            ),
        );
        return;
    };
    match kind {
        Kind::File(f) => validate_file(id, f, err),
        Kind::Container(c) => validate_container(id, c, err),
        Kind::SystemdUnit(u) => validate_unit(id, u, err),
        Kind::ShellJob(s) => validate_shell_job(id, s, err),
    }
}

/// `a, b or c`.
fn one_of(kinds: &[ResourceKind]) -> String {
    match kinds.split_last() {
        Some((last, [])) => last.to_string(),
        Some((last, rest)) => {
            let rest: Vec<&str> = rest.iter().map(ResourceKind::as_str).collect();
            format!("{} or {last}", rest.join(", "))
        }
        None => String::new(),
    }
}

fn validate_file(id: &str, f: &FileSpec, err: &mut impl FnMut(Option<&str>, &str, String)) {
    if !f.path.starts_with('/') {
        err(
            Some(id),
            "file.path",
            format!("{:?} is relative; use an absolute path", f.path),
        );
    }
    let sources = [f.content.is_some(), f.source.is_some(), f.sha256.is_some()]
        .iter()
        .filter(|b| **b)
        .count();
    if f.absent && sources > 0 {
        err(
            Some(id),
            "file.absent",
            "an absent file has no content".into(),
        );
    }
    if !f.absent && sources != 1 {
        err(
            Some(id),
            "file.content",
            "give exactly one of content, source or sha256 (or absent: true)".into(),
        );
    }
    if let Some(m) = &f.mode
        && parse_mode(m).is_none()
    {
        err(
            Some(id),
            "file.mode",
            format!("{m:?} is not an octal mode like \"0644\""),
        );
    }
    if let Some(h) = &f.sha256
        && !(h.len() == 64 && h.bytes().all(|b| b.is_ascii_hexdigit()))
    {
        err(Some(id), "file.sha256", "not a SHA-256 in hex".into());
    }
}

fn validate_container(
    id: &str,
    c: &ContainerSpec,
    err: &mut impl FnMut(Option<&str>, &str, String),
) {
    if c.image.trim().is_empty() {
        err(Some(id), "container.image", "give an image".into());
    }
    if let Some(rp) = &c.restart
        && !matches!(
            rp.as_str(),
            "no" | "always" | "on-failure" | "unless-stopped"
        )
    {
        err(
            Some(id),
            "container.restart",
            format!("{rp:?}: use no, always, on-failure or unless-stopped"),
        );
    }
    for p in &c.ports {
        if parse_port(p).is_none() {
            err(
                Some(id),
                "container.ports",
                format!("{p:?}: use [HOST_IP:]HOST_PORT:CONTAINER_PORT"),
            );
        }
    }
    for v in &c.volumes {
        if !v.starts_with('/') || v.split(':').count() < 2 {
            err(
                Some(id),
                "container.volumes",
                format!("{v:?}: use /HOST/PATH:/CONTAINER/PATH[:ro]"),
            );
        }
    }
    if c.health.as_ref().is_some_and(|h| h.command.is_empty()) {
        err(
            Some(id),
            "container.health.command",
            "give a command".into(),
        );
    }
}

fn validate_unit(id: &str, u: &UnitSpec, err: &mut impl FnMut(Option<&str>, &str, String)) {
    let suffix_ok = [
        ".service", ".timer", ".socket", ".target", ".path", ".mount",
    ]
    .iter()
    .any(|s| u.name.ends_with(s));
    if !suffix_ok || u.name.contains('/') || u.name.starts_with('-') {
        err(
            Some(id),
            "systemd_unit.name",
            format!("{:?} is not a unit name like app.service", u.name),
        );
    }
}

fn validate_shell_job(
    id: &str,
    s: &ShellJobSpec,
    err: &mut impl FnMut(Option<&str>, &str, String),
) {
    if s.command.trim().is_empty() {
        err(Some(id), "shell_job.command", "give a command".into());
    }
    if s.creates.is_none() && s.unless.is_none() {
        err(
            Some(id),
            "shell_job",
            "give a guard, creates: PATH or unless: COMMAND, so the job runs once".into(),
        );
    }
    if s.creates.as_deref().is_some_and(|c| !c.starts_with('/')) {
        err(Some(id), "shell_job.creates", "use an absolute path".into());
    }
}

/// `[HOST_IP:]HOST_PORT:CONTAINER_PORT` -> (host ip, host port, container port).
pub fn parse_port(spec: &str) -> Option<(Option<String>, u16, u16)> {
    let parts: Vec<&str> = spec.rsplitn(3, ':').collect();
    match parts.as_slice() {
        [c, h] => Some((None, h.parse().ok()?, c.parse().ok()?)),
        [c, h, ip] => Some((Some(ip.to_string()), h.parse().ok()?, c.parse().ok()?)),
        _ => None,
    }
}

/// A manifest as stored: with its generation (bumped when its content changes, not when it is only
/// signed again) and its signature, if an operator signed it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct StoredManifest {
    pub generation: u64,
    pub updated_at: DateTime<Utc>,
    #[serde(flatten)]
    pub manifest: Manifest,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub signature: Option<Signature>,
}

/// Answer to `drover apply`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Applied {
    pub name: String,
    pub generation: u64,
    pub changed: bool,
    /// Nodes the manifest selects now and that take manifests: its targets.
    pub nodes: Vec<String>,
    /// Targets not connected now: they converge when they reconnect (`apply --wait` lists them as pending).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub offline: Vec<String>,
    /// HTTP nodes the manifest selects: not targets, as they take no manifests.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub http_nodes: Vec<String>,
    /// The rollout the change started (a manifest with a `rollout:` policy): its plan.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rollout: Option<AppliedRollout>,
}

/// A rollout's plan, as `drover apply` prints it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct AppliedRollout {
    /// Nodes per wave, in order.
    pub waves: Vec<usize>,
    /// Per spread facet, the values the first wave covers.
    #[serde(default, skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    pub covered: std::collections::BTreeMap<String, BTreeSet<String>>,
}

/// A resource in a node's desired state: which manifest gave it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct DesiredResource {
    pub manifest: String,
    #[serde(flatten)]
    pub resource: Resource,
}

/// A node's desired state: every resource of every manifest that selects it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct DesiredState {
    /// Bumped whenever what the node should run changes.
    pub generation: u64,
    pub resources: Vec<DesiredResource>,
    /// Resource ids that more than one manifest gives this node: none of them is applied.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conflicts: Vec<Conflict>,
    /// The signed manifests among those that select the node, for nodes that pin a key (older agents
    /// ignore it).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub signed: Vec<ManifestProof>,
    /// The rollout health checks of each manifest that selects the node and has some: the node runs them
    /// once the manifest's resources are ready and reports the result (older agents ignore it). A node
    /// that pins a key runs only the checks the signed payload carries.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub health: BTreeMap<String, Vec<crate::rollout::HealthCheck>>,
    /// Per manifest whose unfinished rollout gave this node a new revision: the revision it held before,
    /// which the node puts itself back on when it loses the server while the new one fails its health
    /// checks (older agents ignore it). Its absence tells a node that pins a key that the rollout is over.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub fallback: BTreeMap<String, Fallback>,
}

/// The revision a node may go back to on its own during a rollout (see [`DesiredState::fallback`]).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Fallback {
    /// The revision being rolled out (a manifest generation).
    pub revision: u64,
    /// The revision to go back to.
    pub previous_revision: u64,
    /// The previous revision's resources for this node.
    #[serde(default)]
    pub resources: Vec<Resource>,
    /// The previous revision's rollout health checks.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub health: Vec<crate::rollout::HealthCheck>,
    /// The previous revision's signed payload, when it was signed: a node that pins a key takes it only
    /// as the revision it held immediately before.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub signed: Option<ManifestProof>,
}

/// A node put itself back on a manifest's previous revision: it lost the server while the new revision
/// failed its health checks. Reported until the server gives the manifest another revision.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct SelfRevert {
    pub manifest: String,
    /// The revision it left, and the one it went back to.
    pub revision: u64,
    pub previous_revision: u64,
    /// The failing health check.
    pub reason: String,
    pub at: DateTime<Utc>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Conflict {
    pub id: String,
    pub manifests: Vec<String>,
}

/// Computes a node's desired resources from the manifests that select it. Conflicting ids are left out
/// and reported, never decided silently.
pub fn desired_for(
    labels: &Labels,
    manifests: &[Manifest],
) -> (Vec<DesiredResource>, Vec<Conflict>) {
    let mut by_id: BTreeMap<&str, Vec<(&str, &Resource)>> = BTreeMap::new();
    for m in manifests.iter().filter(|m| m.selects(labels)) {
        for r in &m.resources {
            by_id
                .entry(r.id.as_str())
                .or_default()
                .push((m.name.as_str(), r));
        }
    }
    let mut resources = Vec::new();
    let mut conflicts = Vec::new();
    for (id, owners) in by_id {
        match owners.as_slice() {
            [(manifest, r)] => resources.push(DesiredResource {
                manifest: manifest.to_string(),
                resource: (*r).clone(),
            }),
            _ => conflicts.push(Conflict {
                id: id.to_string(),
                manifests: owners.iter().map(|(m, _)| m.to_string()).collect(),
            }),
        }
    }
    (resources, conflicts)
}

/// What a node would do about one resource (a dry run).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct PlanItem {
    pub id: String,
    #[cfg_attr(feature = "openapi", schema(value_type = String))]
    pub kind: ResourceKind,
    /// `create`, `update`, `delete`, `none`, `fail`, `refuse` (the node's policy refuses it)
    #[cfg_attr(feature = "openapi", schema(value_type = String))]
    pub action: PlanAction,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub detail: String,
}

/// One node's answer to a dry run.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct NodePlan {
    pub node: String,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub plan: Vec<PlanItem>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// Where one resource stands on a node.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub enum ResourceState {
    Pending,
    Reconciling,
    Ready,
    Failed,
    /// This agent does not know the resource's kind.
    UnknownKind,
    /// Two manifests give this id; neither is applied.
    Conflict,
    /// The node's own policy refuses it; `error` says why and `details.rule` names the rule. Final until the
    /// spec or the node's policy changes: it is not retried with backoff.
    Refused,
}

/// Every resource state, from the best to the worst: a node's state for a manifest is the worst of its
/// resources' (the dashboard's and `GET /api/v1/status?state=` count and filter nodes by it).
pub const RESOURCE_STATES: [ResourceState; 7] = [
    ResourceState::Ready,
    ResourceState::Pending,
    ResourceState::Reconciling,
    ResourceState::Failed,
    ResourceState::UnknownKind,
    ResourceState::Conflict,
    ResourceState::Refused,
];

impl ResourceState {
    /// A state that stays until something changes (the spec, the node's policy or a conflicting manifest):
    /// nothing converges by waiting.
    pub fn is_final_failure(self) -> bool {
        matches!(self, Self::UnknownKind | Self::Conflict | Self::Refused)
    }

    /// The name as serialized.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Pending => "Pending",
            Self::Reconciling => "Reconciling",
            Self::Ready => "Ready",
            Self::Failed => "Failed",
            Self::UnknownKind => "UnknownKind",
            Self::Conflict => "Conflict",
            Self::Refused => "Refused",
        }
    }

    /// A state by its name, in any case.
    pub fn parse(s: &str) -> Option<Self> {
        RESOURCE_STATES
            .into_iter()
            .find(|r| r.as_str().eq_ignore_ascii_case(s))
    }

    /// The worse of two states (see [`RESOURCE_STATES`]).
    pub fn worst(self, other: Self) -> Self {
        let rank = |s: Self| RESOURCE_STATES.iter().position(|r| *r == s).unwrap_or(0);
        if rank(other) > rank(self) {
            other
        } else {
            self
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct DriftEvent {
    pub at: DateTime<Utc>,
    pub what: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct ResourceStatus {
    pub id: String,
    pub manifest: String,
    #[cfg_attr(feature = "openapi", schema(value_type = String))]
    pub kind: ResourceKind,
    pub state: ResourceState,
    /// Kind-specific facts: file sha256; container id, state, restarts, health; unit active/sub state.
    #[serde(default, skip_serializing_if = "serde_json::Value::is_null")]
    pub details: serde_json::Value,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    #[serde(default)]
    pub attempts: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retry_at: Option<DateTime<Utc>>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub drift: Vec<DriftEvent>,
}

impl ResourceStatus {
    /// A status with nothing but its identity and state.
    pub fn new(
        id: &str,
        manifest: &str,
        kind: impl Into<ResourceKind>,
        state: ResourceState,
    ) -> Self {
        Self {
            id: id.to_string(),
            manifest: manifest.to_string(),
            kind: kind.into(),
            state,
            details: serde_json::Value::Null,
            error: None,
            attempts: 0,
            retry_at: None,
            drift: Vec::new(),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Condition {
    /// Ready, Reconciling, Degraded
    #[serde(rename = "type")]
    #[cfg_attr(feature = "openapi", schema(value_type = String))]
    pub kind: ConditionKind,
    pub status: bool,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub message: String,
}

/// What a node reports about its convergence.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct NodeConvergence {
    pub observed_generation: u64,
    pub conditions: Vec<Condition>,
    pub resources: Vec<ResourceStatus>,
    /// Per manifest with rollout health checks, how they went when the node last ran them (none yet:
    /// its resources are not all ready, or the agent predates health checks).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub health: Vec<ManifestHealth>,
    /// Manifests the node put back on their previous revision on its own (see [`SelfRevert`]).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub self_reverted: Vec<SelfRevert>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reported_at: Option<DateTime<Utc>>,
}

/// How a manifest's rollout health checks went on a node: all must pass.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct ManifestHealth {
    pub manifest: String,
    pub healthy: bool,
    /// Why not: the first failing check and what it found.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

/// A node's line in `drover status`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct NodeStatusReport {
    pub node_id: String,
    pub node_name: String,
    pub desired_generation: u64,
    #[serde(flatten)]
    pub convergence: NodeConvergence,
}

impl NodeStatusReport {
    /// Converged: the node reports the generation it was given and every resource is Ready.
    pub fn converged(&self) -> bool {
        self.convergence.observed_generation == self.desired_generation
            && self
                .convergence
                .resources
                .iter()
                .all(|r| r.state == ResourceState::Ready)
    }

    /// Whether the node has its current desired state with every resource of `manifest` ready (what
    /// `apply --wait` asks of the manifest it applied: another manifest's resources do not count).
    pub fn converged_for(&self, manifest: &str) -> bool {
        self.convergence.observed_generation == self.desired_generation
            && self
                .convergence
                .resources
                .iter()
                .filter(|r| r.manifest == manifest)
                .all(|r| r.state == ResourceState::Ready)
    }

    /// [`Self::stuck`], of `manifest`'s resources only.
    pub fn stuck_for(&self, manifest: &str) -> Vec<&ResourceStatus> {
        let mut stuck = self.stuck();
        stuck.retain(|r| r.manifest == manifest);
        stuck
    }

    /// Resources that will not converge by waiting, at the generation the node was given: refused by the
    /// node's policy, of a kind it does not know, or in conflict.
    pub fn stuck(&self) -> Vec<&ResourceStatus> {
        if self.convergence.observed_generation != self.desired_generation {
            return Vec::new();
        }
        self.convergence
            .resources
            .iter()
            .filter(|r| r.state.is_final_failure())
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn manifest(yaml_like: serde_json::Value) -> Manifest {
        serde_json::from_value(yaml_like).unwrap()
    }

    #[test]
    fn validation_names_manifest_resource_and_field() {
        let m = manifest(serde_json::json!({
            "name": "web",
            "resources": [
                {"id": "a", "file": {"path": "etc/motd", "content": "x", "mode": "999"}},
                {"id": "a", "shell_job": {"command": "true"}},
                {"id": "b"}
            ]
        }));
        let errors = m.validate().unwrap_err();
        let fields: Vec<&str> = errors.iter().map(|e| e.field.as_str()).collect();
        assert!(
            fields.contains(&"file.path") && fields.contains(&"file.mode"),
            "{errors:?}"
        );
        assert!(
            fields.contains(&"resources[1].id")
                && fields.contains(&"shell_job")
                && fields.contains(&"resources[2]")
        );
        assert!(
            errors[0]
                .to_string()
                .contains("manifest \"web\", resource \"a\"")
        );
        assert!(
            serde_json::from_value::<Manifest>(
                serde_json::json!({"name": "x", "resources": [{"id": "a", "volume": {}}]})
            )
            .is_err()
        );
    }

    #[test]
    fn every_resource_kind_is_a_field_of_a_resource() {
        for kind in ResourceKind::RESOURCES {
            let e = serde_json::from_value::<Resource>(
                serde_json::json!({"id": "a", kind.as_str(): {}}),
            )
            .unwrap_err()
            .to_string();
            assert!(e.contains("missing field"), "{kind}: {e}");
        }
        let m = manifest(serde_json::json!({"name": "web", "resources": [{"id": "a"}]}));
        assert_eq!(
            m.validate().unwrap_err()[0].reason,
            "give exactly one kind: file, container, systemd_unit or shell_job"
        );
    }

    #[test]
    fn a_version_past_two_to_the_53_is_refused_naming_version() {
        let at = |version: u64| {
            manifest(serde_json::json!({"name": "web", "version": version, "resources": []}))
        };
        assert!(at(MAX_VERSION).validate().is_ok());
        let errors = at(u64::MAX).validate().unwrap_err();
        assert_eq!(errors[0].field, "version", "{errors:?}");
    }

    #[test]
    fn conflicts_are_reported_not_decided() {
        let a = manifest(
            serde_json::json!({"name": "a", "resources": [{"id": "motd", "file": {"path": "/x", "content": "a"}}]}),
        );
        let b = manifest(
            serde_json::json!({"name": "b", "selector": {"role": "edge"}, "resources": [{"id": "motd", "file": {"path": "/x", "content": "b"}}, {"id": "other", "file": {"path": "/y", "content": "b"}}]}),
        );
        let edge: Labels = [("role".to_string(), "edge".to_string())].into();
        let (res, conflicts) = desired_for(&edge, &[a.clone(), b.clone()]);
        assert_eq!(
            res.iter()
                .map(|r| r.resource.id.as_str())
                .collect::<Vec<_>>(),
            vec!["other"]
        );
        assert_eq!(conflicts[0].manifests, vec!["a", "b"]);
        let (res, conflicts) = desired_for(&Labels::new(), &[a, b]);
        assert_eq!(res.len(), 1);
        assert!(conflicts.is_empty());
    }

    #[test]
    fn the_signed_payload_is_the_same_whichever_form_the_manifest_was_written_in() {
        let terse = manifest(serde_json::json!({
            "name": "web", "version": 3,
            "resources": [{"id": "app", "container": {"image": "nginx"}}]
        }));
        let verbose = manifest(serde_json::json!({
            "resources": [{"container": {"pull": "if_not_present", "image": "nginx", "env": {}}, "id": "app"}],
            "selector": {}, "version": 3, "name": "web"
        }));
        let payload = terse.signed_payload().unwrap();
        assert_eq!(payload, verbose.signed_payload().unwrap());
        assert_eq!(
            payload,
            r#"{"name":"web","resources":[{"container":{"image":"nginx","pull":"if_not_present"},"id":"app"}],"selector":{},"version":3}"#
        );
        let key = crate::signing::SecretKey::from_seed([3; 32]);
        let signature = key.sign(MANIFEST_CONTEXT, &payload);
        assert_eq!(verbose.check_signature(&signature), Ok(()));
        let proof = ManifestProof {
            manifest: "web".into(),
            payload,
            signature: signature.clone(),
        };
        assert_eq!(proof.verify(&[key.public()]).unwrap(), terse);
        let newer = Manifest {
            version: 4,
            ..terse
        };
        assert!(newer.check_signature(&signature).is_err());
        // The apply body takes the signature beside the manifest and still refuses unknown fields.
        let body: ApplyManifest = serde_json::from_value(serde_json::json!({
            "name": "web", "resources": [], "signature": signature
        }))
        .unwrap();
        assert_eq!(body.signature, Some(signature));
        assert!(
            serde_json::from_value::<ApplyManifest>(
                serde_json::json!({"name": "web", "resources": [], "sign": 1})
            )
            .is_err()
        );
    }

    #[test]
    fn ports_parse() {
        assert_eq!(parse_port("8080:80"), Some((None, 8080, 80)));
        assert_eq!(
            parse_port("127.0.0.1:8080:80"),
            Some((Some("127.0.0.1".into()), 8080, 80))
        );
        assert_eq!(parse_port("x:80"), None);
    }
}

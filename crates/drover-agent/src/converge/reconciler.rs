//! One reconciler per kind, in the kube-rs manner: observe the node, plan the change (pure), apply the plan,
//! delete what the ledger owns. The runtime reaches every kind through one
//! [`Registry`](super::registry::Registry), for dispatch and for garbage collection alike, and asks the
//! node's policy before any of them observes anything.

use std::any::Any;
use std::future::Future;
use std::time::Duration;

use drover_types::manifest::{Resource, ResourceKind};
use serde_json::Value;

use super::ConvergeCtx;
use crate::docker::DockerError;
use crate::inventory::systemd::SystemdError;
use crate::policy::PathDenied;

/// Why a kind could not observe, apply or delete.
#[derive(Debug, thiserror::Error)]
pub enum ConvergeError {
    #[error("cannot {action} {path}: {source}")]
    Io {
        action: &'static str,
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error(transparent)]
    Path(#[from] PathDenied),
    /// A link planted below an allowed root, or something that is not a file where one is wanted.
    #[error(transparent)]
    File(#[from] drover_files::FileError),
    #[error("cannot get the content: {0}")]
    Content(String),
    #[error("cannot get the content: {0}")]
    Blob(#[from] super::blobs::BlobError),
    #[error("no user {0:?} on this node")]
    NoUser(String),
    #[error("no group {0:?} on this node")]
    NoGroup(String),
    #[error(transparent)]
    Engine(#[from] DockerError),
    #[error("image {0} is not on this node and its pull policy is never")]
    NoImage(String),
    #[error("cannot pull {image}: {source}")]
    Pull {
        image: String,
        #[source]
        source: DockerError,
    },
    #[error("the health check exited {code} ({tries} tries)")]
    Unhealthy { code: i64, tries: u32 },
    #[error("the health check timed out")]
    HealthTimeout,
    #[error("the engine returned no exec id")]
    NoExecId,
    #[error("systemd is not running on this node")]
    NoSystemd,
    #[error("systemctl {0} failed")]
    Systemctl(String),
    #[error(transparent)]
    Systemd(#[from] SystemdError),
    #[error("cannot run {program}: {source}")]
    Spawn {
        program: &'static str,
        #[source]
        source: std::io::Error,
    },
    #[error("timed out after {0:?}")]
    Timeout(Duration),
    #[error("the command failed ({status}): {stderr}")]
    JobFailed { status: String, stderr: String },
    #[error("the command succeeded but did not create {0}, so it would run again")]
    NotCreated(String),
    #[error("this agent has no reconciler for kind {0}")]
    NoKind(ResourceKind),
}

impl ConvergeError {
    pub fn io(action: &'static str, path: impl std::fmt::Display, source: std::io::Error) -> Self {
        Self::Io {
            action,
            path: path.to_string(),
            source,
        }
    }
}

/// A resource as a reconciler sees it.
pub struct Target<'a, S> {
    pub id: &'a str,
    /// Hash of the whole resource as it travelled, to tell a changed spec (containers are labelled with it).
    pub hash: &'a str,
    pub spec: &'a S,
}

/// What a plan would do, for the runtime and for dry runs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Summary {
    /// What the resource lives as on the node: a path, a container name, a unit name.
    pub handle: String,
    /// Applying would create the thing (it does not exist yet).
    pub creates: bool,
    /// What differs; empty when the node already matches.
    pub changes: Vec<String>,
}

/// What applying did.
pub struct Outcome {
    /// What had to change, when the resource did not match (drift, if it matched before).
    pub changed: Option<String>,
    pub details: Value,
    /// Whether this agent created the thing (so garbage collection may delete it).
    pub created: bool,
}

/// One kind. `observe` reads the node, `plan` is pure, `apply` carries the plan out; a dry run is observe
/// and plan and nothing else.
pub trait Reconciler: Send + Sync + 'static {
    type Spec: Send + Sync + 'static;
    type Observed: Send;
    type Plan: Send + 'static;
    /// The kind's name, as manifests and the ledger spell it.
    const KIND: ResourceKind;

    fn spec(resource: &Resource) -> Option<&Self::Spec>;

    fn observe(
        &self,
        ctx: &ConvergeCtx,
        target: &Target<'_, Self::Spec>,
    ) -> impl Future<Output = Result<Self::Observed, ConvergeError>> + Send;

    fn plan(&self, target: &Target<'_, Self::Spec>, observed: Self::Observed) -> Self::Plan;

    fn summary(plan: &Self::Plan) -> Summary;

    fn apply(
        &self,
        ctx: &ConvergeCtx,
        target: &Target<'_, Self::Spec>,
        plan: Self::Plan,
    ) -> impl Future<Output = Result<Outcome, ConvergeError>> + Send;

    /// Removes what a ledger entry says this agent created; gone already is fine.
    fn delete(
        &self,
        ctx: &ConvergeCtx,
        handle: &str,
    ) -> impl Future<Output = Result<(), ConvergeError>> + Send;
}

/// A plan made by one kind, to be applied by the same kind.
pub struct Planned {
    pub summary: Summary,
    plan: Box<dyn Any + Send>,
}

/// A [`Reconciler`] with its types erased, so the registry can hold every kind.
#[async_trait::async_trait]
pub trait AnyKind: Send + Sync {
    fn name(&self) -> ResourceKind;
    async fn plan(
        &self,
        ctx: &ConvergeCtx,
        resource: &Resource,
        hash: &str,
    ) -> Result<Planned, ConvergeError>;
    async fn apply(
        &self,
        ctx: &ConvergeCtx,
        resource: &Resource,
        hash: &str,
        planned: Planned,
    ) -> Result<Outcome, ConvergeError>;
    async fn delete(&self, ctx: &ConvergeCtx, handle: &str) -> Result<(), ConvergeError>;
}

fn target<'a, R: Reconciler>(
    resource: &'a Resource,
    hash: &'a str,
) -> Result<Target<'a, R::Spec>, ConvergeError> {
    let spec = R::spec(resource).ok_or(ConvergeError::NoKind(R::KIND))?;
    Ok(Target {
        id: &resource.id,
        hash,
        spec,
    })
}

#[async_trait::async_trait]
impl<R: Reconciler> AnyKind for R {
    fn name(&self) -> ResourceKind {
        R::KIND
    }

    async fn plan(
        &self,
        ctx: &ConvergeCtx,
        resource: &Resource,
        hash: &str,
    ) -> Result<Planned, ConvergeError> {
        let target = target::<R>(resource, hash)?;
        let observed = self.observe(ctx, &target).await?;
        let plan = Reconciler::plan(self, &target, observed);
        Ok(Planned {
            summary: R::summary(&plan),
            plan: Box::new(plan),
        })
    }

    async fn apply(
        &self,
        ctx: &ConvergeCtx,
        resource: &Resource,
        hash: &str,
        planned: Planned,
    ) -> Result<Outcome, ConvergeError> {
        let target = target::<R>(resource, hash)?;
        // The registry hands a plan back to the kind that made it, so this cannot miss; if it ever did,
        // the plan is made afresh rather than guessed.
        let plan = match planned.plan.downcast::<R::Plan>() {
            Ok(plan) => *plan,
            Err(_) => {
                let observed = self.observe(ctx, &target).await?;
                Reconciler::plan(self, &target, observed)
            }
        };
        Reconciler::apply(self, ctx, &target, plan).await
    }

    async fn delete(&self, ctx: &ConvergeCtx, handle: &str) -> Result<(), ConvergeError> {
        Reconciler::delete(self, ctx, handle).await
    }
}

//! Shell jobs: the audited escape hatch. A guard (`creates` or `unless`) makes them run once. The node's
//! policy (`--allow-kind shell_job` and `--allow-shell`) is checked by the runtime before the guard runs.

use std::time::Duration;

use drover_types::manifest::{Kind, Resource, ResourceKind, ShellJobSpec};
use serde_json::json;

use super::ConvergeCtx;
use super::reconciler::{ConvergeError, Outcome, Reconciler, Summary, Target};

const JOB_TIMEOUT: Duration = Duration::from_secs(600);

async fn sh(command: &str) -> Result<std::process::Output, ConvergeError> {
    let run = tokio::process::Command::new("/bin/sh")
        .args(["-c", command])
        .stdin(std::process::Stdio::null())
        .kill_on_drop(true)
        .process_group(0)
        .output();
    tokio::time::timeout(JOB_TIMEOUT, run)
        .await
        .map_err(|_| ConvergeError::Timeout(JOB_TIMEOUT))?
        .map_err(|source| ConvergeError::Spawn {
            program: "sh",
            source,
        })
}

pub struct ShellJobKind;

pub struct Plan {
    command: String,
    /// Why the job need not run, when its guard says so.
    skip: Option<String>,
}

impl Reconciler for ShellJobKind {
    type Spec = ShellJobSpec;
    /// The guard's verdict: why the job need not run.
    type Observed = Option<String>;
    type Plan = Plan;
    const KIND: ResourceKind = ResourceKind::ShellJob;

    fn spec(resource: &Resource) -> Option<&ShellJobSpec> {
        match resource.kind() {
            Some(Kind::ShellJob(s)) => Some(s),
            _ => None,
        }
    }

    async fn observe(
        &self,
        _ctx: &ConvergeCtx,
        target: &Target<'_, ShellJobSpec>,
    ) -> Result<Option<String>, ConvergeError> {
        let spec = target.spec;
        if let Some(path) = &spec.creates
            && std::path::Path::new(path).exists()
        {
            return Ok(Some(format!("{path} exists")));
        }
        if let Some(guard) = &spec.unless
            && sh(guard).await?.status.success()
        {
            return Ok(Some("the unless command succeeded".into()));
        }
        Ok(None)
    }

    fn plan(&self, target: &Target<'_, ShellJobSpec>, skip: Option<String>) -> Plan {
        Plan {
            command: target.spec.command.clone(),
            skip,
        }
    }

    fn summary(plan: &Plan) -> Summary {
        Summary {
            handle: plan.command.clone(),
            creates: false,
            changes: match plan.skip {
                Some(_) => vec![],
                None => vec![format!("run {:?}", plan.command)],
            },
        }
    }

    async fn apply(
        &self,
        _ctx: &ConvergeCtx,
        target: &Target<'_, ShellJobSpec>,
        plan: Plan,
    ) -> Result<Outcome, ConvergeError> {
        if let Some(skipped) = plan.skip {
            return Ok(Outcome {
                changed: None,
                details: json!({ "skipped": skipped }),
                created: false,
            });
        }
        let out = sh(&plan.command).await?;
        if !out.status.success() {
            return Err(ConvergeError::JobFailed {
                status: out.status.to_string(),
                stderr: String::from_utf8_lossy(&out.stderr).trim().to_string(),
            });
        }
        if let Some(path) = &target.spec.creates
            && !std::path::Path::new(path).exists()
        {
            return Err(ConvergeError::NotCreated(path.clone()));
        }
        tracing::info!(command = %plan.command, "shell job ran");
        Ok(Outcome {
            changed: Some("the job ran".into()),
            details: json!({"ran_at": super::now()}),
            created: false,
        })
    }

    /// A shell job cannot be undone; forgetting it is all there is.
    async fn delete(&self, _ctx: &ConvergeCtx, _handle: &str) -> Result<(), ConvergeError> {
        Ok(())
    }
}

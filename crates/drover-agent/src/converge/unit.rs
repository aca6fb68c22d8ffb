//! systemd units through `systemctl`: the unit file, enabled, active.

use std::path::{Path, PathBuf};

use drover_types::manifest::{Kind, Resource, ResourceKind, UnitSpec};
use serde_json::json;

use super::ConvergeCtx;
use super::reconciler::{ConvergeError, Outcome, Reconciler, Summary, Target};
use crate::inventory::systemd;

const UNIT_DIR: &str = "/etc/systemd/system";

async fn systemctl(args: &[&str]) -> Result<bool, ConvergeError> {
    let out = tokio::process::Command::new("systemctl")
        .args(args)
        .kill_on_drop(true)
        .output()
        .await
        .map_err(|source| ConvergeError::Spawn {
            program: "systemctl",
            source,
        })?;
    Ok(out.status.success())
}

async fn must(args: &[&str]) -> Result<(), ConvergeError> {
    if systemctl(args).await? {
        Ok(())
    } else {
        Err(ConvergeError::Systemctl(args.join(" ")))
    }
}

fn running() -> Result<(), ConvergeError> {
    if systemd::running() {
        Ok(())
    } else {
        Err(ConvergeError::NoSystemd)
    }
}

pub struct UnitKind;

pub struct Observed {
    existed: bool,
    content: Option<String>,
    enabled: bool,
    active: bool,
}

/// One change, in the order it is made.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Step {
    Write,
    Enable,
    Disable,
    Start,
    Stop,
    /// Disable, remove the unit file, reload.
    Remove,
}

impl Step {
    fn what(&self) -> &'static str {
        match self {
            Step::Write => "the unit file differs",
            Step::Enable => "the unit is disabled",
            Step::Disable => "the unit is enabled",
            Step::Start => "the unit is not active",
            Step::Stop => "the unit is active",
            Step::Remove => "the unit file exists",
        }
    }
}

pub struct Plan {
    name: String,
    path: PathBuf,
    existed: bool,
    steps: Vec<Step>,
}

impl Reconciler for UnitKind {
    type Spec = UnitSpec;
    type Observed = Observed;
    type Plan = Plan;
    const KIND: ResourceKind = ResourceKind::SystemdUnit;

    fn spec(resource: &Resource) -> Option<&UnitSpec> {
        match resource.kind() {
            Some(Kind::SystemdUnit(u)) => Some(u),
            _ => None,
        }
    }

    async fn observe(
        &self,
        _ctx: &ConvergeCtx,
        target: &Target<'_, UnitSpec>,
    ) -> Result<Observed, ConvergeError> {
        running()?;
        let name = &target.spec.name;
        let path = Path::new(UNIT_DIR).join(name);
        Ok(Observed {
            existed: path.exists(),
            content: std::fs::read_to_string(&path).ok(),
            enabled: systemctl(&["is-enabled", "--quiet", name]).await?,
            active: systemctl(&["is-active", "--quiet", name]).await?,
        })
    }

    fn plan(&self, target: &Target<'_, UnitSpec>, o: Observed) -> Plan {
        let spec = target.spec;
        let mut steps = Vec::new();
        if spec.absent {
            if o.active {
                steps.push(Step::Stop);
            }
            if o.existed {
                steps.push(Step::Remove);
            }
        } else {
            if spec
                .content
                .as_ref()
                .is_some_and(|c| o.content.as_deref() != Some(c.as_str()))
            {
                steps.push(Step::Write);
            }
            match spec.enabled {
                Some(true) if !o.enabled => steps.push(Step::Enable),
                Some(false) if o.enabled => steps.push(Step::Disable),
                _ => {}
            }
            match spec.active {
                Some(true) if !o.active => steps.push(Step::Start),
                Some(false) if o.active => steps.push(Step::Stop),
                _ => {}
            }
        }
        Plan {
            name: spec.name.clone(),
            path: Path::new(UNIT_DIR).join(&spec.name),
            existed: o.existed,
            steps,
        }
    }

    fn summary(plan: &Plan) -> Summary {
        Summary {
            handle: plan.name.clone(),
            creates: !plan.existed && plan.steps.contains(&Step::Write),
            changes: plan.steps.iter().map(|s| s.what().to_string()).collect(),
        }
    }

    async fn apply(
        &self,
        _ctx: &ConvergeCtx,
        target: &Target<'_, UnitSpec>,
        plan: Plan,
    ) -> Result<Outcome, ConvergeError> {
        running()?;
        let name = plan.name.as_str();
        for step in &plan.steps {
            match step {
                Step::Write => {
                    let content = target.spec.content.as_deref().unwrap_or_default();
                    drover_files::write_atomic(&plan.path, content.as_bytes(), false)
                        .map_err(|e| ConvergeError::io("write", plan.path.display(), e))?;
                    must(&["daemon-reload"]).await?;
                }
                Step::Enable => must(&["enable", name]).await?,
                Step::Disable => must(&["disable", name]).await?,
                Step::Start => must(&["start", name]).await?,
                Step::Stop => must(&["stop", name]).await?,
                Step::Remove => {
                    let _ = systemctl(&["disable", name]).await;
                    std::fs::remove_file(&plan.path)
                        .map_err(|e| ConvergeError::io("remove", plan.path.display(), e))?;
                    must(&["daemon-reload"]).await?;
                }
            }
        }
        let changes: Vec<&str> = plan.steps.iter().map(Step::what).collect();
        let changed = (!changes.is_empty()).then(|| changes.join(", "));
        if target.spec.absent {
            return Ok(Outcome {
                changed,
                details: json!({"absent": true}),
                created: false,
            });
        }
        let props = systemd::show(name).await?;
        Ok(Outcome {
            changed,
            details: json!({
                "active_state": props.get("ActiveState"),
                "sub_state": props.get("SubState"),
                "unit_file_state": props.get("UnitFileState"),
            }),
            created: !plan.existed && plan.steps.contains(&Step::Write),
        })
    }

    async fn delete(&self, _ctx: &ConvergeCtx, name: &str) -> Result<(), ConvergeError> {
        running()?;
        let _ = systemctl(&["stop", name]).await;
        let _ = systemctl(&["disable", name]).await;
        let path = Path::new(UNIT_DIR).join(name);
        if path.exists() {
            std::fs::remove_file(&path)
                .map_err(|e| ConvergeError::io("remove", path.display(), e))?;
        }
        must(&["daemon-reload"]).await
    }
}

//! Shell jobs: the audited escape hatch. A guard (`creates` or `unless`) makes them run once; the node must
//! allow shell.

use std::time::Duration;

use drover_types::manifest::ShellJobSpec;
use serde_json::json;

use super::{ConvergeCtx, Outcome};

const JOB_TIMEOUT: Duration = Duration::from_secs(600);

async fn sh(command: &str) -> Result<std::process::Output, String> {
    let run = tokio::process::Command::new("/bin/sh")
        .args(["-c", command])
        .stdin(std::process::Stdio::null())
        .kill_on_drop(true)
        .process_group(0)
        .output();
    tokio::time::timeout(JOB_TIMEOUT, run)
        .await
        .map_err(|_| format!("timed out after {JOB_TIMEOUT:?}"))?
        .map_err(|e| format!("cannot run sh: {e}"))
}

pub async fn reconcile(
    spec: &ShellJobSpec,
    ctx: &ConvergeCtx,
    dry: bool,
) -> Result<Outcome, String> {
    if !ctx.allow_shell {
        return Err("shell_job resources are off on this node: its agent must be started with --allow-shell".into());
    }
    let handle = spec.command.clone();
    if let Some(path) = &spec.creates
        && std::path::Path::new(path).exists()
    {
        return Ok(Outcome {
            changed: None,
            details: json!({"skipped": format!("{path} exists")}),
            created: false,
            handle,
        });
    }
    if let Some(guard) = &spec.unless
        && sh(guard).await?.status.success()
    {
        return Ok(Outcome {
            changed: None,
            details: json!({"skipped": "the unless command succeeded"}),
            created: false,
            handle,
        });
    }
    if dry {
        return Ok(Outcome {
            changed: Some(format!("run {:?}", spec.command)),
            details: json!(null),
            created: false,
            handle,
        });
    }
    let out = sh(&spec.command).await?;
    if !out.status.success() {
        let stderr = String::from_utf8_lossy(&out.stderr);
        return Err(format!(
            "the command failed ({}): {}",
            out.status,
            stderr.trim()
        ));
    }
    if let Some(path) = &spec.creates
        && !std::path::Path::new(path).exists()
    {
        return Err(format!(
            "the command succeeded but did not create {path}, so it would run again"
        ));
    }
    tracing::info!(command = %spec.command, "shell job ran");
    Ok(Outcome {
        changed: Some("the job ran".into()),
        details: json!({"ran_at": super::now()}),
        created: false,
        handle,
    })
}

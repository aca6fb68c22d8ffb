//! systemd units through `systemctl`: the unit file, enabled, active.

use drover_types::manifest::UnitSpec;
use serde_json::json;

use super::Outcome;
use crate::inventory::systemd;

const UNIT_DIR: &str = "/etc/systemd/system";

async fn systemctl(args: &[&str]) -> Result<bool, String> {
    let out = tokio::process::Command::new("systemctl")
        .args(args)
        .kill_on_drop(true)
        .output()
        .await
        .map_err(|e| format!("cannot run systemctl: {e}"))?;
    Ok(out.status.success())
}

async fn must(args: &[&str]) -> Result<(), String> {
    if systemctl(args).await? {
        Ok(())
    } else {
        Err(format!("systemctl {} failed", args.join(" ")))
    }
}

pub async fn reconcile(spec: &UnitSpec, dry: bool) -> Result<Outcome, String> {
    if !systemd::running() {
        return Err("systemd is not running on this node".into());
    }
    let path = std::path::Path::new(UNIT_DIR).join(&spec.name);
    let handle = spec.name.clone();
    let mut changes = Vec::new();
    let existed = path.exists();
    if dry {
        if spec.absent {
            if existed {
                changes.push("remove the unit");
            }
        } else {
            if spec
                .content
                .as_ref()
                .is_some_and(|c| std::fs::read_to_string(&path).ok().as_deref() != Some(c.as_str()))
            {
                changes.push("write the unit file");
            }
            if let Some(enabled) = spec.enabled
                && systemctl(&["is-enabled", "--quiet", &spec.name]).await? != enabled
            {
                changes.push(if enabled {
                    "enable the unit"
                } else {
                    "disable the unit"
                });
            }
            if let Some(active) = spec.active
                && systemctl(&["is-active", "--quiet", &spec.name]).await? != active
            {
                changes.push(if active {
                    "start the unit"
                } else {
                    "stop the unit"
                });
            }
        }
        return Ok(Outcome {
            changed: (!changes.is_empty()).then(|| changes.join(", ")),
            details: json!(null),
            created: !existed,
            handle,
        });
    }
    if spec.absent {
        if systemctl(&["is-active", "--quiet", &spec.name]).await? {
            must(&["stop", &spec.name]).await?;
            changes.push("unit was active");
        }
        if existed {
            let _ = systemctl(&["disable", &spec.name]).await;
            std::fs::remove_file(&path)
                .map_err(|e| format!("cannot remove {}: {e}", path.display()))?;
            must(&["daemon-reload"]).await?;
            changes.push("unit file existed");
        }
        return Ok(Outcome {
            changed: (!changes.is_empty()).then(|| changes.join(", ")),
            details: json!({"absent": true}),
            created: false,
            handle,
        });
    }
    if let Some(content) = &spec.content
        && std::fs::read_to_string(&path).ok().as_deref() != Some(content.as_str())
    {
        drover_files::write_atomic(&path, content.as_bytes(), false)
            .map_err(|e| format!("cannot write {}: {e}", path.display()))?;
        must(&["daemon-reload"]).await?;
        changes.push(if existed {
            "unit file differed"
        } else {
            "unit file was missing"
        });
    }
    if let Some(enabled) = spec.enabled {
        let is = systemctl(&["is-enabled", "--quiet", &spec.name]).await?;
        if is != enabled {
            must(&[if enabled { "enable" } else { "disable" }, &spec.name]).await?;
            changes.push(if enabled {
                "unit was disabled"
            } else {
                "unit was enabled"
            });
        }
    }
    if let Some(active) = spec.active {
        let is = systemctl(&["is-active", "--quiet", &spec.name]).await?;
        if is != active {
            must(&[if active { "start" } else { "stop" }, &spec.name]).await?;
            changes.push(if active {
                "unit was not active"
            } else {
                "unit was active"
            });
        }
    }
    let props = systemd::show(&spec.name).await.map_err(|e| e.to_string())?;
    Ok(Outcome {
        changed: (!changes.is_empty()).then(|| changes.join(", ")),
        details: json!({
            "active_state": props.get("ActiveState"),
            "sub_state": props.get("SubState"),
            "unit_file_state": props.get("UnitFileState"),
        }),
        created: !existed && spec.content.is_some(),
        handle,
    })
}

pub async fn delete(name: &str) -> Result<(), String> {
    if !systemd::running() {
        return Err("systemd is not running on this node".into());
    }
    let _ = systemctl(&["stop", name]).await;
    let _ = systemctl(&["disable", name]).await;
    let path = std::path::Path::new(UNIT_DIR).join(name);
    if path.exists() {
        std::fs::remove_file(&path)
            .map_err(|e| format!("cannot remove {}: {e}", path.display()))?;
    }
    must(&["daemon-reload"]).await
}

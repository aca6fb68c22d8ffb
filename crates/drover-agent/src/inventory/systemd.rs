//! systemd, through `systemctl` (present wherever systemd runs; no D-Bus client in the agent yet).

use std::collections::BTreeMap;
use std::time::Duration;

use serde::Serialize;

const TIMEOUT: Duration = Duration::from_secs(5);

#[derive(Debug, thiserror::Error)]
pub enum SystemdError {
    #[error("systemd is not running on this node")]
    NotRunning,
    #[error("systemctl failed: {0}")]
    Systemctl(String),
}

/// Whether systemd is this machine's init (its documented check).
pub fn running() -> bool {
    std::path::Path::new("/run/systemd/system").is_dir()
}

async fn systemctl(args: &[&str]) -> Result<String, SystemdError> {
    if !running() {
        return Err(SystemdError::NotRunning);
    }
    let run = tokio::process::Command::new("systemctl")
        .args(args)
        .kill_on_drop(true)
        .output();
    let out = tokio::time::timeout(TIMEOUT, run)
        .await
        .map_err(|_| SystemdError::Systemctl("timed out".into()))?
        .map_err(|e| SystemdError::Systemctl(e.to_string()))?;
    if !out.status.success() {
        return Err(SystemdError::Systemctl(
            String::from_utf8_lossy(&out.stderr).trim().to_string(),
        ));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// A unit's properties (`systemctl show`).
pub async fn show(unit: &str) -> Result<BTreeMap<String, String>, SystemdError> {
    let text = systemctl(&[
        "show",
        "--property=LoadState,ActiveState,SubState,UnitFileState,MainPID,Description",
        "--",
        unit,
    ])
    .await?;
    Ok(text
        .lines()
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect())
}

/// A unit in `systemctl list-units`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct UnitState {
    pub unit: String,
    pub load: String,
    pub active: String,
    pub sub: String,
    pub description: String,
}

/// Running and failed units.
pub async fn units() -> Result<Vec<UnitState>, SystemdError> {
    let text = systemctl(&[
        "list-units",
        "--state=running,failed",
        "--no-legend",
        "--plain",
        "--no-pager",
        "--all",
    ])
    .await?;
    Ok(parse_list_units(&text))
}

pub fn parse_list_units(text: &str) -> Vec<UnitState> {
    text.lines()
        .filter_map(|line| {
            let mut f = line.split_whitespace();
            Some(UnitState {
                unit: f.next()?.trim_start_matches('●').to_string(),
                load: f.next()?.to_string(),
                active: f.next()?.to_string(),
                sub: f.next()?.to_string(),
                description: f.collect::<Vec<_>>().join(" "),
            })
        })
        .filter(|u| !u.unit.is_empty())
        .collect()
}

#[cfg(test)]
mod tests {
    #[test]
    fn parses_list_units() {
        let units = super::parse_list_units(
            "ssh.service loaded active running OpenBSD Secure Shell server\nfoo.service loaded failed failed Foo\n",
        );
        assert_eq!(units.len(), 2);
        assert_eq!(units[1].active, "failed");
        assert_eq!(units[0].description, "OpenBSD Secure Shell server");
    }
}

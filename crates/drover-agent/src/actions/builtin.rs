//! The built-in actions.

use std::io::Read;
use std::time::Duration;

use drover_types::{Capabilities, RunningContainer, action::ActionError};
use serde::{Deserialize, Serialize};

use super::ActionCtx;
use crate::inventory::{self, Collector};

mod redact;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NoArgs {}

#[derive(Serialize)]
pub struct Pong {
    pub pong: bool,
    pub agent_version: &'static str,
    pub time: chrono::DateTime<chrono::Utc>,
}

/// Liveness of the action path itself.
pub async fn ping(_: ActionCtx, _: NoArgs) -> Result<Pong, ActionError> {
    Ok(Pong {
        pong: true,
        agent_version: drover_types::VERSION,
        time: chrono::Utc::now(),
    })
}

/// The full capability report, collected afresh.
pub async fn inventory(_: ActionCtx, _: NoArgs) -> Result<Capabilities, ActionError> {
    let mut collector = Collector::new().map_err(ActionError::failed)?;
    Ok(collector.capabilities().await)
}

/// Largest file content `read_file` returns.
pub const READ_FILE_MAX: u64 = 1024 * 1024;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReadFileArgs {
    pub path: String,
    /// At most this many bytes (capped at 1 MiB).
    #[serde(default)]
    pub max_bytes: Option<u64>,
}

#[derive(Serialize)]
pub struct FileContent {
    pub path: String,
    pub size: u64,
    pub truncated: bool,
    /// The content when it is UTF-8.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub content: Option<String>,
    /// The content, base64-encoded, when it is not UTF-8.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub content_base64: Option<String>,
}

/// Reads a file under the node's allowed roots. The policy check resolves the path; the open then walks from
/// the allowed root's descriptor with `O_NOFOLLOW`, so a link swapped in after the check is refused rather
/// than followed out of the root.
pub async fn read_file(ctx: ActionCtx, args: ReadFileArgs) -> Result<FileContent, ActionError> {
    let real = ctx
        .policy
        .check_existing(&args.path)
        .map_err(ActionError::denied)?;
    let (root, rel) = drover_files::split_under_root(&ctx.policy.allowed_roots, &real)
        .map(|(root, rel)| (root.to_path_buf(), rel.to_path_buf()))
        .ok_or_else(|| {
            ActionError::denied(format!("{} is outside the allowed roots", real.display()))
        })?;
    let limit = args.max_bytes.unwrap_or(READ_FILE_MAX).min(READ_FILE_MAX);
    tokio::task::spawn_blocking(move || {
        let file = drover_files::Root::open(&root)
            .and_then(|root| root.open_file(&rel))
            .map_err(|e| match e {
                drover_files::FileError::Symlink { .. } => ActionError::denied(e),
                drover_files::FileError::NotAFile { .. } => ActionError::invalid(Some("path"), e),
                e => ActionError::failed(e),
            })?;
        let meta = file.metadata().map_err(ActionError::failed)?;
        let mut bytes = Vec::new();
        file.take(limit)
            .read_to_end(&mut bytes)
            .map_err(ActionError::failed)?;
        let truncated = meta.len() > bytes.len() as u64;
        let (content, content_base64) = match String::from_utf8(bytes) {
            Ok(text) => (Some(text), None),
            Err(e) => (None, Some(drover_types::base64::encode(e.as_bytes()))),
        };
        Ok(FileContent {
            path: real.display().to_string(),
            size: meta.len(),
            truncated,
            content,
            content_base64,
        })
    })
    .await
    .map_err(ActionError::failed)?
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ListProcessesArgs {
    /// Only processes whose name contains this.
    #[serde(default)]
    pub name: Option<String>,
    /// At most this many, highest CPU first (default 100).
    #[serde(default)]
    pub limit: Option<usize>,
}

pub async fn list_processes(
    _: ActionCtx,
    args: ListProcessesArgs,
) -> Result<Vec<inventory::Process>, ActionError> {
    let mut list = tokio::task::spawn_blocking(move || {
        inventory::processes(args.name.as_deref(), args.limit.unwrap_or(100))
    })
    .await
    .map_err(ActionError::failed)?
    .map_err(ActionError::failed)?;
    for p in &mut list {
        redact::command_line(&mut p.cmd);
    }
    Ok(list)
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ListContainersArgs {
    /// Include stopped containers.
    #[serde(default)]
    pub all: bool,
}

pub async fn list_containers(
    _: ActionCtx,
    args: ListContainersArgs,
) -> Result<Vec<RunningContainer>, ActionError> {
    // The engine's own error names the sockets tried and DOCKER_HOST.
    match tokio::time::timeout(
        Duration::from_secs(5),
        inventory::containers::try_list(args.all),
    )
    .await
    {
        Ok(Ok(list)) => Ok(list),
        Ok(Err(e)) => Err(ActionError::failed(e.to_string())),
        Err(_) => Err(ActionError::failed(
            "the container engine did not answer within 5s",
        )),
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServiceStatusArgs {
    /// A systemd unit, like `ssh.service` (`.service` is assumed when no suffix is given).
    pub unit: String,
}

#[derive(Serialize)]
pub struct ServiceStatus {
    pub unit: String,
    pub load_state: String,
    pub active_state: String,
    pub sub_state: String,
    pub unit_file_state: String,
    pub main_pid: Option<u32>,
    pub description: String,
}

pub async fn service_status(
    _: ActionCtx,
    args: ServiceStatusArgs,
) -> Result<ServiceStatus, ActionError> {
    let unit = if args.unit.contains('.') {
        args.unit
    } else {
        format!("{}.service", args.unit)
    };
    if unit.starts_with('-') || unit.chars().any(|c| c.is_whitespace() || c == '/') {
        return Err(ActionError::invalid(
            Some("unit"),
            format!("{unit:?} is not a unit name"),
        ));
    }
    let props = inventory::systemd::show(&unit)
        .await
        .map_err(ActionError::failed)?;
    let get = |k: &str| props.get(k).cloned().unwrap_or_default();
    Ok(ServiceStatus {
        load_state: get("LoadState"),
        active_state: get("ActiveState"),
        sub_state: get("SubState"),
        unit_file_state: get("UnitFileState"),
        main_pid: props
            .get("MainPID")
            .and_then(|p| p.parse().ok())
            .filter(|p| *p != 0),
        description: get("Description"),
        unit,
    })
}

//! Actions compiled only into test builds (`--features test-plugins`), to prove deadlines and cancellation.

use drover_types::action::ActionError;
use serde::{Deserialize, Serialize};

use super::{ActionCtx, ActionEntry, action, changing};

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SleepArgs {
    /// How long the child process sleeps.
    pub seconds: u64,
    /// Write the child's pid here, so a test can check it is gone afterwards.
    pub pid_file: String,
}

#[derive(Serialize)]
pub struct Slept {
    pub seconds: u64,
}

/// Runs `sleep SECONDS` as a child process and waits for it.
async fn test_sleep(_: ActionCtx, args: SleepArgs) -> Result<Slept, ActionError> {
    let mut child = tokio::process::Command::new("sleep")
        .arg(args.seconds.to_string())
        .kill_on_drop(true)
        .spawn()
        .map_err(ActionError::failed)?;
    let pid = child.id().unwrap_or_default();
    std::fs::write(&args.pid_file, pid.to_string()).map_err(ActionError::failed)?;
    child.wait().await.map_err(ActionError::failed)?;
    Ok(Slept {
        seconds: args.seconds,
    })
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FailArgs {
    pub message: String,
}

async fn test_fail(_: ActionCtx, args: FailArgs) -> Result<(), ActionError> {
    Err(ActionError::failed(args.message))
}

pub fn entries() -> Vec<ActionEntry> {
    vec![
        // It writes its pid file: it changes the node.
        changing(action("test_sleep", 1, test_sleep)),
        action("test_fail", 1, test_fail),
    ]
}

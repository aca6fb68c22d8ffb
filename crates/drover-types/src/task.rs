//! Tasks: commands and container operations run on nodes, with streamed output and a final state.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::limits;

/// Default grace between SIGTERM and SIGKILL when a task is cancelled or times out.
pub const DEFAULT_GRACE_MS: u64 = 10_000;
/// Output travels by size, not by line, in chunks of at most this many bytes (a chunk may end mid-line).
pub const MAX_CHUNK_BYTES: usize = 64 * 1024;

/// What to run.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
pub enum TaskSpec {
    /// A program (argv) or a shell pipeline (`shell`, run by `sh -c`): exactly one of them.
    Exec {
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        argv: Vec<String>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        shell: Option<String>,
        #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
        env: BTreeMap<String, String>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        cwd: Option<String>,
        /// Run as this user (the agent must run as root).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        user: Option<String>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        timeout_ms: Option<u64>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        grace_ms: Option<u64>,
    },
    /// An operation on a container through the Docker Engine API (Docker or Podman).
    Container {
        op: ContainerOp,
        /// Container name or id (not for `list`).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        container: Option<String>,
        /// `list`: include stopped containers. `logs`: keep following.
        #[serde(default)]
        all: bool,
        #[serde(default)]
        follow: bool,
        /// `logs`: only the last N lines.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        tail: Option<u32>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        timeout_ms: Option<u64>,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "snake_case")]
pub enum ContainerOp {
    List,
    Start,
    Stop,
    Restart,
    Remove,
    Logs,
}

impl ContainerOp {
    pub fn as_str(&self) -> &'static str {
        match self {
            ContainerOp::List => "list",
            ContainerOp::Start => "start",
            ContainerOp::Stop => "stop",
            ContainerOp::Restart => "restart",
            ContainerOp::Remove => "remove",
            ContainerOp::Logs => "logs",
        }
    }
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("field `{field}`: {reason}")]
pub struct SpecError {
    pub field: &'static str,
    pub reason: String,
}

impl TaskSpec {
    /// Checks what a server can check before anything ships.
    pub fn validate(&self) -> Result<(), SpecError> {
        let err = |field, reason: &str| {
            Err(SpecError {
                field,
                reason: reason.to_string(),
            })
        };
        match self {
            TaskSpec::Exec {
                argv,
                shell,
                env,
                cwd,
                timeout_ms,
                grace_ms,
                ..
            } => {
                match (argv.is_empty(), shell) {
                    (true, None) => {
                        return err("argv", "give a command (argv) or a shell pipeline (shell)");
                    }
                    (false, Some(_)) => return err("shell", "give either argv or shell, not both"),
                    _ => {}
                }
                if argv.first().is_some_and(|a| a.is_empty()) {
                    return err("argv", "the program name is empty");
                }
                if let Some(k) = env
                    .keys()
                    .find(|k| k.is_empty() || k.contains('=') || k.contains('\0'))
                {
                    return Err(SpecError {
                        field: "env",
                        reason: format!("{k:?} is not a variable name"),
                    });
                }
                if cwd.as_deref().is_some_and(|c| !c.starts_with('/')) {
                    return err("cwd", "use an absolute path");
                }
                if *timeout_ms == Some(0) {
                    return err("timeout_ms", "must be greater than zero");
                }
                check_at_most("timeout_ms", *timeout_ms, limits::MAX_TASK_TIMEOUT_MS)?;
                check_at_most("grace_ms", *grace_ms, limits::MAX_TASK_GRACE_MS)?;
            }
            TaskSpec::Container {
                op,
                container,
                timeout_ms,
                ..
            } => {
                check_at_most("timeout_ms", *timeout_ms, limits::MAX_TASK_TIMEOUT_MS)?;
                if *op != ContainerOp::List && container.as_deref().is_none_or(str::is_empty) {
                    return err("container", "this operation needs a container name or id");
                }
            }
        }
        Ok(())
    }

    /// What a signed task's signature covers, beside its window and nonce.
    pub fn signed_command(&self) -> serde_json::Value {
        serde_json::json!({ "task": self })
    }

    /// A one-line description for tables and the audit log.
    pub fn summary(&self) -> String {
        match self {
            TaskSpec::Exec {
                argv,
                shell: Some(s),
                ..
            } if argv.is_empty() => format!("sh -c {s:?}"),
            TaskSpec::Exec { argv, .. } => argv.join(" "),
            TaskSpec::Container { op, container, .. } => format!(
                "container {} {}",
                op.as_str(),
                container.as_deref().unwrap_or("")
            )
            .trim_end()
            .to_string(),
        }
    }
}

/// Refuses a number of milliseconds over `max` (timers past it would overflow or never fire).
fn check_at_most(field: &'static str, value: Option<u64>, max: u64) -> Result<(), SpecError> {
    match value {
        Some(v) if v > max => Err(SpecError {
            field,
            reason: format!("{v} is more than the most accepted, {max}"),
        }),
        _ => Ok(()),
    }
}

/// Which nodes a task runs on.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
pub enum Target {
    /// One node, by id or name.
    Node(String),
    /// Every node whose labels contain all of these.
    Selector(BTreeMap<String, String>),
    /// Every node.
    All,
}

/// `POST /api/v1/tasks`
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct CreateTask {
    pub target: Target,
    pub spec: TaskSpec,
    /// At most this many nodes run it at once (default: all).
    #[serde(default)]
    pub max_parallel: Option<u32>,
    /// An operator's signature over the spec (see [`TaskSpec::signed_command`]); nodes that pin a key run
    /// only signed tasks.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub signature: Option<crate::signing::CommandSignature>,
}

/// Where a task stands on one node.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Hash)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub enum RunState {
    /// Waiting for its turn (max_parallel) or for the node to take it.
    Pending,
    /// Sent to the node; queued there or running.
    Running,
    Succeeded,
    /// Ran and exited non-zero or by a signal.
    Failed,
    Cancelled,
    TimedOut,
    /// The node's policy refused it (shell off, program not allowed, ...).
    Refused,
    /// The node was not connected when the task was created.
    Unreachable,
    /// The agent could not start it (no such program, bad cwd, no engine, ...).
    Error,
    /// The server lost track of it: its agent came back without it, or its node stayed offline past the
    /// server's `--lost-after`. Whether it ran is unknown; an exit that arrives later is kept beside it.
    Lost,
}

/// Every run state, in declaration order.
pub const RUN_STATES: [RunState; 10] = [
    RunState::Pending,
    RunState::Running,
    RunState::Succeeded,
    RunState::Failed,
    RunState::Cancelled,
    RunState::TimedOut,
    RunState::Refused,
    RunState::Unreachable,
    RunState::Error,
    RunState::Lost,
];

impl RunState {
    pub fn is_final(&self) -> bool {
        !matches!(self, RunState::Pending | RunState::Running)
    }

    pub fn is_success(&self) -> bool {
        *self == RunState::Succeeded
    }

    pub fn as_str(&self) -> &'static str {
        match self {
            RunState::Pending => "Pending",
            RunState::Running => "Running",
            RunState::Succeeded => "Succeeded",
            RunState::Failed => "Failed",
            RunState::Cancelled => "Cancelled",
            RunState::TimedOut => "TimedOut",
            RunState::Refused => "Refused",
            RunState::Unreachable => "Unreachable",
            RunState::Error => "Error",
            RunState::Lost => "Lost",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        RUN_STATES.into_iter().find(|r| r.as_str() == s)
    }
}

/// An exit that arrived after its run had already ended (as Lost, or cancelled on the server only): kept
/// for the record, it does not reopen the run.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct LateExit {
    pub state: RunState,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exit_code: Option<i32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub signal: Option<i32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    pub at: DateTime<Utc>,
}

/// A task on one node.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct TaskRun {
    pub node_id: String,
    pub node_name: String,
    pub state: RunState,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exit_code: Option<i32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub signal: Option<i32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub started_at: Option<DateTime<Utc>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub finished_at: Option<DateTime<Utc>>,
    /// The agent's own report, when it came after the run had ended here.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub late_exit: Option<LateExit>,
}

impl TaskRun {
    /// The exit code a shell would show: the code, or 128+N for a signal.
    pub fn shell_code(&self) -> Option<i32> {
        self.exit_code.or(self.signal.map(|s| 128 + s))
    }
}

/// A task as listed and shown.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Task {
    pub id: String,
    pub target: Target,
    pub spec: TaskSpec,
    pub created_by: String,
    pub created_at: DateTime<Utc>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_parallel: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub signature: Option<crate::signing::CommandSignature>,
    pub runs: Vec<TaskRun>,
}

impl Task {
    pub fn is_finished(&self) -> bool {
        self.runs.iter().all(|r| r.state.is_final())
    }

    /// An overall state for lists: Running until every run is final, then Succeeded only if all did.
    pub fn state(&self) -> &'static str {
        if !self.is_finished() {
            "Running"
        } else if self.runs.iter().all(|r| r.state.is_success()) {
            "Succeeded"
        } else if self.runs.iter().all(|r| r.state == RunState::Cancelled) {
            "Cancelled"
        } else {
            "Failed"
        }
    }
}

/// A task as `GET /api/v1/tasks` lists it: the task with its first runs (every run for a task on at most
/// as many nodes as the list's `runs` parameter, 100 by default), every run counted by state, and its
/// overall state counted over every run.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct TaskListEntry {
    #[serde(flatten)]
    pub task: Task,
    /// Every run of the task counted by state (states with none left out), whether or not `runs` lists
    /// them all.
    pub run_counts: BTreeMap<String, usize>,
    /// How many runs the task has: more than `runs` holds when the list left some out.
    pub runs_total: usize,
    /// `Task::state` over every run: Running, Succeeded, Cancelled or Failed.
    pub state: String,
}

impl TaskListEntry {
    /// Whether `runs` holds every run.
    pub fn complete(&self) -> bool {
        self.task.runs.len() >= self.runs_total
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "lowercase")]
pub enum Stream {
    Stdout,
    Stderr,
}

/// One piece of output, as it came: up to `MAX_CHUNK_BYTES`, possibly ending mid-line.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct OutputChunk {
    pub node_id: String,
    pub node_name: String,
    pub seq: u64,
    pub stream: Stream,
    /// The bytes as text when they are UTF-8.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub text: Option<String>,
    /// The bytes, base64, when they are not.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub base64: Option<String>,
}

/// An entry in the audit log.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct AuditEntry {
    pub id: i64,
    pub at: DateTime<Utc>,
    /// Who: `admin` for the admin token.
    pub actor: String,
    /// What: `task.create`, `task.finish`, `task.cancel`, ...
    pub action: String,
    /// Where: the node, or the task's target.
    pub target: String,
    pub detail: serde_json::Value,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn exec(argv: &[&str], shell: Option<&str>) -> TaskSpec {
        TaskSpec::Exec {
            argv: argv.iter().map(|s| s.to_string()).collect(),
            shell: shell.map(str::to_string),
            env: Default::default(),
            cwd: None,
            user: None,
            timeout_ms: None,
            grace_ms: None,
        }
    }

    #[test]
    fn exec_needs_exactly_one_of_argv_and_shell() {
        assert!(exec(&["true"], None).validate().is_ok());
        assert!(exec(&[], Some("true | cat")).validate().is_ok());
        assert_eq!(exec(&[], None).validate().unwrap_err().field, "argv");
        assert_eq!(
            exec(&["a"], Some("b")).validate().unwrap_err().field,
            "shell"
        );
    }

    #[test]
    fn timeouts_past_the_limits_are_refused_naming_the_field() {
        let with = |timeout: Option<u64>, grace: Option<u64>| {
            let mut spec = exec(&["true"], None);
            if let TaskSpec::Exec {
                timeout_ms,
                grace_ms,
                ..
            } = &mut spec
            {
                *timeout_ms = timeout;
                *grace_ms = grace;
            }
            spec
        };
        assert!(
            with(Some(limits::MAX_TASK_TIMEOUT_MS), Some(1000))
                .validate()
                .is_ok()
        );
        assert_eq!(
            with(Some(u64::MAX), None).validate().unwrap_err().field,
            "timeout_ms"
        );
        assert_eq!(
            with(None, Some(u64::MAX)).validate().unwrap_err().field,
            "grace_ms"
        );
        let container = TaskSpec::Container {
            op: ContainerOp::List,
            container: None,
            all: false,
            follow: false,
            tail: None,
            timeout_ms: Some(u64::MAX),
        };
        assert_eq!(container.validate().unwrap_err().field, "timeout_ms");
    }

    #[test]
    fn specs_round_trip_with_a_kind_tag() {
        let spec = exec(&["echo", "hi"], None);
        let v = serde_json::to_value(&spec).unwrap();
        assert_eq!(v["kind"], "exec");
        assert_eq!(serde_json::from_value::<TaskSpec>(v).unwrap(), spec);
        assert!(
            serde_json::from_value::<TaskSpec>(
                serde_json::json!({"kind": "exec", "argv": ["x"], "bogus": 1})
            )
            .is_err()
        );
    }

    #[test]
    fn signals_become_shell_codes() {
        let run = TaskRun {
            node_id: "n".into(),
            node_name: "n".into(),
            state: RunState::Cancelled,
            exit_code: None,
            signal: Some(15),
            error: None,
            started_at: None,
            finished_at: None,
            late_exit: None,
        };
        assert_eq!(run.shell_code(), Some(143));
    }
}

//! What agents and the server say to each other, as the domain sees it: typed fields, no wire types. The
//! gateway turns an agent's protobuf messages into [`FromAgent`] once at the edge, and the adapters of the
//! [`Reach`](super::Reach) port turn [`ToAgent`] into protobuf (the local stream) or its encoding (NATS);
//! the services never see `drover_proto` (`reach::wire` holds both conversions).

use std::sync::Arc;
use std::time::Duration;

use drover_types::action::ActionError;
use drover_types::ids::TaskId;
use drover_types::task::{RunState, Stream};
use serde_json::Value;

/// What an attached agent sends besides its hello and heartbeats.
#[derive(Debug)]
pub enum FromAgent {
    /// The outcome of an action call (`call_id`), already read: the agent's JSON or its error.
    ActionResult {
        call_id: String,
        outcome: Result<Value, ActionError>,
    },
    CreateSession(CreateSession),
    SessionData(SessionData),
    SessionStatus(SessionStatus),
    TaskOutput(TaskOutput),
    TaskExit(TaskExit),
    /// A convergence report, as the agent's JSON (read and checked by the desired-state service).
    ConvergenceReport {
        report_json: String,
    },
    /// The plan a dry run asked for (`request_id`), as JSON.
    PlanResult {
        request_id: String,
        plan_json: String,
    },
    /// The agent asks for a blob its desired state names.
    BlobRequest {
        request_id: String,
        sha256: String,
    },
}

impl FromAgent {
    /// The message's name, as `/metrics` counts it.
    pub fn kind(&self) -> &'static str {
        match self {
            FromAgent::ActionResult { .. } => "action_result",
            FromAgent::CreateSession(_) => "create_session",
            FromAgent::SessionData(_) => "session_data",
            FromAgent::SessionStatus(_) => "session_status",
            FromAgent::TaskOutput(_) => "task_output",
            FromAgent::TaskExit(_) => "task_exit",
            FromAgent::ConvergenceReport { .. } => "convergence_report",
            FromAgent::PlanResult { .. } => "plan_result",
            FromAgent::BlobRequest { .. } => "blob_request",
        }
    }
}

/// An agent asks for a session for one of its daemon plugins.
#[derive(Debug)]
pub struct CreateSession {
    pub plugin: String,
    pub interval: Duration,
    pub deadline: Duration,
}

/// A daemon plugin's payload.
#[derive(Debug, Clone)]
pub struct SessionData {
    pub plugin: String,
    pub session_id: String,
    pub seq: u64,
    pub payload_json: String,
    pub deadline_misses: u64,
}

/// A session's liveness without a payload.
#[derive(Debug)]
pub struct SessionStatus {
    pub plugin: String,
    pub session_id: String,
    pub deadline_misses: u64,
}

/// Output of one run, in the agent's sequence.
#[derive(Debug)]
pub struct TaskOutput {
    pub task_id: TaskId,
    pub chunks: Vec<Chunk>,
}

/// One piece of a run's output.
#[derive(Debug, Clone, PartialEq)]
pub struct Chunk {
    pub seq: u64,
    pub stream: Stream,
    pub data: Vec<u8>,
}

/// A run ended on the agent, after output up to `seq`.
#[derive(Debug, Clone)]
pub struct TaskExit {
    pub task_id: TaskId,
    pub seq: u64,
    /// The state the agent reports; `None` when it named none this server knows.
    pub state: Option<RunState>,
    pub exit_code: Option<i32>,
    pub signal: Option<i32>,
    /// Empty when the agent gave no reason.
    pub error: String,
}

/// What the server sends an attached agent (its Welcome aside, which only the gateway sends).
#[derive(Debug, Clone, PartialEq)]
pub enum ToAgent {
    ActionCall(ActionCall),
    CancelAction {
        call_id: String,
    },
    SessionCreated {
        plugin: String,
        session_id: String,
    },
    /// Ends a session (or refuses one, with an empty `session_id`).
    TerminateSession {
        plugin: String,
        session_id: String,
        reason: String,
    },
    SessionMessage {
        plugin: String,
        session_id: String,
        body_json: String,
    },
    /// Start a run, or (for a task the agent knows) resend its unacknowledged output.
    TaskStart(TaskStart),
    TaskCancel {
        task_id: TaskId,
    },
    /// Output up to `upto_seq` is stored (and, with `exit`, the run's end).
    TaskAck {
        task_id: TaskId,
        upto_seq: u64,
        exit: bool,
    },
    DesiredState(DesiredUpdate),
    PlanRequest {
        request_id: String,
        state_json: String,
    },
    BlobData(BlobData),
}

/// An action call as the agent receives it.
#[derive(Debug, Clone, PartialEq)]
pub struct ActionCall {
    pub call_id: String,
    pub name: String,
    pub args_json: String,
    pub deadline_ms: u64,
    pub signature_json: String,
}

/// A task's start: its spec and the operator's signature, as JSON the agent checks.
#[derive(Debug, Clone, PartialEq)]
pub struct TaskStart {
    pub task_id: TaskId,
    pub spec_json: Arc<str>,
    /// Empty when unsigned.
    pub signature_json: Arc<str>,
}

/// A node's desired state, with the small blobs it names sent along.
#[derive(Debug, Clone, PartialEq)]
pub struct DesiredUpdate {
    pub generation: u64,
    pub state_json: String,
    pub blobs: Vec<InlineBlob>,
}

impl DesiredUpdate {
    /// The update that gives a node `state`, without content (the desired-state service adds what fits).
    pub fn bare(state: &drover_types::manifest::DesiredState) -> Self {
        DesiredUpdate {
            generation: state.generation,
            state_json: serde_json::to_string(state).unwrap_or_default(),
            blobs: Vec::new(),
        }
    }
}

/// A blob sent inside a desired-state update.
#[derive(Debug, Clone, PartialEq)]
pub struct InlineBlob {
    pub sha256: String,
    pub data: Arc<[u8]>,
}

/// One piece of a blob a node asked for; `error` set (and `last`) when it cannot have it.
#[derive(Debug, Clone, PartialEq)]
pub struct BlobData {
    pub request_id: String,
    pub offset: u64,
    pub data: Vec<u8>,
    pub last: bool,
    pub error: String,
}

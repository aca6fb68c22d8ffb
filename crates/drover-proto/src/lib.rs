//! drover's agent <-> server wire protocol: the generated gRPC code and its mapping to `drover-types`.
//! The mapping lives here, once, so the agent and the server cannot disagree on it.

#[allow(clippy::all, missing_docs)]
pub mod v1 {
    tonic::include_proto!("drover.v1");
}

pub mod codec;
mod convert;
pub mod pinning;

pub use v1::agent_link_client::AgentLinkClient;
pub use v1::agent_link_server::{AgentLink, AgentLinkServer};

/// The name the server certificate always carries, so agents can verify it whatever address they dial.
pub const SERVER_TLS_NAME: &str = "drover-server";

impl v1::agent_message::Msg {
    /// The message's type as metrics label it, on both ends.
    pub fn kind(&self) -> &'static str {
        use v1::agent_message::Msg;
        match self {
            Msg::Hello(_) => "hello",
            Msg::Heartbeat(_) => "heartbeat",
            Msg::ActionResult(_) => "action_result",
            Msg::CreateSession(_) => "create_session",
            Msg::SessionData(_) => "session_data",
            Msg::SessionStatus(_) => "session_status",
            Msg::TaskOutput(_) => "task_output",
            Msg::TaskExit(_) => "task_exit",
            Msg::ConvergenceReport(_) => "convergence_report",
            Msg::PlanResult(_) => "plan_result",
            Msg::BlobRequest(_) => "blob_request",
        }
    }
}

//! drover's agent <-> server wire protocol: the generated gRPC code and its mapping to `drover-types`.
//! The mapping lives here, once, so the agent and the server cannot disagree on it.

#[allow(clippy::all, missing_docs)]
pub mod v1 {
    tonic::include_proto!("drover.v1");
}

mod convert;
pub mod pinning;

pub use v1::agent_link_client::AgentLinkClient;
pub use v1::agent_link_server::{AgentLink, AgentLinkServer};

/// The name the server certificate always carries, so agents can verify it whatever address they dial.
pub const SERVER_TLS_NAME: &str = "drover-server";

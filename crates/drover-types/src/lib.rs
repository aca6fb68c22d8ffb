//! The typed model shared by drover's server, agent and CLI: nodes, capabilities, metrics, liveness,
//! join tokens, labels and the REST API's bodies. Pure data and pure functions, no I/O.

pub mod action;
pub mod api;
pub mod base64;
pub mod duration;
pub mod labels;
pub mod liveness;
pub mod manifest;
pub mod node;
pub mod session;
pub mod size;
pub mod task;
pub mod token;

pub use labels::Labels;
pub use liveness::{LivenessPolicy, NodeStatus};
pub use node::{Capabilities, Gpu, Metrics, MetricsSample, Node, RunningContainer, Transport};

/// Version of the agent <-> server protocol this build speaks.
/// 2: Hello lists the agent's open tasks; blobs travel over the stream.
pub const PROTOCOL_VERSION: u32 = 2;

/// Version of this drover build.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");

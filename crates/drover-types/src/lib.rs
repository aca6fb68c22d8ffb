//! The typed model shared by drover's server, agent and CLI: nodes, capabilities, metrics, liveness,
//! labels, join tokens, operators, tasks, actions, sessions, manifests and their signatures, the limits
//! every message is held to, and the REST API's bodies. Pure data and pure functions, no I/O, and no other
//! drover crate: everything else depends on this one.

pub mod action;
pub mod api;
pub mod audit;
pub mod base64;
pub mod duration;
pub mod envelope;
pub mod gpu;
pub mod ids;
pub mod labels;
pub mod limits;
pub mod liveness;
pub mod manifest;
pub mod node;
pub mod operator;
pub mod outcome;
pub mod rollout;
pub mod session;
pub mod signing;
pub mod size;
pub mod task;
pub mod token;
pub mod url;
pub mod version;

pub use labels::Labels;
pub use liveness::{LivenessPolicy, NodeStatus};
pub use node::{Capabilities, Gpu, Metrics, MetricsSample, Node, RunningContainer, Transport};

/// Version of the agent <-> server protocol this build speaks.
/// 2: Hello lists the agent's open tasks; blobs travel over the stream.
pub const PROTOCOL_VERSION: u32 = 2;

/// HTTP/2 flow-control window of an agent's stream, both ways: credit, not a buffer, so idle streams cost
/// nothing, while bulk output and blobs are not throttled to one default 64 KiB window per round trip.
pub const STREAM_WINDOW: u32 = 4 * 1024 * 1024;

/// Version of this drover build.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");

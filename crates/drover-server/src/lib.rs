//! The drover control plane: the agent gateway (gRPC over mTLS), the REST API, fleet state and its store.

mod admin_token;
pub mod cluster;
pub mod fleet;
pub mod gateway;
pub mod http;
pub mod links;
mod memory;
pub mod metrics;
mod percent;
pub mod pki;
mod rlimit;
pub mod server;
pub mod store;
mod sync;

pub use fleet::{Fleet, desired, tasks};
pub use server::{RunningServer, ServerConfig, ServerError};

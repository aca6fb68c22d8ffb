//! The drover control plane: the agent gateway (gRPC over mTLS), the REST API, fleet state and its store.

pub mod api;
pub mod desired;
pub mod fleet;
pub mod gateway;
pub mod links;
pub mod pki;
pub mod server;
pub mod store;
pub mod tasks;

pub use fleet::Fleet;
pub use server::{RunningServer, ServerConfig, ServerError};

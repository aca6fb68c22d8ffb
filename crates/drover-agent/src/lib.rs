//! The drover node agent as a library: configuration, identity (enrollment and the state dir), the link to
//! the server, and inventory (capabilities and metrics). The `drover-agent` binary is a thin shell over it.

pub mod actions;
pub mod backoff;
pub mod commands;
pub mod config;
pub mod converge;
pub mod daemon;
pub mod docker;
pub mod identity;
pub mod inventory;
pub mod link;
pub mod metrics_listen;
pub mod policy;
pub mod servers;
pub mod tasks;

pub use config::AgentConfig;

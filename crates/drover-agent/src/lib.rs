//! The drover node agent as a library; the `drover-agent` binary is a thin shell over it. [`link`] runs the
//! agent: it enrolls when the state dir holds no identity ([`identity`]), holds one mTLS stream to a server
//! ([`servers`]), sends inventory and heartbeats ([`inventory`]) and hands each server message to the part
//! that owns it: action plugins ([`actions`]), daemon plugins ([`daemon`]), tasks ([`tasks`]) and desired
//! state ([`converge`]). The node's own [`policy`] and, where keys are pinned, signed [`commands`] bound what
//! any of them does. Imports between sibling modules run one way, never in a cycle; what two of them share
//! has its own module ([`transport_error`], [`backoff`], [`docker`]).

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
pub mod transport_error;

pub use config::AgentConfig;

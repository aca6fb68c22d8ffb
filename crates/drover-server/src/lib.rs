//! The drover control plane, in layers (docs/architecture.md draws them): [`http`] (REST API, dashboard,
//! `/metrics`, OpenAPI) and [`gateway`] (the agents' gRPC stream over mTLS) translate; [`fleet`]'s services make
//! every decision and reach nodes through [`reach`] (one port, `Route`: the streams here, `Links`, or the
//! other replicas over NATS, `Nats`); [`store`] keeps the records (SQLite or PostgreSQL, one trait per
//! aggregate). [`server`] starts and stops it all; [`pki`] is
//! the CA and [`cluster`] shares it between replicas.

mod admin_token;
pub mod cluster;
pub mod fleet;
pub mod gateway;
pub mod http;
mod memory;
pub mod metrics;
mod percent;
pub mod pki;
pub mod reach;
mod rlimit;
pub mod server;
pub mod store;
mod sync;

pub use fleet::{Fleet, desired, tasks};
pub use server::{RunningServer, ServerConfig, ServerError};

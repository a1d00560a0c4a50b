//! Baton: a distributed-transaction coordinator.
//!
//! An application defines a saga (steps with compensations) or a two-phase commit in code and
//! hands it to a Baton coordinator, which logs it durably (PostgreSQL, or an embedded SQLite file)
//! and drives the participant services over gRPC to an outcome, across its own crashes.
//!
//! The modules follow the architecture: [`model`] → [`engine`] (pure decisions) →
//! [`coordinator`] (the driver: calls, retries, the log writer) → [`store`] (the log), with the
//! two SDKs beside them: [`client`] for applications and [`participant`] for services.

pub mod api;
pub mod auth;
pub mod bench;
pub mod cli;
pub mod client;
pub mod coordinator;
pub mod engine;
pub mod http;
pub mod model;
pub mod participant;
pub mod registry;
pub mod store;
pub mod telemetry;
pub mod tls;
pub mod trace;
pub mod transport;

/// Code generated from `proto/baton/v1/*.proto`.
pub mod proto {
    tonic::include_proto!("baton.v1");
}

/// This build's version, recorded in the coordinator membership table.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");

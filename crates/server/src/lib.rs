//! Baton's coordinator as a library.
//!
//! The modules follow the architecture (docs/ARCHITECTURE.md): [`model`] → [`engine`] (pure
//! decisions) → [`coordinator`] (the driver: calls, retries, the log writer) → [`store`] (the
//! log), with the [`registry`] of participant services beside them and the doors in front
//! ([`api`]: gRPC, and HTTP for the JSON API, the console, health and metrics, both behind
//! bearer tokens). The `baton` command (`baton-cli`) runs it; applications and participants use the SDK
//! (`baton-tx`).

pub mod api;
pub mod coordinator;
pub mod engine;
pub mod model;
pub mod registry;
pub mod store;
pub mod telemetry;
pub mod transport;

use baton_tx::{tls, trace};
use baton_tx_proto as proto;

/// This build's version, recorded in the coordinator membership table.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");

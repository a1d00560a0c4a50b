//! Baton's Rust SDK.
//!
//! - [`client`]: start sagas and two-phase commits on a Baton coordinator, wait for their
//!   outcome, and inspect, cancel or retry them.
//! - [`participant`]: serve the steps of a saga or the branches of a two-phase commit, and
//!   register with a coordinator; with the `postgres` or `sqlite` feature, the
//!   [`participant::barrier`] runs each call's business effect exactly once.
//! - [`types`]: the vocabulary both sides share (ids, states, endpoints).
//!
//! The wire protocol is gRPC (`baton-tx-proto`); this crate converts it to the types here once,
//! at the edge.

pub mod client;
pub mod participant;
pub mod tls;
pub mod trace;
pub mod transport;
pub mod types;

use baton_tx_proto as proto;

pub use client::Client;
pub use types::{TxId, TxKind, TxState};

//! Baton's Rust SDK.
//!
//! - [`client`]: start sagas and two-phase commits on a Baton coordinator, wait for their
//!   outcome, and inspect, cancel or retry them.
//! - [`participant`]: serve the steps of a saga or the branches of a two-phase commit, and
//!   register with a coordinator; with the `postgres` or `sqlite` feature, the
//!   `participant::barrier` runs each call's business effect exactly once.
//! - [`types`]: the vocabulary both sides share (ids, states, event kinds, endpoints).
//! - [`tls`] and [`trace`]: TLS files and W3C trace context, for clients and participants. Shared
//!   with the coordinator (`baton-server`), which uses them for its own ports and calls.
//!
//! The wire protocol is gRPC (`baton-tx-proto`); this crate converts it to the types here once,
//! at the edge, and no generated type appears in its API.

pub mod client;
pub mod participant;
pub mod tls;
pub mod trace;
// Plumbing shared with the coordinator (`baton-server`), not part of the SDK's API.
#[doc(hidden)]
pub mod transport;
pub mod types;
#[doc(hidden)]
pub mod wire;

use baton_tx_proto as proto;

pub use client::Client;
pub use types::{TxId, TxKind, TxState};

/// README.md's Rust examples, compiled as doctests so they stay true.
#[cfg(doctest)]
#[doc = include_str!("../../../README.md")]
pub struct ReadmeDoctests;

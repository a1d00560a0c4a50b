//! Baton's gRPC protocol, generated from `proto/baton/v1/*.proto`: the messages, a client and a
//! server for each of the two services (`Coordinator`, which applications and operators call,
//! and `Participant`, which the coordinator calls).
//!
//! Applications use the typed SDK (`baton-tx`) rather than these types; this crate is for code
//! that speaks the wire protocol itself.

#![allow(missing_docs, clippy::all)]

tonic::include_proto!("baton.v1");

//! How the coordinator reaches participants: gRPC over the SDK's channels
//! ([`GrpcChannel`], [`H2Channel`]), and HTTP/JSON ([`http`]).

pub mod http;

pub use baton_tx::transport::*;

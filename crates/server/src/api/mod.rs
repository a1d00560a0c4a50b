//! The coordinator's doors: the gRPC service ([`grpc`]), the HTTP server ([`http`]: the JSON API,
//! the console, health and metrics), the bearer-token checks both apply ([`auth`]), the
//! checks on client input ([`validate`]) and the conversion between wire and model
//! ([`convert`]) both share, and [`serve`], which runs them.

mod admission;
pub mod auth;
pub mod convert;
pub mod grpc;
pub mod http;
mod server;
pub mod validate;

pub use grpc::{status_of, CoordinatorService};
pub use server::{
    serve, ServeConfig, ServeError, Serving, DEFAULT_DRAIN, DEFAULT_HEADER_TIMEOUT,
    DEFAULT_MAX_CLIENT_CONNECTIONS,
};
pub use validate::Limits;

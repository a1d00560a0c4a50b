//! The coordinator's doors: the gRPC service ([`grpc`]), the HTTP server ([`http`]: the JSON API,
//! the console, health and metrics), the bearer-token checks both apply ([`auth`]), the
//! validation and conversion both share ([`convert`]), and [`serve`], which runs them.

pub mod auth;
pub mod convert;
pub mod grpc;
pub mod http;
mod server;

pub use convert::Limits;
pub use grpc::{status_of, CoordinatorService};
pub use server::{serve, ServeConfig, ServeError, Serving};

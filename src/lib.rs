//! The `baton` command: `serve` runs a coordinator (`baton-server`), `bench` measures one against
//! raw PostgreSQL, and the other subcommands inspect and operate a running coordinator through
//! the SDK (`baton-tx`).

pub mod bench;
pub mod cli;

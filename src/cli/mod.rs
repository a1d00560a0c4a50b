//! The `baton` command line (CLI helper owns this file; `serve.rs` belongs to the coordinator work).
pub mod serve;

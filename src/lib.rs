//! The `baton` command: `serve` runs a coordinator (`baton-server`), `bench` measures one against
//! raw PostgreSQL, and the other subcommands inspect and operate a running coordinator through
//! the SDK (`baton-tx`).

// The doc comments on clap arguments are `--help` text, written for a terminal: `NAME:ROLES[:NS]`
// and `<hostname>` there are not links or HTML.
#![allow(rustdoc::broken_intra_doc_links, rustdoc::invalid_html_tags)]

pub mod bench;
pub mod cli;
pub mod duration;
pub mod log_fields;

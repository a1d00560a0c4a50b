//! `baton serve` and `baton migrate`.
//!
//! Settings come from flags, `BATON_*` environment variables, or a TOML file (`--config`), in
//! that order of precedence; anything unset takes the default shown in `--help`.
//!
//! - [`args`]: the flags, which are also the file's keys ([`ServeArgs`]);
//! - [`config`]: durations, the file, and how the layers merge;
//! - `run`: the merged settings checked and turned into the server's configuration, and the
//!   commands themselves.

pub mod args;
pub mod config;
mod run;

pub use self::args::{MigrateArgs, ServeArgs};
pub use self::config::{parse_retention, HumanDuration};
pub use self::run::{migrate, serve};

/// Default store: an SQLite file in the working directory (no setup).
pub const DEFAULT_DATABASE_URL: &str = "sqlite://baton.db";
/// Default gRPC address.
pub const DEFAULT_LISTEN: &str = "127.0.0.1:7600";
/// Default HTTP address (health and metrics).
pub const DEFAULT_HTTP_LISTEN: &str = "127.0.0.1:7601";

/// After the flags in `baton serve --help`: how values are written and where they come from.
pub const AFTER_HELP: &str = "Every setting is a flag, a BATON_* environment variable and a key \
of the --config file, in that order of precedence: --lease is BATON_LEASE and lease; the \
repeatable --endpoint, --policy and --auth-token are BATON_ENDPOINTS, BATON_POLICIES and \
BATON_AUTH_TOKENS, and the lists endpoints, policies and auth_tokens. Durations are written 10s, \
500ms, 2m, 1h30m or 7d; a bare number is milliseconds. The former *_ms spellings (--lease-ms, \
BATON_LEASE_MS, lease_ms) still work.";

/// Why `baton serve` refuses to start without an auth choice, and what to do.
pub const NO_AUTH_CONFIGURED: &str = "no authentication configured: give bearer tokens with \
--auth-token NAME:ROLES[:NAMESPACE]=sha256:HEX (repeatable; BATON_AUTH_TOKENS, comma-separated) \
or --auth-tokens-file PATH (one entry per line), hashing each token with `baton auth hash-token`; \
or pass --no-auth (BATON_NO_AUTH=true) to serve without authentication on a trusted network";

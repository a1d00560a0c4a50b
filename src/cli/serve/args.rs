//! The arguments of `baton serve` and `baton migrate`.
//!
//! [`ServeArgs`] is both the command line and the config file: every field is a flag, a
//! `BATON_*` variable and a key of the TOML file ([`super::config`] layers them). Each flag is an
//! `Option` with no clap default, so a value is `Some` only when it was given; the defaults are
//! applied once every layer is merged ([`ServeArgs::to_config`]), and `[default: ...]` in the help
//! text says what they are.

use std::net::SocketAddr;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use super::config::HumanDuration;

/// Options of `baton serve`. Each field is a flag, a `BATON_<FIELD>` variable and the file key
/// `<field>` (a test checks all three).
#[derive(Debug, Default, Clone, clap::Args, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "snake_case")]
pub struct ServeArgs {
    /// A TOML file with any of these settings (flags and environment win over it).
    #[arg(long, env = "BATON_CONFIG")]
    #[serde(skip)]
    pub config: Option<PathBuf>,
    /// gRPC listen address [default: 127.0.0.1:7600].
    #[arg(long, env = "BATON_LISTEN")]
    pub listen: Option<SocketAddr>,
    /// HTTP address for /healthz, /readyz, /metrics, the /v1 API and the /ui console
    /// [default: 127.0.0.1:7601]; "off" serves
    /// no HTTP.
    #[arg(long, env = "BATON_HTTP_LISTEN")]
    pub http_listen: Option<String>,
    /// Serve the web console at /ui on the HTTP port: "on" or "off" [default: on].
    #[arg(long, env = "BATON_UI", value_name = "on|off")]
    pub ui: Option<String>,
    /// The log: postgres://user@host/db, or sqlite://path for the embedded store
    /// [default: sqlite://baton.db]. An SQLite file serves one coordinator only.
    #[arg(long, env = "BATON_DATABASE_URL")]
    pub database_url: Option<String>,
    /// This coordinator's id in the log; keep it stable across restarts so that a restart
    /// resumes its own transactions at once [default: baton-<hostname>-<port>].
    #[arg(long, env = "BATON_ID")]
    pub id: Option<String>,
    /// Do not apply schema migrations at start-up (run `baton migrate` instead).
    #[arg(long, env = "BATON_NO_MIGRATE", num_args = 0..=1, default_missing_value = "true")]
    pub no_migrate: Option<bool>,
    /// Per-call timeout of steps that set none [default: 10s].
    #[arg(
        long,
        env = "BATON_DEFAULT_TIMEOUT",
        value_name = "DURATION",
        alias = "default-timeout-ms"
    )]
    #[serde(alias = "default_timeout_ms")]
    pub default_timeout: Option<HumanDuration>,
    /// Attempts per call of steps that set no retry policy [default: 5].
    #[arg(long, env = "BATON_DEFAULT_MAX_ATTEMPTS")]
    pub default_max_attempts: Option<u32>,
    /// First retry backoff [default: 100ms]; it doubles up to the max, with full jitter.
    #[arg(
        long,
        env = "BATON_DEFAULT_INITIAL_BACKOFF",
        value_name = "DURATION",
        alias = "default-initial-backoff-ms"
    )]
    #[serde(alias = "default_initial_backoff_ms")]
    pub default_initial_backoff: Option<HumanDuration>,
    /// Largest retry backoff [default: 10s].
    #[arg(
        long,
        env = "BATON_DEFAULT_MAX_BACKOFF",
        value_name = "DURATION",
        alias = "default-max-backoff-ms"
    )]
    #[serde(alias = "default_max_backoff_ms")]
    pub default_max_backoff: Option<HumanDuration>,
    /// Largest step payload in bytes [default: 1048576].
    #[arg(long, env = "BATON_MAX_PAYLOAD_BYTES")]
    pub max_payload_bytes: Option<usize>,
    /// Most steps in one saga [default: 100].
    #[arg(long, env = "BATON_MAX_STEPS")]
    pub max_steps: Option<usize>,
    /// Unfinished transactions driven at once; Start beyond it is refused [default: 10000].
    #[arg(long, env = "BATON_MAX_INFLIGHT")]
    pub max_inflight: Option<usize>,
    /// Calls waiting on a transaction at once (Wait, Watch, Start with wait, over gRPC and
    /// HTTP); one more is refused [default: 10000].
    #[arg(long, env = "BATON_MAX_WAITING")]
    pub max_waiting: Option<usize>,
    /// Coordinator lease: a coordinator silent this long is dead [default: 15s].
    #[arg(long, env = "BATON_LEASE", value_name = "DURATION", alias = "lease-ms")]
    #[serde(alias = "lease_ms")]
    pub lease: Option<HumanDuration>,
    /// Heartbeat and claim interval, at least 10ms [default: 2s].
    #[arg(
        long,
        env = "BATON_CLAIM_INTERVAL",
        value_name = "DURATION",
        alias = "claim-interval-ms"
    )]
    #[serde(alias = "claim_interval_ms")]
    pub claim_interval: Option<HumanDuration>,
    /// On SIGTERM, how long open requests may take to finish before they are cut off
    /// [default: 10s].
    #[arg(
        long,
        env = "BATON_DRAIN_TIMEOUT",
        value_name = "DURATION",
        alias = "drain-timeout-ms"
    )]
    #[serde(alias = "drain_timeout_ms")]
    pub drain_timeout: Option<HumanDuration>,
    /// How long a client may take to send a request's headers on the HTTP port (or stay idle
    /// between requests), and to open its connection on the gRPC port; a slower connection is
    /// closed [default: 30s].
    #[arg(long, env = "BATON_HEADER_TIMEOUT", value_name = "DURATION")]
    pub header_timeout: Option<HumanDuration>,
    /// Client connections open at once on the gRPC and HTTP ports together; one more is closed
    /// as it arrives [default: 10000, or fewer if the open-file limit leaves less room].
    #[arg(long, env = "BATON_MAX_CLIENT_CONNECTIONS")]
    pub max_client_connections: Option<usize>,
    /// Group-commit batches the log writer commits at once (1 to 64), each on a database
    /// connection of its own: with more than one, a batch executes while another waits for its
    /// commit to reach the disk [default: 2 on PostgreSQL, 1 on SQLite].
    #[arg(long, env = "BATON_LOG_WRITERS")]
    pub log_writers: Option<usize>,
    /// With more than one log writer, writes that must be waiting before a batch starts while
    /// another is committing; fewer wait for the next batch, which saves a commit (1 to 512)
    /// [default: 32].
    #[arg(long, env = "BATON_LOG_PIPELINE_MIN")]
    pub log_pipeline_min: Option<usize>,
    /// How long a transaction's progress may wait before it is queued to the log (at most 10s);
    /// a transaction that ends sooner writes its progress with its outcome. The outcome, a 2PC
    /// decision and answers to callers are always written at once [default: 100ms].
    #[arg(
        long,
        env = "BATON_PROGRESS_FLUSH",
        value_name = "DURATION",
        alias = "progress-flush-ms"
    )]
    #[serde(alias = "progress_flush_ms")]
    pub progress_flush: Option<HumanDuration>,
    /// Database connections for everything but log writes [default: 16].
    #[arg(long, env = "BATON_MAX_CONNECTIONS")]
    pub max_connections: Option<u32>,
    /// A participant endpoint configured statically, as service=http://host:port (repeatable;
    /// in the environment, comma-separated). A URL with a path (service=http://host:port/base)
    /// is an HTTP/JSON participant (docs/HTTP.md).
    #[arg(long = "endpoint", env = "BATON_ENDPOINTS", value_delimiter = ',')]
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub endpoints: Vec<String>,
    /// A service's load-balancing policy, as service=POLICY (repeatable; in the environment,
    /// comma-separated). POLICY is round_robin (the default), weighted (smooth weighted round
    /// robin over the registered weights), random, least_outstanding (fewest calls in flight),
    /// consistent_hash (all branches of a transaction go to one endpoint) or
    /// consistent_hash:label=NAME (hash that transaction label instead, else the transaction id).
    #[arg(
        long = "policy",
        env = "BATON_POLICIES",
        value_delimiter = ',',
        value_name = "SERVICE=POLICY"
    )]
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub policies: Vec<String>,
    /// How long a service's endpoint list is reused before the registry is read again;
    /// endpoints that register or leave gain or lose traffic within it [default: 1s].
    #[arg(
        long,
        env = "BATON_REGISTRY_REFRESH",
        value_name = "DURATION",
        alias = "registry-refresh-ms"
    )]
    #[serde(alias = "registry_refresh_ms")]
    pub registry_refresh: Option<HumanDuration>,
    /// TCP connect timeout of connections to participants [default: 2s].
    #[arg(
        long,
        env = "BATON_CONNECT_TIMEOUT",
        value_name = "DURATION",
        alias = "connect-timeout-ms"
    )]
    #[serde(alias = "connect_timeout_ms")]
    pub connect_timeout: Option<HumanDuration>,
    /// A bearer token callers may present, as NAME:ROLES[:NAMESPACE]=sha256:HEX (repeatable; in
    /// the environment, comma-separated). ROLES: client, operator, participant, joined by +. A
    /// client token with a NAMESPACE only reaches transactions of that namespace. Only the
    /// token's SHA-256 is configured: make it with `baton auth hash-token`.
    #[arg(
        long = "auth-token",
        env = "BATON_AUTH_TOKENS",
        value_delimiter = ',',
        value_name = "NAME:ROLES[:NAMESPACE]=sha256:HEX"
    )]
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub auth_tokens: Vec<String>,
    /// A file of bearer tokens, one NAME:ROLES[:NAMESPACE]=sha256:HEX per line (# comments);
    /// used together with any --auth-token.
    #[arg(long, env = "BATON_AUTH_TOKENS_FILE")]
    pub auth_tokens_file: Option<PathBuf>,
    /// Serve without authentication: every caller may call every method. Only on loopback or a
    /// private network. Either this or at least one token is required.
    #[arg(long, env = "BATON_NO_AUTH", num_args = 0..=1, default_missing_value = "true")]
    pub no_auth: Option<bool>,
    /// How long finished (committed, compensated, aborted) transactions and their history are
    /// kept before the background sweep deletes them, such as 7d, 12h, 30m or 90s; "off" keeps
    /// them forever. Failed and unfinished transactions are never deleted [default: 7d].
    #[arg(long, env = "BATON_RETENTION", value_name = "DURATION|off")]
    pub retention: Option<String>,
    /// Time between two retention sweeps [default: 1m].
    #[arg(
        long,
        env = "BATON_RETENTION_SWEEP",
        value_name = "DURATION",
        alias = "retention-sweep-ms"
    )]
    #[serde(alias = "retention_sweep_ms")]
    pub retention_sweep: Option<HumanDuration>,
    /// Transactions the retention sweep deletes per database transaction, at most 10000
    /// [default: 500].
    #[arg(long, env = "BATON_RETENTION_BATCH")]
    pub retention_batch: Option<u32>,
    /// Serve gRPC and HTTP over TLS with this certificate chain (PEM); needs --tls-key.
    #[arg(long, env = "BATON_TLS_CERT", value_name = "PEM")]
    pub tls_cert: Option<PathBuf>,
    /// The private key of --tls-cert (PEM).
    #[arg(long, env = "BATON_TLS_KEY", value_name = "PEM")]
    pub tls_key: Option<PathBuf>,
    /// Mutual TLS on the gRPC port: clients must present a certificate this CA (PEM) signed.
    /// The HTTP port never asks for one.
    #[arg(long, env = "BATON_TLS_CLIENT_CA", value_name = "PEM")]
    pub tls_client_ca: Option<PathBuf>,
    /// The CA (PEM) that participants' certificates on https:// endpoints must chain to;
    /// https:// endpoints cannot be called without it.
    #[arg(long, env = "BATON_PARTICIPANT_CA", value_name = "PEM")]
    pub participant_ca: Option<PathBuf>,
    /// Client certificate (PEM) presented to participants that require mutual TLS; needs
    /// --participant-key and --participant-ca.
    #[arg(long, env = "BATON_PARTICIPANT_CERT", value_name = "PEM")]
    pub participant_cert: Option<PathBuf>,
    /// The private key of --participant-cert (PEM).
    #[arg(long, env = "BATON_PARTICIPANT_KEY", value_name = "PEM")]
    pub participant_key: Option<PathBuf>,
    /// How often the TLS files are checked for changes, at least 10ms; new connections use
    /// changed files, and a bad new file is logged and the old one kept [default: 5s].
    #[arg(
        long,
        env = "BATON_TLS_RELOAD",
        value_name = "DURATION",
        alias = "tls-reload-ms"
    )]
    #[serde(alias = "tls_reload_ms")]
    pub tls_reload: Option<HumanDuration>,
}

/// Options of `baton migrate`.
#[derive(Debug, clap::Args)]
pub struct MigrateArgs {
    /// The log to migrate [default: sqlite://baton.db].
    #[arg(long, env = "BATON_DATABASE_URL")]
    pub database_url: Option<String>,
}

//! The `baton` command line: `serve`, `migrate`, the operator commands `tx` and
//! `participants`, which talk to a coordinator through the client SDK, and `bench`.

mod auth;
pub mod bench;
mod coordinators;
pub mod output;
mod participants;
pub mod serve;
mod tx;

use clap::{Args, Parser, Subcommand, ValueEnum};

pub use self::auth::AuthCommand;
pub use self::participants::ParticipantsCommand;
pub use self::tx::TxCommand;
use baton_tx::client::{Client, ClientError};

/// Baton: a distributed-transaction coordinator for sagas and two-phase commits.
#[derive(Debug, Parser)]
#[command(name = "baton", version, about)]
pub struct Cli {
    /// Log line format.
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Text, env = "BATON_LOG_FORMAT")]
    pub log_format: LogFormat,
    /// Threads that run this process's tasks (1 to 256) [default: one per CPU; for `bench`, half
    /// the CPUs, at least 1]. Fewer threads hand fewer tasks from one thread to another: on 2
    /// CPUs shared with PostgreSQL, `baton serve --worker-threads 1` ran a W1 saga in 1.2 ms
    /// instead of 1.66 (docs/BENCHMARKS.md). With 1, every task runs on the main thread (a
    /// current-thread runtime).
    #[arg(long, global = true, env = "BATON_WORKER_THREADS", value_parser = clap::value_parser!(u16).range(1..=256))]
    pub worker_threads: Option<u16>,
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

impl Cli {
    /// The runtime's worker threads: `--worker-threads`, else the command's default.
    pub fn worker_threads(&self) -> usize {
        let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
        self.worker_threads
            .map_or_else(|| default_worker_threads(&self.command, cpus), usize::from)
    }
}

/// One thread per CPU, except for `bench`: half of them, at least one. The bench runs its
/// coordinator, its clients, its participants and the database on one machine, where a task
/// woken on another thread costs a thread wake-up each time, more than the second thread gained
/// on 2 CPUs (docs/BENCHMARKS.md). A coordinator keeps one thread per CPU by default until one
/// thread has been run as long as two have; `--worker-threads 1` is the setting for a small
/// machine shared with its database.
pub fn default_worker_threads(command: &Command, cpus: usize) -> usize {
    match command {
        Command::Bench(_) => (cpus / 2).max(1),
        _ => cpus.max(1),
    }
}

/// How log lines are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line, for log collectors.
    Json,
}

/// The `baton` subcommands.
// Parsed once per process; the size of the largest variant does not matter.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run a coordinator.
    #[command(after_help = serve::AFTER_HELP)]
    Serve(serve::ServeArgs),
    /// Apply the database migrations and exit.
    Migrate(serve::MigrateArgs),
    /// Inspect and operate transactions.
    Tx {
        /// Where the coordinator is, and how to print.
        #[command(flatten)]
        remote: Remote,
        /// The transaction command.
        #[command(subcommand)]
        command: TxCommand,
    },
    /// Inspect the participant registry.
    Participants {
        /// Where the coordinator is, and how to print.
        #[command(flatten)]
        remote: Remote,
        /// The participants command.
        #[command(subcommand)]
        command: ParticipantsCommand,
    },
    /// The live coordinators sharing this log, with the unfinished transactions each owns.
    Coordinators {
        /// Where the coordinator is, and how to print.
        #[command(flatten)]
        remote: Remote,
    },
    /// Bearer tokens for `serve --auth-token`.
    Auth {
        /// The auth command.
        #[command(subcommand)]
        command: AuthCommand,
    },
    /// Measure throughput and latency of the reference workloads against a raw-database baseline.
    Bench(bench::BenchArgs),
    /// Serve the bench's participant service and print its endpoint (used by `bench`).
    #[command(name = "bench-participant", hide = true)]
    BenchParticipant(bench::BenchParticipantArgs),
}

/// Options of every command that talks to a running coordinator.
#[derive(Clone, PartialEq, Eq, Args)]
pub struct Remote {
    /// The coordinator's gRPC address.
    #[arg(
        long,
        global = true,
        env = "BATON_ADDR",
        default_value = "http://127.0.0.1:7600"
    )]
    pub addr: String,
    /// Print one JSON document instead of tables.
    #[arg(long, global = true)]
    pub json: bool,
    /// The bearer token to present (a coordinator with auth tokens needs one).
    #[arg(long, global = true, env = "BATON_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
    /// For an https:// address: the CA (PEM) the coordinator's certificate must chain to.
    #[arg(long, global = true, env = "BATON_CA_CERT", value_name = "PEM")]
    pub ca_cert: Option<std::path::PathBuf>,
    /// For a coordinator that requires mutual TLS: this client's certificate (PEM); needs
    /// --client-key.
    #[arg(long, global = true, env = "BATON_CLIENT_CERT", value_name = "PEM")]
    pub client_cert: Option<std::path::PathBuf>,
    /// The private key of --client-cert (PEM).
    #[arg(long, global = true, env = "BATON_CLIENT_KEY", value_name = "PEM")]
    pub client_key: Option<std::path::PathBuf>,
}

// By hand, so the token never reaches a debug print.
impl std::fmt::Debug for Remote {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Remote")
            .field("addr", &self.addr)
            .field("json", &self.json)
            .field("token", &self.token.as_ref().map(|_| "<redacted>"))
            .field("ca_cert", &self.ca_cert)
            .field("client_cert", &self.client_cert)
            .field("client_key", &self.client_key)
            .finish()
    }
}

impl Remote {
    async fn connect(&self) -> anyhow::Result<Client> {
        let connected = match self.tls()? {
            None => Client::connect(self.addr.clone()).await,
            Some(tls) => Client::connect_tls(std::slice::from_ref(&self.addr), &tls).await,
        };
        let client = match connected {
            Ok(client) => client,
            Err(ClientError::Connect { addr, source }) => {
                let reason = unreachable_reason(&addr, source.as_ref()).await;
                return Err(Unreachable { addr, reason }.into());
            }
            Err(other) => return Err(other.into()),
        };
        Ok(match &self.token {
            Some(token) => client.with_token(token)?,
            None => client,
        })
    }

    /// The TLS settings of the flags, used when the address is https://.
    fn tls(&self) -> anyhow::Result<Option<baton_tx::tls::ClientTls>> {
        let identity = match (&self.client_cert, &self.client_key) {
            (Some(cert), Some(key)) => Some((cert, key)),
            (None, None) => None,
            (Some(_), None) => anyhow::bail!("--client-cert needs --client-key"),
            (None, Some(_)) => anyhow::bail!("--client-key needs --client-cert"),
        };
        if !self.addr.starts_with("https://") {
            return Ok(None);
        }
        let Some(ca) = &self.ca_cert else {
            anyhow::bail!("--addr {} is https: give --ca-cert (the CA that signed the coordinator's certificate)", self.addr);
        };
        let mut tls = baton_tx::tls::ClientTls::new(ca);
        if let Some((cert, key)) = identity {
            tls = tls.identity(cert, key);
        }
        Ok(Some(tls))
    }
}

/// The coordinator could not be reached at all, said plainly: the transport's own error (a gRPC
/// status with its code's description, debug fields, an OS error number) means nothing to an
/// operator who only needs to know whether the address is wrong or the coordinator is down.
#[derive(Debug, thiserror::Error)]
#[error("cannot reach the coordinator at {addr}: {reason}")]
struct Unreachable {
    addr: String,
    reason: String,
}

/// How long the probe in [`unreachable_reason`] waits for a connection, as the client does.
const PROBE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(5);

/// Why connecting to `addr` failed, in a few words ("connection refused", "timed out").
///
/// Classified by the `io::ErrorKind` of the socket error, never by message text. The client's
/// own transport reports a failed connect as a gRPC status whose message has the socket error
/// already formatted into it, so when the error chain holds no `io::Error` the address is probed
/// with one plain TCP connect to learn the kind. If that connect succeeds, the failure was past
/// TCP (TLS, HTTP/2) and the transport's message is the best reason there is.
async fn unreachable_reason(addr: &str, source: &(dyn std::error::Error + 'static)) -> String {
    let mut cause = Some(source);
    while let Some(e) = cause {
        if let Some(io) = e.downcast_ref::<std::io::Error>() {
            return io_reason(io);
        }
        cause = e.source();
    }
    if let Some((host, port)) = host_port(addr) {
        let probe = tokio::net::TcpStream::connect((host.as_str(), port));
        match tokio::time::timeout(PROBE_TIMEOUT, probe).await {
            Err(_) => return std::io::ErrorKind::TimedOut.to_string(),
            Ok(Err(io)) => return io_reason(&io),
            Ok(Ok(_)) => {}
        }
    }
    match source.downcast_ref::<tonic::Status>() {
        Some(status) => status.message().to_string(),
        None => source.to_string(),
    }
}

/// An OS error by its kind ("connection refused"); anything else (a failed name lookup) by its
/// message, which is then all there is.
fn io_reason(e: &std::io::Error) -> String {
    if e.raw_os_error().is_some() {
        e.kind().to_string()
    } else {
        e.to_string()
    }
}

/// The host and port of a coordinator address such as `http://127.0.0.1:7600`.
fn host_port(addr: &str) -> Option<(String, u16)> {
    let uri: tonic::codegen::http::Uri = addr.parse().ok()?;
    let default = if uri.scheme_str() == Some("https") {
        443
    } else {
        80
    };
    let host = uri.host()?.trim_start_matches('[').trim_end_matches(']');
    Some((host.to_string(), uri.port_u16().unwrap_or(default)))
}

/// Run the parsed command line to completion.
///
/// A closed stdout (`baton tx list | head -1`) ends the command quietly and successfully, as it
/// would for any Unix filter: the reader has all it wanted.
pub async fn run(cli: Cli) -> anyhow::Result<()> {
    match dispatch(cli).await {
        Err(err) if err.is::<StdoutClosed>() => Ok(()),
        result => result,
    }
}

async fn dispatch(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Serve(args) => serve::serve(args).await,
        Command::Migrate(args) => serve::migrate(args).await,
        Command::Tx { remote, command } => tx::run(&remote, command).await,
        Command::Participants { remote, command } => participants::run(&remote, command).await,
        Command::Coordinators { remote } => coordinators::run(&remote).await,
        Command::Auth { command } => auth::run(command),
        Command::Bench(args) => bench::run(args).await,
        Command::BenchParticipant(args) => bench::participant(args).await,
    }
}

/// Print a JSON document on stdout.
fn print_json(value: &serde_json::Value) -> anyhow::Result<()> {
    let mut text = serde_json::to_string_pretty(value)?;
    text.push('\n');
    print_out(&text)
}

/// Stdout was closed before everything was written: the reader went away.
#[derive(Debug, thiserror::Error)]
#[error("stdout closed")]
struct StdoutClosed;

/// Writes `text` to stdout. `print!` panics when stdout is a pipe whose reader has exited (Rust
/// ignores SIGPIPE, so the write fails with EPIPE); this returns [`StdoutClosed`] instead, which
/// [`run`] turns into a quiet exit. Every command's output goes through here.
fn print_out(text: &str) -> anyhow::Result<()> {
    use std::io::Write as _;
    let mut stdout = std::io::stdout().lock();
    match stdout
        .write_all(text.as_bytes())
        .and_then(|()| stdout.flush())
    {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => Err(StdoutClosed.into()),
        Err(e) => Err(anyhow::Error::new(e).context("cannot write to stdout")),
    }
}

#[cfg(test)]
mod tests;

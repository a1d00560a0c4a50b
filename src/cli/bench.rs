//! `baton bench` (the reference workloads against an in-process coordinator, next to a raw-database
//! baseline) and its hidden helper `baton bench-participant`.

use std::net::SocketAddr;
use std::time::Duration;

use baton_tx::transport::ChannelKind;
use clap::ValueEnum;
use tokio_util::sync::CancellationToken;

use crate::bench::{self, BenchConfig, Participants, Protocol, Store, Workload};
use crate::duration::parse_duration;

/// Which workloads to run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum WorkloadArg {
    /// A 3-step saga whose participants succeed at once.
    W1,
    /// The same saga with step 3 declined, so steps 2 and 1 compensate.
    W2,
    /// Two-phase commit with two branches that vote yes and commit at once.
    W3,
    /// W1, W2 then W3.
    All,
}

/// How the coordinator calls the bench participants.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum ProtocolArg {
    /// gRPC participants.
    Grpc,
    /// HTTP/JSON participants (docs/HTTP.md).
    Http,
}

/// Options of `baton bench`.
#[derive(Debug, clap::Args)]
pub struct BenchArgs {
    /// The workload to run.
    #[arg(long, value_enum, default_value_t = WorkloadArg::All)]
    pub workload: WorkloadArg,
    /// Concurrent closed-loop clients; repeat the flag or give a comma list to run several.
    #[arg(long, value_delimiter = ',', default_values_t = [1, 32])]
    pub concurrency: Vec<usize>,
    /// Warm-up before each measured window, such as 3s or 500ms.
    #[arg(long, default_value = "3s", value_parser = parse_duration)]
    pub warmup: Duration,
    /// The measured window of each cell; only transactions finishing inside it count.
    #[arg(long, default_value = "15s", value_parser = parse_duration)]
    pub duration: Duration,
    /// Cut each cell's window into this many slices and run them in turn with the baseline's
    /// (baseline, Baton, baseline, Baton, ...), each slice after its own warm-up, adding up each
    /// side's slices: a host whose speed drifts during a cell then weighs on both sides alike.
    /// 1 runs the baseline's whole window, then Baton's.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..=100))]
    pub slices: u32,
    /// A PostgreSQL database to use as it is (give an empty one). Without it a fresh database
    /// baton_bench_<uuid> is created on postgres://postgres@127.0.0.1:5432 and dropped at the end.
    #[arg(long, conflicts_with = "sqlite")]
    pub database_url: Option<String>,
    /// Log to temporary SQLite files instead of PostgreSQL (the baseline too).
    #[arg(long)]
    pub sqlite: bool,
    /// Run the participant services inside the bench process instead of a child process.
    #[arg(long)]
    pub in_process_participants: bool,
    /// How the coordinator calls the participants: gRPC, or HTTP/JSON (the cost of that door).
    #[arg(long, value_enum, default_value_t = ProtocolArg::Grpc)]
    pub participants: ProtocolArg,
    /// The coordinator's database connections.
    #[arg(long, default_value_t = 16)]
    pub max_connections: u32,
    /// Print one JSON document instead of the table.
    #[arg(long)]
    pub json: bool,
    /// The gRPC channel for http:// endpoints (the bench clients' calls to the coordinator and the
    /// in-process coordinator's calls to the participants): h2 (hand-rolled over the h2 crate) or
    /// tonic (tonic's Channel). Default: $BATON_GRPC_CHANNEL, else h2. A coordinator started apart
    /// (--external) reads BATON_GRPC_CHANNEL from its own environment.
    #[arg(long, value_parser = parse_channel)]
    pub grpc_channel: Option<ChannelKind>,
    /// Drive a coordinator started apart (`baton serve --no-auth` on this machine, e.g.
    /// 127.0.0.1:7600) instead of one in this process. The participants are still started here
    /// on loopback; the baseline runs on --database-url (or a fresh database on the local server,
    /// or --sqlite), which should be the coordinator's database server.
    #[arg(long, value_name = "ADDR")]
    pub external: Option<String>,
}

fn parse_channel(s: &str) -> Result<ChannelKind, String> {
    s.parse()
}

/// Options of the hidden `baton bench-participant`.
#[derive(Debug, clap::Args)]
pub struct BenchParticipantArgs {
    /// Where to listen (loopback).
    #[arg(long, default_value = "127.0.0.1:0")]
    pub listen: SocketAddr,
    /// Serve the HTTP/JSON participant protocol instead of gRPC.
    #[arg(long)]
    pub http: bool,
}

impl BenchArgs {
    /// The bench configuration these options describe.
    pub fn to_config(&self) -> anyhow::Result<BenchConfig> {
        let workloads = match self.workload {
            WorkloadArg::W1 => vec![Workload::W1],
            WorkloadArg::W2 => vec![Workload::W2],
            WorkloadArg::W3 => vec![Workload::W3],
            WorkloadArg::All => Workload::ALL.to_vec(),
        };
        let participants = if self.in_process_participants {
            Participants::InProcess
        } else {
            Participants::Process {
                exe: std::env::current_exe()
                    .map_err(|e| anyhow::anyhow!("cannot find the baton executable: {e}"))?,
            }
        };
        let store = if self.sqlite {
            Store::Sqlite
        } else {
            Store::Postgres(self.database_url.clone())
        };
        anyhow::ensure!(!self.duration.is_zero(), "--duration must be above 0");
        anyhow::ensure!(
            self.duration / self.slices >= Duration::from_millis(1),
            "--duration {:?} cut into --slices {} leaves slices under a millisecond",
            self.duration,
            self.slices
        );
        Ok(BenchConfig {
            workloads,
            concurrency: self.concurrency.clone(),
            warmup: self.warmup,
            duration: self.duration,
            slices: self.slices,
            store,
            participants,
            protocol: match self.participants {
                ProtocolArg::Grpc => Protocol::Grpc,
                ProtocolArg::Http => Protocol::Http,
            },
            max_connections: self.max_connections.max(1),
        })
    }
}

/// Runs the bench, prints the table or the JSON document; Ctrl-C stops it and still cleans up.
pub async fn run(args: BenchArgs) -> anyhow::Result<()> {
    let config = args.to_config()?;
    let cancel = CancellationToken::new();
    let on_interrupt = cancel.clone();
    let interrupt = tokio::spawn(async move {
        if tokio::signal::ctrl_c().await.is_ok() {
            on_interrupt.cancel();
        }
    });
    if let Some(kind) = args.grpc_channel {
        anyhow::ensure!(
            baton_tx::transport::set_plaintext_channel(kind),
            "--grpc-channel {kind}: the channel kind was already fixed"
        );
    }
    let result = match &args.external {
        Some(addr) => bench::external::run(&config, addr, cancel).await,
        None => bench::run(&config, cancel).await,
    };
    interrupt.abort();
    let report = result?;
    if args.json {
        super::print_json(&report.to_json())?;
    } else {
        super::print_out(&format!(
            "grpc channel (http://): {}\n{}",
            baton_tx::transport::plaintext_channel(),
            report.to_table()
        ))?;
    }
    Ok(())
}

/// Serves the bench participant on loopback, prints its endpoint on stdout, and serves until
/// stdin closes (the bench process ended) or a termination signal arrives.
pub async fn participant(args: BenchParticipantArgs) -> anyhow::Result<()> {
    anyhow::ensure!(
        args.listen.ip().is_loopback(),
        "--listen must be a loopback address"
    );
    let server = if args.http {
        let server = bench::workloads::HttpServer::serve(args.listen).await?;
        super::print_out(&format!("{}\n", server.endpoint()))?;
        Either::Http(server)
    } else {
        let server = bench::workloads::participant().serve(args.listen).await?;
        super::print_out(&format!("{}\n", server.endpoint()))?;
        Either::Grpc(server)
    };
    let stdin_closed = CancellationToken::new();
    let closed = stdin_closed.clone();
    // A plain thread: a blocking read on the runtime's blocking pool would hold up its shutdown.
    std::thread::spawn(move || {
        let mut sink = Vec::new();
        let _ = std::io::Read::read_to_end(&mut std::io::stdin(), &mut sink);
        closed.cancel();
    });
    tokio::select! {
        _ = stdin_closed.cancelled() => {}
        _ = terminated() => {}
    }
    match server {
        Either::Grpc(server) => server.shutdown().await,
        Either::Http(server) => server.shutdown().await,
    }
    Ok(())
}

/// The bench participant being served.
enum Either {
    Grpc(baton_tx::participant::ServerHandle),
    Http(bench::workloads::HttpServer),
}

/// Resolves on SIGTERM or Ctrl-C.
async fn terminated() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        if let Ok(mut term) = signal(SignalKind::terminate()) {
            tokio::select! {
                _ = term.recv() => {}
                _ = tokio::signal::ctrl_c() => {}
            }
            return;
        }
    }
    let _ = tokio::signal::ctrl_c().await;
}

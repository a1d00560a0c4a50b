//! `baton bench`: the reference workloads of docs/ARCHITECTURE.md §13, run against an in-process
//! coordinator, each next to a same-run raw-database baseline so the result is a ratio that
//! holds on a noisy machine.
//!
//! A run sets up a scratch log ([`scratch`]), starts the participants (a child process by default,
//! see [`workloads`]) and a coordinator on loopback, then measures every (workload, concurrency)
//! cell as a closed loop ([`measure`]): the baseline ([`baseline`]) right before the Baton cell,
//! with the same number of clients, warm-up and window. [`report`] turns the samples into the
//! table and the JSON document. Durability is never relaxed, neither for Baton nor the baseline.

pub mod baseline;
pub mod cpu;
pub mod external;
pub mod gauges;
pub mod measure;
pub mod report;
pub mod scratch;
pub mod workloads;

use std::path::PathBuf;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

pub use self::report::{CellReport, Report};
pub use self::workloads::Workload;
use baton_server::api::auth::AuthConfig;
use baton_server::api::{self, ServeConfig, Serving};

/// The local server used when no database URL is given: a fresh database is created on it for the
/// run and dropped afterwards.
pub const DEFAULT_SERVER_URL: &str = "postgres://postgres@127.0.0.1:5432/postgres";

/// Which log the coordinator (and the baseline) writes to.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Store {
    /// PostgreSQL. `None`: create `baton_bench_<uuid>` on [`DEFAULT_SERVER_URL`] and drop it at
    /// the end. `Some(url)`: use that database as it is (give it an empty one).
    Postgres(Option<String>),
    /// Temporary SQLite files (one for Baton, one for the baseline), removed at the end.
    Sqlite,
}

/// Where the participant services run.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Participants {
    /// A child process: this executable run as `baton bench-participant`, so that its CPU time is
    /// measured apart from the coordinator's.
    Process {
        /// The `baton` binary to run.
        exe: PathBuf,
    },
    /// gRPC servers on loopback inside the bench process (their CPU time counts as the
    /// coordinator's).
    InProcess,
}

/// How the coordinator talks to the participant services.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Protocol {
    /// gRPC (`baton.v1.Participant`), the default.
    #[default]
    Grpc,
    /// HTTP/JSON participants (docs/HTTP.md): the endpoint has a base path.
    Http,
}

/// What to run and how long.
#[derive(Clone, Debug)]
pub struct BenchConfig {
    /// Workloads in order; each runs at every concurrency.
    pub workloads: Vec<Workload>,
    /// Closed-loop client counts.
    pub concurrency: Vec<usize>,
    /// Run before each measured window; its transactions do not count.
    pub warmup: Duration,
    /// The measured window; only transactions that finish inside it count.
    pub duration: Duration,
    /// Slices each cell's window is cut into, alternating between the baseline and Baton
    /// (at least 1): each slice measures `duration / slices` after its own warm-up.
    pub slices: u32,
    pub store: Store,
    pub participants: Participants,
    /// gRPC or HTTP/JSON participants.
    pub protocol: Protocol,
    /// Database connections of the coordinator's pool (PostgreSQL).
    pub max_connections: u32,
}

/// Why a bench run did not complete.
#[derive(Debug, thiserror::Error)]
pub enum BenchError {
    #[error("nothing to run: give at least one workload and one concurrency above 0")]
    Empty,
    #[error("cannot set up the bench database: {0}")]
    Database(String),
    #[error("cannot start the participants: {0}")]
    Participants(String),
    #[error("cannot start the coordinator: {0}")]
    Coordinator(String),
    #[error("baseline failed: {0}")]
    Baseline(String),
    #[error("cannot connect a bench client: {0}")]
    Client(String),
    #[error("interrupted")]
    Interrupted,
}

/// Runs every cell of `config` and returns the report. Everything it set up (database, temporary
/// files, participant process, coordinator) is torn down before it returns, also on error and when
/// `cancel` fires.
pub async fn run(config: &BenchConfig, cancel: CancellationToken) -> Result<Report, BenchError> {
    if config.workloads.is_empty() || config.concurrency.iter().all(|&c| c == 0) {
        return Err(BenchError::Empty);
    }
    let scratch = scratch::Scratch::create(&config.store).await?;
    // Not a select: an interrupted run still stops its coordinator and participants in order,
    // before the database they use is dropped.
    let result = run_on(config, &scratch, &cancel).await;
    scratch.remove().await;
    result
}

/// The part of [`run`] that needs the scratch log; whatever it starts it also stops.
async fn run_on(
    config: &BenchConfig,
    scratch: &scratch::Scratch,
    cancel: &CancellationToken,
) -> Result<Report, BenchError> {
    let participants =
        workloads::ParticipantHost::start(&config.participants, config.protocol).await?;
    let serving = match start_coordinator(&scratch.baton_url, config.max_connections).await {
        Ok(serving) => serving,
        Err(e) => {
            participants.stop().await;
            return Err(e);
        }
    };
    let result = run_cells(config, scratch, &serving, &participants, cancel).await;
    serving.shutdown().await;
    participants.stop().await;
    result
}

async fn run_cells(
    config: &BenchConfig,
    scratch: &scratch::Scratch,
    serving: &Serving,
    participants: &workloads::ParticipantHost,
    cancel: &CancellationToken,
) -> Result<Report, BenchError> {
    let baseline = baseline::Baseline::prepare(&scratch.baseline_url).await?;
    let gauges = gauges::Gauges::connect(&scratch.baseline_url).await;
    let endpoint = serving.endpoint();
    let cells = measure_cells(config, &baseline, &gauges, &endpoint, participants, cancel).await;
    gauges.close().await;
    baseline.finish().await;
    Ok(Report {
        store: scratch.describe(),
        participants: participants.describe(),
        warmup: config.warmup,
        duration: config.duration,
        slices: config.slices.max(1),
        cpus: std::thread::available_parallelism().map_or(1, |n| n.get()),
        cells: cells?,
    })
}

/// Every (workload, concurrency) cell against the coordinator at `coordinator`, each right after
/// its baseline; in-process and external runs alike. With `slices` above 1 a cell runs as that
/// many baseline and Baton slices in turn, each measuring `duration / slices` after its own
/// warm-up, and the slices of each side are added up: a host whose speed drifts over the minutes
/// of a cell (a shared virtual machine) then weighs on both sides alike instead of on whichever
/// ran second.
async fn measure_cells(
    config: &BenchConfig,
    baseline: &baseline::Baseline,
    gauges: &gauges::Gauges,
    coordinator: &str,
    participants: &workloads::ParticipantHost,
    cancel: &CancellationToken,
) -> Result<Vec<CellReport>, BenchError> {
    let slices = config.slices.max(1);
    let timing = measure::Timing {
        warmup: config.warmup,
        duration: config.duration / slices,
    };
    let interrupted = || {
        if cancel.is_cancelled() {
            Err(BenchError::Interrupted)
        } else {
            Ok(())
        }
    };
    let mut cells = Vec::new();
    for &workload in &config.workloads {
        for &clients in config.concurrency.iter().filter(|&&c| c > 0) {
            let plan = baseline::Plan::of(workload);
            let mut base = measure::Sample::default();
            let mut base_readings = gauges::Readings::default();
            let mut baton = workloads::BatonSample::default();
            for slice in 1..=slices {
                tracing::info!(%workload, clients, slice, slices, "baseline");
                let (sample, readings) =
                    baseline.run(plan, clients, timing, gauges, cancel).await?;
                interrupted()?;
                base.add(sample);
                base_readings.add(readings, slice);
                tracing::info!(%workload, clients, slice, slices, coordinator, "baton");
                let sample = workloads::run(
                    workload,
                    coordinator,
                    participants,
                    clients,
                    timing,
                    gauges,
                    cancel,
                )
                .await?;
                interrupted()?;
                baton.sample.add(sample.sample);
                baton.readings.add(sample.readings, slice);
            }
            cells.push(CellReport::new(
                workload,
                clients,
                baton,
                base,
                base_readings,
            ));
        }
    }
    Ok(cells)
}

/// A coordinator on a free loopback port with `baton serve`'s defaults (the server's), no HTTP
/// port (7601 may be a real coordinator's) and no authentication: it is in-process, on loopback,
/// and the bench's own clients carry no token.
async fn start_coordinator(
    database_url: &str,
    max_connections: u32,
) -> Result<Serving, BenchError> {
    let listen = std::net::SocketAddr::from(([127, 0, 0, 1], 0));
    let mut config = ServeConfig::new(listen, database_url, AuthConfig::Disabled);
    config.store.max_connections = max_connections;
    config.coordinator.id = format!("baton-bench-{}", std::process::id());
    api::serve(config)
        .await
        .map_err(|e| BenchError::Coordinator(e.to_string()))
}

#[cfg(test)]
mod tests;

//! `baton bench --external ADDR`: the same workloads against a coordinator started apart (`baton
//! serve`, on PostgreSQL or the embedded store), driven from this process as an external client.
//!
//! The bench still starts the participants (on loopback, so the coordinator must run on this
//! machine to call them) and still runs the raw-database baseline right before each cell. The
//! baseline goes to the bench's own log (`--database-url`, else a fresh database on the local
//! server, else `--sqlite`): give it the coordinator's database server so the ratio compares like
//! with like. The coordinator's CPU time is not measured (it is another process), and its
//! configuration (pool size, channel kind, auth) is whatever it was started with; it must accept
//! calls without a token (`baton serve --no-auth`).

use tokio_util::sync::CancellationToken;

use super::{baseline, gauges, scratch, workloads, BenchConfig, BenchError, Report};

/// The coordinator address as the client wants it: `http://` added when no scheme is given.
pub fn coordinator_url(addr: &str) -> String {
    let addr = addr.trim();
    if addr.starts_with("http://") || addr.starts_with("https://") {
        addr.to_string()
    } else {
        format!("http://{addr}")
    }
}

/// Runs every cell of `config` against the coordinator at `coordinator` and returns the report.
/// Whatever it set up (baseline tables or database, participants) is removed before it returns.
pub async fn run(
    config: &BenchConfig,
    coordinator: &str,
    cancel: CancellationToken,
) -> Result<Report, BenchError> {
    if config.workloads.is_empty() || config.concurrency.iter().all(|&c| c == 0) {
        return Err(BenchError::Empty);
    }
    let coordinator = coordinator_url(coordinator);
    let scratch = scratch::Scratch::create(&config.store).await?;
    let result = run_on(config, &coordinator, &scratch, &cancel).await;
    scratch.remove().await;
    result
}

async fn run_on(
    config: &BenchConfig,
    coordinator: &str,
    scratch: &scratch::Scratch,
    cancel: &CancellationToken,
) -> Result<Report, BenchError> {
    let participants =
        workloads::ParticipantHost::start(&config.participants, config.protocol).await?;
    let result = match baseline::Baseline::prepare(&scratch.baseline_url).await {
        Ok(baseline) => {
            let gauges = gauges::Gauges::connect(&scratch.baseline_url).await;
            let cells = super::measure_cells(
                config,
                &baseline,
                &gauges,
                coordinator,
                &participants,
                cancel,
            )
            .await;
            gauges.close().await;
            baseline.finish().await;
            cells
        }
        Err(e) => Err(e),
    };
    let report = result.map(|cells| Report {
        store: format!(
            "external coordinator {coordinator}; baseline on {}",
            scratch.describe()
        ),
        participants: participants.describe(),
        warmup: config.warmup,
        duration: config.duration,
        slices: config.slices.max(1),
        cpus: std::thread::available_parallelism().map_or(1, |n| n.get()),
        cells,
    });
    participants.stop().await;
    report
}

#[cfg(test)]
mod tests {
    use super::coordinator_url;

    #[test]
    fn a_bare_address_gets_http() {
        assert_eq!(coordinator_url("127.0.0.1:7600"), "http://127.0.0.1:7600");
        assert_eq!(coordinator_url("http://[::1]:7600"), "http://[::1]:7600");
        assert_eq!(coordinator_url("https://h:1"), "https://h:1");
    }
}

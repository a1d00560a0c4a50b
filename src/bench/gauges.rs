//! What a cell cost, read at the start and the end of its measured window: CPU time of the bench
//! process and of the participant process, how busy the whole machine was, and how much WAL the
//! PostgreSQL server wrote.
//!
//! The WAL figure is the server's `pg_current_wal_lsn()` advance over the window, so it counts
//! every database of that server: on a machine where nothing else writes to it, it is the cell's
//! own log volume (Baton's log writes, or the baseline's statements). It is `None` on SQLite.

use std::time::Duration;

use sqlx::{Connection, PgConnection};
use tokio::sync::Mutex;
use tokio_util::sync::CancellationToken;

use super::cpu;
use super::measure::Window;

/// The readings of one window; each is `None` where it cannot be read (not Linux, not
/// PostgreSQL, cancelled).
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Readings {
    /// CPU time of this process (coordinator and clients, or the baseline's clients).
    pub bench_cpu: Option<Duration>,
    /// CPU time of the participant process.
    pub participant_cpu: Option<Duration>,
    /// Bytes of WAL the database server wrote.
    pub wal_bytes: Option<u64>,
    /// The machine's CPU time spent working (user, system, interrupts), as a share of all CPU
    /// time, 0 to 1.
    pub machine_busy: Option<f64>,
    /// The machine's CPU time taken by the hypervisor for others (steal), as a share, 0 to 1.
    pub machine_steal: Option<f64>,
}

impl Readings {
    /// Adds the readings of the `nth` window (1-based, each as long as the others) to those of
    /// the `nth - 1` before it: CPU time and WAL add up, the machine's shares average. A reading
    /// missing from any window is missing from the sum.
    pub fn add(&mut self, other: Readings, nth: u32) {
        if nth <= 1 {
            *self = other;
            return;
        }
        let sum = |a: Option<Duration>, b: Option<Duration>| Some(a? + b?);
        let mean = |a: Option<f64>, b: Option<f64>| {
            let n = f64::from(nth);
            Some((a? * (n - 1.0) + b?) / n)
        };
        *self = Readings {
            bench_cpu: sum(self.bench_cpu, other.bench_cpu),
            participant_cpu: sum(self.participant_cpu, other.participant_cpu),
            wal_bytes: self.wal_bytes.zip(other.wal_bytes).map(|(a, b)| a + b),
            machine_busy: mean(self.machine_busy, other.machine_busy),
            machine_steal: mean(self.machine_steal, other.machine_steal),
        };
    }
}

/// Reads the gauges of a run; one per run, shared by its cells.
pub struct Gauges {
    wal: Option<Mutex<PgConnection>>,
}

impl Gauges {
    /// Gauges for a run whose database is `url`; WAL is read only when it is PostgreSQL and a
    /// connection can be opened (else the readings leave it out, with a warning).
    pub async fn connect(url: &str) -> Gauges {
        if baton_server::store::is_sqlite_url(url) {
            return Gauges { wal: None };
        }
        let wal = match PgConnection::connect(url).await {
            Ok(conn) => Some(Mutex::new(conn)),
            Err(e) => {
                tracing::warn!(error = %e, "no connection for WAL readings; WAL per transaction is left out");
                None
            }
        };
        Gauges { wal }
    }

    /// Closes the WAL connection.
    pub async fn close(self) {
        if let Some(conn) = self.wal {
            let _ = conn.into_inner().close().await;
        }
    }

    /// Reads everything at `window.start` and again at `window.end`; `participant` is the pid of
    /// the participant process, if any. All `None` when `cancel` fires first.
    pub async fn during(
        &self,
        window: Window,
        participant: Option<u32>,
        cancel: &CancellationToken,
    ) -> Readings {
        let wait = |until| async move {
            tokio::select! {
                _ = tokio::time::sleep_until(until) => true,
                _ = cancel.cancelled() => false,
            }
        };
        if !wait(window.start).await {
            return Readings::default();
        }
        let before = self.snapshot(participant).await;
        if !wait(window.end).await {
            return Readings::default();
        }
        let after = self.snapshot(participant).await;
        let machine = match (before.machine, after.machine) {
            (Some(b), Some(a)) => a.since(&b),
            _ => None,
        };
        Readings {
            bench_cpu: cpu::delta(before.bench, after.bench),
            participant_cpu: cpu::delta(before.participant, after.participant),
            wal_bytes: match (before.wal, after.wal) {
                (Some(b), Some(a)) => Some(a.saturating_sub(b)),
                _ => None,
            },
            machine_busy: machine.map(|m| m.0),
            machine_steal: machine.map(|m| m.1),
        }
    }

    async fn snapshot(&self, participant: Option<u32>) -> Snapshot {
        Snapshot {
            bench: cpu::process_cpu(None),
            participant: participant.and_then(|p| cpu::process_cpu(Some(p))),
            machine: MachineTicks::read(),
            wal: self.wal_lsn().await,
        }
    }

    async fn wal_lsn(&self) -> Option<u64> {
        let mut conn = self.wal.as_ref()?.lock().await;
        let lsn: Result<i64, _> =
            sqlx::query_scalar("SELECT (pg_current_wal_lsn() - '0/0'::pg_lsn)::bigint")
                .fetch_one(&mut *conn)
                .await;
        lsn.ok().and_then(|v| u64::try_from(v).ok())
    }
}

struct Snapshot {
    bench: Option<Duration>,
    participant: Option<Duration>,
    machine: Option<MachineTicks>,
    wal: Option<u64>,
}

/// The first line of `/proc/stat`: the machine's CPU time by kind, in ticks.
#[derive(Clone, Copy, Debug, PartialEq)]
struct MachineTicks {
    busy: u64,
    steal: u64,
    total: u64,
}

impl MachineTicks {
    fn read() -> Option<MachineTicks> {
        Self::parse(&std::fs::read_to_string("/proc/stat").ok()?)
    }

    /// `cpu user nice system idle iowait irq softirq steal …`; guest time is already inside user.
    fn parse(stat: &str) -> Option<MachineTicks> {
        let line = stat.lines().next()?;
        let mut fields = line.split_whitespace();
        if fields.next()? != "cpu" {
            return None;
        }
        let v: Vec<u64> = fields
            .take(8)
            .map(|f| f.parse().ok())
            .collect::<Option<_>>()?;
        let [user, nice, system, idle, iowait, irq, softirq, steal] = v.try_into().ok()?;
        Some(MachineTicks {
            busy: user + nice + system + irq + softirq,
            steal,
            total: user + nice + system + idle + iowait + irq + softirq + steal,
        })
    }

    /// (busy share, steal share) between `earlier` and this reading.
    fn since(&self, earlier: &MachineTicks) -> Option<(f64, f64)> {
        let total = self.total.checked_sub(earlier.total).filter(|&t| t > 0)? as f64;
        let busy = self.busy.saturating_sub(earlier.busy) as f64;
        let steal = self.steal.saturating_sub(earlier.steal) as f64;
        Some((busy / total, steal / total))
    }
}

#[cfg(test)]
mod tests {
    use super::MachineTicks;

    #[test]
    fn machine_shares_come_from_the_first_line_of_proc_stat() {
        let before = MachineTicks::parse("cpu  100 0 50 800 10 5 5 30 0 0\ncpu0 1 2 3\n").unwrap();
        let after = MachineTicks::parse("cpu  200 0 100 900 10 10 10 70 0 0\n").unwrap();
        let (busy, steal) = after.since(&before).unwrap();
        // 160 busy ticks and 40 stolen of 300.
        assert!((busy - 160.0 / 300.0).abs() < 1e-9, "{busy}");
        assert!((steal - 40.0 / 300.0).abs() < 1e-9, "{steal}");
        assert_eq!(MachineTicks::parse("intr 1 2 3"), None);
        assert_eq!(after.since(&after), None);
    }

    #[test]
    fn the_machine_can_be_read_on_linux() {
        if cfg!(target_os = "linux") {
            assert!(MachineTicks::read().is_some());
        }
    }
}

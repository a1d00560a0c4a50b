//! A bench run's results: per-cell statistics next to their baseline, as a table for people and
//! as one JSON document for scripts.

use std::fmt::Write as _;
use std::time::Duration;

use serde::Serialize;
use serde_json::{json, Value};

use super::baseline::Plan;
use super::gauges::Readings;
use super::measure::Sample;
use super::workloads::{BatonSample, Workload};

/// One (workload, concurrency) cell: Baton's numbers, the same-run baseline's, and their ratio.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct CellReport {
    pub workload: String,
    pub concurrency: usize,
    /// Transactions that ended as expected inside the window.
    pub transactions: u64,
    pub tps: f64,
    pub p50_ms: f64,
    pub p99_ms: f64,
    pub max_ms: f64,
    /// Transactions that ended otherwise (wrong state, RPC error, timeout) inside the window.
    pub errors: u64,
    pub error_samples: Vec<String>,
    /// CPU time of the bench process per transaction: the coordinator, and also the clients,
    /// which run in the same process.
    pub coordinator_cpu_ms_per_tx: Option<f64>,
    /// CPU time of the participant process per transaction (`None` when in process).
    pub participant_cpu_ms_per_tx: Option<f64>,
    /// Bytes of WAL the database server wrote per transaction (`None` on SQLite).
    pub wal_bytes_per_tx: Option<f64>,
    /// How busy the whole machine was over the window (user, system and interrupt time as a
    /// share of all CPU time), in percent.
    pub machine_busy_pct: Option<f64>,
    /// CPU time the hypervisor gave to others over the window, in percent.
    pub machine_steal_pct: Option<f64>,
    pub baseline: BaselineReport,
    /// Baton's throughput over the baseline's; `None` when the baseline finished nothing.
    pub ratio_to_baseline: Option<f64>,
}

/// The raw-database baseline run right before a cell, with the same clients and window.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct BaselineReport {
    pub transactions: u64,
    pub tps: f64,
    pub p50_ms: f64,
    pub p99_ms: f64,
    pub max_ms: f64,
    pub errors: u64,
    pub error_samples: Vec<String>,
    pub commits_per_tx: u32,
    pub wal_bytes_per_tx: Option<f64>,
    pub machine_busy_pct: Option<f64>,
    pub machine_steal_pct: Option<f64>,
}

impl CellReport {
    /// Summarises the samples of one cell.
    pub fn new(
        workload: Workload,
        concurrency: usize,
        baton: BatonSample,
        base: Sample,
        base_readings: Readings,
    ) -> Self {
        let s = &baton.sample;
        let finished = s.count() + s.errors;
        let per_tx = |cpu: Option<Duration>| {
            cpu.filter(|_| finished > 0)
                .map(|cpu| round(cpu.as_secs_f64() * 1e3 / finished as f64, 3))
        };
        let wal_per_tx = |sample: &Sample, wal: Option<u64>| {
            let finished = sample.count() + sample.errors;
            wal.filter(|_| finished > 0)
                .map(|bytes| round(bytes as f64 / finished as f64, 0))
        };
        let pct = |share: Option<f64>| share.map(|s| round(s * 100.0, 1));
        let baseline = BaselineReport {
            transactions: base.count(),
            tps: round(base.throughput(), 1),
            p50_ms: round(base.percentile_ms(0.50), 3),
            p99_ms: round(base.percentile_ms(0.99), 3),
            max_ms: round(base.max_ms(), 3),
            errors: base.errors,
            error_samples: base.error_samples.clone(),
            commits_per_tx: Plan::of(workload).commits(),
            wal_bytes_per_tx: wal_per_tx(&base, base_readings.wal_bytes),
            machine_busy_pct: pct(base_readings.machine_busy),
            machine_steal_pct: pct(base_readings.machine_steal),
        };
        let base_tps = base.throughput();
        CellReport {
            workload: workload.to_string(),
            concurrency,
            transactions: s.count(),
            tps: round(s.throughput(), 1),
            p50_ms: round(s.percentile_ms(0.50), 3),
            p99_ms: round(s.percentile_ms(0.99), 3),
            max_ms: round(s.max_ms(), 3),
            errors: s.errors,
            error_samples: s.error_samples.clone(),
            coordinator_cpu_ms_per_tx: per_tx(baton.readings.bench_cpu),
            participant_cpu_ms_per_tx: per_tx(baton.readings.participant_cpu),
            wal_bytes_per_tx: wal_per_tx(s, baton.readings.wal_bytes),
            machine_busy_pct: pct(baton.readings.machine_busy),
            machine_steal_pct: pct(baton.readings.machine_steal),
            baseline,
            ratio_to_baseline: (base_tps > 0.0).then(|| round(s.throughput() / base_tps, 3)),
        }
    }
}

/// Everything one `baton bench` run measured.
#[derive(Clone, Debug, PartialEq)]
pub struct Report {
    /// Which log, described without credentials.
    pub store: String,
    /// Where the participants ran.
    pub participants: String,
    pub warmup: Duration,
    pub duration: Duration,
    /// Baseline and Baton slices per cell, in turn (1: the baseline's window, then Baton's).
    pub slices: u32,
    /// CPUs available to this process.
    pub cpus: usize,
    pub cells: Vec<CellReport>,
}

impl Report {
    /// Errors in any cell, Baton's or the baseline's.
    pub fn errors(&self) -> u64 {
        self.cells
            .iter()
            .map(|c| c.errors + c.baseline.errors)
            .sum()
    }

    /// The JSON document: run settings, `cells`, and the first cell's `ratio_to_baseline` at the
    /// top so scripts always find it there. With a single cell its fields are also at the top.
    pub fn to_json(&self) -> Value {
        let cells: Vec<Value> = self
            .cells
            .iter()
            .map(|c| serde_json::to_value(c).unwrap_or(Value::Null))
            .collect();
        let mut doc = json!({
            "baton_version": baton_server::VERSION,
            "store": self.store,
            "participants": self.participants,
            "warmup_ms": self.warmup.as_millis() as u64,
            "duration_ms": self.duration.as_millis() as u64,
            "slices": self.slices,
            "cpus": self.cpus,
            "cpu_note": "coordinator_cpu_ms_per_tx is the bench process (coordinator and clients); \
                         participant_cpu_ms_per_tx is the participant process",
        });
        let Value::Object(top) = &mut doc else {
            return doc;
        };
        if let [Value::Object(only)] = cells.as_slice() {
            for (key, value) in only {
                top.insert(key.clone(), value.clone());
            }
        }
        let first_ratio = self
            .cells
            .first()
            .and_then(|c| c.ratio_to_baseline)
            .map_or(Value::Null, Value::from);
        top.insert("ratio_to_baseline".into(), first_ratio);
        top.insert("cells".into(), Value::Array(cells));
        doc
    }

    /// The readable table.
    pub fn to_table(&self) -> String {
        let mut out = String::new();
        let slices = if self.slices > 1 {
            format!(" in {} slices alternating with the baseline's", self.slices)
        } else {
            String::new()
        };
        let _ = writeln!(
            out,
            "baton bench: store {}, participants {}, warm-up {:?}, window {:?}{slices}, {} CPUs",
            self.store, self.participants, self.warmup, self.duration, self.cpus
        );
        let _ = writeln!(
            out,
            "{:<4} {:>4} | {:>9} {:>8} {:>8} {:>8} {:>6} {:>9} {:>9} {:>7} {:>5} | {:>9} {:>8} {:>8} {:>8} {:>5} | {:>6}",
            "load",
            "C",
            "tx/s",
            "p50 ms",
            "p99 ms",
            "max ms",
            "errors",
            "coord cpu",
            "part cpu",
            "wal B",
            "busy",
            "base tx/s",
            "base p50",
            "base p99",
            "base wal",
            "busy",
            "ratio"
        );
        let ms = |v: Option<f64>| v.map_or_else(|| "-".to_string(), |v| format!("{v:.3}"));
        let bytes = |v: Option<f64>| v.map_or_else(|| "-".to_string(), |v| format!("{v:.0}"));
        let pct = |v: Option<f64>| v.map_or_else(|| "-".to_string(), |v| format!("{v:.0}%"));
        for c in &self.cells {
            let _ = writeln!(
                out,
                "{:<4} {:>4} | {:>9.1} {:>8.3} {:>8.3} {:>8.3} {:>6} {:>9} {:>9} {:>7} {:>5} | {:>9.1} {:>8.3} {:>8.3} {:>8} {:>5} | {:>6}",
                c.workload,
                c.concurrency,
                c.tps,
                c.p50_ms,
                c.p99_ms,
                c.max_ms,
                c.errors,
                ms(c.coordinator_cpu_ms_per_tx),
                ms(c.participant_cpu_ms_per_tx),
                bytes(c.wal_bytes_per_tx),
                pct(c.machine_busy_pct),
                c.baseline.tps,
                c.baseline.p50_ms,
                c.baseline.p99_ms,
                bytes(c.baseline.wal_bytes_per_tx),
                pct(c.baseline.machine_busy_pct),
                c.ratio_to_baseline
                    .map_or_else(|| "-".to_string(), |r| format!("{r:.2}x")),
            );
        }
        let _ = writeln!(
            out,
            "cpu columns: ms of CPU per transaction; coord = the bench process (coordinator and \
             clients), part = the participant process. wal B: bytes of WAL the database server \
             wrote per transaction; busy: the whole machine's CPU in use. Baseline: the \
             workload's durable writes, one commit per statement ({} per saga for w1/w2, {} per \
             2PC for w3).",
            Plan::Saga.commits(),
            Plan::TwoPhase.commits()
        );
        for c in self
            .cells
            .iter()
            .filter(|c| c.errors + c.baseline.errors > 0)
        {
            for e in c.error_samples.iter().chain(&c.baseline.error_samples) {
                let _ = writeln!(out, "error in {} C={}: {e}", c.workload, c.concurrency);
            }
        }
        out
    }
}

/// `value` rounded to `digits` decimals, to keep the JSON readable.
fn round(value: f64, digits: i32) -> f64 {
    let scale = 10f64.powi(digits);
    (value * scale).round() / scale
}

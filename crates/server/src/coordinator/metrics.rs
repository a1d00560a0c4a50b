//! Counters a coordinator keeps about itself, rendered as Prometheus text by `crate::api::http`.
//! Plain atomics: incrementing one is a single relaxed add on the hot path.

use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};

use crate::engine::CallResult;
use crate::model::{Phase, TxKind, TxState};
use crate::store::PoolStats;

const KINDS: [TxKind; 2] = [TxKind::Saga, TxKind::TwoPhase];

/// The states a transaction of each kind can rest in: the only outcome series exposed, so a
/// dashboard never shows a saga `aborted` or a two-phase commit `compensated`. A saga rests
/// `failed` when a compensation gives up; a two-phase commit never does (phase two retries).
const SAGA_OUTCOMES: &[TxState] = &[TxState::Committed, TxState::Compensated, TxState::Failed];
const TWO_PHASE_OUTCOMES: &[TxState] = &[TxState::Committed, TxState::Aborted];

fn outcomes(kind: TxKind) -> &'static [TxState] {
    match kind {
        TxKind::Saga => SAGA_OUTCOMES,
        TxKind::TwoPhase => TWO_PHASE_OUTCOMES,
    }
}

/// The coordinator's counters and histograms.
pub struct Metrics {
    started: [AtomicU64; 2],
    /// By kind, then outcome as indexed in [`outcomes`] (room for the longest list).
    finished: [[AtomicU64; 3]; 2],
    claimed: AtomicU64,
    fenced: AtomicU64,
    batches: AtomicU64,
    batch_writes: AtomicU64,
    batch_micros: AtomicU64,
    calls: AtomicU64,
    retries: AtomicU64,
    purged: AtomicU64,
    /// Participant call latency, by phase, then outcome class (see [`OUTCOME_CLASSES`]).
    steps: [[Histogram; 4]; 5],
    batch_size: Histogram,
    batch_latency: Histogram,
}

const PHASES: [Phase; 5] = [
    Phase::Execute,
    Phase::Compensate,
    Phase::Prepare,
    Phase::Commit,
    Phase::Abort,
];

/// How a participant call ended, as the `outcome` label of the step latency histogram.
const OUTCOME_CLASSES: [&str; 4] = ["ok", "failed", "transient", "permanent"];

/// Latency buckets, in microseconds, with their `le` labels in seconds: 1 ms to 30 s.
const LATENCY_BUCKETS: &[(u64, &str)] = &[
    (500, "0.0005"),
    (1_000, "0.001"),
    (2_500, "0.0025"),
    (5_000, "0.005"),
    (10_000, "0.01"),
    (25_000, "0.025"),
    (50_000, "0.05"),
    (100_000, "0.1"),
    (250_000, "0.25"),
    (500_000, "0.5"),
    (1_000_000, "1"),
    (2_500_000, "2.5"),
    (5_000_000, "5"),
    (10_000_000, "10"),
    (30_000_000, "30"),
];

/// Batch size buckets (writes per group commit), powers of two up to the default `max_batch`.
const SIZE_BUCKETS: &[(u64, &str)] = &[
    (1, "1"),
    (2, "2"),
    (4, "4"),
    (8, "8"),
    (16, "16"),
    (32, "32"),
    (64, "64"),
    (128, "128"),
    (256, "256"),
    (512, "512"),
    (1024, "1024"),
];

/// A Prometheus histogram with fixed buckets on atomics: observing is a short scan and two
/// relaxed adds, with no lock. Counts are kept per bucket and made cumulative when rendered, so
/// `+Inf` and `_count` always agree.
pub struct Histogram {
    bounds: &'static [(u64, &'static str)],
    /// One per bound, plus the overflow bucket.
    counts: Box<[AtomicU64]>,
    /// In the unit of the bounds (microseconds or writes).
    sum: AtomicU64,
    /// Multiplies `sum` into the rendered unit (1e-6 for seconds).
    scale: f64,
}

impl Histogram {
    fn new(bounds: &'static [(u64, &'static str)], scale: f64) -> Self {
        Histogram {
            bounds,
            counts: (0..=bounds.len()).map(|_| AtomicU64::new(0)).collect(),
            sum: AtomicU64::new(0),
            scale,
        }
    }

    fn latency() -> Self {
        Histogram::new(LATENCY_BUCKETS, 1e-6)
    }

    fn observe(&self, value: u64) {
        let i = self
            .bounds
            .iter()
            .position(|&(bound, _)| value <= bound)
            .unwrap_or(self.bounds.len());
        self.counts[i].fetch_add(1, Ordering::Relaxed);
        self.sum.fetch_add(value, Ordering::Relaxed);
    }

    /// The sample lines for one series; `labels` is empty or `key="value",...` without braces.
    fn render(&self, out: &mut String, name: &str, labels: &str) {
        let sep = if labels.is_empty() { "" } else { "," };
        let mut total = 0;
        for (i, (_, le)) in self.bounds.iter().enumerate() {
            total += self.counts[i].load(Ordering::Relaxed);
            let _ = writeln!(out, "{name}_bucket{{{labels}{sep}le=\"{le}\"}} {total}");
        }
        total += self.counts[self.bounds.len()].load(Ordering::Relaxed);
        let _ = writeln!(out, "{name}_bucket{{{labels}{sep}le=\"+Inf\"}} {total}");
        let sum = self.sum.load(Ordering::Relaxed) as f64 * self.scale;
        let braced = if labels.is_empty() {
            String::new()
        } else {
            format!("{{{labels}}}")
        };
        let _ = writeln!(out, "{name}_sum{braced} {sum}");
        let _ = writeln!(out, "{name}_count{braced} {total}");
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics {
            started: Default::default(),
            finished: Default::default(),
            claimed: AtomicU64::new(0),
            fenced: AtomicU64::new(0),
            batches: AtomicU64::new(0),
            batch_writes: AtomicU64::new(0),
            batch_micros: AtomicU64::new(0),
            calls: AtomicU64::new(0),
            retries: AtomicU64::new(0),
            purged: AtomicU64::new(0),
            steps: std::array::from_fn(|_| std::array::from_fn(|_| Histogram::latency())),
            batch_size: Histogram::new(SIZE_BUCKETS, 1.0),
            batch_latency: Histogram::latency(),
        }
    }
}

fn kind_index(kind: TxKind) -> usize {
    match kind {
        TxKind::Saga => 0,
        TxKind::TwoPhase => 1,
    }
}

impl Metrics {
    pub fn started(&self, kind: TxKind) {
        self.started[kind_index(kind)].fetch_add(1, Ordering::Relaxed);
    }

    /// A transaction came to rest in `outcome`. A state its kind cannot rest in is not counted:
    /// the driver reports only resting states, and a series for it would be meaningless.
    pub fn finished(&self, kind: TxKind, outcome: TxState) {
        if let Some(o) = outcomes(kind).iter().position(|s| *s == outcome) {
            self.finished[kind_index(kind)][o].fetch_add(1, Ordering::Relaxed);
        }
    }

    pub fn claimed(&self, n: u64) {
        self.claimed.fetch_add(n, Ordering::Relaxed);
    }

    pub fn fenced(&self) {
        self.fenced.fetch_add(1, Ordering::Relaxed);
    }

    pub fn batch(&self, writes: usize, micros: u64) {
        self.batches.fetch_add(1, Ordering::Relaxed);
        self.batch_writes
            .fetch_add(writes as u64, Ordering::Relaxed);
        self.batch_micros.fetch_add(micros, Ordering::Relaxed);
        self.batch_size.observe(writes as u64);
        self.batch_latency.observe(micros);
    }

    /// A participant call's answer and how long it took, from sending to the answer.
    pub fn step(&self, phase: Phase, result: &CallResult, took: std::time::Duration) {
        let p = PHASES.iter().position(|x| *x == phase).unwrap_or(0);
        let o = match result {
            CallResult::Ok(_) => 0,
            CallResult::Failed(_) => 1,
            CallResult::Transient(_) => 2,
            CallResult::Permanent(_) => 3,
        };
        self.steps[p][o].observe(u64::try_from(took.as_micros()).unwrap_or(u64::MAX));
    }

    /// A participant call; `retry` when it is not the first attempt.
    pub fn call(&self, retry: bool) {
        self.calls.fetch_add(1, Ordering::Relaxed);
        if retry {
            self.retries.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Finished transactions deleted by retention (the sweep or an operator's purge).
    pub fn purged(&self, n: u64) {
        self.purged.fetch_add(n, Ordering::Relaxed);
    }

    /// Prometheus text exposition of every counter, plus the gauges given.
    pub fn render(&self, in_flight: usize, ready: bool) -> String {
        let get = |a: &AtomicU64| a.load(Ordering::Relaxed);
        let mut out = String::new();
        header(
            &mut out,
            "baton_transactions_started_total",
            "counter",
            "Transactions accepted by this coordinator.",
        );
        for kind in KINDS {
            let n = get(&self.started[kind_index(kind)]);
            let _ = writeln!(
                out,
                "baton_transactions_started_total{{kind=\"{}\"}} {n}",
                kind.as_str()
            );
        }
        header(
            &mut out,
            "baton_transactions_finished_total",
            "counter",
            "Transactions this coordinator drove to rest, by outcome.",
        );
        for kind in KINDS {
            for (o, outcome) in outcomes(kind).iter().enumerate() {
                let n = get(&self.finished[kind_index(kind)][o]);
                let _ = writeln!(
                    out,
                    "baton_transactions_finished_total{{kind=\"{}\",outcome=\"{outcome}\"}} {n}",
                    kind.as_str()
                );
            }
        }
        let scalars: [(&str, &str, &str, String); 9] = [
            (
                "baton_transactions_in_flight",
                "gauge",
                "Unfinished transactions driven here now.",
                in_flight.to_string(),
            ),
            (
                "baton_ready",
                "gauge",
                "1 when the coordinator takes new work.",
                u64::from(ready).to_string(),
            ),
            (
                "baton_participant_calls_total",
                "counter",
                "Participant calls sent.",
                get(&self.calls).to_string(),
            ),
            (
                "baton_participant_retries_total",
                "counter",
                "Participant calls that were retries.",
                get(&self.retries).to_string(),
            ),
            (
                "baton_claims_total",
                "counter",
                "Transactions claimed from dead or departed coordinators.",
                get(&self.claimed).to_string(),
            ),
            (
                "baton_fenced_total",
                "counter",
                "Writes refused because another coordinator owns the transaction.",
                get(&self.fenced).to_string(),
            ),
            (
                "baton_log_batches_total",
                "counter",
                "Group-commit batches written.",
                get(&self.batches).to_string(),
            ),
            (
                "baton_log_batch_writes_total",
                "counter",
                "Writes in those batches (divided by batches: the mean batch size).",
                get(&self.batch_writes).to_string(),
            ),
            (
                "baton_log_batch_seconds_total",
                "counter",
                "Time spent committing batches.",
                format!("{:.6}", get(&self.batch_micros) as f64 / 1e6),
            ),
        ];
        for (name, kind, help, value) in scalars {
            header(&mut out, name, kind, help);
            let _ = writeln!(out, "{name} {value}");
        }
        header(
            &mut out,
            "baton_retention_purged_total",
            "counter",
            "Finished transactions deleted after the retention period or by an operator's purge.",
        );
        let _ = writeln!(out, "baton_retention_purged_total {}", get(&self.purged));
        let name = "baton_step_duration_seconds";
        header(
            &mut out,
            name,
            "histogram",
            "Participant call latency, by phase and how the call ended.",
        );
        for (p, phase) in PHASES.iter().enumerate() {
            for (o, outcome) in OUTCOME_CLASSES.iter().enumerate() {
                let labels = format!("phase=\"{phase}\",outcome=\"{outcome}\"");
                self.steps[p][o].render(&mut out, name, &labels);
            }
        }
        let name = "baton_log_batch_size";
        header(
            &mut out,
            name,
            "histogram",
            "Writes per group-commit batch.",
        );
        self.batch_size.render(&mut out, name, "");
        let name = "baton_log_batch_duration_seconds";
        header(
            &mut out,
            name,
            "histogram",
            "Time to commit one group-commit batch.",
        );
        self.batch_latency.render(&mut out, name, "");
        out
    }
}

/// The database pool gauges, or nothing for a store without a pool to report.
pub fn render_pool(stats: Option<PoolStats>) -> String {
    let mut out = String::new();
    let Some(stats) = stats else {
        return out;
    };
    let name = "baton_db_pool_connections";
    header(
        &mut out,
        name,
        "gauge",
        "Open database connections, in use or idle.",
    );
    let in_use = stats.size.saturating_sub(stats.idle);
    let _ = writeln!(out, "{name}{{state=\"in_use\"}} {in_use}");
    let _ = writeln!(out, "{name}{{state=\"idle\"}} {}", stats.idle);
    let name = "baton_db_pool_max_connections";
    header(&mut out, name, "gauge", "The pool's connection limit.");
    let _ = writeln!(out, "{name} {}", stats.max);
    out
}

fn header(out: &mut String, name: &str, kind: &str, help: &str) {
    let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_prometheus_text() {
        let m = Metrics::default();
        m.started(TxKind::Saga);
        m.finished(TxKind::Saga, TxState::Compensated);
        m.batch(3, 1500);
        m.purged(4);
        let text = m.render(2, true);
        assert!(text.contains("baton_transactions_started_total{kind=\"saga\"} 1\n"));
        assert!(text.contains(
            "baton_transactions_finished_total{kind=\"saga\",outcome=\"compensated\"} 1\n"
        ));
        assert!(text.contains("baton_transactions_in_flight 2\n"));
        assert!(text.contains("baton_log_batch_writes_total 3\n"));
        assert!(text.contains("baton_log_batch_seconds_total 0.001500\n"));
        assert!(text.contains("baton_retention_purged_total 4\n"));
        for line in text.lines().filter(|l| !l.starts_with('#')) {
            let (_, value) = line.rsplit_once(' ').expect("name value");
            value.parse::<f64>().expect("a number");
        }
    }

    #[test]
    fn exposes_only_the_outcomes_each_kind_can_have() {
        let m = Metrics::default();
        m.finished(TxKind::Saga, TxState::Failed);
        m.finished(TxKind::TwoPhase, TxState::Aborted);
        // Not a resting state of its kind: nothing to count it under.
        m.finished(TxKind::Saga, TxState::Aborted);
        m.finished(TxKind::TwoPhase, TxState::Compensated);
        let text = m.render(0, true);
        let mut series: Vec<&str> = text
            .lines()
            .filter(|l| l.starts_with("baton_transactions_finished_total{"))
            .collect();
        series.sort_unstable();
        let name = "baton_transactions_finished_total";
        assert_eq!(
            series,
            vec![
                format!("{name}{{kind=\"saga\",outcome=\"committed\"}} 0"),
                format!("{name}{{kind=\"saga\",outcome=\"compensated\"}} 0"),
                format!("{name}{{kind=\"saga\",outcome=\"failed\"}} 1"),
                format!("{name}{{kind=\"two_phase\",outcome=\"aborted\"}} 1"),
                format!("{name}{{kind=\"two_phase\",outcome=\"committed\"}} 0"),
            ]
        );
    }

    #[test]
    fn histograms_are_cumulative_and_count_every_observation() {
        let m = Metrics::default();
        m.step(
            Phase::Execute,
            &CallResult::Ok(vec![]),
            std::time::Duration::from_micros(700),
        );
        m.step(
            Phase::Execute,
            &CallResult::Ok(vec![]),
            std::time::Duration::from_secs(60),
        );
        m.step(
            Phase::Compensate,
            &CallResult::Transient("x".into()),
            std::time::Duration::from_millis(3),
        );
        m.batch(3, 1500);
        let text = m.render(0, true);
        let series = "baton_step_duration_seconds_bucket{phase=\"execute\",outcome=\"ok\"";
        assert!(text.contains(&format!("{series},le=\"0.0005\"}} 0\n")));
        assert!(text.contains(&format!("{series},le=\"0.001\"}} 1\n")));
        assert!(text.contains(&format!("{series},le=\"30\"}} 1\n")));
        assert!(text.contains(&format!("{series},le=\"+Inf\"}} 2\n")));
        assert!(text
            .contains("baton_step_duration_seconds_count{phase=\"execute\",outcome=\"ok\"} 2\n"));
        assert!(text.contains(
            "baton_step_duration_seconds_count{phase=\"compensate\",outcome=\"transient\"} 1\n"
        ));
        assert!(text.contains("baton_log_batch_size_bucket{le=\"2\"} 0\n"));
        assert!(text.contains("baton_log_batch_size_bucket{le=\"4\"} 1\n"));
        assert!(text.contains("baton_log_batch_size_sum 3\n"));
        assert!(text.contains("baton_log_batch_duration_seconds_bucket{le=\"0.0025\"} 1\n"));
        assert!(text.contains("baton_log_batch_duration_seconds_count 1\n"));
    }

    #[test]
    fn renders_pool_gauges_only_when_known() {
        assert_eq!(render_pool(None), "");
        let text = render_pool(Some(PoolStats {
            size: 5,
            idle: 2,
            max: 10,
        }));
        assert!(text.contains("baton_db_pool_connections{state=\"in_use\"} 3\n"));
        assert!(text.contains("baton_db_pool_connections{state=\"idle\"} 2\n"));
        assert!(text.contains("baton_db_pool_max_connections 10\n"));
    }
}

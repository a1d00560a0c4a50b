//! Counters a coordinator keeps about itself, rendered as Prometheus text by `crate::http`.
//! Plain atomics: incrementing one is a single relaxed add on the hot path.

use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};

use crate::model::{TxKind, TxState};

const KINDS: [TxKind; 2] = [TxKind::Saga, TxKind::TwoPhase];
const OUTCOMES: [TxState; 5] = [
    TxState::Committed,
    TxState::Compensated,
    TxState::Failed,
    TxState::Aborted,
    TxState::Running,
];

/// The coordinator's counters.
#[derive(Default)]
pub struct Metrics {
    started: [AtomicU64; 2],
    /// By kind, then outcome (committed, compensated, failed, aborted, other).
    finished: [[AtomicU64; 5]; 2],
    claimed: AtomicU64,
    fenced: AtomicU64,
    batches: AtomicU64,
    batch_writes: AtomicU64,
    batch_micros: AtomicU64,
    calls: AtomicU64,
    retries: AtomicU64,
    purged: AtomicU64,
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

    pub fn finished(&self, kind: TxKind, outcome: TxState) {
        let o = OUTCOMES[..4]
            .iter()
            .position(|s| *s == outcome)
            .unwrap_or(4);
        self.finished[kind_index(kind)][o].fetch_add(1, Ordering::Relaxed);
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
            for (o, outcome) in OUTCOMES.iter().enumerate() {
                let label = if o == 4 { "other" } else { outcome.as_str() };
                let n = get(&self.finished[kind_index(kind)][o]);
                let _ = writeln!(
                    out,
                    "baton_transactions_finished_total{{kind=\"{}\",outcome=\"{label}\"}} {n}",
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
        out
    }
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
}

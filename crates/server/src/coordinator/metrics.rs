//! Counters a coordinator keeps about itself, exposed on `/metrics` by `crate::api::http` in the
//! Prometheus text format through the `prometheus-client` crate.
//!
//! Every labelled series is created once, when the coordinator starts, and kept by index: the hot
//! path (a participant call, a log batch) increments a counter with one relaxed atomic add, or
//! observes a histogram under that series' own uncontended lock, and never builds, hashes or
//! allocates a label set.

use std::sync::atomic::AtomicU64;

use prometheus_client::encoding::prometheus_text;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

use crate::engine::CallResult;
use crate::model::{Phase, TxKind, TxState};
use crate::store::PoolStats;

/// The `Content-Type` of [`Metrics::render`]'s text: the Prometheus text format, version 0.0.4.
pub const CONTENT_TYPE: &str = prometheus_text::CONTENT_TYPE;

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

const PHASES: [Phase; 5] = [
    Phase::Execute,
    Phase::Compensate,
    Phase::Prepare,
    Phase::Commit,
    Phase::Abort,
];

/// How a participant call ended, as the `outcome` label of the step latency histogram.
const OUTCOME_CLASSES: [&str; 4] = ["ok", "failed", "transient", "permanent"];

/// Latency buckets in seconds: 0.5 ms to 30 s.
const LATENCY_BUCKETS: [f64; 15] = [
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
];

/// Batch size buckets (writes per group commit), powers of two up to the default `max_batch`.
const SIZE_BUCKETS: [f64; 11] = [
    1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0, 512.0, 1024.0,
];

/// A label set: static names and values, so a series costs no allocation to name.
type Labels<const N: usize> = [(&'static str, &'static str); N];

/// A counter of seconds (a float, kept as the bits of an `f64` in an atomic).
type SecondsCounter = Counter<f64, AtomicU64>;

/// The coordinator's counters and histograms, and the registry that renders them.
///
/// Counter names are registered without their `_total` suffix: the exposition adds it, so the
/// names scraped are `baton_transactions_started_total` and so on.
pub struct Metrics {
    registry: Registry,
    started: [Counter; 2],
    /// By kind, then outcome as indexed in [`outcomes`].
    finished: [Vec<Counter>; 2],
    in_flight: Gauge,
    ready: Gauge,
    claimed: Counter,
    fenced: Counter,
    batches: Counter,
    batch_writes: Counter,
    batch_seconds: SecondsCounter,
    calls: Counter,
    retries: Counter,
    purged: Counter,
    /// Participant call latency, by phase, then outcome class (see [`OUTCOME_CLASSES`]).
    steps: [[Histogram; 4]; 5],
    batch_size: Histogram,
    batch_latency: Histogram,
    client_connections: Gauge,
    connections_refused: Counter,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Metrics").finish_non_exhaustive()
    }
}

/// Registers `metric` under `name` and hands it back, for the caller to keep.
fn register<M>(registry: &mut Registry, name: &str, help: &str, metric: M) -> M
where
    M: prometheus_client::registry::Metric + Clone,
{
    registry.register(name, help, metric.clone());
    metric
}

impl Default for Metrics {
    fn default() -> Self {
        let mut registry = Registry::default();
        // `Registry::register` ends each help text with a full stop.
        let started = register(
            &mut registry,
            "baton_transactions_started",
            "Transactions accepted by this coordinator",
            Family::<Labels<1>, Counter>::default(),
        );
        let started = KINDS.map(|kind| started.get_or_create(&[("kind", kind.as_str())]).clone());
        let finished = register(
            &mut registry,
            "baton_transactions_finished",
            "Transactions this coordinator drove to rest, by outcome",
            Family::<Labels<2>, Counter>::default(),
        );
        let finished = KINDS.map(|kind| {
            outcomes(kind)
                .iter()
                .map(|outcome| {
                    let labels = [("kind", kind.as_str()), ("outcome", outcome.as_str())];
                    finished.get_or_create(&labels).clone()
                })
                .collect()
        });
        let in_flight = register(
            &mut registry,
            "baton_transactions_in_flight",
            "Unfinished transactions driven here now",
            Gauge::default(),
        );
        let ready = register(
            &mut registry,
            "baton_ready",
            "1 when the coordinator takes new work",
            Gauge::default(),
        );
        let calls = register(
            &mut registry,
            "baton_participant_calls",
            "Participant calls sent",
            Counter::default(),
        );
        let retries = register(
            &mut registry,
            "baton_participant_retries",
            "Participant calls that were retries",
            Counter::default(),
        );
        let claimed = register(
            &mut registry,
            "baton_claims",
            "Transactions claimed from dead or departed coordinators",
            Counter::default(),
        );
        let fenced = register(
            &mut registry,
            "baton_fenced",
            "Writes refused because another coordinator owns the transaction",
            Counter::default(),
        );
        let batches = register(
            &mut registry,
            "baton_log_batches",
            "Group-commit batches written",
            Counter::default(),
        );
        let batch_writes = register(
            &mut registry,
            "baton_log_batch_writes",
            "Writes in those batches (divided by batches: the mean batch size)",
            Counter::default(),
        );
        let batch_seconds = register(
            &mut registry,
            "baton_log_batch_seconds",
            "Time spent committing batches",
            SecondsCounter::default(),
        );
        let purged = register(
            &mut registry,
            "baton_retention_purged",
            "Finished transactions deleted after the retention period or by an operator's purge",
            Counter::default(),
        );
        let steps = register(
            &mut registry,
            "baton_step_duration_seconds",
            "Participant call latency, by phase and how the call ended",
            Family::<Labels<2>, Histogram>::new_with_constructor(|| {
                Histogram::new(LATENCY_BUCKETS)
            }),
        );
        let steps = PHASES.map(|phase| {
            OUTCOME_CLASSES.map(|outcome| {
                let labels = [("phase", phase.as_str()), ("outcome", outcome)];
                steps.get_or_create(&labels).clone()
            })
        });
        let batch_size = register(
            &mut registry,
            "baton_log_batch_size",
            "Writes per group-commit batch",
            Histogram::new(SIZE_BUCKETS),
        );
        let batch_latency = register(
            &mut registry,
            "baton_log_batch_duration_seconds",
            "Time to commit one group-commit batch",
            Histogram::new(LATENCY_BUCKETS),
        );
        let client_connections = register(
            &mut registry,
            "baton_client_connections",
            "Client connections open on the gRPC and HTTP ports together",
            Gauge::default(),
        );
        let connections_refused = register(
            &mut registry,
            "baton_client_connections_refused",
            "Client connections closed on arrival because --max-client-connections were open",
            Counter::default(),
        );
        Metrics {
            registry,
            started,
            finished,
            in_flight,
            ready,
            claimed,
            fenced,
            batches,
            batch_writes,
            batch_seconds,
            calls,
            retries,
            purged,
            steps,
            batch_size,
            batch_latency,
            client_connections,
            connections_refused,
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
        self.started[kind_index(kind)].inc();
    }

    /// A transaction came to rest in `outcome`. A state its kind cannot rest in is not counted:
    /// the driver reports only resting states, and a series for it would be meaningless.
    pub fn finished(&self, kind: TxKind, outcome: TxState) {
        if let Some(o) = outcomes(kind).iter().position(|s| *s == outcome) {
            self.finished[kind_index(kind)][o].inc();
        }
    }

    /// The gauge of open client connections and the counter of refused ones, for the ports'
    /// admission (`api::admission`) to keep.
    pub(crate) fn connection_metrics(&self) -> (Gauge, Counter) {
        (
            self.client_connections.clone(),
            self.connections_refused.clone(),
        )
    }

    pub fn claimed(&self, n: u64) {
        self.claimed.inc_by(n);
    }

    pub fn fenced(&self) {
        self.fenced.inc();
    }

    pub fn batch(&self, writes: usize, micros: u64) {
        let seconds = micros as f64 / 1e6;
        self.batches.inc();
        self.batch_writes.inc_by(writes as u64);
        self.batch_seconds.inc_by(seconds);
        self.batch_size.observe(writes as f64);
        self.batch_latency.observe(seconds);
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
        self.steps[p][o].observe(took.as_secs_f64());
    }

    /// A participant call; `retry` when it is not the first attempt.
    pub fn call(&self, retry: bool) {
        self.calls.inc();
        if retry {
            self.retries.inc();
        }
    }

    /// Finished transactions deleted by retention (the sweep or an operator's purge).
    pub fn purged(&self, n: u64) {
        self.purged.inc_by(n);
    }

    /// Prometheus text exposition of every counter, plus the gauges given.
    pub fn render(&self, in_flight: usize, ready: bool) -> String {
        self.in_flight
            .set(i64::try_from(in_flight).unwrap_or(i64::MAX));
        self.ready.set(i64::from(ready));
        let mut out = String::with_capacity(16 * 1024);
        prometheus_text::encode(&mut out, &self.registry).expect("writing to a String");
        out
    }
}

/// The database pool gauges, or nothing for a store without a pool to report.
pub fn render_pool(stats: Option<PoolStats>) -> String {
    let mut out = String::new();
    let Some(stats) = stats else {
        return out;
    };
    let mut registry = Registry::default();
    let connections = Family::<Labels<1>, Gauge>::default();
    let in_use = stats.size.saturating_sub(stats.idle);
    connections
        .get_or_create(&[("state", "in_use")])
        .set(i64::from(in_use));
    connections
        .get_or_create(&[("state", "idle")])
        .set(i64::from(stats.idle));
    registry.register(
        "baton_db_pool_connections",
        "Open database connections, in use or idle",
        connections,
    );
    let max = Gauge::<i64>::default();
    max.set(i64::from(stats.max));
    registry.register(
        "baton_db_pool_max_connections",
        "The pool's connection limit",
        max,
    );
    prometheus_text::encode(&mut out, &registry).expect("writing to a String");
    out
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
        assert!(text.contains("baton_log_batch_seconds_total 0.0015\n"));
        assert!(text.contains("baton_ready 1\n"));
        // Counters keep their `_total` names in the HELP and TYPE lines too, and help texts end
        // with one full stop.
        assert!(text.contains(
            "# HELP baton_transactions_started_total Transactions accepted by this coordinator.\n\
             # TYPE baton_transactions_started_total counter\n"
        ));
        assert!(text.contains("# TYPE baton_step_duration_seconds histogram\n"));
        assert!(
            !text.contains("_total_total") && !text.contains(".."),
            "{text}"
        );
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
        assert!(text.contains("baton_log_batch_size_sum 3.0\n"));
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
        assert!(text.contains("# TYPE baton_db_pool_connections gauge\n"));
    }
}

//! The bench's statistics, its JSON shape, the baseline's plans, and short runs on SQLite.

use std::time::Duration;

use super::gauges::Readings;
use super::measure::{Latencies, Sample};
use super::workloads::BatonSample;
use super::*;

fn ms(values: &[u64]) -> Latencies {
    values.iter().map(|&v| Duration::from_millis(v)).collect()
}

#[test]
fn percentiles_use_the_nearest_rank() {
    let hundred: Latencies = (1..=100).map(Duration::from_millis).collect();
    assert_eq!(hundred.quantile(0.50), Some(Duration::from_millis(50)));
    assert_eq!(hundred.quantile(0.99), Some(Duration::from_millis(99)));
    assert_eq!(hundred.quantile(1.0), Some(Duration::from_millis(100)));
    // Few samples: p99 of three is the largest, p50 the middle one.
    let three = ms(&[1, 2, 30]);
    assert_eq!(three.quantile(0.99), Some(Duration::from_millis(30)));
    assert_eq!(three.quantile(0.50), Some(Duration::from_millis(2)));
    assert_eq!(three.quantile(0.0), Some(Duration::from_millis(1)));
    assert_eq!(Latencies::default().quantile(0.5), None);
}

#[test]
fn latencies_keep_fixed_memory_and_stay_within_two_percent() {
    let mut all = Latencies::default();
    let mut exact: Vec<u64> = Vec::new();
    // A spread from 3 µs to about 40 s, a million values.
    for i in 0..1_000_000u64 {
        let micros = 3 + (i * i) % 40_000_000 + i % 97;
        all.record(Duration::from_micros(micros));
        exact.push(micros);
    }
    exact.sort_unstable();
    assert_eq!(all.count(), 1_000_000);
    for q in [0.001, 0.25, 0.5, 0.9, 0.99, 0.999, 1.0] {
        let rank = ((q * exact.len() as f64).ceil() as usize).clamp(1, exact.len());
        let want = exact[rank - 1] as f64;
        let got = all.quantile(q).unwrap().as_micros() as f64;
        assert!(
            got >= want && got <= want * (1.0 + 1.0 / 64.0) + 1.0,
            "q={q}: {got} µs, exact {want} µs"
        );
    }
    assert_eq!(
        all.max(),
        Some(Duration::from_micros(*exact.last().unwrap()))
    );
    // Merging is the same as recording everything in one.
    let (mut a, mut b) = (Latencies::default(), Latencies::default());
    for (i, &v) in exact.iter().enumerate() {
        if i % 2 == 0 {
            a.record(Duration::from_micros(v))
        } else {
            b.record(Duration::from_micros(v))
        }
    }
    a.merge(&b);
    assert_eq!(a, all);
}

fn cell(workload: Workload, clients: usize, baton_ms: &[u64], base_ms: &[u64]) -> CellReport {
    let window = Duration::from_secs(2);
    let baton = BatonSample {
        sample: Sample {
            latencies: ms(baton_ms),
            errors: 1,
            error_samples: vec!["boom".into()],
            window,
        },
        readings: Readings {
            bench_cpu: Some(Duration::from_millis(50)),
            wal_bytes: Some(10_000),
            machine_busy: Some(0.875),
            ..Readings::default()
        },
    };
    let base = Sample {
        latencies: ms(base_ms),
        window,
        ..Sample::default()
    };
    CellReport::new(workload, clients, baton, base, Readings::default())
}

fn report(cells: Vec<CellReport>) -> Report {
    Report {
        store: "sqlite (temporary files)".into(),
        participants: "in process".into(),
        warmup: Duration::from_millis(100),
        duration: Duration::from_secs(2),
        slices: 1,
        cpus: 2,
        cells,
    }
}

#[test]
fn a_cell_summarises_its_samples_against_the_baseline() {
    let c = cell(Workload::W1, 4, &[1, 2, 3, 4], &[1, 1]);
    assert_eq!(c.workload, "w1");
    assert_eq!(c.transactions, 4);
    assert_eq!(c.tps, 2.0);
    assert_eq!(c.baseline.tps, 1.0);
    assert_eq!(c.ratio_to_baseline, Some(2.0));
    assert_eq!(c.p50_ms, 2.0);
    assert_eq!(c.max_ms, 4.0);
    // 50 ms of CPU over the 5 transactions that finished (4 good, 1 error).
    assert_eq!(c.coordinator_cpu_ms_per_tx, Some(10.0));
    assert_eq!(c.participant_cpu_ms_per_tx, None);
    assert_eq!(c.baseline.commits_per_tx, 5);
    // WAL per finished transaction too; none read for the baseline here.
    assert_eq!(c.wal_bytes_per_tx, Some(2000.0));
    assert_eq!(c.machine_busy_pct, Some(87.5));
    assert_eq!(c.baseline.wal_bytes_per_tx, None);
    // No baseline transactions: no ratio rather than infinity.
    assert_eq!(cell(Workload::W1, 1, &[1], &[]).ratio_to_baseline, None);
}

#[test]
fn json_of_one_cell_has_its_fields_and_ratio_at_the_top() {
    let doc = report(vec![cell(Workload::W1, 32, &[1, 2, 3, 4], &[1, 1])]).to_json();
    assert_eq!(doc["ratio_to_baseline"].as_f64(), Some(2.0));
    assert_eq!(doc["workload"], "w1");
    assert_eq!(doc["concurrency"], 32);
    assert_eq!(doc["tps"].as_f64(), Some(2.0));
    assert_eq!(doc["baseline"]["tps"].as_f64(), Some(1.0));
    assert_eq!(doc["cells"].as_array().map(Vec::len), Some(1));
    assert_eq!(doc["participant_cpu_ms_per_tx"], serde_json::Value::Null);
}

#[test]
fn json_of_several_cells_lists_them_and_keeps_the_first_ratio_on_top() {
    let doc = report(vec![
        cell(Workload::W1, 1, &[1, 2], &[1, 1, 1, 1]),
        cell(Workload::W2, 32, &[1, 2, 3, 4], &[1, 1]),
    ])
    .to_json();
    let cells = doc["cells"].as_array().expect("cells is an array");
    assert_eq!(cells.len(), 2);
    assert_eq!(doc["ratio_to_baseline"].as_f64(), Some(0.5));
    assert_eq!(cells[1]["ratio_to_baseline"].as_f64(), Some(2.0));
    assert_eq!(cells[1]["workload"], "w2");
    // The per-cell fields stay inside the cells.
    assert!(doc.get("workload").is_none());
    let table = report(vec![cell(Workload::W2, 32, &[1], &[1])]).to_table();
    assert!(table.contains("w2"), "{table}");
    assert!(table.contains("boom"), "{table}");
}

#[test]
fn each_workload_has_its_baseline_plan() {
    use super::baseline::Plan;
    assert_eq!(Plan::of(Workload::W1), Plan::Saga);
    assert_eq!(Plan::of(Workload::W2), Plan::Saga);
    assert_eq!(Plan::of(Workload::W3), Plan::TwoPhase);
    // Saga: insert tx, 3 step rows, update to done. 2PC: insert tx, 2 branch rows, the decision,
    // done.
    assert_eq!(Plan::Saga.commits(), 5);
    assert_eq!(Plan::TwoPhase.commits(), 5);
    let c = cell(Workload::W3, 1, &[1, 2], &[1]);
    assert_eq!(c.workload, "w3");
    assert_eq!(c.baseline.commits_per_tx, 5);
}

#[test]
fn all_runs_every_workload_and_w3_expects_a_commit() {
    assert_eq!(
        Workload::ALL.to_vec(),
        vec![Workload::W1, Workload::W2, Workload::W3]
    );
    assert_eq!(
        Workload::W3.expected(),
        baton_tx::client::TxState::Committed
    );
    use baton_tx::client::TxKind;
    assert_eq!(
        Workload::W3.request("http://127.0.0.1:1").kind(),
        TxKind::TwoPhase
    );
    assert_eq!(
        Workload::W1.request("http://127.0.0.1:1").kind(),
        TxKind::Saga
    );
}

fn short_run(workloads: Vec<Workload>) -> BenchConfig {
    BenchConfig {
        workloads,
        concurrency: vec![2],
        warmup: Duration::from_millis(100),
        duration: Duration::from_millis(400),
        slices: 1,
        store: Store::Sqlite,
        participants: Participants::InProcess,
        protocol: super::Protocol::Grpc,
        max_connections: 4,
    }
}

fn assert_measured(c: &CellReport) {
    assert!(c.transactions > 0, "{c:?}");
    assert_eq!(c.errors, 0, "{c:?}");
    assert!(c.baseline.transactions > 0, "{c:?}");
    assert_eq!(c.baseline.errors, 0, "{c:?}");
    assert!(c.ratio_to_baseline.is_some_and(|r| r > 0.0), "{c:?}");
    assert!(c.p50_ms > 0.0 && c.p50_ms <= c.p99_ms && c.p99_ms <= c.max_ms);
}

/// The whole path (scratch store, participants, coordinator, every workload, baseline, report) in
/// about two seconds, on SQLite with in-process participants.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_short_run_on_sqlite_measures_every_workload() {
    let report = run(&short_run(Workload::ALL.to_vec()), CancellationToken::new())
        .await
        .expect("the bench runs");
    let workloads: Vec<&str> = report.cells.iter().map(|c| c.workload.as_str()).collect();
    assert_eq!(workloads, ["w1", "w2", "w3"]);
    for c in &report.cells {
        assert_measured(c);
    }
    assert!(report.to_json()["ratio_to_baseline"].is_f64());
}

/// W3 alone: every two-phase commit ends `committed` (anything else counts as an error), and the
/// one-cell JSON carries its fields and ratio at the top, as scripts expect.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn w3_alone_commits_every_two_phase_transaction() {
    let report = run(&short_run(vec![Workload::W3]), CancellationToken::new())
        .await
        .expect("the bench runs w3");
    let [c] = report.cells.as_slice() else {
        panic!("one cell: {:?}", report.cells);
    };
    assert_eq!(c.workload, "w3");
    assert_measured(c);
    let doc = report.to_json();
    assert_eq!(doc["workload"], "w3");
    assert!(doc["ratio_to_baseline"].as_f64().is_some_and(|r| r > 0.0));
    assert_eq!(doc["cells"].as_array().map(Vec::len), Some(1));
}

/// `--participants http`: every workload runs against the HTTP/JSON bench participant with no
/// errors (W2's declined step is a 409, so the saga compensates as with gRPC).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_participants_run_every_workload() {
    let config = BenchConfig {
        protocol: super::Protocol::Http,
        ..short_run(Workload::ALL.to_vec())
    };
    let report = run(&config, CancellationToken::new())
        .await
        .expect("the bench runs with http participants");
    assert_eq!(report.participants, "in process (http)");
    assert_eq!(report.cells.len(), 3);
    for c in &report.cells {
        assert_measured(c);
    }
}

/// `--slices 2`: each side runs twice, alternating, and the report adds each side's slices up
/// over the whole window.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sliced_cells_alternate_and_add_up_each_side() {
    let config = BenchConfig {
        slices: 2,
        ..short_run(vec![Workload::W1])
    };
    let report = run(&config, CancellationToken::new())
        .await
        .expect("a sliced run");
    assert_eq!(report.slices, 2);
    assert_eq!(report.to_json()["slices"], 2);
    assert!(report.to_table().contains("in 2 slices alternating"));
    let [c] = report.cells.as_slice() else {
        panic!("one cell: {:?}", report.cells);
    };
    assert_measured(c);
    // Throughput is counted over both slices' windows (400 ms in all), not over one of them.
    let over_window = c.transactions as f64 / 0.4;
    assert!(
        (c.tps - over_window).abs() < 1e-6 * over_window.max(1.0),
        "{c:?}"
    );
}

#[test]
fn slices_add_samples_and_readings() {
    let mut sample = Sample {
        window: Duration::from_millis(200),
        errors: 1,
        ..Sample::default()
    };
    sample.latencies.merge(&ms(&[1, 2]));
    let mut later = Sample {
        window: Duration::from_millis(200),
        errors: 2,
        ..Sample::default()
    };
    later.latencies.merge(&ms(&[3]));
    sample.add(later);
    assert_eq!(
        (sample.count(), sample.errors, sample.window),
        (3, 3, Duration::from_millis(400))
    );
    assert!((sample.throughput() - 7.5).abs() < 1e-9);

    let slice = |cpu_ms: u64, wal: Option<u64>, busy: f64| Readings {
        bench_cpu: Some(Duration::from_millis(cpu_ms)),
        participant_cpu: None,
        wal_bytes: wal,
        machine_busy: Some(busy),
        machine_steal: Some(0.0),
    };
    let mut total = Readings::default();
    total.add(slice(10, Some(100), 0.5), 1);
    total.add(slice(20, Some(300), 0.7), 2);
    total.add(slice(30, None, 0.9), 3);
    assert_eq!(total.bench_cpu, Some(Duration::from_millis(60)));
    assert_eq!(total.participant_cpu, None);
    assert_eq!(
        total.wal_bytes, None,
        "a reading missing from one slice is missing"
    );
    assert!(total.machine_busy.is_some_and(|b| (b - 0.7).abs() < 1e-9));
}

//! The bench's statistics, its JSON shape, and a one-second run on SQLite.

use std::time::Duration;

use super::measure::{parse_duration, percentile, Sample};
use super::workloads::BatonSample;
use super::*;

fn ms(values: &[u64]) -> Vec<Duration> {
    values.iter().map(|&v| Duration::from_millis(v)).collect()
}

#[test]
fn percentiles_use_the_nearest_rank() {
    let hundred: Vec<Duration> = (1..=100).map(Duration::from_millis).collect();
    assert_eq!(percentile(&hundred, 0.50), Some(Duration::from_millis(50)));
    assert_eq!(percentile(&hundred, 0.99), Some(Duration::from_millis(99)));
    assert_eq!(percentile(&hundred, 1.0), Some(Duration::from_millis(100)));
    // Few samples: p99 of three is the largest, p50 the middle one.
    let three = ms(&[1, 2, 30]);
    assert_eq!(percentile(&three, 0.99), Some(Duration::from_millis(30)));
    assert_eq!(percentile(&three, 0.50), Some(Duration::from_millis(2)));
    assert_eq!(percentile(&three, 0.0), Some(Duration::from_millis(1)));
    assert_eq!(percentile(&[], 0.5), None);
}

#[test]
fn durations_take_seconds_and_milliseconds() {
    assert_eq!(parse_duration("15s"), Ok(Duration::from_secs(15)));
    assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
    assert_eq!(parse_duration("1.5s"), Ok(Duration::from_millis(1500)));
    assert_eq!(parse_duration("2"), Ok(Duration::from_secs(2)));
    assert_eq!(parse_duration("0s"), Ok(Duration::ZERO));
    assert!(parse_duration("fast").is_err());
    assert!(parse_duration("-1s").is_err());
    assert!(parse_duration("3h").is_err());
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
        bench_cpu: Some(Duration::from_millis(50)),
        participant_cpu: None,
    };
    let base = Sample {
        latencies: ms(base_ms),
        window,
        ..Sample::default()
    };
    CellReport::new(workload, clients, baton, base)
}

fn report(cells: Vec<CellReport>) -> Report {
    Report {
        store: "sqlite (temporary files)".into(),
        participants: "in process".into(),
        warmup: Duration::from_millis(100),
        duration: Duration::from_secs(2),
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

#[tokio::test]
async fn refuses_workloads_that_do_not_exist_yet() {
    let config = BenchConfig {
        workloads: vec![Workload::W3],
        concurrency: vec![1],
        warmup: Duration::ZERO,
        duration: Duration::from_millis(10),
        store: Store::Sqlite,
        participants: Participants::InProcess,
        max_connections: 4,
    };
    let err = run(&config, CancellationToken::new()).await.unwrap_err();
    assert_eq!(err.to_string(), "workload w3 is not available yet");
}

/// The whole path (scratch store, participants, coordinator, both workloads, baseline, report) in
/// about a second, on SQLite with in-process participants.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_short_run_on_sqlite_measures_both_workloads() {
    let config = BenchConfig {
        workloads: Workload::ALL.to_vec(),
        concurrency: vec![2],
        warmup: Duration::from_millis(100),
        duration: Duration::from_millis(400),
        store: Store::Sqlite,
        participants: Participants::InProcess,
        max_connections: 4,
    };
    let report = run(&config, CancellationToken::new())
        .await
        .expect("the bench runs");
    assert_eq!(report.cells.len(), 2);
    for c in &report.cells {
        assert!(c.transactions > 0, "{c:?}");
        assert_eq!(c.errors, 0, "{c:?}");
        assert!(c.baseline.transactions > 0, "{c:?}");
        assert_eq!(c.baseline.errors, 0, "{c:?}");
        assert!(c.ratio_to_baseline.is_some_and(|r| r > 0.0), "{c:?}");
        assert!(c.p50_ms > 0.0 && c.p50_ms <= c.p99_ms && c.p99_ms <= c.max_ms);
    }
    assert_eq!(report.cells[1].workload, "w2");
    assert!(report.to_json()["ratio_to_baseline"].is_f64());
}

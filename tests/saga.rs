//! End-to-end saga tests: a real `baton serve` process on its own PostgreSQL database, real
//! participant gRPC servers on port 0 in this process, and real gRPC between them.

mod support;

use std::sync::atomic::Ordering;
use std::time::Duration;

use baton_tx_proto as proto;
use baton_tx_proto::coordinator_client::CoordinatorClient;
use baton_tx_proto::{SagaStep, StartRequest, TxState};
use tonic::transport::Channel;
use tonic::Code;

use support::db::{fresh_database, TestDb};
use support::participant::participant;
use support::process::{self, saga, state, step, until, wait, Coordinator};

async fn coordinator(db: &TestDb, id: &str, extra: &[&str]) -> Coordinator {
    process::coordinator(&db.url, id, extra, &[]).await
}

fn with_payload(mut s: SagaStep, json: serde_json::Value) -> SagaStep {
    s.payload = serde_json::to_vec(&json).unwrap();
    s
}

async fn run(c: &mut CoordinatorClient<Channel>, mut req: StartRequest) -> proto::Transaction {
    req.wait = true;
    req.wait_timeout_ms = 30_000;
    let resp = c.start(req).await.unwrap().into_inner();
    resp.transaction.expect("wait returns the transaction")
}

// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn happy_saga_runs_every_step_once_in_order() {
    let db = fresh_database().await;
    let (p, ledger) = participant().await;
    let mut co = coordinator(&db, "c1", &[]).await;
    let tx = run(
        &mut co.client,
        saga(vec![
            step("reserve", &p, "ok", "undo"),
            step("charge", &p, "ok", "undo"),
            step("ship", &p, "ok", "undo"),
        ]),
    )
    .await;
    assert_eq!(state(&tx), TxState::Committed, "{tx:?}");
    assert_eq!(
        ledger.applied_order(&tx.tx_id),
        vec![(0, "execute"), (1, "execute"), (2, "execute")]
    );
    assert_eq!(
        ledger.deliveries(&tx.tx_id).len(),
        3,
        "each step delivered once"
    );
    assert_eq!(tx.branches[2].output, b"execute:ship");
    let events = co
        .client
        .events(proto::EventsRequest {
            tx_id: tx.tx_id.clone(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .events;
    assert_eq!(events.first().unwrap().kind, "accepted");
    assert_eq!(events.last().unwrap().kind, "committed");
    assert!(events.windows(2).all(|w| w[1].seq == w[0].seq + 1));
}

#[tokio::test]
async fn failing_step_compensates_earlier_steps_in_reverse() {
    let db = fresh_database().await;
    let (p, ledger) = participant().await;
    let mut co = coordinator(&db, "c1", &[]).await;
    let tx = run(
        &mut co.client,
        saga(vec![
            step("reserve", &p, "ok", "undo"),
            step("charge", &p, "ok", "undo"),
            step("ship", &p, "fail", "undo"),
        ]),
    )
    .await;
    assert_eq!(state(&tx), TxState::Compensated, "{tx:?}");
    assert_eq!(
        ledger.applied_order(&tx.tx_id),
        vec![
            (0, "execute"),
            (1, "execute"),
            (1, "compensate"),
            (0, "compensate")
        ]
    );
    assert!(
        tx.last_error.contains("insufficient funds"),
        "{}",
        tx.last_error
    );
    assert_eq!(tx.branches[2].state, "failed");
}

#[tokio::test]
async fn transient_errors_are_retried_and_permanent_ones_are_not() {
    let db = fresh_database().await;
    let (p, ledger) = participant().await;
    let mut co = coordinator(&db, "c1", &[]).await;
    let mut hang = step("hang", &p, "hang", "undo");
    hang.timeout_ms = 300;
    let tx = run(
        &mut co.client,
        saga(vec![
            with_payload(
                step("flaky", &p, "flaky", "undo"),
                serde_json::json!({"fail_first": 2}),
            ),
            hang,
        ]),
    )
    .await;
    assert_eq!(state(&tx), TxState::Committed, "{tx:?}");
    let attempts = |branch: u32| -> Vec<u32> {
        ledger
            .deliveries(&tx.tx_id)
            .iter()
            .filter(|d| d.branch == branch && d.phase == "execute")
            .map(|d| d.attempt)
            .collect()
    };
    assert_eq!(attempts(0), vec![1, 2, 3], "two UNAVAILABLE then success");
    assert_eq!(
        attempts(1),
        vec![1, 2],
        "a hang past the timeout is retried"
    );
    assert_eq!(ledger.times_applied(&tx.tx_id, 0, "execute"), 1);

    let tx = run(
        &mut co.client,
        saga(vec![
            step("reserve", &p, "ok", "undo"),
            step("charge", &p, "reject", "undo"),
        ]),
    )
    .await;
    assert_eq!(state(&tx), TxState::Compensated, "{tx:?}");
    let rejected: Vec<_> = ledger
        .deliveries(&tx.tx_id)
        .into_iter()
        .filter(|d| d.branch == 1)
        .collect();
    assert_eq!(
        rejected.len(),
        1,
        "a permanent error is not retried: {rejected:?}"
    );
    assert!(
        tx.last_error.contains("no such account"),
        "{}",
        tx.last_error
    );
}

#[tokio::test]
async fn failed_compensation_waits_for_retry_then_compensates() {
    let db = fresh_database().await;
    let (p, ledger) = participant().await;
    let mut co = coordinator(&db, "c1", &["--default-max-attempts", "3"]).await;
    ledger.broken.store(true, Ordering::SeqCst);
    let tx = run(
        &mut co.client,
        saga(vec![
            step("charge", &p, "ok", "undo_broken"),
            step("ship", &p, "fail", "undo"),
        ]),
    )
    .await;
    assert_eq!(state(&tx), TxState::Failed, "{tx:?}");
    assert!(
        tx.last_error.contains("refund service is down"),
        "{}",
        tx.last_error
    );
    assert_eq!(tx.branches[0].state, "compensation_failed");
    assert_eq!(ledger.times_applied(&tx.tx_id, 0, "compensate"), 0);

    // The operator fixes the participant and retries with the CLI.
    ledger.broken.store(false, Ordering::SeqCst);
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_baton"))
        .args(["tx", "retry", &tx.tx_id, "--addr", &co.endpoint])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "baton tx retry: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let tx = wait(&mut co.client, &tx.tx_id).await;
    assert_eq!(state(&tx), TxState::Compensated, "{tx:?}");
    assert_eq!(ledger.times_applied(&tx.tx_id, 0, "compensate"), 1);

    // Retrying a finished transaction is refused with a clear status.
    let err = co
        .client
        .retry(proto::RetryRequest {
            tx_id: tx.tx_id.clone(),
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::FailedPrecondition);
    assert!(
        err.message()
            .contains("only a failed transaction can be retried"),
        "{}",
        err.message()
    );
}

#[tokio::test]
async fn same_idempotency_key_gives_one_transaction() {
    let db = fresh_database().await;
    let (p, ledger) = participant().await;
    let mut co = coordinator(&db, "c1", &[]).await;
    let mut req = saga(vec![step("reserve", &p, "ok", "undo")]);
    req.idempotency_key = "order-42".into();
    req.labels.insert("order".into(), "42".into());
    let first = co.client.start(req.clone()).await.unwrap().into_inner();
    let second = co.client.start(req.clone()).await.unwrap().into_inner();
    assert!(first.created);
    assert!(!second.created);
    assert_eq!(first.tx_id, second.tx_id);
    let tx = wait(&mut co.client, &first.tx_id).await;
    assert_eq!(state(&tx), TxState::Committed);
    assert_eq!(ledger.deliveries(&first.tx_id).len(), 1);
    let listed = co
        .client
        .list(proto::ListRequest {
            labels: [("order".to_string(), "42".to_string())].into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(listed.transactions.len(), 1);

    // The same key with another definition is a conflict, not a second transaction.
    let mut other = saga(vec![step("reserve", &p, "ok", "")]);
    other.idempotency_key = "order-42".into();
    let err = co.client.start(other).await.unwrap_err();
    assert_eq!(err.code(), Code::AlreadyExists);
    assert!(
        err.message().starts_with("idempotency_key:"),
        "{}",
        err.message()
    );
}

#[tokio::test]
async fn cancel_of_a_running_saga_compensates_it() {
    let db = fresh_database().await;
    let (p, ledger) = participant().await;
    let mut co = coordinator(&db, "c1", &[]).await;
    let started = co
        .client
        .start(saga(vec![
            step("reserve", &p, "ok", "undo"),
            with_payload(
                step("charge", &p, "ok", "undo"),
                serde_json::json!({"sleep_ms": 500}),
            ),
            step("ship", &p, "ok", "undo"),
        ]))
        .await
        .unwrap()
        .into_inner();
    let id = started.tx_id.clone();
    until("charge to be called", || {
        ledger.deliveries(&id).iter().any(|d| d.branch == 1)
    })
    .await;
    let tx = co
        .client
        .cancel(proto::CancelRequest {
            tx_id: id.clone(),
            reason: "customer changed their mind".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(state(&tx), TxState::Compensating);
    let tx = wait(&mut co.client, &id).await;
    assert_eq!(state(&tx), TxState::Compensated, "{tx:?}");
    assert_eq!(
        ledger.applied_order(&id),
        vec![
            (0, "execute"),
            (1, "execute"),
            (1, "compensate"),
            (0, "compensate")
        ],
        "the in-flight step finished and was compensated first; ship never ran"
    );
    assert!(tx.last_error.contains("customer changed their mind"));
    let err = co
        .client
        .cancel(proto::CancelRequest {
            tx_id: id.clone(),
            reason: String::new(),
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::FailedPrecondition, "{}", err.message());
}

#[tokio::test]
async fn killed_coordinator_resumes_the_saga_after_restart() {
    let db = fresh_database().await;
    let (p, ledger) = participant().await;
    let mut co = coordinator(&db, "c1", &[]).await;
    let slow = |name: &str| {
        with_payload(
            step(name, &p, "ok", "undo"),
            serde_json::json!({"sleep_ms": 300}),
        )
    };
    let started = co
        .client
        .start(saga(vec![slow("a"), slow("b"), slow("c")]))
        .await
        .unwrap()
        .into_inner();
    let id = started.tx_id;
    until("step b to be called", || {
        ledger.deliveries(&id).iter().any(|d| d.branch == 1)
    })
    .await;
    co.kill9().await;
    let mut co = coordinator(&db, "c1", &[]).await;
    let tx = wait(&mut co.client, &id).await;
    assert_eq!(state(&tx), TxState::Committed, "{tx:?}");
    for branch in 0..3 {
        let delivered = ledger
            .deliveries(&id)
            .iter()
            .filter(|d| d.branch == branch && d.phase == "execute")
            .count();
        assert!(delivered >= 1, "step {branch} delivered");
        assert_eq!(ledger.times_applied(&id, branch, "execute"), 1);
    }
    assert!(ledger
        .applied_order(&id)
        .iter()
        .all(|(_, p)| *p == "execute"));
}

#[tokio::test]
async fn bad_input_gets_a_clear_status_and_writes_nothing() {
    let db = fresh_database().await;
    let (p, _ledger) = participant().await;
    let mut co = coordinator(
        &db,
        "c1",
        &["--max-payload-bytes", "1024", "--max-steps", "3"],
    )
    .await;
    let cases: Vec<(StartRequest, Code, &str)> = vec![
        (
            saga(vec![]),
            Code::InvalidArgument,
            "saga.steps: a saga needs at least one step",
        ),
        (
            StartRequest::default(),
            Code::InvalidArgument,
            "definition: give a saga or a two_phase",
        ),
        (
            saga(vec![SagaStep {
                endpoint: String::new(),
                service: "nowhere".into(),
                ..step("a", "", "ok", "undo")
            }]),
            Code::InvalidArgument,
            "saga.steps[0].service: unknown participant service \"nowhere\"",
        ),
        (
            saga(vec![SagaStep {
                payload: vec![b'x'; 2048],
                ..step("a", &p, "ok", "undo")
            }]),
            Code::ResourceExhausted,
            "saga.steps[0].payload: 2048 bytes exceed the limit of 1024",
        ),
        (
            saga(
                (0..4)
                    .map(|i| step(&format!("s{i}"), &p, "ok", "undo"))
                    .collect(),
            ),
            Code::ResourceExhausted,
            "saga.steps: 4 steps exceed the limit of 3",
        ),
    ];
    for (req, code, message) in cases {
        let err = co.client.start(req).await.unwrap_err();
        assert_eq!(err.code(), code, "{message}: got {}", err.message());
        assert!(
            err.message().starts_with(message),
            "{:?} is not {message:?}",
            err.message()
        );
    }
    let listed = co
        .client
        .list(proto::ListRequest::default())
        .await
        .unwrap()
        .into_inner();
    assert!(
        listed.transactions.is_empty(),
        "nothing was written: {listed:?}"
    );

    let unknown = baton_server::model::TxId::new().to_string();
    let err = co
        .client
        .get(proto::GetRequest {
            tx_id: unknown.clone(),
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::NotFound);
    assert!(err.message().contains(&unknown));
    let err = co
        .client
        .get(proto::GetRequest {
            tx_id: "not-an-id".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    assert!(err.message().starts_with("tx_id:"), "{}", err.message());

    let tx = run(&mut co.client, saga(vec![step("a", &p, "ok", "undo")])).await;
    assert_eq!(state(&tx), TxState::Committed);
    let err = co
        .client
        .retry(proto::RetryRequest { tx_id: tx.tx_id })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::FailedPrecondition);
}

#[tokio::test]
async fn watch_streams_the_history_until_the_outcome() {
    let db = fresh_database().await;
    let (p, _ledger) = participant().await;
    let mut co = coordinator(&db, "c1", &[]).await;
    let started = co
        .client
        .start(saga(vec![
            with_payload(
                step("a", &p, "ok", "undo"),
                serde_json::json!({"sleep_ms": 100}),
            ),
            step("b", &p, "fail", "undo"),
        ]))
        .await
        .unwrap()
        .into_inner();
    let mut stream = co
        .client
        .watch(proto::WatchRequest {
            tx_id: started.tx_id.clone(),
        })
        .await
        .unwrap()
        .into_inner();
    let mut kinds = Vec::new();
    let mut seqs = Vec::new();
    while let Some(event) = tokio::time::timeout(Duration::from_secs(30), stream.message())
        .await
        .expect("watch ends by itself")
        .unwrap()
    {
        kinds.push(event.kind.clone());
        seqs.push(event.seq);
    }
    assert_eq!(kinds.first().map(String::as_str), Some("accepted"));
    assert_eq!(
        kinds.last().map(String::as_str),
        Some("compensated"),
        "{kinds:?}"
    );
    assert_eq!(
        seqs,
        (1..=seqs.len() as u64).collect::<Vec<_>>(),
        "no gaps, no repeats"
    );
}

#[tokio::test]
async fn deadline_compensates_a_saga_that_runs_too_long() {
    let db = fresh_database().await;
    let (p, ledger) = participant().await;
    let mut co = coordinator(&db, "c1", &[]).await;
    let mut req = saga(vec![
        step("a", &p, "ok", "undo"),
        with_payload(
            step("b", &p, "ok", "undo"),
            serde_json::json!({"sleep_ms": 400}),
        ),
        step("c", &p, "ok", "undo"),
    ]);
    req.timeout_ms = 200;
    let tx = run(&mut co.client, req).await;
    assert_eq!(state(&tx), TxState::Compensated, "{tx:?}");
    assert!(tx.last_error.contains("deadline"), "{}", tx.last_error);
    assert_eq!(ledger.times_applied(&tx.tx_id, 2, "execute"), 0);
    assert_eq!(ledger.times_applied(&tx.tx_id, 0, "compensate"), 1);
}

fn cli(co: &Coordinator, args: &[&str]) -> (bool, String, String) {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_baton"))
        .args(args)
        .args(["--addr", &co.endpoint])
        .output()
        .unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[tokio::test]
async fn cli_lists_shows_and_explains_errors() {
    let db = fresh_database().await;
    let (p, _ledger) = participant().await;
    let mut co = coordinator(&db, "c1", &[]).await;
    let mut req = saga(vec![
        step("reserve", &p, "ok", "undo"),
        step("charge", &p, "fail", "undo"),
    ]);
    req.labels.insert("order".into(), "7".into());
    let tx = run(&mut co.client, req).await;

    let (ok, out, err) = cli(&co, &["tx", "list", "--json", "--label", "order=7"]);
    assert!(ok, "{err}");
    let listed: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(listed["transactions"][0]["tx_id"], tx.tx_id.as_str());
    assert_eq!(listed["transactions"][0]["state"], "compensated");

    let (ok, out, err) = cli(&co, &["tx", "show", &tx.tx_id]);
    assert!(ok, "{err}");
    for want in [
        "compensated",
        "reserve",
        "charge",
        "execute_failed",
        "compensate_ok",
        "+START",
    ] {
        assert!(out.contains(want), "tx show lacks {want:?}:\n{out}");
    }
    let (ok, out, _) = cli(&co, &["tx", "events", &tx.tx_id, "--json"]);
    assert!(ok);
    let events: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(events["events"][0]["kind"], "accepted", "{out}");

    let (ok, _, err) = cli(&co, &["tx", "cancel", &tx.tx_id]);
    assert!(!ok);
    assert!(
        err.contains("has already ended (compensated)") && err.contains("FAILED_PRECONDITION"),
        "{err}"
    );
    let (ok, _, err) = cli(&co, &["tx", "show", "nope"]);
    assert!(!ok);
    assert!(err.contains("tx_id:"), "{err}");
}

#[tokio::test]
async fn health_readiness_and_metrics_follow_the_sagas() {
    let db = fresh_database().await;
    let (p, _ledger) = participant().await;
    let mut co = coordinator(&db, "c1", &[]).await;
    assert_eq!(process::http_get(&co.http, "/healthz").await.0, 200);
    let (status, body) = process::http_get(&co.http, "/readyz").await;
    assert_eq!((status, body.trim()), (200, "ready"));
    let metric = |text: &str, name: &str| -> f64 {
        text.lines()
            .find_map(|l| {
                l.strip_prefix(name)
                    .map(|v| v.trim().parse::<f64>().unwrap())
            })
            .unwrap_or_else(|| panic!("no {name} in\n{text}"))
    };
    let before = process::http_get(&co.http, "/metrics").await.1;
    assert_eq!(
        metric(&before, "baton_transactions_started_total{kind=\"saga\"}"),
        0.0
    );
    run(&mut co.client, saga(vec![step("a", &p, "ok", "undo")])).await;
    run(
        &mut co.client,
        saga(vec![
            step("a", &p, "ok", "undo"),
            step("b", &p, "fail", "undo"),
        ]),
    )
    .await;
    let after = process::http_get(&co.http, "/metrics").await.1;
    assert_eq!(
        metric(&after, "baton_transactions_started_total{kind=\"saga\"}"),
        2.0
    );
    assert_eq!(
        metric(
            &after,
            "baton_transactions_finished_total{kind=\"saga\",outcome=\"committed\"}"
        ),
        1.0
    );
    assert_eq!(
        metric(
            &after,
            "baton_transactions_finished_total{kind=\"saga\",outcome=\"compensated\"}"
        ),
        1.0
    );
    assert!(metric(&after, "baton_log_batches_total") >= 1.0);
    assert_eq!(metric(&after, "baton_participant_calls_total"), 4.0);
    assert_eq!(metric(&after, "baton_transactions_in_flight"), 0.0);
}

//! End-to-end two-phase commit tests: a real `baton serve` process on its own PostgreSQL
//! database, real participant gRPC servers, SIGKILL at the protocol's critical points.

mod support;

use std::sync::atomic::Ordering;

use baton_tx_proto as proto;
use baton_tx_proto::coordinator_client::CoordinatorClient;
use baton_tx_proto::{StartRequest, TwoPhase, TwoPhaseBranch, TxState};
use tonic::transport::Channel;
use tonic::Code;

use support::db::fresh_database;
use support::participant::{participant, Ledger};
use support::process::{coordinator, state, until, wait};

fn branch(name: &str, endpoint: &str, action: &str) -> TwoPhaseBranch {
    TwoPhaseBranch {
        name: name.into(),
        endpoint: endpoint.into(),
        action: action.into(),
        ..Default::default()
    }
}

fn slow(mut b: TwoPhaseBranch, ms: u64) -> TwoPhaseBranch {
    b.payload = serde_json::to_vec(&serde_json::json!({ "sleep_ms": ms })).unwrap();
    b
}

fn two_phase(branches: Vec<TwoPhaseBranch>) -> StartRequest {
    StartRequest {
        definition: Some(proto::start_request::Definition::TwoPhase(TwoPhase {
            branches,
            prepare_timeout_ms: 0,
        })),
        ..Default::default()
    }
}

async fn start(c: &mut CoordinatorClient<Channel>, req: StartRequest) -> String {
    c.start(req).await.unwrap().into_inner().tx_id
}

async fn get(c: &mut CoordinatorClient<Channel>, id: &str) -> proto::Transaction {
    c.get(proto::GetRequest { tx_id: id.into() })
        .await
        .unwrap()
        .into_inner()
}

/// Polls the coordinator until the transaction is in `want`.
async fn until_state(c: &mut CoordinatorClient<Channel>, id: &str, want: TxState) {
    for _ in 0..1000 {
        if state(&get(c, id).await) == want {
            return;
        }
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    panic!("transaction {id} never reached {want:?}");
}

fn assert_committed_once(ledger: &Ledger, id: &str, branches: u32) {
    for b in 0..branches {
        assert_eq!(
            ledger.times_applied(id, b, "prepare"),
            1,
            "branch {b} prepared"
        );
        assert_eq!(
            ledger.times_applied(id, b, "commit"),
            1,
            "branch {b} committed once"
        );
        assert_eq!(
            ledger.delivered(id, b, "abort"),
            0,
            "branch {b} never aborted"
        );
    }
}

#[tokio::test]
async fn all_yes_votes_commit_every_branch_once() {
    let db = fresh_database().await;
    let (p, ledger) = participant().await;
    let mut co = coordinator(&db.url, "c1", &[], &[]).await;
    let mut req = two_phase(vec![
        branch("debit", &p, "yes"),
        branch("credit", &p, "yes"),
        branch("fee", &p, "yes"),
    ]);
    req.wait = true;
    let tx = co
        .client
        .start(req)
        .await
        .unwrap()
        .into_inner()
        .transaction
        .unwrap();
    assert_eq!(state(&tx), TxState::Committed, "{tx:?}");
    assert_committed_once(&ledger, &tx.tx_id, 3);
    // Every prepare was acknowledged before the first commit went out.
    let deliveries = ledger.deliveries(&tx.tx_id);
    let first_commit = deliveries.iter().position(|d| d.phase == "commit").unwrap();
    assert_eq!(
        deliveries[..first_commit]
            .iter()
            .filter(|d| d.phase == "prepare")
            .count(),
        3
    );
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
    assert!(events.iter().any(|e| e.kind == "commit_decided"));
}

#[tokio::test]
async fn a_no_vote_aborts_every_prepared_branch() {
    let db = fresh_database().await;
    let (p, ledger) = participant().await;
    let mut co = coordinator(&db.url, "c1", &[], &[]).await;
    let id = start(
        &mut co.client,
        two_phase(vec![
            branch("debit", &p, "yes"),
            slow(branch("credit", &p, "no"), 100),
            branch("fee", &p, "yes"),
        ]),
    )
    .await;
    let tx = wait(&mut co.client, &id).await;
    assert_eq!(state(&tx), TxState::Aborted, "{tx:?}");
    assert!(
        tx.last_error.contains("insufficient funds"),
        "{}",
        tx.last_error
    );
    for b in [0, 2] {
        assert_eq!(
            ledger.times_applied(&id, b, "abort"),
            1,
            "prepared branch {b} aborted"
        );
    }
    assert_eq!(
        ledger.delivered(&id, 1, "abort"),
        0,
        "the no-voter has nothing to abort"
    );
    for b in 0..3 {
        assert_eq!(ledger.delivered(&id, b, "commit"), 0, "nothing committed");
    }
}

#[tokio::test]
async fn a_participant_down_in_phase_two_gets_its_commit_once_back() {
    let db = fresh_database().await;
    let (p, ledger) = participant().await;
    let mut co = coordinator(&db.url, "c1", &[], &[]).await;
    ledger.phase_two_down.store(true, Ordering::SeqCst);
    let id = start(
        &mut co.client,
        two_phase(vec![
            branch("debit", &p, "yes"),
            branch("credit", &p, "yes"),
        ]),
    )
    .await;
    until("commit to be retried", || {
        ledger.delivered(&id, 0, "commit") >= 3
    })
    .await;
    // Progress reaches the log within the progress flush time (100 ms by default).
    let mut tx = get(&mut co.client, &id).await;
    for _ in 0..50 {
        if tx
            .branches
            .iter()
            .any(|b| b.last_error.contains("restarting"))
        {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        tx = get(&mut co.client, &id).await;
    }
    assert_eq!(state(&tx), TxState::Committing);
    assert!(tx.in_doubt, "phase two is stuck: in doubt");
    assert!(
        tx.branches
            .iter()
            .any(|b| b.last_error.contains("restarting")),
        "{tx:?}"
    );
    // The decision holds: cancel is refused.
    let err = co
        .client
        .cancel(proto::CancelRequest {
            tx_id: id.clone(),
            reason: String::new(),
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::FailedPrecondition, "{}", err.message());

    ledger.phase_two_down.store(false, Ordering::SeqCst);
    let tx = wait(&mut co.client, &id).await;
    assert_eq!(state(&tx), TxState::Committed, "{tx:?}");
    assert!(!tx.in_doubt);
    assert_committed_once(&ledger, &id, 2);
}

#[tokio::test]
async fn killed_after_the_decision_commits_every_branch_after_restart() {
    let db = fresh_database().await;
    let (p, ledger) = participant().await;
    let mut co = coordinator(
        &db.url,
        "c1",
        &[],
        &[("BATON_FAILPOINTS", "after_commit_decision")],
    )
    .await;
    let id = start(
        &mut co.client,
        two_phase(vec![
            branch("debit", &p, "yes"),
            branch("credit", &p, "yes"),
        ]),
    )
    .await;
    until_state(&mut co.client, &id, TxState::Committing).await;
    co.kill9().await;
    assert_eq!(
        ledger.delivered(&id, 0, "commit") + ledger.delivered(&id, 1, "commit"),
        0
    );

    let mut co = coordinator(&db.url, "c1", &[], &[]).await;
    let tx = wait(&mut co.client, &id).await;
    assert_eq!(state(&tx), TxState::Committed, "{tx:?}");
    assert_committed_once(&ledger, &id, 2);
}

#[tokio::test]
async fn killed_before_the_decision_aborts_every_prepared_branch() {
    let db = fresh_database().await;
    let (p, ledger) = participant().await;
    let mut co = coordinator(&db.url, "c1", &[], &[]).await;
    let id = start(
        &mut co.client,
        two_phase(vec![
            branch("debit", &p, "yes"),
            slow(branch("credit", &p, "yes"), 1500),
        ]),
    )
    .await;
    until("debit to prepare and credit to be asked", || {
        ledger.times_applied(&id, 0, "prepare") == 1 && ledger.delivered(&id, 1, "prepare") == 1
    })
    .await;
    co.kill9().await;

    let mut co = coordinator(&db.url, "c1", &[], &[]).await;
    let tx = wait(&mut co.client, &id).await;
    assert_eq!(state(&tx), TxState::Aborted, "presumed abort: {tx:?}");
    assert_eq!(
        ledger.times_applied(&id, 0, "abort"),
        1,
        "the prepared branch aborted"
    );
    for b in 0..2 {
        assert_eq!(ledger.delivered(&id, b, "commit"), 0, "nothing committed");
    }
}

#[tokio::test]
async fn cancel_while_preparing_aborts() {
    let db = fresh_database().await;
    let (p, ledger) = participant().await;
    let mut co = coordinator(&db.url, "c1", &[], &[]).await;
    let id = start(
        &mut co.client,
        two_phase(vec![
            branch("debit", &p, "yes"),
            slow(branch("credit", &p, "yes"), 500),
        ]),
    )
    .await;
    until("debit to prepare", || {
        ledger.times_applied(&id, 0, "prepare") == 1
    })
    .await;
    co.client
        .cancel(proto::CancelRequest {
            tx_id: id.clone(),
            reason: "operator".into(),
        })
        .await
        .unwrap();
    let tx = wait(&mut co.client, &id).await;
    assert_eq!(state(&tx), TxState::Aborted, "{tx:?}");
    assert!(
        tx.last_error.contains("cancelled: operator"),
        "{}",
        tx.last_error
    );
    assert_eq!(ledger.times_applied(&id, 0, "abort"), 1);
    assert_eq!(ledger.delivered(&id, 0, "commit"), 0);
}

#[tokio::test]
async fn bad_two_phase_definitions_are_refused() {
    let db = fresh_database().await;
    let (p, _ledger) = participant().await;
    let mut co = coordinator(&db.url, "c1", &[], &[]).await;
    let cases = vec![
        (
            two_phase(vec![]),
            "two_phase.branches: a two-phase commit needs at least one branch",
        ),
        (
            two_phase(vec![branch("a", &p, "yes"), branch("a", &p, "yes")]),
            "two_phase.branches[1].name: duplicate branch name",
        ),
        (
            two_phase(vec![branch("a", "", "yes")]),
            "two_phase.branches[0]: give a service or an endpoint",
        ),
    ];
    for (req, want) in cases {
        let err = co.client.start(req).await.unwrap_err();
        assert_eq!(err.code(), Code::InvalidArgument);
        assert!(
            err.message().starts_with(want),
            "{:?} is not {want:?}",
            err.message()
        );
    }
}

#[path = "../examples/bank_transfer/bank.rs"]
#[allow(dead_code)] // the example uses all of it; this test only some
mod bank;

/// Many concurrent transfers (2PC and sagas) between two banks whose services fail, stall, lose
/// replies and get restarted: every transfer ends, and no money is created or lost.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn randomized_transfers_keep_the_total_constant() {
    use bank::{Bank, Faults};
    use baton_tx::client::{Client, Saga, Step, TwoPhase, TwoPhaseBranch};
    use rand::Rng;
    use std::sync::Arc;
    use std::time::Duration;

    let db = fresh_database().await;
    let dir = std::env::temp_dir().join(format!("baton-banks-{}", uuid::Uuid::now_v7()));
    std::fs::create_dir_all(&dir).unwrap();
    let a = Bank::open("bank-a", &dir.join("a.db")).await.unwrap();
    let b = Bank::open("bank-b", &dir.join("b.db")).await.unwrap();
    for (bank, ids) in [(&a, ["a1", "a2"]), (&b, ["b1", "b2"])] {
        for id in ids {
            bank.open_account(id, 1_000).await.unwrap();
        }
    }
    let faults = Faults {
        fail_before: 0.1,
        fail_after: 0.1,
        stall: 0.05,
        hang: Duration::from_millis(400),
    };
    let server_a = a.participant(faults).serve("127.0.0.1:0").await.unwrap();
    let server_b = b.participant(faults).serve("127.0.0.1:0").await.unwrap();
    let (ep_a, ep_b) = (server_a.endpoint(), server_b.endpoint());
    let co = coordinator(&db.url, "c1", &["--default-max-attempts", "12"], &[]).await;
    let client = Client::connect(co.endpoint.clone()).await.unwrap();

    let transfers = 120usize;
    let next = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let mut workers = tokio::task::JoinSet::new();
    for _ in 0..8 {
        let (client, next, ep_a, ep_b) = (client.clone(), next.clone(), ep_a.clone(), ep_b.clone());
        workers.spawn(async move {
            let mut outcomes = Vec::new();
            loop {
                let n = next.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                if n >= transfers {
                    return outcomes;
                }
                let (amount, from_a, account) = {
                    let mut rng = rand::thread_rng();
                    (
                        rng.gen_range(1..400i64),
                        rng.gen_bool(0.5),
                        rng.gen_range(1..=2),
                    )
                };
                let (src, dst) = if from_a {
                    (
                        (ep_a.clone(), format!("a{account}")),
                        (ep_b.clone(), format!("b{account}")),
                    )
                } else {
                    (
                        (ep_b.clone(), format!("b{account}")),
                        (ep_a.clone(), format!("a{account}")),
                    )
                };
                let body = |acc: &str| serde_json::json!({ "account": acc, "amount": amount });
                let timeout = Duration::from_millis(200);
                let request: baton_tx::client::Definition = if n % 2 == 0 {
                    TwoPhase::new()
                        .branch(
                            TwoPhaseBranch::to_endpoint("debit", &src.0)
                                .json(&body(&src.1))
                                .unwrap()
                                .timeout(timeout),
                        )
                        .branch(
                            TwoPhaseBranch::to_endpoint("credit", &dst.0)
                                .json(&body(&dst.1))
                                .unwrap()
                                .timeout(timeout),
                        )
                        .prepare_timeout(Duration::from_secs(20))
                        .into()
                } else {
                    Saga::new()
                        .step(
                            Step::to_endpoint("withdraw", &src.0)
                                .compensate("withdraw")
                                .json(&body(&src.1))
                                .unwrap()
                                .timeout(timeout),
                        )
                        .step(
                            Step::to_endpoint("deposit", &dst.0)
                                .compensate("deposit")
                                .json(&body(&dst.1))
                                .unwrap()
                                .timeout(timeout),
                        )
                        .into()
                };
                let tx = client.run(request).await.unwrap();
                outcomes.push((n % 2 == 0, tx));
            }
        });
    }
    // Meanwhile restart bank B's service on the same port, twice.
    let port_b = server_b.local_addr();
    let mut server_b = Some(server_b);
    for _ in 0..2 {
        tokio::time::sleep(Duration::from_millis(700)).await;
        server_b.take().unwrap().shutdown().await;
        tokio::time::sleep(Duration::from_millis(300)).await;
        server_b = Some(b.participant(faults).serve(port_b).await.unwrap());
    }
    let mut outcomes = Vec::new();
    while let Some(done) = workers.join_next().await {
        outcomes.extend(done.unwrap());
    }
    assert_eq!(outcomes.len(), transfers);
    let mut counts = std::collections::BTreeMap::new();
    for (two_phase, tx) in &outcomes {
        use baton_tx::client::TxState;
        let s = tx.state;
        let ok = if *two_phase {
            matches!(s, TxState::Committed | TxState::Aborted)
        } else {
            matches!(s, TxState::Committed | TxState::Compensated)
        };
        assert!(ok, "transfer ended {s:?}: {tx:?}");
        *counts.entry(format!("{s:?}")).or_insert(0) += 1;
    }
    let (total_a, reserved_a) = a.totals().await.unwrap();
    let (total_b, reserved_b) = b.totals().await.unwrap();
    eprintln!("transfers: {counts:?}; totals {total_a} + {total_b}");
    assert_eq!(
        total_a + total_b,
        4_000,
        "money is neither created nor lost"
    );
    assert_eq!(
        (reserved_a, reserved_b),
        (0, 0),
        "no reservation is left hanging"
    );
    server_a.shutdown().await;
    server_b.unwrap().shutdown().await;
    let _ = std::fs::remove_dir_all(&dir);
}

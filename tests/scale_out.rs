//! Crash recovery and scale-out: several `baton serve` processes on one PostgreSQL database,
//! coordinators killed with SIGKILL and restarted, one added and one removed with SIGTERM, all
//! under a steady saga load. An invariant checker then reads the participants' ledger and the
//! log.
//!
//! `BATON_CHAOS_CYCLES` sets the number of kill/restart cycles (CI runs the default, a short run).

mod support;

use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use baton_tx::client::{Client, EventKind, Saga, Step, TxState};
use rand::Rng;
use sqlx::Connection;

use support::chaos::{check_event_writers, check_saga, order_saga};
use support::db::private_database;
use support::participant::{participant, Ledger};
use support::process::{coordinator, Coordinator};

/// Lease and claim times for this test: a dead coordinator's work moves within ~1.5 s.
const CHAOS: &[&str] = &["--lease-ms", "1500", "--claim-interval-ms", "100"];

fn cycles() -> usize {
    std::env::var("BATON_CHAOS_CYCLES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(6)
}

/// What the clients saw.
#[derive(Default)]
struct Seen {
    /// (tx id, expected to fail at step 3)
    accepted: Mutex<Vec<(String, bool)>>,
    errors: Mutex<Vec<String>>,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn coordinators_die_join_and_leave_under_load_and_nothing_is_lost() {
    let db = private_database().await;
    let (p, ledger) = participant().await;
    let mut nodes: Vec<Option<Coordinator>> = Vec::new();
    for id in ["c1", "c2", "c3"] {
        nodes.push(Some(coordinator(&db.url, id, CHAOS, &[]).await));
    }
    let addrs: Vec<String> = nodes
        .iter()
        .map(|n| n.as_ref().unwrap().endpoint.clone())
        .collect();

    // A steady load: each client runs sagas one after another until told to stop, failing over
    // between the coordinators it knows.
    let stop = Arc::new(AtomicBool::new(false));
    let (seen, clients) = load(&addrs, &p, 8, stop.clone()).await;

    // Chaos: kill a random coordinator, restart it; add a fourth; remove one gracefully.
    let mut rng = rand::thread_rng();
    let ids = ["c1", "c2", "c3"];
    for cycle in 0..cycles() {
        tokio::time::sleep(Duration::from_millis(rng.gen_range(200..600))).await;
        let victim = rng.gen_range(0..3);
        if let Some(mut node) = nodes[victim].take() {
            node.kill9().await;
        }
        tokio::time::sleep(Duration::from_millis(rng.gen_range(50..400))).await;
        // The restarted process comes back on its old address, as a restarted pod behind a
        // stable service name does.
        let listen = addrs[victim].trim_start_matches("http://").to_string();
        let args: Vec<&str> = CHAOS.iter().copied().chain(["--listen", &listen]).collect();
        nodes[victim] = Some(coordinator(&db.url, ids[victim], &args, &[]).await);
        if cycle == cycles() / 2 {
            nodes.push(Some(coordinator(&db.url, "c4", CHAOS, &[]).await));
        }
    }
    // Scale in: SIGTERM one coordinator; it hands back what it holds and exits 0.
    let mut leaving = nodes[1].take().unwrap();
    let pid = leaving.child.id().unwrap() as i32;
    let status = std::process::Command::new("kill")
        .args(["-TERM", &pid.to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    let exit = tokio::time::timeout(Duration::from_secs(20), leaving.child.wait())
        .await
        .expect("a SIGTERMed coordinator exits within the drain time")
        .unwrap();
    assert!(exit.success(), "graceful exit: {exit:?}");

    tokio::time::sleep(Duration::from_millis(500)).await;
    stop.store(true, Ordering::SeqCst);
    for c in clients {
        c.await.unwrap();
    }

    // Every accepted transaction reached its outcome; check each against the ledger.
    let live: Vec<String> = nodes.iter().flatten().map(|n| n.endpoint.clone()).collect();
    check_all(&live, &ledger, &seen).await;
    check_event_writers(&db.url).await;
    eprintln!("chaos: {} cycles", cycles());
}

/// Starts `clients` tasks that each run sagas back to back (one in four fails at step 3) until
/// `stop` is set (or a bound that grows with the chaos cycles passes), retrying through any coordinator with the same key.
async fn load(
    addrs: &[String],
    participant: &str,
    clients: usize,
    stop: Arc<AtomicBool>,
) -> (Arc<Seen>, Vec<tokio::task::JoinHandle<()>>) {
    let seen = Arc::new(Seen::default());
    let counter = Arc::new(AtomicU64::new(0));
    let mut handles = Vec::new();
    for c in 0..clients {
        let client = Client::connect_many(addrs).await.unwrap();
        let (seen, stop, counter) = (seen.clone(), stop.clone(), counter.clone());
        let p = participant.to_string();
        handles.push(tokio::spawn(async move {
            // Bounded even if `stop` never comes: long enough for the chaos cycles asked for.
            let deadline = Instant::now() + Duration::from_secs(60 + 3 * cycles() as u64);
            while !stop.load(Ordering::SeqCst) && Instant::now() < deadline {
                let n = counter.fetch_add(1, Ordering::SeqCst);
                let fail = n % 4 == 3;
                let key = format!("client{c}-saga{n}");
                // A start that fails over may be retried: the idempotency key keeps it one.
                let mut outcome = None;
                for _ in 0..100 {
                    match client.run(order_saga(&p, &key, fail, 15)).await {
                        Ok(tx) => {
                            outcome = Some(tx);
                            break;
                        }
                        Err(e) => {
                            seen.errors.lock().unwrap().push(format!("{key}: {e}"));
                            tokio::time::sleep(Duration::from_millis(100)).await;
                        }
                    }
                }
                match outcome {
                    Some(tx) => seen
                        .accepted
                        .lock()
                        .unwrap()
                        .push((tx.id.to_string(), fail)),
                    None => panic!("saga {key} could not be run through any coordinator"),
                }
            }
        }));
    }
    (seen, handles)
}

/// Waits for every accepted saga and checks it against the ledger and its history.
async fn check_all(addrs: &[String], ledger: &Ledger, seen: &Seen) {
    let client = Client::connect_many(addrs).await.unwrap();
    let accepted = seen.accepted.lock().unwrap().clone();
    assert!(
        accepted.len() >= 20,
        "the load ran: {} sagas",
        accepted.len()
    );
    let ids: HashSet<&String> = accepted.iter().map(|(id, _)| id).collect();
    assert_eq!(
        ids.len(),
        accepted.len(),
        "one transaction per idempotency key"
    );
    for (id, fail) in &accepted {
        let tx_id = id.parse().unwrap();
        let tx = client.wait(tx_id, Duration::from_secs(30)).await.unwrap();
        check_saga(ledger, &tx, *fail);
        let events = client.events(tx_id, 0, 10_000).await.unwrap();
        let seqs: Vec<u64> = events.iter().map(|e| e.seq).collect();
        assert_eq!(
            seqs,
            (1..=seqs.len() as u64).collect::<Vec<_>>(),
            "{id}: the history has no gaps or repeats"
        );
    }
    let errors = seen.errors.lock().unwrap().clone();
    eprintln!(
        "{} sagas checked, {} client retries{}",
        accepted.len(),
        errors.len(),
        errors
            .first()
            .map(|e| format!(" (first: {e})"))
            .unwrap_or_default()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_stopped_and_restarted_under_load_loses_nothing() {
    let cluster = support::cluster::Cluster::start();
    let admin = cluster.url("postgres");
    let mut conn = sqlx::PgConnection::connect(&admin).await.unwrap();
    sqlx::Executor::execute(&mut conn, "CREATE DATABASE baton")
        .await
        .unwrap();
    drop(conn);
    let url = cluster.url("baton");
    let (p, ledger) = participant().await;
    let mut a = coordinator(&url, "a", CHAOS, &[]).await;
    let mut b = coordinator(&url, "b", CHAOS, &[]).await;
    let addrs = vec![a.endpoint.clone(), b.endpoint.clone()];
    let stop = Arc::new(AtomicBool::new(false));
    let (seen, clients) = load(&addrs, &p, 6, stop.clone()).await;

    // Short outages, and one longer than half the lease (the coordinators self-fence, then
    // resume).
    for outage_ms in [300, 1200, 2000] {
        tokio::time::sleep(Duration::from_millis(700)).await;
        cluster.stop();
        let down = std::time::Instant::now();
        if outage_ms >= 2000 {
            // Past half the lease without a heartbeat: not ready, while the process stays up.
            // On a busy machine the heartbeat task notices a little later; the outage lasts
            // until it has.
            let mut last = (0, String::new());
            while down.elapsed() < Duration::from_secs(20) {
                last = support::process::http_get(&a.http, "/readyz").await;
                if last.0 == 503 {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            assert_eq!(last.0, 503, "{}", last.1);
        }
        if let Some(left) = Duration::from_millis(outage_ms).checked_sub(down.elapsed()) {
            tokio::time::sleep(left).await;
        }
        cluster.restart();
    }
    tokio::time::sleep(Duration::from_millis(1500)).await;
    stop.store(true, Ordering::SeqCst);
    for c in clients {
        c.await.unwrap();
    }
    check_all(&addrs, &ledger, &seen).await;
    check_event_writers(&url).await;
    let mut ready = (0, String::new());
    for _ in 0..200 {
        ready = support::process::http_get(&a.http, "/readyz").await;
        if ready.0 == 200 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(
        ready.0, 200,
        "ready again once the database answers: {}",
        ready.1
    );
    for node in [&mut a, &mut b] {
        assert!(
            node.child.try_wait().unwrap().is_none(),
            "coordinators stay up through database outages"
        );
    }
}

/// Transactions in flight on the coordinator that is killed (`BATON_RECOVERY_TXS`, default 500;
/// the figure is 10,000).
fn recovery_txs() -> usize {
    std::env::var("BATON_RECOVERY_TXS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(500)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn survivors_finish_a_killed_coordinators_backlog_within_the_lease_plus_five_seconds() {
    let db = private_database().await;
    let (p, ledger) = participant().await;
    let n = recovery_txs();
    let lease = Duration::from_millis(1500);
    let mut victim = coordinator(
        &db.url,
        "victim",
        &[CHAOS, &["--max-inflight", "50000"]].concat(),
        &[],
    )
    .await;
    let _s1 = coordinator(
        &db.url,
        "s1",
        &[CHAOS, &["--max-inflight", "50000"]].concat(),
        &[],
    )
    .await;
    let _s2 = coordinator(
        &db.url,
        "s2",
        &[CHAOS, &["--max-inflight", "50000"]].concat(),
        &[],
    )
    .await;

    ledger.gate_closed.store(true, Ordering::SeqCst);
    let client = Client::connect(victim.endpoint.clone()).await.unwrap();
    let started = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    for worker in 0..16 {
        let (client, p) = (client.clone(), p.clone());
        tasks.spawn(async move {
            for i in (worker..n).step_by(16) {
                let saga = Saga::new()
                    .step(
                        // Long enough that no call times out while the gate is closed.
                        Step::to_endpoint("a", &p)
                            .action("gated")
                            .compensate("undo")
                            .timeout(Duration::from_secs(120)),
                    )
                    .step(Step::to_endpoint("b", &p).action("ok").compensate("undo"))
                    .step(Step::to_endpoint("c", &p).action("ok").compensate("undo"))
                    .idempotency_key(format!("recovery-{i}"));
                client.start(saga).await.unwrap();
            }
        });
    }
    while let Some(done) = tasks.join_next().await {
        done.unwrap();
    }
    eprintln!("recovery: {n} sagas accepted in {:?}", started.elapsed());
    // All of them are in flight on the victim (their first step waits at the gate).
    let mut conn = sqlx::PgConnection::connect(&db.url).await.unwrap();
    let count = |sql: &'static str| sqlx::query_scalar::<_, i64>(sql);
    support::process::until("every first step to be in flight", || {
        ledger.in_flight_at_gate() >= n
    })
    .await;
    victim.kill9().await;
    let killed = Instant::now();
    ledger.gate_closed.store(false, Ordering::SeqCst);
    loop {
        let done: i64 = count("SELECT count(*) FROM baton_transactions WHERE state = 'committed'")
            .fetch_one(&mut conn)
            .await
            .unwrap();
        if done as usize == n {
            break;
        }
        assert!(
            killed.elapsed() < Duration::from_secs(120),
            "only {done} of {n} finished two minutes after the kill"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let took = killed.elapsed();
    eprintln!("recovery: {n} in-flight sagas finished by the survivors {took:?} after the kill (lease {lease:?})");
    assert!(
        took < lease + Duration::from_secs(5),
        "recovery took {took:?}, more than the lease + 5 s"
    );
}

#[tokio::test]
async fn any_coordinator_answers_for_a_transaction_another_one_drives() {
    let db = private_database().await;
    let (p, ledger) = participant().await;
    let owner = coordinator(&db.url, "owner", &[], &[]).await;
    let other = coordinator(&db.url, "other", &[], &[]).await;
    let via_owner = Client::connect(owner.endpoint.clone()).await.unwrap();
    let via_other = Client::connect(other.endpoint.clone()).await.unwrap();
    let slow = |name: &str| {
        Step::to_endpoint(name, &p)
            .action("ok")
            .compensate("undo")
            .json(&serde_json::json!({ "sleep_ms": 300 }))
            .unwrap()
    };
    let started = via_owner
        .start(Saga::new().step(slow("a")).step(slow("b")).step(slow("c")))
        .await
        .unwrap();
    let tx_id = started.tx_id;
    let id = tx_id.to_string();
    support::process::until("step a to run", || {
        ledger.times_applied(&id, 0, "execute") == 1
    })
    .await;

    // Get and Cancel through the coordinator that does not drive it.
    let tx = via_other.get(tx_id).await.unwrap();
    assert_eq!(tx.owner.as_deref(), Some("owner"));
    via_other.cancel(tx_id, "changed my mind").await.unwrap();
    // Wait (and Watch) through it too: it reads the log until the outcome.
    let tx = via_other
        .wait(tx_id, Duration::from_secs(30))
        .await
        .unwrap();
    assert_eq!(tx.state, TxState::Compensated, "{tx:?}");
    assert!(
        tx.last_error
            .as_deref()
            .is_some_and(|e| e.contains("changed my mind")),
        "{tx:?}"
    );
    assert_eq!(ledger.times_applied(&id, 2, "execute"), 0, "c never ran");
    assert_eq!(ledger.times_applied(&id, 0, "compensate"), 1);
    let mut events = via_other.watch(tx_id).await.unwrap();
    let mut last = None;
    while let Some(e) = events.next().await {
        last = e.unwrap().kind;
    }
    assert_eq!(last, Some(EventKind::Compensated));
    // A second cancel is refused with the reason, from either coordinator.
    let err = via_other.cancel(tx_id, "again").await.unwrap_err();
    assert_eq!(
        err.code(),
        tonic::Code::FailedPrecondition,
        "{}",
        err.message()
    );
}

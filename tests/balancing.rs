//! End-to-end load balancing: a real `baton serve` process on its own PostgreSQL database,
//! participant instances that register, scale out, deregister and get killed under a steady saga
//! load, and the calls each instance received.
//!
//! The instance that is killed with SIGKILL must be a process of its own: the test re-executes
//! this test binary, running only [`participant_child_process`] (ignored in normal runs), which
//! serves and registers a participant until it is killed and reports every call on its stdout.

mod support;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::process::Stdio;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use baton_tx::participant::{Participant, Registration, Reply, Request, ServerHandle};
use baton_tx_proto as proto;
use baton_tx_proto::coordinator_client::CoordinatorClient;
use baton_tx_proto::{
    DeregisterParticipantRequest, HeartbeatParticipantRequest, RegisterParticipantRequest, Saga,
    SagaStep, StartRequest, TxState,
};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};
use tonic::transport::Channel;

use support::db::{fresh_database, TestDb};
use support::process::Coordinator;

/// The participant service every instance serves.
const SERVICE: &str = "inventory";
/// Set (to the coordinator's endpoint) only in the child process.
const CHILD_ENV: &str = "BATON_BALANCING_CHILD_COORDINATOR";
/// Markers of the child's stdout lines the parent reads.
const READY: &str = "BALANCING-READY ";
const CALL: &str = "BALANCING-CALL ";
/// Registration TTL of every instance: a killed one drops out this long after its last heartbeat.
const TTL: Duration = Duration::from_millis(1000);
/// The coordinator's registry refresh (`--registry-refresh-ms`).
const REFRESH_MS: u64 = 200;
/// Each call takes this long in the participant, so calls overlap and the load lasts seconds.
const WORK: Duration = Duration::from_millis(10);

// ---------------------------------------------------------------------------------------------
// Participant instances and what they received.

#[derive(Clone, Debug)]
struct Call {
    instance: String,
    tx: String,
    branch: u32,
    attempt: u32,
    at: Instant,
}

/// Every call any instance received, in arrival order.
#[derive(Default)]
struct Calls(Mutex<Vec<Call>>);

impl Calls {
    fn record(&self, instance: &str, tx: &str, branch: u32, attempt: u32) {
        self.0.lock().unwrap().push(Call {
            instance: instance.to_string(),
            tx: tx.to_string(),
            branch,
            attempt,
            at: Instant::now(),
        });
    }

    fn all(&self) -> Vec<Call> {
        self.0.lock().unwrap().clone()
    }

    /// Calls per instance, received in `[from, to)`.
    fn per_instance(&self, from: Instant, to: Instant) -> BTreeMap<String, usize> {
        let mut counts = BTreeMap::new();
        for c in self.all() {
            if c.at >= from && c.at < to {
                *counts.entry(c.instance).or_default() += 1;
            }
        }
        counts
    }

    fn count(&self, instance: &str) -> usize {
        self.all().iter().filter(|c| c.instance == instance).count()
    }
}

/// The participant: `work` and `undo` succeed after [`WORK`]; each call is passed to `seen`.
fn participant(seen: impl Fn(&Request) + Send + Sync + Clone + 'static) -> Participant {
    let undo = seen.clone();
    Participant::new()
        .on_execute("work", move |req: Request| {
            seen(&req);
            async move {
                tokio::time::sleep(WORK).await;
                Ok(Reply::ok())
            }
        })
        .on_compensate("undo", move |req: Request| {
            undo(&req);
            async move { Ok(Reply::ok()) }
        })
}

/// An instance in this process, recording into `calls` as `name`.
async fn instance(name: &str, calls: &Arc<Calls>) -> ServerHandle {
    let calls = calls.clone();
    let name = name.to_string();
    participant(move |req| calls.record(&name, &req.tx_id, req.branch_index, req.attempt))
        .serve("127.0.0.1:0")
        .await
        .expect("serve participant")
}

/// Registration by hand (not the SDK), so the test can deregister while the server keeps
/// serving: a call that still arrived after that would be counted.
struct Manual {
    client: CoordinatorClient<Channel>,
    endpoint: String,
    heartbeat: tokio::task::JoinHandle<()>,
}

impl Manual {
    async fn register(coordinator: &str, endpoint: &str) -> Manual {
        let mut client = CoordinatorClient::connect(coordinator.to_string())
            .await
            .unwrap();
        let ttl_ms = TTL.as_millis() as u64;
        client
            .register_participant(RegisterParticipantRequest {
                service: SERVICE.into(),
                endpoint: endpoint.into(),
                weight: 1,
                zone: String::new(),
                ttl_ms,
            })
            .await
            .unwrap();
        let mut beat = client.clone();
        let beat_endpoint = endpoint.to_string();
        let heartbeat = tokio::spawn(async move {
            let mut ticker = tokio::time::interval(TTL / 4);
            for _ in 0..400 {
                ticker.tick().await;
                let _ = beat
                    .heartbeat_participant(HeartbeatParticipantRequest {
                        service: SERVICE.into(),
                        endpoint: beat_endpoint.clone(),
                        ttl_ms,
                    })
                    .await;
            }
        });
        Manual {
            client,
            endpoint: endpoint.to_string(),
            heartbeat,
        }
    }

    async fn deregister(mut self) {
        self.heartbeat.abort();
        let removed = self
            .client
            .deregister_participant(DeregisterParticipantRequest {
                service: SERVICE.into(),
                endpoint: self.endpoint.clone(),
            })
            .await
            .unwrap()
            .into_inner()
            .removed;
        assert!(removed, "deregistration found no registration");
    }
}

/// Serves a participant in this process until it is killed (at most two minutes, so a child whose
/// parent died does not linger). Only does anything when started by [`ChildInstance::spawn`].
#[tokio::test]
#[ignore = "the balancing test runs it in a child process of its own"]
async fn participant_child_process() {
    let Ok(coordinator) = std::env::var(CHILD_ENV) else {
        return;
    };
    let server = participant(|req| {
        use std::io::Write as _;
        let mut out = std::io::stdout().lock();
        let _ = writeln!(
            out,
            "{CALL}{} {} {}",
            req.tx_id, req.branch_index, req.attempt
        );
        let _ = out.flush();
    })
    .serve("127.0.0.1:0")
    .await
    .expect("serve participant");
    server
        .register(Registration::new(coordinator, SERVICE).ttl(TTL))
        .await
        .expect("register with the coordinator");
    {
        use std::io::Write as _;
        let mut out = std::io::stdout().lock();
        let _ = writeln!(out, "{READY}{}", server.endpoint());
        let _ = out.flush();
    }
    tokio::time::sleep(Duration::from_secs(120)).await;
}

/// The participant in a child process, whose calls the parent records as they are reported.
struct ChildInstance {
    child: Child,
    endpoint: String,
}

impl ChildInstance {
    async fn spawn(name: &str, coordinator: &str, calls: &Arc<Calls>) -> ChildInstance {
        let mut child = Command::new(std::env::current_exe().unwrap())
            .args([
                "participant_child_process",
                "--exact",
                "--ignored",
                "--nocapture",
                "--test-threads=1",
            ])
            .env(CHILD_ENV, coordinator)
            .env("RUST_LOG", "warn")
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .kill_on_drop(true)
            .spawn()
            .expect("re-execute the test binary");
        let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
        let endpoint = tokio::time::timeout(Duration::from_secs(30), async {
            while let Some(line) = lines.next_line().await.unwrap() {
                // The harness may have written "test participant_child_process ... " before it.
                if let Some((_, endpoint)) = line.split_once(READY) {
                    return endpoint.trim().to_string();
                }
            }
            panic!("child participant exited before it was ready");
        })
        .await
        .expect("child participant ready within 30 s");
        let calls = calls.clone();
        let name = name.to_string();
        tokio::spawn(async move {
            while let Ok(Some(line)) = lines.next_line().await {
                let Some((_, call)) = line.split_once(CALL) else {
                    continue;
                };
                let mut parts = call.split_whitespace();
                let (Some(tx), Some(branch), Some(attempt)) =
                    (parts.next(), parts.next(), parts.next())
                else {
                    continue;
                };
                calls.record(
                    &name,
                    tx,
                    branch.parse().unwrap_or(u32::MAX),
                    attempt.parse().unwrap_or(0),
                );
            }
        });
        ChildInstance { child, endpoint }
    }

    /// SIGKILL by pid: no deregistration, no graceful close, heartbeats just stop.
    async fn kill9(mut self) {
        let pid = self.child.id().expect("child still running");
        let status = std::process::Command::new("kill")
            .args(["-KILL", &pid.to_string()])
            .status()
            .expect("run kill");
        assert!(status.success(), "kill -KILL {pid} failed");
        let exit = self.child.wait().await.unwrap();
        assert!(!exit.success(), "child exited normally: {exit:?}");
    }
}

async fn coordinator(db: &TestDb, extra: &[&str]) -> Coordinator {
    let refresh = REFRESH_MS.to_string();
    let args: Vec<&str> = [
        "--registry-refresh-ms",
        &refresh,
        "--connect-timeout-ms",
        "500",
    ]
    .into_iter()
    .chain(extra.iter().copied())
    .collect();
    support::process::coordinator(&db.url, "lb-1", &args, &[]).await
}

fn saga(services: &[&str], labels: HashMap<String, String>) -> StartRequest {
    let steps = services
        .iter()
        .enumerate()
        .map(|(i, service)| SagaStep {
            name: format!("step{i}"),
            service: service.to_string(),
            action: "work".into(),
            compensate: "undo".into(),
            stage: i as u32,
            ..Default::default()
        })
        .collect();
    StartRequest {
        definition: Some(proto::start_request::Definition::Saga(Saga { steps })),
        labels,
        wait: true,
        wait_timeout_ms: 30_000,
        ..Default::default()
    }
}

/// Runs `total` sagas, `concurrency` at a time; each worker stops by itself when all are started.
/// Returns the final state of each and counts the started ones in `started` as it goes.
async fn load(
    client: &CoordinatorClient<Channel>,
    total: usize,
    concurrency: usize,
    started: &Arc<AtomicUsize>,
    make: impl Fn(usize) -> StartRequest + Send + Sync + 'static,
) -> Vec<proto::Transaction> {
    let make = Arc::new(make);
    let mut workers = Vec::new();
    for _ in 0..concurrency {
        let mut client = client.clone();
        let started = started.clone();
        let make = make.clone();
        workers.push(tokio::spawn(async move {
            let mut done = Vec::new();
            loop {
                let i = started.fetch_add(1, Ordering::SeqCst);
                if i >= total {
                    return done;
                }
                let tx = client
                    .start(make(i))
                    .await
                    .expect("start")
                    .into_inner()
                    .transaction
                    .expect("wait returns the transaction");
                done.push(tx);
            }
        }));
    }
    let mut all = Vec::new();
    for w in workers {
        all.extend(w.await.unwrap());
    }
    all
}

/// Waits until `started` reaches `n` (bounded).
async fn until_started(started: &AtomicUsize, n: usize) {
    for _ in 0..6000 {
        if started.load(Ordering::SeqCst) >= n {
            return;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    panic!("load stalled before {n} sagas started");
}

fn print_counts(title: &str, counts: &BTreeMap<String, usize>) {
    let total: usize = counts.values().sum();
    let shown: Vec<String> = counts
        .iter()
        .map(|(k, v)| format!("{k}={v} ({:.0}%)", 100.0 * *v as f64 / total.max(1) as f64))
        .collect();
    println!("{title}: {} [total {total}]", shown.join(", "));
}

// ---------------------------------------------------------------------------------------------

/// Three instances (a, b in this process; c a separate process) under load; d registers and gets
/// traffic; b deregisters and gets none after; c is SIGKILLed; every saga still commits.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn traffic_follows_instances_that_come_and_go() {
    const SAGAS: usize = 600;
    let db = fresh_database().await;
    let co = coordinator(&db, &[]).await;
    let calls = Arc::new(Calls::default());

    let a = instance("a", &calls).await;
    a.register(Registration::new(co.endpoint.clone(), SERVICE).ttl(TTL))
        .await
        .unwrap();
    let b = instance("b", &calls).await;
    let b_registration = Manual::register(&co.endpoint, &b.endpoint()).await;
    let c = ChildInstance::spawn("c", &co.endpoint, &calls).await;
    let c_endpoint = c.endpoint.clone();

    let started = Arc::new(AtomicUsize::new(0));
    let t0 = Instant::now();
    let running = {
        let client = co.client.clone();
        let started = started.clone();
        tokio::spawn(async move {
            load(&client, SAGAS, 8, &started, |_| {
                saga(&[SERVICE, SERVICE], HashMap::new())
            })
            .await
        })
    };

    // Scale out: a fourth instance registers mid-load (through the SDK).
    until_started(&started, 100).await;
    let t_d = Instant::now();
    let d = instance("d", &calls).await;
    d.register(Registration::new(co.endpoint.clone(), SERVICE).ttl(TTL))
        .await
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(5);
    while calls.count("d") == 0 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let d_first = calls.all().iter().find(|c| c.instance == "d").map(|c| c.at);
    let d_first = d_first.expect("the new instance received no call within 5 s");

    // Scale in, gracefully: b deregisters but keeps serving, so stray calls would show.
    until_started(&started, 250).await;
    let t_b = Instant::now();
    b_registration.deregister().await;
    // Calls picked before the refresh may still arrive; after that, none may.
    tokio::time::sleep(Duration::from_millis(REFRESH_MS * 2 + 300)).await;
    let b_settled = calls.count("b");

    // Scale in, the hard way: c is killed without a word.
    until_started(&started, 350).await;
    let t_c = Instant::now();
    c.kill9().await;

    let txs = running.await.unwrap();
    let t_end = Instant::now();

    assert_eq!(txs.len(), SAGAS);
    let not_committed: Vec<_> = txs
        .iter()
        .filter(|t| t.state != TxState::Committed as i32)
        .collect();
    assert!(
        not_committed.is_empty(),
        "{} sagas did not commit, first: {:?}",
        not_committed.len(),
        not_committed.first()
    );

    let phases = [
        ("a,b,c", t0, t_d),
        ("+d", t_d, t_b),
        ("-b", t_b, t_c),
        ("-c killed", t_c, t_end),
        ("whole run", t0, t_end),
    ];
    println!(
        "balancing e2e: {SAGAS} sagas x 2 steps, 8 concurrent, round robin, {:.1} s; d's first call {} ms after it registered",
        (t_end - t0).as_secs_f64(),
        (d_first - t_d).as_millis()
    );
    for (name, from, to) in phases {
        print_counts(
            &format!("  calls per instance, {name}"),
            &calls.per_instance(from, to),
        );
    }
    let retried = calls.all().iter().filter(|c| c.attempt > 1).count();
    println!("  calls that were retries (attempt > 1): {retried}");

    // Round robin over three instances: each had about a third before d came.
    let first = calls.per_instance(t0, t_d);
    let first_total: usize = first.values().sum();
    for name in ["a", "b", "c"] {
        let n = first.get(name).copied().unwrap_or(0);
        assert!(
            n * 4 >= first_total,
            "{name} got {n} of {first_total} calls under round robin"
        );
    }
    assert!(
        d_first - t_d < Duration::from_secs(3),
        "d took too long to get traffic"
    );
    assert!(calls.count("d") > 50, "d got too little traffic");
    assert_eq!(
        calls.count("b"),
        b_settled,
        "b received calls after it deregistered"
    );
    assert!(
        calls
            .per_instance(t_b, t_end)
            .get("b")
            .copied()
            .unwrap_or(0)
            < 40,
        "b kept receiving traffic after it deregistered"
    );
    assert!(calls.per_instance(t0, t_c).get("c").copied().unwrap_or(0) > 0);
    // The survivors carried the rest.
    let last = calls.per_instance(t_c, t_end);
    assert!(last.get("a").copied().unwrap_or(0) > 0 && last.get("d").copied().unwrap_or(0) > 0);

    // The killed instance's registration expired without heartbeats.
    let mut client = co.client.clone();
    let deadline = Instant::now() + TTL * 3;
    loop {
        let listed = client
            .list_participants(proto::ListParticipantsRequest {
                service: SERVICE.into(),
            })
            .await
            .unwrap()
            .into_inner()
            .participants;
        let endpoints: HashSet<String> = listed.into_iter().map(|p| p.endpoint).collect();
        if !endpoints.contains(&c_endpoint) && !endpoints.contains(&b.endpoint()) {
            assert!(endpoints.contains(&a.endpoint()) && endpoints.contains(&d.endpoint()));
            break;
        }
        assert!(
            Instant::now() < deadline,
            "killed instance still registered: {endpoints:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    a.shutdown().await;
    b.shutdown().await;
    d.shutdown().await;
}

/// With consistent hashing every branch of a transaction lands on one instance, and with the
/// label variant every transaction of one customer does.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn consistent_hash_keeps_a_transaction_on_one_instance() {
    const SAGAS: usize = 120;
    let db = fresh_database().await;
    let co = coordinator(
        &db,
        &[
            "--policy",
            &format!("{SERVICE}=consistent_hash"),
            "--policy",
            "billing=consistent_hash:label=customer",
        ],
    )
    .await;
    let calls = Arc::new(Calls::default());
    let mut servers = Vec::new();
    for name in ["a", "b", "c"] {
        let server = instance(name, &calls).await;
        for service in [SERVICE, "billing"] {
            server
                .register(Registration::new(co.endpoint.clone(), service).ttl(TTL))
                .await
                .unwrap();
        }
        servers.push(server);
    }
    let started = Arc::new(AtomicUsize::new(0));
    let txs = load(&co.client, SAGAS, 8, &started, |i| {
        let labels = HashMap::from([("customer".to_string(), format!("customer-{}", i % 6))]);
        saga(&[SERVICE, SERVICE, SERVICE, "billing"], labels)
    })
    .await;
    assert!(txs.iter().all(|t| t.state == TxState::Committed as i32));

    let customer_of: HashMap<String, String> = txs
        .iter()
        .map(|t| (t.tx_id.clone(), t.labels["customer"].clone()))
        .collect();
    let mut tx_instances: HashMap<String, HashSet<String>> = HashMap::new();
    let mut customer_instances: HashMap<String, HashSet<String>> = HashMap::new();
    let mut per_instance: BTreeMap<String, usize> = BTreeMap::new();
    for call in calls.all() {
        if call.branch < 3 {
            tx_instances
                .entry(call.tx.clone())
                .or_default()
                .insert(call.instance.clone());
            *per_instance.entry(call.instance.clone()).or_default() += 1;
        } else {
            customer_instances
                .entry(customer_of[&call.tx].clone())
                .or_default()
                .insert(call.instance.clone());
        }
    }
    assert_eq!(tx_instances.len(), SAGAS);
    for (tx, instances) in &tx_instances {
        assert_eq!(instances.len(), 1, "tx {tx} was spread over {instances:?}");
    }
    for (customer, instances) in &customer_instances {
        assert_eq!(
            instances.len(),
            1,
            "{customer} was spread over {instances:?}"
        );
    }
    print_counts(
        "consistent hash e2e: inventory calls per instance",
        &per_instance,
    );
    assert_eq!(
        per_instance.len(),
        3,
        "hashing sent nothing to some instance"
    );
    for server in servers {
        server.shutdown().await;
    }
}

/// ListParticipants shows the answering coordinator's balancing state: the service's configured
/// policy, a call in flight to an endpoint and none after it ends, and a statically configured
/// endpoint (never called, not in the store) with the default policy and no expiry.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn list_participants_shows_policy_and_calls_in_flight() {
    const STATIC_SERVICE: &str = "billing";
    const STATIC_URL: &str = "http://127.0.0.1:9";
    let db = fresh_database().await;
    let policy = format!("{SERVICE}=least_outstanding");
    let fixed = format!("{STATIC_SERVICE}={STATIC_URL}");
    let co = coordinator(&db, &["--policy", &policy, "--endpoint", &fixed]).await;
    // The call is held in the participant until the test has seen it in flight.
    let gate = Arc::new(tokio::sync::Semaphore::new(0));
    let held = gate.clone();
    let server = Participant::new()
        .on_execute("work", move |_req: Request| {
            let held = held.clone();
            async move {
                let _ = held.acquire().await;
                Ok(Reply::ok())
            }
        })
        .on_compensate("undo", |_req: Request| async { Ok(Reply::ok()) })
        .serve("127.0.0.1:0")
        .await
        .expect("serve participant");
    server
        .register(Registration::new(co.endpoint.clone(), SERVICE).ttl(TTL))
        .await
        .unwrap();

    let mut client = co.client.clone();
    let tx_id = client
        .start(StartRequest {
            wait: false,
            ..saga(&[SERVICE], HashMap::new())
        })
        .await
        .unwrap()
        .into_inner()
        .tx_id;

    let mut released = false;
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let listed = client
            .list_participants(proto::ListParticipantsRequest::default())
            .await
            .unwrap()
            .into_inner()
            .participants;
        let registered = listed
            .iter()
            .find(|p| p.endpoint == server.endpoint())
            .unwrap_or_else(|| panic!("registered endpoint not listed: {listed:?}"));
        assert_eq!(registered.service, SERVICE);
        assert_eq!(registered.policy, "least_outstanding");
        assert_eq!(registered.ejected_until_ms, 0, "{registered:?}");
        assert!(registered.expires_at_ms > 0, "{registered:?}");
        let fixed = listed
            .iter()
            .find(|p| p.endpoint == STATIC_URL)
            .unwrap_or_else(|| panic!("static endpoint not listed: {listed:?}"));
        assert_eq!(
            (fixed.service.as_str(), fixed.policy.as_str()),
            (STATIC_SERVICE, "round_robin")
        );
        assert_eq!(
            (
                fixed.outstanding,
                fixed.ejected_until_ms,
                fixed.expires_at_ms
            ),
            (0, 0, 0)
        );
        match (released, registered.outstanding) {
            (false, 1) => {
                gate.add_permits(1);
                released = true;
            }
            (true, 0) => break,
            (_, n) => assert!(n <= 1, "{n} calls in flight, one was started"),
        }
        assert!(
            Instant::now() < deadline,
            "outstanding never went 1 then 0 (released: {released})"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let tx = client
        .wait(proto::WaitRequest {
            tx_id,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(tx.state, TxState::Committed as i32, "{tx:?}");
    server.shutdown().await;
}

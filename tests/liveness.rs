//! Liveness under the faults a real client and a real scheduler cause: a `Start` whose caller
//! gives up mid-request, and a coordinator paused (SIGSTOP) past its lease and resumed.

mod support;

use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use sqlx::Connection;
use tokio::task::JoinSet;

use support::db::private_database;
use support::participant::participant;
use support::process::{coordinator, http_get, saga, step};

/// The transactions in the log that have not reached an outcome, as (id, state).
async fn unfinished(url: &str) -> Vec<(String, String)> {
    let mut conn = sqlx::PgConnection::connect(url).await.unwrap();
    let rows: Vec<(String, String)> = sqlx::query_as(
        "SELECT id::text, state FROM baton_transactions \
         WHERE state NOT IN ('committed', 'compensated', 'aborted', 'failed') ORDER BY id",
    )
    .fetch_all(&mut conn)
    .await
    .unwrap();
    let _ = conn.close().await;
    rows
}

/// Polls the log every 50 ms until every transaction in it has an outcome, for up to `within`;
/// returns what is still unfinished then (empty on success).
async fn settle(url: &str, within: Duration) -> Vec<(String, String)> {
    let until = Instant::now() + within;
    loop {
        let left = unfinished(url).await;
        if left.is_empty() || Instant::now() > until {
            return left;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The `i`th order: a two-step saga with its own idempotency key.
fn order(participant: &str, i: usize) -> baton_tx_proto::StartRequest {
    let mut req = saga(vec![
        step("reserve", participant, "ok", "undo"),
        step("charge", participant, "ok", "undo"),
    ]);
    req.idempotency_key = format!("order-{i}");
    req
}

/// How many transactions the log holds.
async fn count(url: &str) -> i64 {
    let mut conn = sqlx::PgConnection::connect(url).await.unwrap();
    let (n,): (i64,) = sqlx::query_as("SELECT count(*) FROM baton_transactions")
        .fetch_one(&mut conn)
        .await
        .unwrap();
    let _ = conn.close().await;
    n
}

/// Starts cut short by 1-5 ms client deadlines, several hundred at once against one
/// coordinator: whatever reached the log is driven to its outcome, and a retry with the same
/// idempotency key finds it finished.
///
/// The coordinator pauses 20 ms between a transaction's durable create and its driver's start
/// (fail point `after_create`), so that every caller whose deadline passes after the create
/// gives up inside that window, not only the few a real load catches there.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn starts_whose_callers_give_up_are_still_driven_to_an_outcome() {
    const STARTS: usize = 400;
    const PER_CONNECTION: usize = 10;
    let db = private_database().await;
    let (p, _ledger) = participant().await;
    let co = coordinator(
        &db.url,
        "solo",
        &["--max-connections", "4"],
        &[("BATON_FAILPOINTS", "after_create=20")],
    )
    .await;

    // A connection of its own per few callers, as many client processes have: the server drops
    // a connection whose client resets more than 20 streams it has not yet accepted (HTTP/2
    // rapid-reset protection), and a caller giving up resets its stream.
    let mut clients = Vec::new();
    for _ in 0..STARTS / PER_CONNECTION {
        clients.push(
            baton_tx_proto::coordinator_client::CoordinatorClient::connect(co.endpoint.clone())
                .await
                .expect("connect"),
        );
    }
    let begun = Instant::now();
    let mut starts = JoinSet::new();
    for i in 0..STARTS {
        let mut client = clients[i / PER_CONNECTION].clone();
        let mut request = tonic::Request::new(order(&p, i));
        request.set_timeout(Duration::from_millis(1 + (i % 5) as u64));
        starts.spawn(async move { client.start(request).await.is_ok() });
    }
    let mut answered = 0;
    while let Some(ok) = starts.join_next().await {
        answered += usize::from(ok.unwrap());
    }
    eprintln!(
        "{answered} of {STARTS} starts answered within their deadline ({} ms)",
        begun.elapsed().as_millis()
    );

    // The callers retry, without deadlines now, with the same keys: a key a cut-short start
    // got into the log names that transaction (created = false).
    let mut retries = JoinSet::new();
    let mut earlier = Vec::new();
    for chunk in (0..STARTS).collect::<Vec<_>>().chunks(50) {
        for &i in chunk {
            let mut client = co.client.clone();
            let req = order(&p, i);
            retries.spawn(async move {
                let started = client.start(req).await.expect("retried start").into_inner();
                (i, started)
            });
        }
        while let Some(done) = retries.join_next().await {
            let (i, started) = done.unwrap();
            if !started.created {
                earlier.push((i, started.tx_id));
            }
        }
    }
    eprintln!(
        "{} transactions were in the log before the retries; {} in all",
        earlier.len(),
        count(&db.url).await
    );
    assert!(
        !earlier.is_empty(),
        "no cut-short start reached the log: the test proved nothing"
    );

    let left = settle(&db.url, Duration::from_secs(20)).await;
    assert!(
        left.is_empty(),
        "{} transactions in the log never reached an outcome: {:?}",
        left.len(),
        &left[..left.len().min(5)]
    );
    // What the retrying callers then see: their transaction, finished.
    let mut client = co.client.clone();
    for (i, id) in earlier.iter().take(20) {
        let tx = support::process::wait(&mut client, id).await;
        assert_eq!(
            support::process::state(&tx),
            baton_tx_proto::TxState::Committed,
            "order-{i}: {tx:?}"
        );
    }
}

/// Lease and claim times for the pause test: the paused coordinator's work moves within ~1.5 s.
const SHORT_LEASE: &[&str] = &[
    "--lease-ms",
    "1500",
    "--claim-interval-ms",
    "100",
    "--max-connections",
    "3",
    "--log-writers",
    "1",
];

/// Sends `signal` (STOP, CONT) to the process `pid`, which this test started.
fn signal(pid: u32, signal: &str) {
    let status = std::process::Command::new("kill")
        .args([&format!("-{signal}"), &pid.to_string()])
        .status()
        .expect("run kill");
    assert!(status.success(), "kill -{signal} {pid}");
}

/// Polls `check` every 20 ms until it holds, for up to `within`.
async fn until<F, Fut>(what: &str, within: Duration, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let until = Instant::now() + within;
    while !check().await {
        assert!(Instant::now() < until, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A coordinator holding transactions with calls in flight is paused (SIGSTOP) past its lease;
/// its peer claims and finishes them; then it is resumed (SIGCONT), with the participant's
/// answers to its old calls waiting in its sockets. It must not send a single participant call
/// for those transactions (peers own them now): it notices the lost lease before calling, stops
/// its drivers, hands back and takes work again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_coordinator_resumed_after_losing_its_lease_calls_no_participant() {
    const SAGAS: usize = 8;
    let db = private_database().await;
    let (p, ledger) = participant().await;
    let mut a = coordinator(&db.url, "a", SHORT_LEASE, &[]).await;
    let b = coordinator(&db.url, "b", SHORT_LEASE, &[]).await;
    let pid = a.child.id().expect("a runs");

    // Sagas on `a` whose first call waits at the participant's gate; a long call timeout keeps
    // them in flight (no retries) for the whole pause.
    ledger.gate_closed.store(true, Ordering::SeqCst);
    let mut ids = Vec::new();
    for i in 0..SAGAS {
        let mut first = step("reserve", &p, "gated", "undo");
        first.timeout_ms = 60_000;
        let mut req = saga(vec![
            first,
            step("charge", &p, "ok", "undo"),
            step("ship", &p, "ok", "undo"),
        ]);
        req.idempotency_key = format!("paused-{i}");
        let started = a.client.start(req).await.expect("start").into_inner();
        ids.push(started.tx_id);
    }
    until(
        "a's first calls at the gate",
        Duration::from_secs(10),
        || {
            let n = ledger.in_flight_at_gate();
            async move { n == SAGAS }
        },
    )
    .await;

    // Paused with its calls in flight; their answers go out while it cannot read them.
    signal(pid, "STOP");
    ledger.gate_closed.store(false, Ordering::SeqCst);

    // `b` claims them once a's heartbeat is older than the lease, and finishes them.
    let mut conn = sqlx::PgConnection::connect(&db.url).await.unwrap();
    let finished = || {
        let ids = ids.clone();
        let url = db.url.clone();
        async move {
            let mut conn = sqlx::PgConnection::connect(&url).await.unwrap();
            let (done,): (i64,) = sqlx::query_as(
                "SELECT count(*) FROM baton_transactions \
                 WHERE id::text = ANY($1) AND state = 'committed' AND owner IS NULL",
            )
            .bind(&ids)
            .fetch_one(&mut conn)
            .await
            .unwrap();
            let _ = conn.close().await;
            done as usize == ids.len()
        }
    };
    until("b to finish a's sagas", Duration::from_secs(30), finished).await;
    let delivered = |ledger: &support::participant::Ledger| -> usize {
        ids.iter().map(|id| ledger.deliveries(id).len()).sum()
    };
    let before = delivered(&ledger);

    // Resumed: every call it then makes arrives after `before`. It counts as settled once it
    // heartbeats again (after the resume, by the database's clock), drives nothing, and is ready
    // again (it regained its lease after handing back).
    let (resumed_at,): (chrono::DateTime<chrono::Utc>,) = sqlx::query_as("SELECT now()")
        .fetch_one(&mut conn)
        .await
        .unwrap();
    signal(pid, "CONT");
    let http = a.http.clone();
    until(
        "a to heartbeat, stop its drivers and be ready again",
        Duration::from_secs(20),
        || {
            let (url, http) = (db.url.clone(), http.clone());
            async move {
                let mut conn = sqlx::PgConnection::connect(&url).await.unwrap();
                let (beat,): (chrono::DateTime<chrono::Utc>,) =
                    sqlx::query_as("SELECT heartbeat_at FROM baton_coordinators WHERE id = 'a'")
                        .fetch_one(&mut conn)
                        .await
                        .unwrap();
                let _ = conn.close().await;
                let (_, metrics) = http_get(&http, "/metrics").await;
                let (ready, _) = http_get(&http, "/readyz").await;
                beat > resumed_at
                    && metrics.contains("baton_transactions_in_flight 0\n")
                    && ready == 200
            }
        },
    )
    .await;
    let after = delivered(&ledger) - before;
    assert_eq!(
        after, 0,
        "the resumed coordinator called participants {after} times for transactions its peer had \
         finished"
    );

    // The sagas stay as `b` finished them, and `a` takes new work again.
    for id in &ids {
        let tx = support::process::wait(&mut a.client, id).await;
        assert_eq!(
            support::process::state(&tx),
            baton_tx_proto::TxState::Committed
        );
    }
    let mut req = saga(vec![step("reserve", &p, "ok", "undo")]);
    req.wait = true;
    req.wait_timeout_ms = 10_000;
    let done = a
        .client
        .start(req)
        .await
        .expect("start after resuming")
        .into_inner();
    let tx = done.transaction.expect("waited");
    assert_eq!(
        support::process::state(&tx),
        baton_tx_proto::TxState::Committed
    );
    drop(b);
}

#[tokio::test]
async fn coordinators_forget_departed_coordinators_and_expired_registrations() {
    let db = private_database().await;
    let _co = coordinator(&db.url, "forgetter", &[], &[]).await;
    // What a coordinator that crashed an hour and a half ago and a participant instance that
    // stopped heartbeating leave behind, beside a registration that never expires.
    let mut conn = sqlx::PgConnection::connect(&db.url).await.unwrap();
    sqlx::query(
        "INSERT INTO baton_coordinators (id, address, started_at, heartbeat_at, version)
         VALUES ('crashed', 'http://127.0.0.1:1', now() - interval '2 hours',
                 now() - interval '90 minutes', 'v')",
    )
    .execute(&mut conn)
    .await
    .unwrap();
    sqlx::query(
        "INSERT INTO baton_participants (service, endpoint, weight, zone, expires_at)
         VALUES ('inventory', 'http://127.0.0.1:2', 1, '', now() - interval '1 second'),
                ('inventory', 'http://127.0.0.1:3', 1, '', NULL)",
    )
    .execute(&mut conn)
    .await
    .unwrap();

    // One claim tick in thirty is a full claim, which also forgets: every 6 s at 200 ms.
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let ids: Vec<String> = sqlx::query_scalar("SELECT id FROM baton_coordinators ORDER BY id")
            .fetch_all(&mut conn)
            .await
            .unwrap();
        if ids == ["forgetter"] {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the crashed coordinator's row stayed: {ids:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let endpoints: Vec<String> =
        sqlx::query_scalar("SELECT endpoint FROM baton_participants ORDER BY endpoint")
            .fetch_all(&mut conn)
            .await
            .unwrap();
    assert_eq!(
        endpoints,
        ["http://127.0.0.1:3"],
        "the expired registration goes with it, the lasting one stays"
    );
    let _ = conn.close().await;
}

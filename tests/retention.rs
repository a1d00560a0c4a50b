//! Retention end to end: a real `baton serve` on its own PostgreSQL database sweeps finished
//! transactions after a (very short) retention and keeps everything else; `baton tx purge` does
//! the same on demand; the participant barrier forgets old records on request.

mod support;

use std::sync::atomic::Ordering;
use std::time::Duration;

use baton_tx::participant::barrier::{Barrier, BarrierDb, Entry};
use baton_tx::participant::{Phase, Reply, Request};
use baton_tx_proto as proto;
use baton_tx_proto::coordinator_client::CoordinatorClient;
use baton_tx_proto::{StartRequest, TxState};
use sqlx::Connection;
use tonic::transport::Channel;
use tonic::Code;

use support::db::{fresh_database, TestDb};
use support::participant::{participant, Ledger};
use support::process::{self, http_get, saga, state, step, wait};

async fn run(c: &mut CoordinatorClient<Channel>, mut req: StartRequest) -> proto::Transaction {
    req.wait = true;
    req.wait_timeout_ms = 30_000;
    let resp = c.start(req).await.expect("start").into_inner();
    resp.transaction.expect("wait returns the transaction")
}

/// Runs `n` committing sagas concurrently; returns their ids.
async fn committed_batch(co: &CoordinatorClient<Channel>, p: &str, n: usize) -> Vec<String> {
    let mut runs = tokio::task::JoinSet::new();
    for _ in 0..n {
        let mut c = co.clone();
        let p = p.to_string();
        runs.spawn(async move {
            let tx = run(
                &mut c,
                saga(vec![
                    step("a", &p, "ok", "undo"),
                    step("b", &p, "ok", "undo"),
                ]),
            )
            .await;
            assert_eq!(state(&tx), TxState::Committed, "{tx:?}");
            tx.tx_id
        });
    }
    runs.join_all().await
}

/// A saga stuck in flight while the ledger's gate is closed (its call neither answers nor times
/// out for a minute).
async fn start_gated(co: &mut CoordinatorClient<Channel>, p: &str) -> String {
    let mut gated = step("held", p, "gated", "undo");
    gated.timeout_ms = 60_000;
    co.start(saga(vec![gated]))
        .await
        .expect("start")
        .into_inner()
        .tx_id
}

/// A saga left `failed`: its compensation cannot complete while the ledger is broken.
async fn failed_saga(co: &mut CoordinatorClient<Channel>, p: &str, ledger: &Ledger) -> String {
    ledger.broken.store(true, Ordering::SeqCst);
    let tx = run(
        co,
        saga(vec![
            step("charge", p, "ok", "undo_broken"),
            step("ship", p, "fail", "undo"),
        ]),
    )
    .await;
    assert_eq!(state(&tx), TxState::Failed, "{tx:?}");
    tx.tx_id
}

/// Rows per table, straight from the database.
async fn counts(db: &TestDb) -> (i64, i64, i64) {
    let mut conn = sqlx::PgConnection::connect(&db.url).await.expect("connect");
    let one = |table: &str| format!("SELECT count(*) FROM {table}");
    let txs: i64 = sqlx::query_scalar(&one("baton_transactions"))
        .fetch_one(&mut conn)
        .await
        .expect("count");
    // Branch states live in their transaction's row (long outputs apart, in baton_branch_data).
    let branches: i64 = sqlx::query_scalar(
        "SELECT coalesce(sum((SELECT count(*) FROM jsonb_object_keys(branches))), 0)::bigint \
         FROM baton_transactions",
    )
    .fetch_one(&mut conn)
    .await
    .expect("count");
    let events: i64 = sqlx::query_scalar(&one("baton_event_runs"))
        .fetch_one(&mut conn)
        .await
        .expect("count");
    let _ = conn.close().await;
    (txs, branches, events)
}

async fn exists(co: &mut CoordinatorClient<Channel>, id: &str) -> bool {
    match co
        .get(proto::GetRequest {
            tx_id: id.to_string(),
        })
        .await
    {
        Ok(_) => true,
        Err(status) if status.code() == Code::NotFound => false,
        Err(status) => panic!("get {id}: {status}"),
    }
}

/// The value of an unlabelled counter in `/metrics`.
async fn metric(http: &str, name: &str) -> u64 {
    let (status, body) = http_get(http, "/metrics").await;
    assert_eq!(status, 200);
    body.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
        .unwrap_or_else(|| panic!("{name} missing from /metrics"))
}

/// Polls `check` every 50 ms for up to 10 s.
async fn eventually<F, Fut>(what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    for _ in 0..200 {
        if check().await {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("timed out waiting for {what}");
}

// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn the_sweep_keeps_the_log_flat_and_deletes_only_old_finished_transactions() {
    let db = fresh_database().await;
    let (p, ledger) = participant().await;
    ledger.gate_closed.store(true, Ordering::SeqCst);
    let co = process::coordinator(
        &db.url,
        "c1",
        &[
            "--default-max-attempts",
            "3",
            "--retention",
            "1s",
            "--retention-sweep-ms",
            "200",
            "--retention-batch",
            "4",
        ],
        &[],
    )
    .await;
    let mut client = co.client.clone();
    let gated = start_gated(&mut client, &p).await;
    let failed = failed_saga(&mut client, &p, &ledger).await;

    // A bounded load, round after round: what finished recently stays, what finished more than
    // the retention ago goes, so the table stays the size of about one retention of traffic
    // while the total grows.
    const ROUNDS: usize = 8;
    const PER_ROUND: usize = 10;
    let mut peak = 0;
    let mut started = 2;
    for _ in 0..ROUNDS {
        let ids = committed_batch(&client, &p, PER_ROUND).await;
        started += ids.len();
        // Just finished, so younger than the retention: all still there.
        for id in &ids {
            assert!(exists(&mut client, id).await, "{id} was purged too early");
        }
        let (txs, _, _) = counts(&db).await;
        peak = peak.max(txs);
        tokio::time::sleep(Duration::from_millis(400)).await;
    }
    // About 1.2 s of traffic (retention + sweep interval) at 10 per 0.5 s, plus the two that
    // stay: well under everything started.
    assert!(
        peak <= 2 + 4 * PER_ROUND as i64,
        "the table grew to {peak} rows of {started} started"
    );

    // Everything finished goes; the unfinished and the failed one stay, however old.
    eventually("the finished transactions to be swept", || async {
        counts(&db).await.0 == 2
    })
    .await;
    assert!(exists(&mut client, &gated).await);
    assert!(exists(&mut client, &failed).await);
    let (_, branches, events) = counts(&db).await;
    assert_eq!(branches, 1 + 2, "only the survivors' branches are left");
    let mut conn = sqlx::PgConnection::connect(&db.url).await.expect("connect");
    for child in ["baton_event_runs", "baton_branch_data"] {
        let orphans: i64 = sqlx::query_scalar(&format!(
            "SELECT count(*) FROM {child} c \
             WHERE NOT EXISTS (SELECT 1 FROM baton_transactions t WHERE t.id = c.tx_id)"
        ))
        .fetch_one(&mut conn)
        .await
        .expect("count");
        assert_eq!(orphans, 0, "{child} rows without their transaction");
    }
    assert!(events > 0);
    let definitions: i64 = sqlx::query_scalar("SELECT count(*) FROM baton_definitions")
        .fetch_one(&mut conn)
        .await
        .expect("count");
    assert_eq!(definitions, 2, "only the survivors' definitions are left");
    let _ = conn.close().await;
    assert_eq!(
        metric(&co.http, "baton_retention_purged_total").await,
        (ROUNDS * PER_ROUND) as u64
    );

    // Once the stuck one finishes, it too is swept after the retention.
    ledger.gate_closed.store(false, Ordering::SeqCst);
    let done = wait(&mut client, &gated).await;
    assert_eq!(state(&done), TxState::Committed, "{done:?}");
    eventually("the released transaction to be swept", || {
        let mut client = client.clone();
        let gated = gated.clone();
        async move { !exists(&mut client, &gated).await }
    })
    .await;
    assert!(
        exists(&mut client, &failed).await,
        "a failed one is never swept"
    );
}

#[tokio::test]
async fn tx_purge_deletes_old_finished_transactions_on_demand() {
    let db = fresh_database().await;
    let (p, ledger) = participant().await;
    ledger.gate_closed.store(true, Ordering::SeqCst);
    // No sweep: only the operator's purge deletes.
    let co = process::coordinator(
        &db.url,
        "c1",
        &["--default-max-attempts", "3", "--retention", "off"],
        &[],
    )
    .await;
    let mut client = co.client.clone();
    let gated = start_gated(&mut client, &p).await;
    let failed = failed_saga(&mut client, &p, &ledger).await;
    let old = committed_batch(&client, &p, 5).await;
    tokio::time::sleep(Duration::from_millis(1_500)).await;
    let recent = committed_batch(&client, &p, 2).await;
    assert_eq!(counts(&db).await.0, 9, "retention off keeps everything");

    // Bad input names the field and deletes nothing.
    let err = client
        .purge(proto::PurgeRequest {
            older_than_ms: 0,
            batch: 0,
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    assert!(err.message().contains("older_than_ms"), "{}", err.message());
    let err = client
        .purge(proto::PurgeRequest {
            older_than_ms: 1_000,
            batch: 1_000_000,
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::ResourceExhausted);
    assert!(err.message().starts_with("batch:"), "{}", err.message());
    let cli = |args: &[&str]| {
        std::process::Command::new(env!("CARGO_BIN_EXE_baton"))
            .args(["tx", "purge", "--addr", &co.endpoint])
            .args(args)
            .output()
            .expect("run baton tx purge")
    };
    let out = cli(&["--older-than", "0s"]);
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("--older-than"), "{stderr}");
    assert_eq!(counts(&db).await.0, 9);

    // Batches of two, until a short one: the five old ones go, nothing else.
    let out = cli(&["--older-than", "1s", "--batch", "2"]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "baton tx purge: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(stdout.trim(), "purged 5 finished transactions");
    for id in &old {
        assert!(!exists(&mut client, id).await, "{id} should be purged");
    }
    for id in recent.iter().chain([&gated, &failed]) {
        assert!(exists(&mut client, id).await, "{id} should stay");
    }
    let out = cli(&["--older-than", "1s", "--json"]);
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json output");
    assert_eq!(json, serde_json::json!({ "purged": 0 }));
    assert_eq!(metric(&co.http, "baton_retention_purged_total").await, 5);
}

// ---- the participant barrier ----

fn barrier_request(phase: Phase, tx_id: &str) -> Request {
    Request {
        phase,
        tx_id: tx_id.to_string(),
        branch_index: 0,
        branch_name: "pay".into(),
        action: "pay".into(),
        payload: Vec::new(),
        attempt: 1,
        deadline: None,
        outputs: Vec::new(),
        labels: Default::default(),
        trace: None,
    }
}

async fn record<DB: BarrierDb>(barrier: &Barrier<DB>, phase: Phase, tx_id: &str) {
    barrier
        .run(&barrier_request(phase, tx_id), |_conn| {
            Box::pin(async { Ok(Reply::ok()) })
        })
        .await
        .expect("recorded");
}

/// Whether the barrier still knows that `tx_id`'s action ran: a compensation then has work to
/// do; once the record is gone it is a null compensation.
async fn remembers<DB: BarrierDb>(barrier: &Barrier<DB>, tx_id: &str) -> bool {
    match barrier
        .enter(&barrier_request(Phase::Compensate, tx_id))
        .await
        .expect("enter")
    {
        Entry::Fresh(guard) => {
            guard.rollback().await;
            true
        }
        Entry::Skip(_) => false,
        other => panic!("unexpected {other:?}"),
    }
}

/// Old transactions' records go, a few transactions per call; a transaction with a recent
/// record keeps all of its records, and recent ones stay.
async fn barrier_purge_forgets_only_quiet_transactions<DB: BarrierDb>(barrier: Barrier<DB>) {
    barrier.migrate().await.expect("migrate");
    for tx in ["old1", "old2", "old3", "active"] {
        record(&barrier, Phase::Execute, tx).await;
    }
    // SQLite keeps whole seconds: one more second makes the old records old there too.
    tokio::time::sleep(Duration::from_millis(2_100)).await;
    record(&barrier, Phase::Execute, "young").await;
    // The active transaction's compensation arrives now: its execute record must stay with it.
    record(&barrier, Phase::Compensate, "active").await;

    let age = Duration::from_secs(1);
    assert_eq!(barrier.purge_older_than(age, 0).await.expect("purge"), 0);
    assert_eq!(barrier.purge_older_than(age, 2).await.expect("purge"), 2);
    assert_eq!(barrier.purge_older_than(age, 2).await.expect("purge"), 1);
    assert_eq!(barrier.purge_older_than(age, 2).await.expect("purge"), 0);
    for tx in ["old1", "old2", "old3"] {
        assert!(!remembers(&barrier, tx).await, "{tx} was kept");
    }
    assert!(remembers(&barrier, "young").await);
    // The active one's records are intact: a repeated compensation repeats its answer.
    let again = barrier
        .enter(&barrier_request(Phase::Compensate, "active"))
        .await
        .expect("enter");
    assert!(matches!(again, Entry::Repeat(Ok(_))), "{again:?}");
    let execute = barrier
        .enter(&barrier_request(Phase::Execute, "active"))
        .await
        .expect("enter");
    assert!(matches!(execute, Entry::Repeat(Ok(_))), "{execute:?}");
}

#[tokio::test]
async fn postgres_barrier_purge_forgets_only_quiet_transactions() {
    let db = fresh_database().await;
    let pool = sqlx::postgres::PgPoolOptions::new()
        .max_connections(4)
        .connect(&db.url)
        .await
        .expect("connect");
    barrier_purge_forgets_only_quiet_transactions(Barrier::new(pool.clone())).await;
    pool.close().await;
}

#[tokio::test]
async fn sqlite_barrier_purge_forgets_only_quiet_transactions() {
    let dir = tempfile::tempdir().expect("temp dir");
    let options = sqlx::sqlite::SqliteConnectOptions::new()
        .filename(dir.path().join("bank.db"))
        .create_if_missing(true)
        .journal_mode(sqlx::sqlite::SqliteJournalMode::Wal);
    let pool = sqlx::sqlite::SqlitePoolOptions::new()
        .max_connections(4)
        .connect_with(options)
        .await
        .expect("open sqlite");
    barrier_purge_forgets_only_quiet_transactions(Barrier::new(pool.clone())).await;
    pool.close().await;
}

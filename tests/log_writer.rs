//! What the log writer and the driver do with writes the database refuses for their data: the
//! refused write fails alone, never its batch neighbours; a transaction whose progress cannot be
//! recorded comes to rest `failed` (or stops being driven) instead of re-sending its calls
//! forever; and text from participants reaches the log whatever bytes it holds.
//!
//! Everything runs against real PostgreSQL (a fresh database per test) and real gRPC
//! participants on loopback ports; the coordinator is built in-process through its Rust API, so
//! writes that the API would refuse can be handed to it directly.

mod support;

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use baton_server::coordinator::metrics::Metrics;
use baton_server::coordinator::writer::{LogWriter, WriterOptions};
use baton_server::coordinator::{Config, CoordError, Coordinator, Started};
use baton_server::model::{
    Definition, EventKind, RetryPolicy, SagaDef, StepDef, StepKind, StepStatus, Target, TxId,
    TxRecord, TxState,
};
use baton_server::registry::{Registry, RegistryConfig};
use baton_server::store::postgres::PgLog;
use baton_server::store::sqlite::SqliteLog;
use baton_server::store::{
    LogWrite, NewEvent, NewTx, Store, StoreOptions, TxLog, TxUpdate, WriteOutcome,
};
use baton_tx_proto::participant_server::{Participant, ParticipantServer};
use baton_tx_proto::{BranchReply, BranchRequest, Outcome};
use chrono::{DateTime, Utc};
use tokio_stream::wrappers::TcpListenerStream;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tonic::{Request, Response, Status};

use support::db::{fresh_database, TestDb};

/// How long a condition may take before the test fails.
const PATIENCE: Duration = Duration::from_secs(20);

// ---- fixtures ----

async fn pg_store(db: &TestDb) -> Arc<PgLog> {
    let options = StoreOptions {
        max_connections: 2,
        write_connections: 1,
        ..Default::default()
    };
    let log = PgLog::connect(&db.url, &options).await.expect("connect");
    log.migrate().await.expect("migrate");
    Arc::new(log)
}

async fn sqlite_store(dir: &std::path::Path) -> Arc<SqliteLog> {
    let log = SqliteLog::open(&support::db::sqlite_url(dir))
        .await
        .expect("open");
    log.migrate().await.expect("migrate");
    Arc::new(log)
}

/// Runs SQL on the test's own database (to add a constraint the log's writes then meet).
async fn execute(db: &TestDb, sql: &str) {
    use sqlx::{Connection, Executor};
    let mut conn = sqlx::PgConnection::connect(&db.url).await.expect("connect");
    conn.execute(sql).await.expect(sql);
    let _ = conn.close().await;
}

fn now_ms() -> DateTime<Utc> {
    DateTime::from_timestamp_millis(Utc::now().timestamp_millis()).expect("time in range")
}

fn step(name: &str, endpoint: &str, action: &str, stage: u32) -> StepDef {
    StepDef {
        name: name.into(),
        target: Target::Endpoint(endpoint.into()),
        action: action.into(),
        compensate: Some("undo".into()),
        payload: Vec::new(),
        kind: StepKind::Compensatable,
        stage,
        timeout_ms: 2_000,
        retry: RetryPolicy::default(),
    }
}

fn new_tx(owner: &str, steps: Vec<StepDef>, labels: &[(&str, &str)]) -> NewTx {
    let at = now_ms();
    NewTx {
        id: TxId::new(),
        definition: Definition::Saga(SagaDef { steps }),
        state: TxState::Running,
        labels: labels
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect::<BTreeMap<_, _>>(),
        idempotency_key: None,
        owner: owner.into(),
        epoch: 1,
        deadline_at: None,
        created_at: at,
        events: vec![NewEvent {
            seq: 1,
            at,
            kind: EventKind::Accepted,
            branch: None,
            detail: "saga".into(),
        }],
    }
}

/// A participant that answers every call at once: OK with an output, except the actions
/// `fail_nul` (OUTCOME_FAILED with a message holding a NUL byte) and `ok_nul` (OK with a message
/// holding one). It counts the calls it gets.
#[derive(Default)]
struct Counting {
    calls: AtomicUsize,
}

/// The served side of a [`Counting`] participant.
struct Served(Arc<Counting>);

#[tonic::async_trait]
impl Participant for Served {
    async fn execute(&self, r: Request<BranchRequest>) -> Result<Response<BranchReply>, Status> {
        self.0.answer(r.into_inner())
    }
    async fn compensate(&self, r: Request<BranchRequest>) -> Result<Response<BranchReply>, Status> {
        self.0.answer(r.into_inner())
    }
    async fn prepare(&self, r: Request<BranchRequest>) -> Result<Response<BranchReply>, Status> {
        self.0.answer(r.into_inner())
    }
    async fn commit(&self, r: Request<BranchRequest>) -> Result<Response<BranchReply>, Status> {
        self.0.answer(r.into_inner())
    }
    async fn abort(&self, r: Request<BranchRequest>) -> Result<Response<BranchReply>, Status> {
        self.0.answer(r.into_inner())
    }
}

impl Counting {
    fn answer(&self, req: BranchRequest) -> Result<Response<BranchReply>, Status> {
        self.calls.fetch_add(1, Ordering::SeqCst);
        let (outcome, message) = match req.action.as_str() {
            "fail_nul" => (Outcome::Failed, "card\0declined"),
            "ok_nul" => (Outcome::Ok, "done\0"),
            _ => (Outcome::Ok, ""),
        };
        Ok(Response::new(BranchReply {
            outcome: outcome as i32,
            output: format!("out\0{}", req.branch_index).into_bytes(),
            message: message.into(),
        }))
    }
}

/// Serves a [`Counting`] participant on a free loopback port.
async fn participant() -> (String, Arc<Counting>) {
    let counting = Arc::new(Counting::default());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind a loopback port");
    let endpoint = format!("http://{}", listener.local_addr().expect("local address"));
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(ParticipantServer::new(Served(counting.clone())))
            .serve_with_incoming(TcpListenerStream::new(listener)),
    );
    (endpoint, counting)
}

fn coordinator(store: Arc<dyn Store>) -> Arc<Coordinator> {
    let registry = Arc::new(Registry::new(store.clone(), RegistryConfig::default()));
    let config = Config {
        id: "c1".into(),
        max_batch: 64,
        log_writers: 1,
        progress_flush: Duration::from_millis(5),
        retention: None,
        ..Default::default()
    };
    Coordinator::new(config, store, registry)
}

async fn started(co: &Arc<Coordinator>, new: NewTx) -> TxId {
    match co.start(new).await.expect("start") {
        Started::Created(id) => id,
        other => panic!("expected a new transaction, got {other:?}"),
    }
}

/// Waits until the stored transaction satisfies `done`, and returns it.
async fn until_stored(
    store: &dyn Store,
    id: TxId,
    what: &str,
    done: impl Fn(&TxRecord) -> bool,
) -> TxRecord {
    let deadline = tokio::time::Instant::now() + PATIENCE;
    loop {
        let tx = store
            .get(id)
            .await
            .expect("get")
            .expect("transaction exists");
        if done(&tx) {
            return tx;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "transaction never became {what}: state {}, last_error {:?}",
            tx.state,
            tx.last_error
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Waits until `counting` has had no call for `quiet`, and returns how many it had.
async fn calls_settle(counting: &Counting, quiet: Duration) -> usize {
    let deadline = tokio::time::Instant::now() + PATIENCE;
    let mut last = counting.calls.load(Ordering::SeqCst);
    loop {
        tokio::time::sleep(quiet).await;
        let now = counting.calls.load(Ordering::SeqCst);
        if now == last {
            return now;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "participant calls never stopped: {now} so far"
        );
        last = now;
    }
}

// ---- (a) the log writer isolates a refused write ----

/// One Create that PostgreSQL refuses for its data (a label with a NUL byte, which `jsonb`
/// cannot hold: SQLSTATE 22P05) is submitted among 100 valid ones, with updates of two of them
/// queued behind, so that they share group-commit batches. Every valid write is recorded; the
/// refused one alone is answered `Refused`, and the update queued behind it is fenced.
#[tokio::test]
async fn a_write_refused_for_its_data_fails_alone() {
    let db = fresh_database().await;
    let store: Arc<dyn Store> = pg_store(&db).await;
    let tracker = TaskTracker::new();
    let stop = CancellationToken::new();
    let writer = LogWriter::start(
        store.clone(),
        Arc::new(Metrics::default()),
        WriterOptions {
            connections: 1,
            max_batch: 512,
            pipeline_min: 1,
            queue_len: 512,
        },
        None,
        &tracker,
        stop.clone(),
    );
    let steps = || vec![step("reserve", "http://127.0.0.1:9", "ok", 0)];
    let update_of = |new: &NewTx| TxUpdate {
        id: new.id,
        owner: new.owner.clone(),
        epoch: new.epoch,
        expected_last_seq: 1,
        state: TxState::Compensated,
        stage: 0,
        last_error: Some("done".into()),
        cancel_requested: false,
        release: true,
        branches: Vec::new(),
        events: vec![NewEvent {
            seq: 2,
            at: now_ms(),
            kind: EventKind::Compensated,
            branch: None,
            detail: "undone".into(),
        }],
    };
    let bad = new_tx("c1", steps(), &[("team", "a\0b")]);
    let bad_id = bad.id;
    let bad_update = update_of(&bad);
    let mut good = Vec::new();
    let mut acks = Vec::new();
    // Submitted without waiting in between: they wait in the queue together.
    for i in 0..100 {
        if i == 50 {
            acks.push((
                "bad create",
                writer
                    .submit(LogWrite::Create(Box::new(bad.clone())))
                    .await
                    .expect("submit"),
            ));
            acks.push((
                "bad update",
                writer
                    .submit(LogWrite::Update(Box::new(bad_update.clone())))
                    .await
                    .expect("submit"),
            ));
        }
        let new = new_tx("c1", steps(), &[("team", "a")]);
        good.push(new.id);
        let follow = update_of(&new);
        acks.push((
            "good create",
            writer
                .submit(LogWrite::Create(Box::new(new)))
                .await
                .expect("submit"),
        ));
        if i == 49 || i == 51 {
            acks.push((
                "good update",
                writer
                    .submit(LogWrite::Update(Box::new(follow)))
                    .await
                    .expect("submit"),
            ));
        }
    }
    let mut outcomes: HashMap<&str, Vec<Result<WriteOutcome, String>>> = HashMap::new();
    for (what, ack) in acks {
        let outcome = ack.await.expect("answered").map_err(|e| e.to_string());
        outcomes.entry(what).or_default().push(outcome);
    }
    let creates = &outcomes["good create"];
    assert_eq!(creates.len(), 100);
    assert!(
        creates.iter().all(|o| *o == Ok(WriteOutcome::Created)),
        "every valid create is recorded; {} were not, e.g. {:?}",
        creates
            .iter()
            .filter(|o| **o != Ok(WriteOutcome::Created))
            .count(),
        creates.iter().find(|o| **o != Ok(WriteOutcome::Created))
    );
    assert_eq!(
        outcomes["good update"],
        [Ok(WriteOutcome::Updated), Ok(WriteOutcome::Updated)]
    );
    match &outcomes["bad create"][..] {
        [Ok(WriteOutcome::Refused(reason))] => {
            assert!(reason.contains("database"), "{reason}")
        }
        other => panic!("the bad create must be refused alone, got {other:?}"),
    }
    assert_eq!(outcomes["bad update"], [Ok(WriteOutcome::Fenced)]);
    for id in &good {
        assert!(store.get(*id).await.expect("get").is_some(), "{id} stored");
    }
    assert!(store.get(bad_id).await.expect("get").is_none());
    stop.cancel();
    drop(writer);
    tracker.close();
    tracker.wait().await;
}

/// A batch takes at most one write for every two transactions the coordinator drives (at least
/// eight), so that transactions in flight move as two groups instead of one: 32 writes queued
/// together go as two batches of 16 when 32 transactions are driven, as four of 8 when only 4
/// are (the least a batch is limited to), and as one batch without a count.
#[tokio::test]
async fn a_batch_takes_one_write_for_every_two_transactions_driven() {
    let dir = tempfile::tempdir().expect("temp dir");
    let store: Arc<dyn Store> = sqlite_store(dir.path()).await;
    let live = |n: usize| -> baton_server::coordinator::writer::Live { Arc::new(move || n) };
    for (live, batches) in [(Some(live(32)), 2), (Some(live(4)), 4), (None, 1)] {
        let tracker = TaskTracker::new();
        let stop = CancellationToken::new();
        let metrics = Arc::new(Metrics::default());
        let writer = LogWriter::start(
            store.clone(),
            metrics.clone(),
            WriterOptions {
                connections: 2,
                max_batch: 512,
                pipeline_min: 32,
                queue_len: 512,
            },
            live,
            &tracker,
            stop.clone(),
        );
        // Submitted without waiting in between: the writer task has not run yet, so all 32
        // wait in the queue when it first looks.
        let mut acks = Vec::new();
        for _ in 0..32 {
            let new = new_tx(
                "c1",
                vec![step("reserve", "http://127.0.0.1:9", "ok", 0)],
                &[],
            );
            let ack = writer.submit(LogWrite::Create(Box::new(new))).await;
            acks.push(ack.expect("submit"));
        }
        for ack in acks {
            let outcome = ack.await.expect("answered").map_err(|e| e.to_string());
            assert_eq!(outcome, Ok(WriteOutcome::Created));
        }
        let text = metrics.render(0, true);
        let counter = |name: &str| -> u64 {
            text.lines()
                .find_map(|l| l.strip_prefix(name)?.trim().parse::<f64>().ok())
                .unwrap_or_else(|| panic!("{name} in the metrics:\n{text}")) as u64
        };
        assert_eq!(counter("baton_log_batch_writes_total "), 32);
        assert_eq!(counter("baton_log_batches_total "), batches, "{text}");
        stop.cancel();
        drop(writer);
        tracker.close();
        tracker.wait().await;
    }
}

// ---- (b) text from participants ----

/// A participant's failure message and reply hold NUL bytes; they reach the log's `last_error`
/// and history. The saga still reaches its outcome (compensated), and the text is stored with
/// U+FFFD where the NUL was.
#[tokio::test]
async fn a_participant_message_with_nul_is_stored_sanitized() {
    let db = fresh_database().await;
    let store: Arc<dyn Store> = pg_store(&db).await;
    let (endpoint, counting) = participant().await;
    let co = coordinator(store.clone());
    let id = started(
        &co,
        new_tx(
            "c1",
            vec![
                step("reserve", &endpoint, "ok_nul", 0),
                step("charge", &endpoint, "fail_nul", 1),
            ],
            &[],
        ),
    )
    .await;
    let tx = until_stored(store.as_ref(), id, "compensated", |tx| {
        tx.state == TxState::Compensated
    })
    .await;
    let last_error = tx.last_error.clone().unwrap_or_default();
    assert!(
        last_error.contains("card\u{FFFD}declined"),
        "last_error keeps the message, NUL replaced: {last_error:?}"
    );
    let charge = &tx.branches[1];
    assert_eq!(charge.status, StepStatus::Failed);
    assert!(
        charge
            .last_error
            .as_deref()
            .is_some_and(|e| e.contains("card\u{FFFD}declined")),
        "{charge:?}"
    );
    let events = store.events(id, 0, 1000).await.expect("events");
    assert!(events.iter().any(|e| e.detail.contains('\u{FFFD}')));
    assert!(events.iter().all(|e| !e.detail.contains('\0')));
    // reserve ran and was undone; charge ran once: nothing was re-sent.
    assert_eq!(calls_settle(&counting, Duration::from_millis(200)).await, 3);
    co.shutdown().await;
}

/// Text with NUL bytes in every text column fed from outside (history detail, `last_error` of the
/// transaction and of a branch, a branch name) is stored by both backends, and reads back the
/// same from both: each NUL as U+FFFD.
#[tokio::test]
async fn nul_text_reads_back_the_same_from_both_stores() {
    let db = fresh_database().await;
    let pg: Arc<dyn Store> = pg_store(&db).await;
    let dir = tempfile::tempdir().expect("temp dir");
    let sqlite: Arc<dyn Store> = sqlite_store(dir.path()).await;
    for store in [pg, sqlite] {
        let new = new_tx(
            "c1",
            vec![step("re\0serve", "http://127.0.0.1:9", "ok", 0)],
            &[],
        );
        let id = new.id;
        let mut branch = baton_server::model::BranchRecord {
            index: 0,
            name: "re\0serve".into(),
            status: StepStatus::Failed,
            attempts: 1,
            output: Some(b"\0".to_vec()),
            last_error: Some("no\0pe".into()),
            done_order: None,
        };
        let update = TxUpdate {
            id,
            owner: "c1".into(),
            epoch: 1,
            expected_last_seq: 1,
            state: TxState::Compensated,
            stage: 0,
            last_error: Some("step re\0serve failed".into()),
            cancel_requested: false,
            release: true,
            branches: vec![branch.clone()],
            events: vec![NewEvent {
                seq: 2,
                at: now_ms(),
                kind: EventKind::ExecuteFailed,
                branch: Some(0),
                detail: "no\0pe".into(),
            }],
        };
        let outcomes = store
            .apply(&[
                LogWrite::Create(Box::new(new)),
                LogWrite::Update(Box::new(update)),
            ])
            .await
            .expect("NUL text is stored");
        assert_eq!(outcomes, [WriteOutcome::Created, WriteOutcome::Updated]);
        let tx = store.get(id).await.expect("get").expect("stored");
        assert_eq!(
            tx.last_error.as_deref(),
            Some("step re\u{FFFD}serve failed")
        );
        branch.name = "re\u{FFFD}serve".into();
        branch.last_error = Some("no\u{FFFD}pe".into());
        assert_eq!(tx.branches, [branch]);
        // The definition keeps the step's name as given: it is JSON, which escapes the NUL.
        let Definition::Saga(saga) = &tx.definition else {
            panic!("a saga")
        };
        assert_eq!(saga.steps[0].name, "re\0serve");
        let events = store.events(id, 0, 10).await.expect("events");
        assert_eq!(events[1].detail, "no\u{FFFD}pe");
    }
}

// ---- (c) the driver never loops on a refused write ----

/// A CHECK constraint (SQLSTATE 23514) that refuses a transaction row whose branches include one
/// named `poison`.
const REFUSES_POISON: &str = "ALTER TABLE baton_transactions ADD CONSTRAINT refuses_poison \
     CHECK (branches IS NULL OR NOT jsonb_path_exists(branches, '$.*.name ? (@ == \"poison\")'))";

/// The database refuses the branch state of the step named `poison` (a CHECK constraint: SQLSTATE
/// 23514), so the saga's progress can never be recorded once that step starts. The transaction
/// comes to rest `failed` with a last_error naming the refused write, instead of being re-read
/// and its calls re-sent forever; calls stop; a cancel is refused with why; a saga beside it is
/// not affected.
#[tokio::test]
async fn a_refused_progress_write_ends_the_transaction_failed() {
    let db = fresh_database().await;
    let store: Arc<dyn Store> = pg_store(&db).await;
    execute(&db, REFUSES_POISON).await;
    let (endpoint, counting) = participant().await;
    let (other_endpoint, _) = participant().await;
    let co = coordinator(store.clone());
    let id = started(
        &co,
        new_tx(
            "c1",
            vec![
                step("reserve", &endpoint, "ok", 0),
                step("poison", &endpoint, "ok", 1),
            ],
            &[],
        ),
    )
    .await;
    let fine = started(
        &co,
        new_tx("c1", vec![step("reserve", &other_endpoint, "ok", 0)], &[]),
    )
    .await;
    let tx = until_stored(store.as_ref(), id, "failed", |tx| {
        tx.state == TxState::Failed
    })
    .await;
    let last_error = tx.last_error.clone().unwrap_or_default();
    assert!(
        last_error.contains("refused to record") && last_error.contains("refuses_poison"),
        "last_error names the refused write and why: {last_error}"
    );
    assert_eq!(tx.owner, None, "a failed transaction is handed back");
    let events = store.events(id, 0, 1000).await.expect("events");
    assert_eq!(events.last().map(|e| e.kind.as_str()), Some("failed"));
    // Each step's execute at most once or twice (the first may be sent again on a resume), and
    // then no more calls.
    let calls = calls_settle(&counting, Duration::from_millis(300)).await;
    assert!(calls <= 4, "participant calls stay bounded: {calls}");
    // A failed transaction answers cancel with a refusal, not a silent OK.
    match co.cancel(id, "stop".into()).await {
        Err(CoordError::Refused(text)) => assert!(text.contains("failed"), "{text}"),
        other => panic!("cancel of a failed transaction must be refused, got {other:?}"),
    }
    until_stored(store.as_ref(), fine, "committed", |tx| {
        tx.state == TxState::Committed
    })
    .await;
    // The poison step's own row was refused, so the failed record names it as may have run.
    assert!(last_error.contains("1 may have run"), "{last_error}");
    // An operator's retry compensates what the log shows may have run, and rests again.
    co.retry(id).await.expect("a failed saga can be retried");
    until_stored(store.as_ref(), id, "compensated", |tx| {
        tx.state == TxState::Compensated
    })
    .await;
    let after = calls_settle(&counting, Duration::from_millis(300)).await;
    assert!(
        after <= calls + 1,
        "retry makes at most one compensation: {after}"
    );
    co.shutdown().await;
}

/// Here even the `failed` record is refused (a CHECK constraint on failed transactions with a
/// label): the driver stops driving the transaction, its calls stop, and a cancel is refused
/// with the reason instead of being answered OK and never acted on.
#[tokio::test]
async fn a_transaction_that_cannot_be_recorded_at_all_is_parked() {
    let db = fresh_database().await;
    let store: Arc<dyn Store> = pg_store(&db).await;
    execute(&db, REFUSES_POISON).await;
    execute(
        &db,
        "ALTER TABLE baton_transactions ADD CONSTRAINT never_failed \
         CHECK (state <> 'failed' OR NOT labels ? 'stuck')",
    )
    .await;
    let (endpoint, counting) = participant().await;
    let co = coordinator(store.clone());
    let id = started(
        &co,
        new_tx(
            "c1",
            vec![step("poison", &endpoint, "ok", 0)],
            &[("stuck", "yes")],
        ),
    )
    .await;
    // Parked once no call is made any more; each step's execute went out at most twice.
    let calls = calls_settle(&counting, Duration::from_millis(300)).await;
    assert!(calls <= 2, "participant calls stay bounded: {calls}");
    let deadline = tokio::time::Instant::now() + PATIENCE;
    let text = loop {
        match co.cancel(id, "stop".into()).await {
            Err(CoordError::Refused(text)) => break text,
            Ok(()) => panic!("a cancel that cannot be acted on must not be answered OK"),
            other => {
                assert!(
                    tokio::time::Instant::now() < deadline,
                    "cancel of a parked transaction must be refused, got {other:?}"
                );
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
    };
    assert!(text.contains("cannot be recorded"), "{text}");
    let tx = store.get(id).await.expect("get").expect("stored");
    assert_eq!(tx.state, TxState::Running);
    assert_eq!(counting.calls.load(Ordering::SeqCst), calls);
    co.shutdown().await;
}

//! One conformance suite for every `Store`: each check below runs against PostgreSQL (a fresh
//! database per test) and SQLite (a fresh file per test).

mod support;

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use baton_server::model::{
    BranchRecord, Definition, EventKind, RetryPolicy, SagaDef, StepDef, StepKind, StepStatus,
    Target, TxId, TxRecord, TxState,
};
use baton_server::store::postgres::{claim_sql, release_sql, ClaimRange, PgLog};
use baton_server::store::sqlite::SqliteLog;
use baton_server::store::{
    Health, ListFilter, LogWrite, Membership, NewEvent, NewTx, Store, StoreError, StoreOptions,
    TxLog, TxUpdate, WriteOutcome,
};
use chrono::{DateTime, Utc};

/// Generates `pg::<check>` and `sqlite::<check>` tests for every check.
macro_rules! conformance {
    ($($check:ident),* $(,)?) => {
        mod pg {
            $(
                #[tokio::test]
                async fn $check() {
                    let db = crate::support::db::fresh_database().await;
                    let options = crate::StoreOptions { max_connections: 4, ..Default::default() };
                    let log = crate::PgLog::connect(&db.url, &options).await.expect("connect");
                    crate::TxLog::migrate(&log).await.expect("migrate");
                    super::$check(&log).await;
                }
            )*
        }
        mod sqlite {
            $(
                #[tokio::test]
                async fn $check() {
                    let dir = tempfile::tempdir().expect("temp dir");
                    let url = crate::support::db::sqlite_url(dir.path());
                    let log = crate::SqliteLog::open(&url).await.expect("open");
                    crate::TxLog::migrate(&log).await.expect("migrate");
                    super::$check(&log).await;
                }
            )*
        }
    };
}

conformance!(
    create_then_get_round_trips,
    idempotency_key_returns_existing,
    update_applies_and_appends_events,
    stale_owner_or_epoch_is_fenced,
    release_clears_owner,
    claim_takes_unowned_and_stale_work,
    claim_skips_resting_states,
    claim_respects_limit,
    claim_lapsed_respects_limit,
    release_owned_hands_back_work,
    release_hands_back_only_the_listed_work,
    claim_one_checks_epoch,
    list_filters_and_pages,
    events_page_by_seq,
    participants_register_expire_deregister,
    coordinators_heartbeat_and_publish_what_they_drive,
    concurrent_claimers_never_share_work,
    cancel_requests_reach_the_owner,
    purge_deletes_only_old_finished_transactions,
    purge_takes_the_oldest_in_batches,
    batches_of_many_writes_apply_as_if_one_by_one,
    unchanged_branches_read_back_pending,
    departed_members_are_forgotten,
);

// ---- fixtures ----

/// Now, at the millisecond precision both stores keep.
fn now_ms() -> DateTime<Utc> {
    DateTime::from_timestamp_millis(Utc::now().timestamp_millis()).expect("time in range")
}

fn saga(steps: &[&str]) -> Definition {
    Definition::Saga(SagaDef {
        steps: steps
            .iter()
            .enumerate()
            .map(|(i, name)| StepDef {
                name: name.to_string(),
                target: Target::Service("inventory".into()),
                action: "reserve".into(),
                compensate: Some("release".into()),
                payload: vec![i as u8, 0, 255],
                kind: StepKind::Compensatable,
                stage: i as u32,
                timeout_ms: 1_000,
                retry: RetryPolicy::default(),
            })
            .collect(),
    })
}

fn event(seq: u64, kind: EventKind, branch: Option<u32>) -> NewEvent {
    NewEvent {
        seq,
        at: now_ms(),
        kind,
        branch,
        detail: format!("detail of {seq}"),
    }
}

fn new_tx(owner: &str, state: TxState) -> NewTx {
    NewTx {
        id: TxId::new(),
        definition: saga(&["reserve", "charge"]),
        state,
        labels: BTreeMap::from([("env".to_string(), "prod".to_string())]),
        idempotency_key: None,
        owner: owner.into(),
        epoch: 1,
        deadline_at: Some(now_ms() + chrono::Duration::seconds(60)),
        created_at: now_ms(),
        events: vec![
            event(1, EventKind::Accepted, None),
            event(2, EventKind::Retried, None),
        ],
    }
}

async fn create(log: &dyn Store, tx: NewTx) -> TxRecord {
    let id = tx.id;
    let outcomes = log
        .apply(&[LogWrite::Create(Box::new(tx))])
        .await
        .expect("create");
    assert_eq!(outcomes, vec![WriteOutcome::Created]);
    get(log, id).await
}

async fn get(log: &dyn Store, id: TxId) -> TxRecord {
    log.get(id).await.expect("get").expect("transaction exists")
}

/// An update by the record's current owner and epoch that changes nothing yet.
fn update_of(rec: &TxRecord) -> TxUpdate {
    TxUpdate {
        id: rec.id,
        owner: rec.owner.clone().unwrap_or_default(),
        epoch: rec.epoch,
        expected_last_seq: rec.last_seq,
        state: rec.state,
        stage: rec.stage,
        last_error: rec.last_error.clone(),
        cancel_requested: rec.cancel_requested,
        release: false,
        branches: Vec::new(),
        events: Vec::new(),
    }
}

async fn apply_one(log: &dyn Store, up: TxUpdate) -> WriteOutcome {
    let mut outcomes = log
        .apply(&[LogWrite::Update(Box::new(up))])
        .await
        .expect("apply");
    assert_eq!(outcomes.len(), 1);
    outcomes.remove(0)
}

fn ids(records: &[TxRecord]) -> Vec<TxId> {
    records.iter().map(|r| r.id).collect()
}

// ---- checks ----

async fn create_then_get_round_trips(log: &dyn Store) {
    let before = Utc::now() - chrono::Duration::seconds(5);
    let mut tx = new_tx("c1", TxState::Running);
    tx.idempotency_key = Some("order-1".into());
    tx.labels.insert("tenant".into(), "a b\"c".into());
    let expected = tx.clone();
    let rec = create(log, tx).await;

    assert_eq!(rec.id, expected.id);
    assert_eq!(rec.kind, baton_server::model::TxKind::Saga);
    assert_eq!(rec.state, TxState::Running);
    assert_eq!(rec.definition, expected.definition);
    assert_eq!(rec.labels, expected.labels);
    assert_eq!(rec.idempotency_key.as_deref(), Some("order-1"));
    assert_eq!(rec.owner.as_deref(), Some("c1"));
    assert_eq!(rec.epoch, 1);
    assert_eq!(rec.stage, 0);
    assert_eq!(rec.last_error, None);
    assert!(!rec.cancel_requested);
    assert_eq!(rec.deadline_at, expected.deadline_at);
    assert_eq!(rec.last_seq, 2);
    assert!(rec.created_at > before && rec.created_at < Utc::now() + chrono::Duration::seconds(5));
    assert_eq!(rec.updated_at, rec.created_at);
    let names: Vec<_> = rec.branches.iter().map(|b| b.name.as_str()).collect();
    assert_eq!(names, ["reserve", "charge"]);
    for (i, b) in rec.branches.iter().enumerate() {
        assert_eq!(b.index, i as u32);
        assert_eq!(b.status, StepStatus::Pending);
        assert_eq!(
            (b.attempts, &b.output, &b.last_error, b.done_order),
            (0, &None, &None, None)
        );
    }

    let events = log.events(rec.id, 0, 100).await.expect("events");
    assert_eq!(events.len(), 2);
    for (got, want) in events.iter().zip(&expected.events) {
        assert_eq!(got.tx_id, rec.id);
        assert_eq!(
            (got.seq, got.at, &got.kind, got.branch, &got.detail),
            (want.seq, want.at, &want.kind, want.branch, &want.detail)
        );
    }
    assert!(log.get(TxId::new()).await.expect("get").is_none());
    log.ping().await.expect("ping");
}

async fn idempotency_key_returns_existing(log: &dyn Store) {
    let mut first = new_tx("c1", TxState::Running);
    first.idempotency_key = Some("key-1".into());
    let first = create(log, first).await;

    let mut again = new_tx("c2", TxState::Running);
    again.idempotency_key = Some("key-1".into());
    let again_id = again.id;
    let outcomes = log
        .apply(&[LogWrite::Create(Box::new(again))])
        .await
        .expect("apply");
    assert_eq!(outcomes, vec![WriteOutcome::Existing(first.id)]);
    assert!(log.get(again_id).await.expect("get").is_none());
    assert!(log
        .events(again_id, 0, 10)
        .await
        .expect("events")
        .is_empty());
    assert_eq!(get(log, first.id).await, first);

    // Two starts with one key in the same batch: the second sees the first.
    let mut a = new_tx("c1", TxState::Running);
    a.idempotency_key = Some("key-2".into());
    let mut b = new_tx("c1", TxState::Running);
    b.idempotency_key = Some("key-2".into());
    let (a_id, b_id) = (a.id, b.id);
    let outcomes = log
        .apply(&[LogWrite::Create(Box::new(a)), LogWrite::Create(Box::new(b))])
        .await
        .expect("apply");
    assert_eq!(
        outcomes,
        vec![WriteOutcome::Created, WriteOutcome::Existing(a_id)]
    );
    assert!(log.get(b_id).await.expect("get").is_none());
    // Transactions without a key never collide.
    create(log, new_tx("c1", TxState::Running)).await;
    create(log, new_tx("c1", TxState::Running)).await;
}

/// A branch row is written when its branch first changes; until then the branch reads back as
/// pending, in its place among the branches that have rows.
async fn unchanged_branches_read_back_pending(log: &dyn Store) {
    let mut new = new_tx("c1", TxState::Running);
    new.definition = saga(&["reserve", "charge", "ship"]);
    let rec = create(log, new).await;
    let pending = |index: u32, name: &str| BranchRecord {
        index,
        name: name.into(),
        status: StepStatus::Pending,
        attempts: 0,
        output: None,
        last_error: None,
        done_order: None,
    };
    assert_eq!(
        rec.branches,
        [
            pending(0, "reserve"),
            pending(1, "charge"),
            pending(2, "ship")
        ]
    );
    let mut up = update_of(&rec);
    up.branches = vec![BranchRecord {
        status: StepStatus::Running,
        attempts: 1,
        ..pending(1, "charge")
    }];
    assert_eq!(apply_one(log, up).await, WriteOutcome::Updated);
    let after = get(log, rec.id).await;
    assert_eq!(after.branches.len(), 3);
    assert_eq!(after.branches[0], pending(0, "reserve"));
    assert_eq!(
        (after.branches[1].index, after.branches[1].status),
        (1, StepStatus::Running)
    );
    assert_eq!(after.branches[2], pending(2, "ship"));
}

async fn update_applies_and_appends_events(log: &dyn Store) {
    let rec = create(log, new_tx("c1", TxState::Running)).await;
    let mut up = update_of(&rec);
    up.state = TxState::Compensating;
    up.stage = 1;
    up.last_error = Some("charge declined".into());
    up.cancel_requested = true;
    up.branches = vec![BranchRecord {
        index: 0,
        name: "reserve".into(),
        status: StepStatus::Succeeded,
        attempts: 2,
        output: Some(vec![1, 2, 3, 0]),
        last_error: Some("timeout once".into()),
        done_order: Some(1),
    }];
    up.events = vec![
        event(3, EventKind::ExecuteOk, Some(0)),
        event(4, EventKind::Compensating, None),
    ];
    let new_events = up.events.clone();
    assert_eq!(apply_one(log, up).await, WriteOutcome::Updated);

    let after = get(log, rec.id).await;
    assert_eq!(after.state, TxState::Compensating);
    assert_eq!(after.stage, 1);
    assert_eq!(after.last_error.as_deref(), Some("charge declined"));
    assert!(after.cancel_requested);
    assert_eq!(after.last_seq, 4);
    assert_eq!((after.owner.as_deref(), after.epoch), (Some("c1"), 1));
    assert!(after.updated_at >= rec.updated_at);
    assert_eq!(after.branches[0].status, StepStatus::Succeeded);
    assert_eq!(after.branches[0].attempts, 2);
    assert_eq!(after.branches[0].output, Some(vec![1, 2, 3, 0]));
    assert_eq!(
        after.branches[0].last_error.as_deref(),
        Some("timeout once")
    );
    assert_eq!(after.branches[0].done_order, Some(1));
    assert_eq!(
        after.branches[1], rec.branches[1],
        "untouched branch changed"
    );

    let events = log.events(rec.id, 0, 100).await.expect("events");
    let seqs: Vec<_> = events.iter().map(|e| e.seq).collect();
    assert_eq!(seqs, [1, 2, 3, 4]);
    assert_eq!(events[2].branch, Some(0));
    assert_eq!(events[2].kind, new_events[0].kind);
    assert_eq!(events[3].at, new_events[1].at);

    // Branch rows are replaced whole: clearing the output clears it.
    let mut up = update_of(&after);
    up.branches = vec![BranchRecord {
        output: None,
        status: StepStatus::Compensated,
        ..after.branches[0].clone()
    }];
    assert_eq!(apply_one(log, up).await, WriteOutcome::Updated);
    let again = get(log, rec.id).await;
    assert_eq!(again.branches[0].output, None);
    assert_eq!(again.branches[0].status, StepStatus::Compensated);
    assert_eq!(again.last_seq, 4, "an update without events keeps last_seq");
}

async fn batches_of_many_writes_apply_as_if_one_by_one(log: &dyn Store) {
    let a = create(log, new_tx("c1", TxState::Running)).await;
    let b = create(log, new_tx("c1", TxState::Running)).await;
    let update = |w: TxUpdate| LogWrite::Update(Box::new(w));
    let step = |rec: &TxRecord, status: StepStatus| BranchRecord {
        status,
        attempts: 1,
        ..rec.branches[0].clone()
    };

    // Two back-to-back updates of `a`, a fenced one of `b` between them, and a new transaction.
    let mut a1 = update_of(&a);
    a1.branches = vec![step(&a, StepStatus::Running)];
    a1.events = vec![event(3, EventKind::ExecuteSent, Some(0))];
    let mut a2 = update_of(&a);
    a2.expected_last_seq = 3;
    a2.stage = 1;
    a2.branches = vec![
        step(&a, StepStatus::Succeeded),
        BranchRecord {
            status: StepStatus::Running,
            ..a.branches[1].clone()
        },
    ];
    a2.events = vec![
        event(4, EventKind::ExecuteOk, Some(0)),
        event(5, EventKind::ExecuteSent, Some(1)),
    ];
    let mut b1 = update_of(&b);
    b1.epoch += 1;
    b1.events = vec![event(3, EventKind::Failed, None)];
    let c = new_tx("c1", TxState::Running);
    let c_id = c.id;
    let outcomes = log
        .apply(&[
            update(a1),
            update(b1),
            update(a2),
            LogWrite::Create(Box::new(c)),
        ])
        .await
        .expect("apply");
    assert_eq!(
        outcomes,
        [
            WriteOutcome::Updated,
            WriteOutcome::Fenced,
            WriteOutcome::Updated,
            WriteOutcome::Created
        ]
    );
    let a_now = get(log, a.id).await;
    assert_eq!((a_now.last_seq, a_now.stage), (5, 1));
    assert_eq!(a_now.branches[0].status, StepStatus::Succeeded);
    assert_eq!(a_now.branches[1].status, StepStatus::Running);
    let kinds: Vec<_> = log
        .events(a.id, 0, 100)
        .await
        .expect("events")
        .into_iter()
        .map(|e| e.kind)
        .collect();
    assert_eq!(
        kinds,
        [
            EventKind::Accepted,
            EventKind::Retried,
            EventKind::ExecuteSent,
            EventKind::ExecuteOk,
            EventKind::ExecuteSent
        ]
    );
    assert_eq!(get(log, b.id).await, b, "the fenced write changed nothing");
    assert_eq!(get(log, c_id).await.last_seq, 2);

    // A stale write and the one queued behind it both fail, and neither lands.
    let mut stale = update_of(&a_now);
    stale.expected_last_seq = 3;
    stale.events = vec![event(4, EventKind::Failed, None)];
    let mut behind = update_of(&a_now);
    behind.expected_last_seq = 4;
    behind.state = TxState::Committed;
    behind.events = vec![event(5, EventKind::Failed, None)];
    let outcomes = log
        .apply(&[update(stale), update(behind)])
        .await
        .expect("apply");
    assert_eq!(outcomes, [WriteOutcome::Fenced, WriteOutcome::Fenced]);
    assert_eq!(get(log, a.id).await, a_now);

    // Two writes that both follow the same history: the first lands, the second is fenced.
    let mut first = update_of(&a_now);
    first.events = vec![event(6, EventKind::Committed, None)];
    first.state = TxState::Committed;
    let mut second = update_of(&a_now);
    second.events = vec![event(6, EventKind::Failed, None)];
    let outcomes = log
        .apply(&[update(first), update(second)])
        .await
        .expect("apply");
    assert_eq!(outcomes, [WriteOutcome::Updated, WriteOutcome::Fenced]);
    assert_eq!(get(log, a.id).await.state, TxState::Committed);

    // A new transaction and its first update in one batch.
    let d = new_tx("c1", TxState::Running);
    let d_rec = TxRecord {
        id: d.id,
        owner: Some("c1".into()),
        epoch: 1,
        last_seq: 2,
        ..a_now.clone()
    };
    let mut d1 = update_of(&d_rec);
    d1.state = TxState::Committed;
    d1.events = vec![event(3, EventKind::Committed, None)];
    let outcomes = log
        .apply(&[LogWrite::Create(Box::new(d.clone())), update(d1)])
        .await
        .expect("apply");
    assert_eq!(outcomes, [WriteOutcome::Created, WriteOutcome::Updated]);
    let d_now = get(log, d.id).await;
    assert_eq!((d_now.state, d_now.last_seq), (TxState::Committed, 3));
}

async fn stale_owner_or_epoch_is_fenced(log: &dyn Store) {
    let rec = create(log, new_tx("c1", TxState::Running)).await;
    let changes = |mut up: TxUpdate| {
        up.state = TxState::Compensating;
        up.branches = vec![BranchRecord {
            status: StepStatus::Failed,
            ..rec.branches[0].clone()
        }];
        up.events = vec![event(3, EventKind::Failed, None)];
        up
    };
    let wrong_epoch = TxUpdate {
        epoch: rec.epoch + 1,
        ..changes(update_of(&rec))
    };
    assert_eq!(apply_one(log, wrong_epoch).await, WriteOutcome::Fenced);
    let wrong_owner = TxUpdate {
        owner: "c2".into(),
        ..changes(update_of(&rec))
    };
    assert_eq!(apply_one(log, wrong_owner).await, WriteOutcome::Fenced);
    let missing = TxUpdate {
        id: TxId::new(),
        ..changes(update_of(&rec))
    };
    assert_eq!(apply_one(log, missing).await, WriteOutcome::Fenced);
    // A write that does not follow the history's last event (one queued behind a write that
    // failed) is refused the same way.
    let out_of_sequence = TxUpdate {
        expected_last_seq: rec.last_seq + 1,
        ..changes(update_of(&rec))
    };
    assert_eq!(apply_one(log, out_of_sequence).await, WriteOutcome::Fenced);
    assert_eq!(
        get(log, rec.id).await,
        rec,
        "a fenced write changed the row"
    );
    assert_eq!(log.events(rec.id, 0, 100).await.expect("events").len(), 2);

    // In a mixed batch the fenced write is skipped and the others still apply.
    let other = create(log, new_tx("c1", TxState::Running)).await;
    let fresh = new_tx("c1", TxState::Running);
    let fresh_id = fresh.id;
    let mut good = update_of(&other);
    good.state = TxState::Committed;
    good.events = vec![event(3, EventKind::Committed, None)];
    let outcomes = log
        .apply(&[
            LogWrite::Update(Box::new(good)),
            LogWrite::Update(Box::new(TxUpdate {
                epoch: 7,
                ..changes(update_of(&rec))
            })),
            LogWrite::Create(Box::new(fresh)),
        ])
        .await
        .expect("apply");
    assert_eq!(
        outcomes,
        vec![
            WriteOutcome::Updated,
            WriteOutcome::Fenced,
            WriteOutcome::Created
        ]
    );
    assert_eq!(get(log, other.id).await.state, TxState::Committed);
    assert_eq!(get(log, other.id).await.last_seq, 3);
    assert_eq!(get(log, rec.id).await, rec);
    assert!(log.get(fresh_id).await.expect("get").is_some());
}

async fn release_clears_owner(log: &dyn Store) {
    let rec = create(log, new_tx("c1", TxState::Running)).await;
    let mut up = update_of(&rec);
    up.state = TxState::Committed;
    up.release = true;
    up.events = vec![event(3, EventKind::Committed, None)];
    assert_eq!(apply_one(log, up).await, WriteOutcome::Updated);
    let after = get(log, rec.id).await;
    assert_eq!(after.owner, None);
    assert_eq!(after.state, TxState::Committed);
    assert_eq!(after.epoch, rec.epoch);
    // The former owner can no longer write.
    assert_eq!(apply_one(log, update_of(&rec)).await, WriteOutcome::Fenced);
}

async fn claim_takes_unowned_and_stale_work(log: &dyn Store) {
    log.heartbeat_coordinator("stale", "127.0.0.2:7600", "0.1.0", 0)
        .await
        .expect("heartbeat");
    let live_tx = create(log, new_tx("live", TxState::Running)).await;
    let dead_tx = create(log, new_tx("dead", TxState::Compensating)).await;
    let stale_tx = create(log, new_tx("stale", TxState::Preparing)).await;
    let mine = create(log, new_tx("me", TxState::Running)).await;
    let unowned = create(log, new_tx("gone", TxState::Committing)).await;
    let mut release = update_of(&unowned);
    release.release = true;
    assert_eq!(apply_one(log, release).await, WriteOutcome::Updated);
    let resting = create(log, new_tx("dead", TxState::Committed)).await;

    // Leases are generous against a loaded machine: 500 ms, with the stale heartbeat 600 ms old.
    tokio::time::sleep(Duration::from_millis(600)).await;
    log.heartbeat_coordinator("live", "127.0.0.1:7600", "0.1.0", 0)
        .await
        .expect("heartbeat");
    // The claim of every tick takes unowned work and that of lapsed coordinators; an owner with
    // no row at all is left to the full claim.
    let lapsed = log.claim_lapsed("me", 500, 100).await.expect("claim");
    assert_eq!(ids(&lapsed), vec![stale_tx.id, unowned.id]);
    let rest = log.claim("me", 500, 100).await.expect("claim");
    assert_eq!(ids(&rest), vec![dead_tx.id]);
    let mut claimed = [rest, lapsed].concat();
    claimed.sort_by_key(|r| r.id);
    assert_eq!(ids(&claimed), vec![dead_tx.id, stale_tx.id, unowned.id]);
    for (got, before) in claimed.iter().zip([&dead_tx, &stale_tx, &unowned]) {
        assert_eq!(got.owner.as_deref(), Some("me"));
        assert_eq!(got.epoch, before.epoch + 1);
        assert_eq!(
            got.branches.len(),
            2,
            "claimed records carry their branches"
        );
        assert_eq!(got.state, before.state);
        assert_eq!(get(log, got.id).await.owner.as_deref(), Some("me"));
    }
    assert_eq!(get(log, live_tx.id).await, live_tx);
    assert_eq!(get(log, mine.id).await, mine);
    assert_eq!(get(log, resting.id).await, resting);
    log.heartbeat_coordinator("live", "127.0.0.1:7600", "0.1.0", 0)
        .await
        .expect("heartbeat");
    assert!(log.claim("me", 500, 100).await.expect("claim").is_empty());
    assert!(log
        .claim_lapsed("me", 500, 100)
        .await
        .expect("claim")
        .is_empty());

    // The old owner is fenced out.
    assert_eq!(
        apply_one(log, update_of(&dead_tx)).await,
        WriteOutcome::Fenced
    );
    // With a long lease the stale coordinator counts as alive again.
    let another = create(log, new_tx("stale", TxState::Running)).await;
    assert!(log
        .claim("other", 60_000, 100)
        .await
        .expect("claim")
        .iter()
        .all(|r| r.id != another.id));
}

async fn claim_skips_resting_states(log: &dyn Store) {
    let mut by_id = BTreeMap::new();
    for state in TxState::ALL {
        let rec = create(log, new_tx("dead", state)).await;
        by_id.insert(rec.id, state);
    }
    let claimed = log.claim("me", 1_000, 100).await.expect("claim");
    let claimed_states: BTreeSet<&str> = claimed.iter().map(|r| by_id[&r.id].as_str()).collect();
    let expected: BTreeSet<&str> = TxState::ALL
        .into_iter()
        .filter(|s| !s.is_resting())
        .map(|s| s.as_str())
        .collect();
    assert_eq!(claimed_states, expected);
}

async fn claim_respects_limit(log: &dyn Store) {
    // Both claimers are alive, so neither takes the other's work.
    for claimer in ["me", "you"] {
        log.heartbeat_coordinator(claimer, "a", "v", 0)
            .await
            .expect("heartbeat");
    }
    let mut all = Vec::new();
    for _ in 0..5 {
        all.push(create(log, new_tx("dead", TxState::Running)).await.id);
    }
    all.sort();
    let first = log.claim("me", 1_000, 2).await.expect("claim");
    assert_eq!(ids(&first), all[..2].to_vec(), "oldest first");
    let second = log.claim("you", 1_000, 2).await.expect("claim");
    assert_eq!(ids(&second), all[2..4].to_vec());
    let third = log.claim("me", 1_000, 2).await.expect("claim");
    assert_eq!(ids(&third), all[4..].to_vec());
    assert!(log.claim("me", 1_000, 0).await.expect("claim").is_empty());
}

async fn claim_lapsed_respects_limit(log: &dyn Store) {
    // Two unowned transactions and two of a lapsed coordinator, taken three, then one.
    log.heartbeat_coordinator("gone", "a", "v", 0)
        .await
        .expect("heartbeat");
    let mut all = Vec::new();
    for _ in 0..2 {
        let rec = create(log, new_tx("gone", TxState::Running)).await;
        let mut release = update_of(&rec);
        release.release = true;
        assert_eq!(apply_one(log, release).await, WriteOutcome::Updated);
        all.push(rec.id);
    }
    for _ in 0..2 {
        all.push(create(log, new_tx("gone", TxState::Running)).await.id);
    }
    let lapsed = |limit| async move { log.claim_lapsed("me", 1, limit).await.expect("claim") };
    // A 1 ms lease, lapsed once the database's clock has moved past the heartbeat.
    let mut first = Vec::new();
    for _ in 0..200 {
        first = lapsed(3).await;
        if first.len() == 3 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    assert_eq!(first.len(), 3);
    let second = lapsed(3).await;
    assert_eq!(second.len(), 1);
    let mut taken = ids(&[first, second].concat());
    taken.sort();
    all.sort();
    assert_eq!(taken, all);
    assert!(lapsed(3).await.is_empty());
    assert!(lapsed(0).await.is_empty());
}

async fn release_owned_hands_back_work(log: &dyn Store) {
    for live in ["c1", "c2"] {
        log.heartbeat_coordinator(live, "a", "v", 0)
            .await
            .expect("heartbeat");
    }
    let a = create(log, new_tx("c1", TxState::Running)).await;
    let b = create(log, new_tx("c1", TxState::Aborting)).await;
    let done = create(log, new_tx("c1", TxState::Failed)).await;
    let others = create(log, new_tx("c2", TxState::Running)).await;
    assert_eq!(log.release_owned("c1").await.expect("release"), 2);
    for before in [&a, &b] {
        let after = get(log, before.id).await;
        assert_eq!((after.owner, after.epoch), (None, before.epoch + 1));
    }
    assert_eq!(get(log, done.id).await, done);
    assert_eq!(get(log, others.id).await, others);
    assert_eq!(apply_one(log, update_of(&a)).await, WriteOutcome::Fenced);
    // Handed-back work is claimable at once, even while c1 is alive.
    let claimed = log.claim("c1", 60_000, 10).await.expect("claim");
    assert_eq!(ids(&claimed), vec![a.id, b.id]);
    assert_eq!(log.release_owned("nobody").await.expect("release"), 0);
}

async fn release_hands_back_only_the_listed_work(log: &dyn Store) {
    for live in ["c1", "c2"] {
        log.heartbeat_coordinator(live, "a", "v", 0)
            .await
            .expect("heartbeat");
    }
    let listed = create(log, new_tx("c1", TxState::Running)).await;
    let unlisted = create(log, new_tx("c1", TxState::Running)).await;
    let done = create(log, new_tx("c1", TxState::Committed)).await;
    let others = create(log, new_tx("c2", TxState::Committing)).await;
    let ghost = TxId::new();
    let asked = [listed.id, done.id, others.id, ghost];
    assert_eq!(log.release("c1", &asked).await.expect("release"), 1);
    let after = get(log, listed.id).await;
    assert_eq!((after.owner, after.epoch), (None, listed.epoch + 1));
    for kept in [&unlisted, &done, &others] {
        assert_eq!(&get(log, kept.id).await, kept);
    }
    assert_eq!(
        apply_one(log, update_of(&listed)).await,
        WriteOutcome::Fenced
    );
    assert_eq!(log.release("c1", &[]).await.expect("release"), 0);
    // More ids than one statement binds.
    let many: Vec<TxId> = (0..1_200)
        .map(|_| TxId::new())
        .chain([unlisted.id])
        .collect();
    assert_eq!(log.release("c1", &many).await.expect("release"), 1);
    assert_eq!(get(log, unlisted.id).await.owner, None);
}

async fn cancel_requests_reach_the_owner(log: &dyn Store) {
    log.heartbeat_coordinator("c2", "a", "v", 0)
        .await
        .expect("heartbeat");
    let a = create(log, new_tx("c1", TxState::Running)).await;
    let b = create(log, new_tx("c2", TxState::Running)).await;
    let done = create(log, new_tx("c1", TxState::Committed)).await;
    assert!(log.request_cancel(a.id, "first").await.expect("request"));
    assert!(log
        .request_cancel(a.id, "again")
        .await
        .expect("repeat is kept once"));
    assert!(log.request_cancel(b.id, "other").await.expect("request"));
    assert!(!log.request_cancel(done.id, "late").await.expect("resting"));
    assert!(!log
        .request_cancel(TxId::new(), "ghost")
        .await
        .expect("unknown"));
    assert_eq!(
        log.cancel_requests("c1", 10).await.expect("requests"),
        vec![(a.id, "first".to_string())]
    );
    // The request follows the transaction to its new owner.
    log.release_owned("c1").await.expect("release");
    assert!(log
        .cancel_requests("c1", 10)
        .await
        .expect("requests")
        .is_empty());
    let claimed = log.claim("c3", 60_000, 10).await.expect("claim");
    assert!(ids(&claimed).contains(&a.id));
    assert_eq!(
        log.cancel_requests("c3", 10).await.expect("requests"),
        vec![(a.id, "first".to_string())]
    );
    log.clear_cancel_request(a.id).await.expect("clear");
    assert!(log
        .cancel_requests("c3", 10)
        .await
        .expect("requests")
        .is_empty());
    assert_eq!(
        log.cancel_requests("c2", 10).await.expect("requests").len(),
        1
    );
    // Nothing about the transaction itself changed.
    assert_eq!(get(log, b.id).await, b);
}

/// How old "old" is in the purge checks: rows made before a sleep of [`PURGE_SLEEP`] are older
/// than it, rows made after are younger unless the machine stalls for this long.
const PURGE_AGE: Duration = Duration::from_secs(2);
const PURGE_SLEEP: Duration = Duration::from_millis(2_300);

async fn purge_deletes_only_old_finished_transactions(log: &dyn Store) {
    // One old transaction in every state; only the final ones may go.
    let mut old = Vec::new();
    for state in TxState::ALL {
        old.push(create(log, new_tx("c1", state)).await);
    }
    // One that ended through an update, with branch output, more events and a cancel request
    // left behind by a coordinator that finished before acting on it.
    let ended = create(log, new_tx("c1", TxState::Running)).await;
    assert!(log.request_cancel(ended.id, "late").await.expect("request"));
    let mut up = update_of(&ended);
    up.state = TxState::Committed;
    up.branches = vec![BranchRecord {
        index: 0,
        name: "reserve".into(),
        status: StepStatus::Succeeded,
        attempts: 1,
        output: Some(vec![7]),
        last_error: None,
        done_order: Some(1),
    }];
    up.events = vec![event(3, EventKind::Committed, None)];
    assert_eq!(apply_one(log, up).await, WriteOutcome::Updated);
    tokio::time::sleep(PURGE_SLEEP).await;
    let recent: Vec<TxRecord> = finished_now(log).await;

    let purged = log.purge_finished(PURGE_AGE, 100).await.expect("purge");
    assert_eq!(
        purged, 4,
        "committed, compensated, aborted and the one that ended"
    );
    for rec in old.iter().chain([&ended]) {
        let after = log.get(rec.id).await.expect("get");
        if rec.id == ended.id || rec.state.is_final() {
            assert_eq!(after, None, "{} should be purged", rec.state);
            assert!(
                log.events(rec.id, 0, 100).await.expect("events").is_empty(),
                "the events of a purged transaction remain"
            );
        } else {
            // Unfinished and failed transactions stay, however old, untouched.
            assert_eq!(after.as_ref(), Some(rec), "{} was changed", rec.state);
            assert_eq!(log.events(rec.id, 0, 100).await.expect("events").len(), 2);
        }
    }
    for rec in &recent {
        assert_eq!(log.get(rec.id).await.expect("get").as_ref(), Some(rec));
    }
    assert_eq!(log.purge_finished(PURGE_AGE, 100).await.expect("purge"), 0);
    // With no age limit left to wait for, the recent finished ones go too, and nothing else.
    assert_eq!(
        log.purge_finished(Duration::ZERO, 100)
            .await
            .expect("purge"),
        recent.len() as u64
    );
    let left = log
        .list(&ListFilter {
            limit: 100,
            ..Default::default()
        })
        .await
        .expect("list");
    assert_eq!(left.len(), TxState::ALL.len() - 3);
    assert!(left.iter().all(|r| !r.state.is_final()));
}

/// Finished transactions made just now.
async fn finished_now(log: &dyn Store) -> Vec<TxRecord> {
    let mut recent = Vec::new();
    for state in [TxState::Committed, TxState::Aborted] {
        recent.push(create(log, new_tx("c1", state)).await);
    }
    recent
}

async fn purge_takes_the_oldest_in_batches(log: &dyn Store) {
    let mut all = Vec::new();
    for _ in 0..5 {
        all.push(create(log, new_tx("c1", TxState::Compensated)).await.id);
        // Distinct update times at the millisecond precision both stores keep.
        tokio::time::sleep(Duration::from_millis(3)).await;
    }
    tokio::time::sleep(PURGE_SLEEP).await;
    assert_eq!(log.purge_finished(PURGE_AGE, 0).await.expect("purge"), 0);
    let mut gone = 0;
    for expected in [2, 2, 1, 0] {
        assert_eq!(
            log.purge_finished(PURGE_AGE, 2).await.expect("purge"),
            expected
        );
        gone += expected as usize;
        for (i, id) in all.iter().enumerate() {
            let present = log.get(*id).await.expect("get").is_some();
            assert_eq!(
                present,
                i >= gone,
                "oldest first: transaction {i} after {gone} purged"
            );
        }
    }
}

async fn claim_one_checks_epoch(log: &dyn Store) {
    let rec = create(log, new_tx("c1", TxState::Failed)).await;
    assert!(log
        .claim_one(rec.id, "operator", rec.epoch + 5)
        .await
        .expect("claim_one")
        .is_none());
    assert_eq!(get(log, rec.id).await, rec);
    let claimed = log
        .claim_one(rec.id, "c2", rec.epoch)
        .await
        .expect("claim_one")
        .expect("claimed");
    assert_eq!(claimed.owner.as_deref(), Some("c2"));
    assert_eq!(claimed.epoch, rec.epoch + 1);
    assert_eq!(claimed.branches, rec.branches);
    assert_eq!(get(log, rec.id).await.owner.as_deref(), Some("c2"));
    assert!(log
        .claim_one(rec.id, "c3", rec.epoch)
        .await
        .expect("claim_one")
        .is_none());
    assert!(log
        .claim_one(TxId::new(), "c3", 1)
        .await
        .expect("claim_one")
        .is_none());
}

async fn list_filters_and_pages(log: &dyn Store) {
    let mut recs = Vec::new();
    let states = [
        TxState::Running,
        TxState::Committed,
        TxState::Running,
        TxState::Compensated,
        TxState::Committed,
        TxState::Running,
        TxState::Failed,
    ];
    for (i, state) in states.into_iter().enumerate() {
        let mut tx = new_tx("c1", state);
        let env = if i % 2 == 0 { "prod" } else { "dev" };
        tx.labels = BTreeMap::from([
            ("env".to_string(), env.to_string()),
            ("team".to_string(), format!("t{}", i % 3)),
        ]);
        recs.push(create(log, tx).await);
        // Distinct creation times (millisecond precision) for the range filter.
        tokio::time::sleep(Duration::from_millis(3)).await;
    }
    let newest_first: Vec<TxId> = recs.iter().rev().map(|r| r.id).collect();
    let list = |filter: ListFilter| async move { log.list(&filter).await.expect("list") };

    let all = list(ListFilter {
        limit: 100,
        ..Default::default()
    })
    .await;
    assert_eq!(ids(&all), newest_first);
    assert!(all.iter().all(|r| r.branches.is_empty()));
    assert_eq!(all.last().map(|r| &r.definition), Some(&recs[0].definition));

    let running = list(ListFilter {
        states: vec![TxState::Running],
        limit: 100,
        ..Default::default()
    })
    .await;
    assert_eq!(ids(&running), vec![recs[5].id, recs[2].id, recs[0].id]);
    let two_states = list(ListFilter {
        states: vec![TxState::Committed, TxState::Failed],
        limit: 100,
        ..Default::default()
    })
    .await;
    assert_eq!(ids(&two_states), vec![recs[6].id, recs[4].id, recs[1].id]);

    let prod = list(ListFilter {
        labels: BTreeMap::from([("env".to_string(), "prod".to_string())]),
        limit: 100,
        ..Default::default()
    })
    .await;
    assert_eq!(
        ids(&prod),
        vec![recs[6].id, recs[4].id, recs[2].id, recs[0].id]
    );
    let prod_t0 = list(ListFilter {
        labels: BTreeMap::from([
            ("env".to_string(), "prod".to_string()),
            ("team".to_string(), "t0".to_string()),
        ]),
        limit: 100,
        ..Default::default()
    })
    .await;
    assert_eq!(ids(&prod_t0), vec![recs[6].id, recs[0].id]);
    let none = list(ListFilter {
        labels: BTreeMap::from([("env".to_string(), "staging".to_string())]),
        limit: 100,
        ..Default::default()
    })
    .await;
    assert!(none.is_empty());

    // created_after is inclusive, created_before exclusive.
    let window = list(ListFilter {
        created_after: Some(recs[2].created_at),
        created_before: Some(recs[5].created_at),
        limit: 100,
        ..Default::default()
    })
    .await;
    assert_eq!(ids(&window), vec![recs[4].id, recs[3].id, recs[2].id]);
    let combined = list(ListFilter {
        states: vec![TxState::Running],
        labels: BTreeMap::from([("env".to_string(), "prod".to_string())]),
        created_after: Some(recs[1].created_at),
        limit: 100,
        ..Default::default()
    })
    .await;
    assert_eq!(ids(&combined), vec![recs[2].id]);

    // Keyset paging visits every transaction once, in order.
    let mut paged = Vec::new();
    let mut before_id = None;
    loop {
        let page = list(ListFilter {
            before_id,
            limit: 2,
            ..Default::default()
        })
        .await;
        assert!(page.len() <= 2);
        let Some(last) = page.last() else { break };
        before_id = Some(last.id);
        paged.extend(ids(&page));
    }
    assert_eq!(paged, newest_first);
    // A zero limit still returns a row rather than nothing.
    assert_eq!(list(ListFilter::default()).await.len(), 1);
}

async fn events_page_by_seq(log: &dyn Store) {
    let rec = create(log, new_tx("c1", TxState::Running)).await;
    let mut up = update_of(&rec);
    up.events = (3..=6)
        .map(|seq| event(seq, EventKind::ExecuteSent, Some(seq as u32 % 2)))
        .collect();
    assert_eq!(apply_one(log, up).await, WriteOutcome::Updated);
    let seqs = |events: Vec<baton_server::model::EventRecord>| {
        events.iter().map(|e| e.seq).collect::<Vec<_>>()
    };
    assert_eq!(
        seqs(log.events(rec.id, 2, 2).await.expect("events")),
        [3, 4]
    );
    assert_eq!(
        seqs(log.events(rec.id, 4, 100).await.expect("events")),
        [5, 6]
    );
    assert!(log.events(rec.id, 6, 100).await.expect("events").is_empty());
    assert!(log
        .events(rec.id, u64::MAX, 100)
        .await
        .expect("events past the largest seq")
        .is_empty());
    assert!(log
        .events(TxId::new(), 0, 100)
        .await
        .expect("events")
        .is_empty());
    let one = log.events(rec.id, 4, 1).await.expect("events");
    assert_eq!(one.len(), 1);
    assert_eq!(
        (one[0].seq, one[0].branch, one[0].detail.as_str()),
        (5, Some(1), "detail of 5")
    );
    // Pages that cross from one write's events to the next's.
    let rec = get(log, rec.id).await;
    let mut up = update_of(&rec);
    up.events = (7..=8)
        .map(|seq| event(seq, EventKind::ExecuteOk, None))
        .collect();
    assert_eq!(apply_one(log, up).await, WriteOutcome::Updated);
    assert_eq!(
        seqs(log.events(rec.id, 5, 2).await.expect("events")),
        [6, 7]
    );
    assert_eq!(
        seqs(log.events(rec.id, 0, 100).await.expect("events")),
        (1..=8).collect::<Vec<_>>()
    );
    let last = log.events(rec.id, 7, 100).await.expect("events");
    assert_eq!(
        (last[0].seq, last[0].kind, last[0].branch),
        (8, EventKind::ExecuteOk, None)
    );
}

async fn participants_register_expire_deregister(log: &dyn Store) {
    let before = Utc::now() - chrono::Duration::seconds(5);
    let forever = log
        .register_participant("payments", "http://127.0.0.2:9000", 1, "", 0)
        .await
        .expect("register");
    assert_eq!(forever.expires_at, None);
    let leased = log
        .register_participant("payments", "http://127.0.0.1:9000", 3, "eu-1", 60_000)
        .await
        .expect("register");
    assert_eq!((leased.weight, leased.zone.as_str()), (3, "eu-1"));
    let expires = leased.expires_at.expect("expiry");
    assert!(expires > before + chrono::Duration::seconds(55));
    let short = log
        // Long enough to still be listed below on a loaded machine.
        .register_participant("inventory", "http://127.0.0.3:9000", 1, "", 400)
        .await
        .expect("register");
    assert!(short.expires_at.is_some());

    let all = log.list_participants(None).await.expect("list");
    let keys: Vec<_> = all
        .iter()
        .map(|p| (p.service.as_str(), p.endpoint.as_str()))
        .collect();
    assert_eq!(
        keys,
        [
            ("inventory", "http://127.0.0.3:9000"),
            ("payments", "http://127.0.0.1:9000"),
            ("payments", "http://127.0.0.2:9000"),
        ]
    );
    assert_eq!(all[1], leased);
    assert_eq!(
        log.list_participants(Some("payments"))
            .await
            .expect("list")
            .len(),
        2
    );

    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(log
        .list_participants(Some("inventory"))
        .await
        .expect("list")
        .is_empty());
    assert!(
        log.heartbeat_participant("inventory", "http://127.0.0.3:9000", 60_000)
            .await
            .expect("heartbeat")
            .is_none(),
        "an expired registration cannot be revived by a heartbeat"
    );
    let renewed = log
        .heartbeat_participant("payments", "http://127.0.0.1:9000", 120_000)
        .await
        .expect("heartbeat")
        .expect("registered");
    assert!(renewed.expires_at.expect("expiry") > expires);
    assert!(log
        .heartbeat_participant("payments", "http://nowhere", 1_000)
        .await
        .expect("heartbeat")
        .is_none());

    // Registering again replaces the row, including its expiry.
    let replaced = log
        .register_participant("payments", "http://127.0.0.1:9000", 7, "eu-2", 0)
        .await
        .expect("register");
    assert_eq!(
        (replaced.weight, replaced.zone.as_str(), replaced.expires_at),
        (7, "eu-2", None)
    );
    // And an expired one comes back on registration.
    log.register_participant("inventory", "http://127.0.0.3:9000", 1, "", 0)
        .await
        .expect("register");
    assert_eq!(log.list_participants(None).await.expect("list").len(), 3);

    assert!(log
        .deregister_participant("payments", "http://127.0.0.1:9000")
        .await
        .expect("deregister"));
    assert!(!log
        .deregister_participant("payments", "http://127.0.0.1:9000")
        .await
        .expect("deregister"));
    let left = log.list_participants(Some("payments")).await.expect("list");
    assert_eq!(left, vec![forever]);
}

async fn coordinators_heartbeat_and_publish_what_they_drive(log: &dyn Store) {
    log.heartbeat_coordinator("c1", "127.0.0.1:7600", "0.1.0", 2)
        .await
        .expect("heartbeat");
    log.heartbeat_coordinator("c2", "127.0.0.2:7600", "0.1.0", 0)
        .await
        .expect("heartbeat");
    // The list reports what each coordinator published, not a count of the log: these rows
    // change nothing in it.
    create(log, new_tx("c2", TxState::Running)).await;
    create(log, new_tx("c2", TxState::Committing)).await;

    let listed = log.list_coordinators(60_000).await.expect("list");
    let summary: Vec<_> = listed
        .iter()
        .map(|c| (c.id.as_str(), c.address.as_str(), c.owned))
        .collect();
    assert_eq!(
        summary,
        [("c1", "127.0.0.1:7600", 2), ("c2", "127.0.0.2:7600", 0)]
    );
    let first = listed[0].clone();
    assert_eq!(first.version, "0.1.0");

    tokio::time::sleep(Duration::from_millis(20)).await;
    log.heartbeat_coordinator("c1", "127.0.0.9:7600", "0.2.0", 7)
        .await
        .expect("heartbeat");
    let listed = log.list_coordinators(60_000).await.expect("list");
    assert_eq!(
        listed[0].started_at, first.started_at,
        "a heartbeat keeps started_at"
    );
    assert!(listed[0].heartbeat_at > first.heartbeat_at);
    assert_eq!(
        (
            listed[0].address.as_str(),
            listed[0].version.as_str(),
            listed[0].owned
        ),
        ("127.0.0.9:7600", "0.2.0", 7),
        "a heartbeat replaces the address, the version and the published count"
    );

    log.remove_coordinator("c2").await.expect("remove");
    let listed = log.list_coordinators(60_000).await.expect("list");
    assert_eq!(
        listed.iter().map(|c| c.id.as_str()).collect::<Vec<_>>(),
        ["c1"]
    );

    tokio::time::sleep(Duration::from_millis(100)).await;
    assert!(
        log.list_coordinators(50).await.expect("list").is_empty(),
        "stale ones are not listed"
    );
}

async fn departed_members_are_forgotten(log: &dyn Store) {
    let dead_for = Duration::from_secs(1);
    for id in ["gone-1", "gone-2"] {
        log.heartbeat_coordinator(id, "a", "v", 0)
            .await
            .expect("heartbeat");
    }
    for service in ["inventory", "shipping"] {
        log.register_participant(service, "http://127.0.0.3:9000", 1, "", 1)
            .await
            .expect("register");
    }
    let forever = log
        .register_participant("payments", "http://127.0.0.1:9000", 1, "", 0)
        .await
        .expect("register");
    let leased = log
        .register_participant("payments", "http://127.0.0.2:9000", 1, "", 600_000)
        .await
        .expect("register");
    // Until both coordinators are older than `dead_for` and both short registrations expired.
    let deadline = Instant::now() + Duration::from_secs(30);
    while !log.list_coordinators(1000).await.expect("list").is_empty()
        || log.list_participants(None).await.expect("list").len() > 2
    {
        assert!(Instant::now() < deadline, "rows did not age");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    log.heartbeat_coordinator("live", "a", "v", 0)
        .await
        .expect("heartbeat");

    // At most `batch` of each at a time, until none are left.
    assert_eq!(
        log.forget_departed(dead_for, 1).await.expect("forget"),
        (1, 1)
    );
    assert_eq!(
        log.forget_departed(dead_for, 10).await.expect("forget"),
        (1, 1)
    );
    assert_eq!(
        log.forget_departed(dead_for, 10).await.expect("forget"),
        (0, 0)
    );
    let live = log.list_coordinators(3_600_000).await.expect("list");
    assert_eq!(
        live.iter().map(|c| c.id.as_str()).collect::<Vec<_>>(),
        ["live"],
        "the live coordinator stays, the dead ones are gone even from a list with a long lease"
    );
    assert_eq!(
        log.list_participants(None).await.expect("list"),
        vec![forever, leased],
        "registrations without expiry or not yet expired stay"
    );

    // Both come back as they would have before.
    log.heartbeat_coordinator("gone-1", "a", "v", 0)
        .await
        .expect("heartbeat");
    log.register_participant("inventory", "http://127.0.0.3:9000", 1, "", 0)
        .await
        .expect("register");
    assert_eq!(log.list_coordinators(60_000).await.expect("list").len(), 2);
    assert_eq!(log.list_participants(None).await.expect("list").len(), 3);
}

async fn concurrent_claimers_never_share_work(log: &dyn Store) {
    let mut all = BTreeSet::new();
    for _ in 0..24 {
        all.insert(create(log, new_tx("dead", TxState::Running)).await.id);
    }
    for claimer in ["a", "b", "c"] {
        log.heartbeat_coordinator(claimer, "x", "v", 0)
            .await
            .expect("heartbeat");
    }
    let drain = |claimer: &'static str| async move {
        let mut mine = Vec::new();
        loop {
            let batch = log.claim(claimer, 60_000, 3).await.expect("claim");
            if batch.is_empty() {
                return mine;
            }
            assert!(batch.iter().all(|r| r.owner.as_deref() == Some(claimer)));
            mine.extend(ids(&batch));
        }
    };
    let (a, b, c) = tokio::join!(drain("a"), drain("b"), drain("c"));
    let mut claimed: Vec<TxId> = a.into_iter().chain(b).chain(c).collect();
    claimed.sort();
    let total = claimed.len();
    claimed.dedup();
    assert_eq!(total, claimed.len(), "a transaction was claimed twice");
    assert_eq!(claimed.into_iter().collect::<BTreeSet<_>>(), all);
}

// ---- backend-specific behaviour ----

/// A PostgreSQL log on `url` with every migration applied.
async fn migrated(url: &str) -> PgLog {
    let log = PgLog::connect(url, &StoreOptions::default())
        .await
        .expect("connect");
    log.migrate().await.expect("migrate");
    log
}

/// A connection to `url` after the PostgreSQL migrations numbered below `first_left_out` only.
async fn migrated_before(url: &str, first_left_out: &str) -> sqlx::PgConnection {
    use sqlx::Connection;
    let earlier = tempfile::tempdir().expect("temp dir");
    let mut files: Vec<_> = std::fs::read_dir("migrations/postgres")
        .expect("migrations")
        .map(|e| e.expect("migration").path())
        .collect();
    files.sort();
    for file in files
        .iter()
        .filter(|f| f.file_name().unwrap().to_str().unwrap() < first_left_out)
    {
        std::fs::copy(file, earlier.path().join(file.file_name().unwrap())).expect("copy");
    }
    let mut conn = sqlx::PgConnection::connect(url).await.expect("connect");
    sqlx::migrate::Migrator::new(earlier.path())
        .await
        .expect("earlier migrations")
        .run(&mut conn)
        .await
        .unwrap_or_else(|e| panic!("migrate to before {first_left_out}: {e}"));
    conn
}

/// Migration 0007 moves every definition out of its transaction's row: a transaction written
/// before it reads back whole after it, and takes updates.
#[tokio::test]
async fn pg_definitions_survive_their_move_to_a_table_of_their_own() {
    use sqlx::Connection;
    let db = support::db::fresh_database().await;
    let mut conn = migrated_before(&db.url, "0007").await;
    let id = TxId::new();
    let definition = saga(&["reserve", "charge"]);
    sqlx::query(
        "INSERT INTO baton_transactions (id, kind, state, definition, owner, epoch, last_seq)
         VALUES ($1, 'saga', 'running', $2::jsonb, 'c1', 1, 1)",
    )
    .bind(id.0)
    .bind(serde_json::to_string(&definition).expect("definition as JSON"))
    .execute(&mut conn)
    .await
    .expect("a transaction of before 0007");

    let log = migrated(&db.url).await;
    let rec = get(&log, id).await;
    assert_eq!(rec.definition, definition);
    assert_eq!(rec.branches.len(), 2);
    assert_eq!(
        apply_one(&log, update_of(&rec)).await,
        WriteOutcome::Updated
    );
    let listed = log.list(&ListFilter::default()).await.expect("list");
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0].definition, definition);
    let _ = conn.close().await;
}

/// Migration 0009 turns each event into a run of one; the history reads the same and grows on.
#[tokio::test]
async fn pg_events_survive_their_move_to_runs() {
    use sqlx::Connection;
    let db = support::db::fresh_database().await;
    let mut conn = migrated_before(&db.url, "0009").await;
    let id = TxId::new();
    sqlx::query(
        "WITH tx AS (
            INSERT INTO baton_transactions (id, kind, state, owner, epoch, last_seq)
            VALUES ($1, 'saga', 'running', 'c1', 1, 3)),
         def AS (INSERT INTO baton_definitions (tx_id, definition) VALUES ($1, $2))
         INSERT INTO baton_events (tx_id, seq, at, kind, branch, detail, owner, epoch)
         VALUES ($1, 1, now(), 'accepted', NULL, 'saga with 1 step', 'c1', 1),
                ($1, 2, now(), 'execute_sent', 0, '', 'c1', 1),
                ($1, 3, now(), 'execute_ok', 0, 'fine', 'c1', 1)",
    )
    .bind(id.0)
    .bind(serde_json::to_string(&saga(&["reserve"])).expect("definition as JSON"))
    .execute(&mut conn)
    .await
    .expect("a transaction of before 0009");

    let log = migrated(&db.url).await;
    let events = log.events(id, 0, 100).await.expect("events");
    let read: Vec<_> = events
        .iter()
        .map(|e| (e.seq, e.kind, e.branch, e.detail.as_str()))
        .collect();
    assert_eq!(
        read,
        [
            (1, EventKind::Accepted, None, "saga with 1 step"),
            (2, EventKind::ExecuteSent, Some(0), ""),
            (3, EventKind::ExecuteOk, Some(0), "fine"),
        ]
    );
    let rec = get(&log, id).await;
    let mut up = update_of(&rec);
    up.events = vec![event(4, EventKind::Committed, None)];
    assert_eq!(apply_one(&log, up).await, WriteOutcome::Updated);
    let seqs: Vec<u64> = log
        .events(id, 2, 100)
        .await
        .expect("events")
        .iter()
        .map(|e| e.seq)
        .collect();
    assert_eq!(seqs, [3, 4]);
    let runs: i64 = sqlx::query_scalar("SELECT count(*) FROM baton_event_runs WHERE tx_id = $1")
        .bind(id.0)
        .fetch_one(&mut conn)
        .await
        .expect("count runs");
    assert_eq!(runs, 4, "three migrated events, one new run");
    let _ = conn.close().await;
}

/// Migration 0010 moves branch rows into their transaction's row; a long output stays apart.
/// Branches read the same after it, including a pending one, and take updates.
#[tokio::test]
async fn pg_branches_survive_their_move_into_the_row() {
    use sqlx::Connection;
    let db = support::db::fresh_database().await;
    let mut conn = migrated_before(&db.url, "0010").await;
    let id = TxId::new();
    let long = vec![b'x'; 300];
    sqlx::query(
        "WITH tx AS (
            INSERT INTO baton_transactions (id, kind, state, owner, epoch, last_seq)
            VALUES ($1, 'saga', 'running', 'c1', 1, 1)),
         def AS (INSERT INTO baton_definitions (tx_id, definition) VALUES ($1, $2)),
         run AS (
            INSERT INTO baton_event_runs (tx_id, first_seq, at, kind, branch, detail, owner, epoch)
            VALUES ($1, 1, ARRAY[now()], ARRAY['accepted'], ARRAY[NULL::bigint],
                    ARRAY['saga with 4 steps'], 'c1', 1))
         INSERT INTO baton_branches
            (tx_id, idx, name, state, attempts, output, last_error, done_order)
         VALUES ($1, 0, 'reserve', 'succeeded', 1, '\\x00ff0a'::bytea, NULL, 1),
                ($1, 1, 'charge', 'succeeded', 2, $3, 'a first \"try\" failed', 2),
                ($1, 2, 'ship', 'running', 1, NULL, NULL, NULL)",
    )
    .bind(id.0)
    .bind(
        serde_json::to_string(&saga(&["reserve", "charge", "ship", "notify"])).expect("definition"),
    )
    .bind(&long)
    .execute(&mut conn)
    .await
    .expect("a transaction of before 0010");

    let log = migrated(&db.url).await;
    let rec = get(&log, id).await;
    let read: Vec<_> = rec
        .branches
        .iter()
        .map(|b| {
            (
                b.index,
                b.name.as_str(),
                b.status,
                b.attempts,
                b.output.clone(),
                b.last_error.as_deref(),
                b.done_order,
            )
        })
        .collect();
    assert_eq!(
        read,
        [
            (
                0,
                "reserve",
                StepStatus::Succeeded,
                1,
                Some(vec![0, 255, 10]),
                None,
                Some(1)
            ),
            (
                1,
                "charge",
                StepStatus::Succeeded,
                2,
                Some(long.clone()),
                Some("a first \"try\" failed"),
                Some(2)
            ),
            (2, "ship", StepStatus::Running, 1, None, None, None),
            (3, "notify", StepStatus::Pending, 0, None, None, None),
        ]
    );
    let apart: i64 = sqlx::query_scalar("SELECT count(*) FROM baton_branch_data WHERE tx_id = $1")
        .bind(id.0)
        .fetch_one(&mut conn)
        .await
        .expect("count data kept apart");
    assert_eq!(apart, 1, "only the long output is kept apart");

    let mut up = update_of(&rec);
    up.branches = vec![BranchRecord {
        index: 2,
        name: "ship".into(),
        status: StepStatus::Succeeded,
        attempts: 1,
        output: Some(b"shipped".to_vec()),
        done_order: Some(3),
        ..BranchRecord::default()
    }];
    up.events = vec![event(2, EventKind::ExecuteOk, Some(2))];
    assert_eq!(apply_one(&log, up).await, WriteOutcome::Updated);
    let after = get(&log, id).await;
    assert_eq!(
        after.branches[..2],
        rec.branches[..2],
        "the other branches stay"
    );
    assert_eq!(after.branches[2].status, StepStatus::Succeeded);
    assert_eq!(after.branches[2].output.as_deref(), Some(&b"shipped"[..]));
    assert_eq!(after.branches[3].status, StepStatus::Pending);
    let _ = conn.close().await;
}

/// After the test set an event's kind to `teleported`, which no coordinator writes: reading the
/// history fails with a corrupt row that names it.
async fn teleported_event_is_corrupt(log: &dyn Store, id: TxId, events_table: &str) {
    match log.events(id, 0, 100).await {
        Err(StoreError::Corrupt { table, detail }) => {
            assert_eq!(table, events_table);
            assert!(detail.contains("teleported"), "{detail}");
        }
        other => panic!("expected Corrupt, got {other:?}"),
    }
}

#[tokio::test]
async fn pg_unknown_state_text_is_corrupt() {
    use sqlx::Connection;
    let db = support::db::fresh_database().await;
    let log = migrated(&db.url).await;
    let rec = create(&log, new_tx("c1", TxState::Running)).await;
    let mut conn = sqlx::PgConnection::connect(&db.url).await.expect("connect");
    sqlx::query("UPDATE baton_transactions SET state = 'exploded' WHERE id = $1")
        .bind(rec.id.0)
        .execute(&mut conn)
        .await
        .expect("corrupt the row");
    match log.get(rec.id).await {
        Err(StoreError::Corrupt { table, detail }) => {
            assert_eq!(table, "baton_transactions");
            assert!(detail.contains("exploded"), "{detail}");
        }
        other => panic!("expected Corrupt, got {other:?}"),
    }
    sqlx::query("UPDATE baton_transactions SET state = 'running' WHERE id = $1")
        .bind(rec.id.0)
        .execute(&mut conn)
        .await
        .expect("repair the row");
    // A branch's state is written into the row when the branch first changes; write one with a
    // bad state, then one kept apart whose data is missing.
    for (branches, says) in [
        (r#"{"0": {"name": "a", "state": "melted"}}"#, "melted"),
        (
            r#"{"0": {"name": "a", "state": "running", "apart": true}}"#,
            "missing",
        ),
        (r#"{"zero": {"name": "a", "state": "running"}}"#, "zero"),
    ] {
        sqlx::query("UPDATE baton_transactions SET branches = $2::jsonb WHERE id = $1")
            .bind(rec.id.0)
            .bind(branches)
            .execute(&mut conn)
            .await
            .expect("corrupt the branch");
        match log.get(rec.id).await {
            Err(StoreError::Corrupt { table, detail }) => {
                assert_eq!(table, "baton_transactions.branches");
                assert!(detail.contains(says), "{detail}");
            }
            other => panic!("expected Corrupt, got {other:?}"),
        }
    }
    sqlx::query("UPDATE baton_transactions SET branches = NULL WHERE id = $1")
        .bind(rec.id.0)
        .execute(&mut conn)
        .await
        .expect("repair the branch");
    // The definition is the coordinator's JSON text, which PostgreSQL no longer checks.
    sqlx::query("UPDATE baton_definitions SET definition = '{\"saga\": ' WHERE tx_id = $1")
        .bind(rec.id.0)
        .execute(&mut conn)
        .await
        .expect("corrupt the definition");
    match log.get(rec.id).await {
        Err(StoreError::Corrupt { detail, .. }) => {
            assert!(detail.contains("definition"), "{detail}")
        }
        other => panic!("expected Corrupt, got {other:?}"),
    }
    // An event kind this coordinator does not know is a corrupt row, not a panic.
    let corrupted = sqlx::query(
        "UPDATE baton_event_runs SET kind[2 - first_seq + 1] = 'teleported'
         WHERE tx_id = $1 AND first_seq <= 2 AND first_seq + cardinality(kind) > 2",
    )
    .bind(rec.id.0)
    .execute(&mut conn)
    .await
    .expect("corrupt an event");
    assert_eq!(corrupted.rows_affected(), 1);
    teleported_event_is_corrupt(&log, rec.id, "baton_event_runs").await;
}

/// The log writer commits several batches at once, yet each transaction's writes land in the
/// order they were queued: five writes of each of 40 transactions, all queued before any is
/// answered, in batches small enough that a transaction's next write is queued while its last
/// one still commits. A write applied out of order would be fenced (its expected history
/// would not match) and the transaction would end short of its five events.
#[tokio::test]
async fn pg_writer_keeps_each_transactions_writes_in_order() {
    use std::sync::Arc;

    use baton_server::coordinator::metrics::Metrics;
    use baton_server::coordinator::writer::WriterOptions;
    use baton_server::coordinator::LogWriter;
    use tokio_util::sync::CancellationToken;
    use tokio_util::task::TaskTracker;

    let db = support::db::fresh_database().await;
    let options = StoreOptions {
        max_connections: 2,
        write_connections: 3,
        ..Default::default()
    };
    let log = PgLog::connect(&db.url, &options).await.expect("connect");
    log.migrate().await.expect("migrate");
    let log: Arc<dyn Store> = Arc::new(log);
    let mut recs = Vec::new();
    for _ in 0..40 {
        recs.push(create(&*log, new_tx("c1", TxState::Running)).await);
    }
    let tracker = TaskTracker::new();
    let stop = CancellationToken::new();
    let writer = LogWriter::start(
        log.clone(),
        Arc::new(Metrics::default()),
        WriterOptions {
            connections: 3,
            max_batch: 8,
            // Every write may start a batch: the most overlap, the hardest case for the order.
            pipeline_min: 1,
            queue_len: 1024,
        },
        None,
        &tracker,
        stop.clone(),
    );
    let mut acks = Vec::new();
    for round in 0..5 {
        for rec in &recs {
            let mut up = update_of(rec);
            up.expected_last_seq = rec.last_seq + round;
            up.events = vec![event(
                rec.last_seq + round + 1,
                EventKind::ExecuteSent,
                None,
            )];
            acks.push(
                writer
                    .submit(LogWrite::Update(Box::new(up)))
                    .await
                    .expect("submit"),
            );
        }
    }
    for ack in acks {
        let outcome = ack.await.expect("answered").expect("written");
        assert_eq!(outcome, WriteOutcome::Updated);
    }
    for rec in &recs {
        assert_eq!(get(&*log, rec.id).await.last_seq, rec.last_seq + 5);
    }
    stop.cancel();
    tracker.close();
    tracker.wait().await;
}

/// A statement first planned while the table was nearly empty must not go on scanning the table
/// once it has grown. PostgreSQL's default switches a prepared statement to a generic plan after
/// five runs, and the log writers keep that default. On a new database the generic plan of the
/// fenced update was a hash join over a sequential scan of `baton_transactions`, so every write
/// read the whole table. The statement is now written so that its generic plan finds rows by key.
#[tokio::test]
async fn pg_fenced_update_stays_a_key_lookup_as_the_table_grows() {
    use sqlx::Connection;
    let db = support::db::fresh_database().await;
    // One writer connection: every write below runs on the one whose plans are cached.
    let options = StoreOptions {
        write_connections: 1,
        ..Default::default()
    };
    let log = PgLog::connect(&db.url, &options).await.expect("connect");
    log.migrate().await.expect("migrate");
    let mut rec = create(&log, new_tx("c1", TxState::Running)).await;
    // Each update also writes a branch. Every other one has an output too long for the row, so
    // that its data is kept apart: the first time a new row of baton_branch_data (inserted),
    // then the same one again (updated), so that the cached plan covers both ways that row is
    // written. That update takes the set statement, the others the statement for a batch of
    // one; each runs often enough to be planned generically.
    let mut attempts = 0;
    let mut with_branch = |rec: &TxRecord| {
        attempts += 1;
        let long = if attempts % 2 == 0 { 300 } else { 3 };
        let mut up = update_of(rec);
        up.branches = vec![BranchRecord {
            index: 0,
            name: "a".into(),
            status: StepStatus::Running,
            attempts,
            output: Some(vec![attempts as u8; long]),
            ..BranchRecord::default()
        }];
        up.events = vec![event(rec.last_seq + 1, EventKind::ExecuteSent, Some(0))];
        up
    };
    for _ in 0..20 {
        assert_eq!(
            apply_one(&log, with_branch(&rec)).await,
            WriteOutcome::Updated
        );
        rec = get(&log, rec.id).await;
    }

    let mut conn = sqlx::PgConnection::connect(&db.url).await.expect("connect");
    sqlx::query(
        "WITH grown AS (
            INSERT INTO baton_transactions (id, kind, state)
            SELECT gen_random_uuid(), 'saga', 'committed' FROM generate_series(1, 20000)
            RETURNING id), defined AS (
         INSERT INTO baton_definitions (tx_id, definition) SELECT id, '{}' FROM grown)
         INSERT INTO baton_branch_data (tx_id, idx, output)
         SELECT id, 0, '\\x00' FROM grown",
    )
    .execute(&mut conn)
    .await
    .expect("grow the tables");
    // A backend publishes its table statistics when it goes idle, at most once a second; a
    // statement more than a second after its last flush publishes everything before it.
    flushed(&log, &rec).await;
    let before = [
        scans(&mut conn, "baton_transactions").await,
        scans(&mut conn, "baton_branch_data").await,
    ];

    const UPDATES: i64 = 20;
    for _ in 0..UPDATES {
        assert_eq!(
            apply_one(&log, with_branch(&rec)).await,
            WriteOutcome::Updated
        );
        rec.last_seq += 1;
    }
    flushed(&log, &rec).await;
    let after = [
        scans(&mut conn, "baton_transactions").await,
        scans(&mut conn, "baton_branch_data").await,
    ];
    for ((table, writes), (before, after)) in
        [("transactions", UPDATES), ("branch data", UPDATES / 2)]
            .iter()
            .zip(before.iter().zip(&after))
    {
        assert_eq!(
            after.0, before.0,
            "the fenced update scanned all {table} ({before:?} -> {after:?} sequential, index scans)"
        );
        assert!(
            after.1 >= before.1 + writes,
            "{table}: {before:?} -> {after:?}"
        );
    }
    let branch = get(&log, rec.id).await.branches.remove(0);
    assert_eq!((branch.status, branch.attempts), (StepStatus::Running, 40));
    assert_eq!(branch.output, Some(vec![40; 300]));
}

/// The claim every coordinator runs every few seconds must not read the entries that finished
/// transactions leave in the unfinished index. A live coordinator's range of that index keeps an
/// entry for every transaction it finished since the last vacuum, and while any snapshot older
/// than them is open (a long report, a backup) each one is read again, with its row, by every
/// claim that walks it: on a 10-minute benchmark with one snapshot held, 33,000 buffers and 41 ms
/// per claim after 100 s, growing. The tick's claim reads only the unowned and lapsed owners'
/// ranges; the full claim (start-up, and one tick in thirty) the ranges between live owners.
#[tokio::test]
async fn pg_claims_skip_the_entries_of_finished_transactions() {
    use sqlx::Connection;
    let db = support::db::fresh_database().await;
    let log = migrated(&db.url).await;
    for (id, address) in [("live", "127.0.0.1:7600"), ("gone", "127.0.0.1:7601")] {
        log.heartbeat_coordinator(id, address, "0.1.0", 0)
            .await
            .expect("heartbeat");
    }
    let mut conn = sqlx::PgConnection::connect(&db.url).await.expect("connect");
    sqlx::query(
        "WITH made AS (
            INSERT INTO baton_transactions (id, kind, state, owner)
            SELECT gen_random_uuid(), 'saga', 'running', 'live' FROM generate_series(1, 20000)
            RETURNING id)
         INSERT INTO baton_definitions (tx_id, definition) SELECT id, '{}' FROM made",
    )
    .execute(&mut conn)
    .await
    .expect("start many transactions");
    // A snapshot taken before they finish keeps their old row versions (and index entries) alive.
    let mut held = sqlx::PgConnection::connect(&db.url).await.expect("connect");
    sqlx::query("BEGIN ISOLATION LEVEL REPEATABLE READ")
        .execute(&mut held)
        .await
        .expect("begin");
    sqlx::query("SELECT count(*) FROM baton_coordinators")
        .execute(&mut held)
        .await
        .expect("take the snapshot");
    sqlx::query("UPDATE baton_transactions SET state = 'committed' WHERE owner = 'live'")
        .execute(&mut conn)
        .await
        .expect("finish them");
    let mut unowned = update_of(&create(&log, new_tx("live", TxState::Running)).await);
    unowned.release = true;
    assert_eq!(apply_one(&log, unowned).await, WriteOutcome::Updated);
    create(&log, new_tx("gone", TxState::Running)).await;

    // The lapsed coordinator's heartbeat must be older than the lease (60 s here).
    sqlx::query(
        "UPDATE baton_coordinators SET heartbeat_at = now() - interval '1 hour' WHERE id = 'gone'",
    )
    .execute(&mut conn)
    .await
    .expect("lapse");
    let lease = 60_000_i64;
    let (rows, nobody) = claim_buffers(&mut conn, claim_sql(ClaimRange::Unowned), |q| {
        q.bind(100_i64)
    })
    .await;
    assert_eq!(rows, 1, "the unowned transaction is claimed");
    let (rows, lapsed) = claim_buffers(&mut conn, claim_sql(ClaimRange::Lapsed), |q| {
        q.bind(100_i64).bind("gone").bind(lease)
    })
    .await;
    assert_eq!(rows, 1, "the lapsed coordinator's transaction is claimed");
    // The full claim's ranges with "live" and the claimer "me" live: below "live" (where "gone"
    // is), between the two, above "me".
    let mut full = Vec::new();
    let mut taken = 0;
    for (after, before) in [
        (None, Some("live")),
        (Some("live"), Some("me")),
        (Some("me"), None),
    ] {
        let range = ClaimRange::Between {
            after: after.is_some(),
            before: before.is_some(),
        };
        let (rows, read) = claim_buffers(&mut conn, claim_sql(range), |q| {
            let q = q.bind(100_i64).bind(lease);
            let q = match after {
                Some(b) => q.bind(b),
                None => q,
            };
            match before {
                Some(b) => q.bind(b),
                None => q,
            }
        })
        .await;
        taken += rows;
        full.push(read);
    }
    assert_eq!(taken, 1, "the full claim's ranges take the lapsed one");
    // What a walk of the live coordinator's range costs: otherwise this test shows nothing.
    let walked = {
        use sqlx::Connection;
        let mut tx = conn.begin().await.expect("begin");
        sqlx::query("SET LOCAL enable_seqscan = off")
            .execute(&mut *tx)
            .await
            .expect("index scans");
        sqlx::query("SET LOCAL enable_bitmapscan = off")
            .execute(&mut *tx)
            .await
            .expect("index scans");
        let plan: serde_json::Value = sqlx::query_scalar(
            "EXPLAIN (ANALYZE, BUFFERS, FORMAT JSON) SELECT count(*) FROM baton_transactions
             WHERE owner = 'live' AND state NOT IN ('committed', 'compensated', 'aborted', 'failed')",
        )
        .fetch_one(&mut *tx)
        .await
        .expect("explain");
        tx.rollback().await.expect("rollback");
        plan[0]["Plan"]["Shared Hit Blocks"].as_i64().expect("hits")
            + plan[0]["Plan"]["Shared Read Blocks"]
                .as_i64()
                .expect("reads")
    };
    assert!(
        walked > 20_000,
        "a walk of the live range reads the finished transactions' entries ({walked} buffers)"
    );
    assert!(
        nobody < 1_000 && lapsed < 1_000 && full.iter().all(|&b| b < 1_000),
        "the claims read {nobody}, {lapsed} and {full:?} buffers (a walk of the live range {walked})"
    );
    // Handing back one of the live coordinator's transactions by id reads no range either.
    let one: Vec<uuid::Uuid> = sqlx::query_scalar(
        "SELECT id FROM baton_transactions WHERE owner = 'live' ORDER BY id DESC LIMIT 1",
    )
    .fetch_all(&mut conn)
    .await
    .expect("an id");
    let released = {
        use sqlx::Connection;
        let mut tx = conn.begin().await.expect("begin");
        let plan: serde_json::Value = sqlx::query_scalar(&format!(
            "EXPLAIN (ANALYZE, BUFFERS, FORMAT JSON) {}",
            release_sql()
        ))
        .bind("live")
        .bind(&one)
        .fetch_one(&mut *tx)
        .await
        .expect("explain");
        tx.rollback().await.expect("rollback");
        let top = &plan[0]["Plan"];
        top["Shared Hit Blocks"].as_i64().expect("hits")
            + top["Shared Read Blocks"].as_i64().expect("reads")
    };
    assert!(released < 100, "the release by id read {released} buffers");
    // And the store's full claim takes the unowned and the lapsed transaction.
    let claimed = log
        .claim("me", lease as u64, 100)
        .await
        .expect("full claim");
    assert_eq!(claimed.len(), 2, "{claimed:?}");
    drop(held);
}

type Explain<'q> =
    sqlx::query::QueryScalar<'q, sqlx::Postgres, serde_json::Value, sqlx::postgres::PgArguments>;

/// Rows a claim statement (claimer "me", then `bind`'s parameters) takes and the buffers it
/// reads, as EXPLAIN ANALYZE counts them; rolled back.
async fn claim_buffers(
    conn: &mut sqlx::PgConnection,
    sql: String,
    bind: impl FnOnce(Explain<'_>) -> Explain<'_>,
) -> (i64, i64) {
    use sqlx::Connection;
    let explain = format!("EXPLAIN (ANALYZE, BUFFERS, FORMAT JSON) {sql}");
    let mut tx = conn.begin().await.expect("begin");
    let plan = bind(sqlx::query_scalar(&explain).bind("me"))
        .fetch_one(&mut *tx)
        .await
        .expect("explain");
    tx.rollback().await.expect("rollback");
    let top = &plan[0]["Plan"];
    let rows = top["Actual Rows"].as_i64().expect("rows");
    let read = top["Shared Hit Blocks"].as_i64().expect("hits")
        + top["Shared Read Blocks"].as_i64().expect("reads");
    (rows, read)
}

/// Waits a second, then writes through `log`'s writer connection, whose backend thereby
/// publishes its statistics (the write, which changes nothing, is counted with them).
async fn flushed(log: &PgLog, rec: &TxRecord) {
    tokio::time::sleep(Duration::from_millis(1_100)).await;
    assert_eq!(apply_one(log, update_of(rec)).await, WriteOutcome::Updated);
}

/// Sequential and index scans of `table` so far, as the statistics view shows them.
async fn scans(conn: &mut sqlx::PgConnection, table: &str) -> (i64, i64) {
    sqlx::query_as(
        "SELECT seq_scan, coalesce(idx_scan, 0) FROM pg_stat_user_tables WHERE relname = $1",
    )
    .bind(table)
    .fetch_one(conn)
    .await
    .expect("table statistics")
}

#[tokio::test]
async fn sqlite_unknown_state_text_is_corrupt() {
    use sqlx::Connection;
    let dir = tempfile::tempdir().expect("temp dir");
    let url = support::db::sqlite_url(dir.path());
    let log = SqliteLog::open(&url).await.expect("open");
    log.migrate().await.expect("migrate");
    let rec = create(&log, new_tx("c1", TxState::Running)).await;
    // The advisory lock keeps out Baton processes, not a plain connection.
    let mut conn = sqlx::SqliteConnection::connect(&url)
        .await
        .expect("connect");
    sqlx::query("UPDATE baton_transactions SET state = 'exploded' WHERE id = ?")
        .bind(rec.id.to_string())
        .execute(&mut conn)
        .await
        .expect("corrupt the row");
    assert!(matches!(
        log.list(&ListFilter::default()).await,
        Err(StoreError::Corrupt {
            table: "baton_transactions",
            ..
        })
    ));
    sqlx::query("UPDATE baton_events SET kind = 'teleported' WHERE tx_id = ? AND seq = 2")
        .bind(rec.id.to_string())
        .execute(&mut conn)
        .await
        .expect("corrupt an event");
    teleported_event_is_corrupt(&log, rec.id, "baton_events").await;
}

#[tokio::test]
async fn sqlite_file_is_locked_against_a_second_process() {
    let dir = tempfile::tempdir().expect("temp dir");
    let url = support::db::sqlite_url(dir.path());
    let first = SqliteLog::open(&url).await.expect("open");
    first.migrate().await.expect("migrate");
    match SqliteLog::open(&url).await {
        Err(StoreError::Locked(message)) => {
            assert!(
                message.contains("in use by another baton process"),
                "{message}"
            );
            assert!(message.contains("postgres://"), "{message}");
        }
        Err(other) => panic!("expected Locked, got {other}"),
        Ok(_) => panic!("a second open of {url} succeeded"),
    }
    // The `sqlite:path` spelling names the same file and the same lock.
    let bare = format!("sqlite:{}", dir.path().join("baton.db").display());
    assert!(matches!(
        SqliteLog::open(&bare).await,
        Err(StoreError::Locked(_))
    ));
    drop(first);
    let reopened = SqliteLog::open(&bare)
        .await
        .expect("open after the first closed");
    reopened.migrate().await.expect("migrate is idempotent");
    reopened.ping().await.expect("ping");
}

#[tokio::test]
async fn sqlite_data_survives_reopening() {
    let dir = tempfile::tempdir().expect("temp dir");
    let url = support::db::sqlite_url(dir.path());
    let log = SqliteLog::open(&url).await.expect("open");
    log.migrate().await.expect("migrate");
    let rec = create(&log, new_tx("c1", TxState::Running)).await;
    drop(log);
    let log = SqliteLog::open(&url).await.expect("reopen");
    assert_eq!(get(&log, rec.id).await, rec);
}

#[tokio::test]
async fn open_dispatches_on_the_url_scheme() {
    let options = StoreOptions::default();
    let memory = baton_server::store::open("sqlite::memory:", &options)
        .await
        .expect("open memory");
    memory.migrate().await.expect("migrate");
    // A single connection, so every call sees the same in-memory database.
    let rec = create(&*memory, new_tx("c1", TxState::Running)).await;
    assert_eq!(
        memory
            .list(&ListFilter {
                limit: 10,
                ..Default::default()
            })
            .await
            .expect("list")
            .len(),
        1
    );
    assert_eq!(get(&*memory, rec.id).await.id, rec.id);

    let db = support::db::fresh_database().await;
    let pg = baton_server::store::open(&db.url, &options)
        .await
        .expect("open postgres");
    pg.migrate().await.expect("migrate");
    pg.ping().await.expect("ping");
    let pg_alias = db.url.replacen("postgres://", "postgresql://", 1);
    baton_server::store::open(&pg_alias, &options)
        .await
        .expect("open postgresql")
        .ping()
        .await
        .expect("ping");

    match baton_server::store::open("mysql://localhost/baton", &options).await {
        Err(StoreError::UnsupportedUrl(url)) => assert_eq!(url, "mysql://localhost/baton"),
        Err(other) => panic!("expected UnsupportedUrl, got {other}"),
        Ok(_) => panic!("mysql url accepted"),
    }
}

#[tokio::test]
async fn unreachable_postgres_is_transient() {
    let options = StoreOptions {
        max_connections: 1,
        write_connections: 1,
        acquire_timeout_ms: 500,
    };
    let err = PgLog::connect("postgres://postgres@127.0.0.1:1/postgres", &options)
        .await
        .err()
        .expect("nothing listens on port 1");
    assert!(err.is_transient(), "{err:?}");
}

//! Examples of the saga engine's behaviour; the property tests live in `sim`.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};

use super::*;
use crate::model::{
    BranchRecord, Definition, RetryPolicy, SagaDef, StepDef, StepKind, StepStatus, Target, TxId,
    TxKind, TxState,
};

mod sim;
mod two_phase;

fn epoch() -> DateTime<Utc> {
    DateTime::from_timestamp(0, 0).expect("epoch is a valid time")
}

fn step(name: &str, stage: u32, kind: StepKind, compensate: bool, max_attempts: u32) -> StepDef {
    StepDef {
        name: name.to_string(),
        target: Target::Service("svc".to_string()),
        action: format!("do_{name}"),
        compensate: compensate.then(|| format!("undo_{name}")),
        payload: Vec::new(),
        kind,
        stage,
        timeout_ms: 1000,
        retry: RetryPolicy {
            max_attempts,
            initial_backoff_ms: 10,
            max_backoff_ms: 40,
        },
    }
}

fn saga(steps: Vec<StepDef>) -> TxRecord {
    let branches = steps
        .iter()
        .enumerate()
        .map(|(i, s)| BranchRecord {
            index: i as u32,
            name: s.name.clone(),
            ..BranchRecord::default()
        })
        .collect();
    TxRecord {
        id: TxId::new(),
        kind: TxKind::Saga,
        state: TxState::Running,
        definition: Definition::Saga(SagaDef { steps }),
        labels: BTreeMap::new(),
        idempotency_key: None,
        owner: None,
        epoch: 1,
        stage: 0,
        last_error: None,
        cancel_requested: false,
        deadline_at: None,
        created_at: epoch(),
        updated_at: epoch(),
        last_seq: 0,
        branches,
    }
}

/// Three compensatable steps, one per stage.
fn three_steps() -> TxRecord {
    saga(vec![
        step("a", 0, StepKind::Compensatable, true, 3),
        step("b", 1, StepKind::Compensatable, true, 3),
        step("c", 2, StepKind::Compensatable, true, 3),
    ])
}

fn apply(tx: &mut TxRecord, event: Event) -> Decision {
    decide(tx, event, epoch(), 0.5).expect("event accepted")
}

fn reply(branch: u32, phase: Phase, attempt: u32, result: CallResult) -> Event {
    Event::Reply {
        branch,
        phase,
        attempt,
        result,
    }
}

fn ok(branch: u32, phase: Phase, attempt: u32) -> Event {
    reply(branch, phase, attempt, CallResult::Ok(vec![branch as u8]))
}

fn call(branch: u32, phase: Phase, attempt: u32) -> Action {
    Action::Call {
        branch,
        phase,
        attempt,
    }
}

fn kinds(d: &Decision) -> Vec<&'static str> {
    d.notes.iter().map(|n| n.kind.as_str()).collect()
}

fn statuses(tx: &TxRecord) -> Vec<StepStatus> {
    tx.branches.iter().map(|b| b.status).collect()
}

#[test]
fn happy_saga_runs_stage_by_stage_and_commits() {
    let mut tx = three_steps();
    let d = apply(&mut tx, Event::Resume);
    assert_eq!(d.actions, vec![call(0, Phase::Execute, 1)]);
    assert_eq!(kinds(&d), vec!["execute_sent"]);
    assert_eq!(d.changed, vec![0]);

    let d = apply(&mut tx, ok(0, Phase::Execute, 1));
    assert_eq!(d.actions, vec![call(1, Phase::Execute, 1)]);
    assert_eq!(kinds(&d), vec!["execute_ok", "execute_sent"]);
    assert!(d.tx_changed, "the stage moved on");
    assert_eq!(tx.stage, 1);

    apply(&mut tx, ok(1, Phase::Execute, 1));
    let d = apply(&mut tx, ok(2, Phase::Execute, 1));
    assert!(d.actions.is_empty());
    assert_eq!(kinds(&d), vec!["execute_ok", "committed"]);
    assert_eq!(tx.state, TxState::Committed);
    assert_eq!(tx.branches[2].output, Some(vec![2]));
    let orders: Vec<_> = tx.branches.iter().map(|b| b.done_order).collect();
    assert_eq!(orders, vec![Some(1), Some(2), Some(3)]);
}

#[test]
fn failing_third_step_compensates_second_then_first() {
    let mut tx = three_steps();
    apply(&mut tx, Event::Resume);
    apply(&mut tx, ok(0, Phase::Execute, 1));
    apply(&mut tx, ok(1, Phase::Execute, 1));
    let d = apply(
        &mut tx,
        reply(2, Phase::Execute, 1, CallResult::Failed("no stock".into())),
    );
    assert_eq!(d.actions, vec![call(1, Phase::Compensate, 1)]);
    assert_eq!(
        kinds(&d),
        vec!["execute_failed", "compensating", "compensate_sent"]
    );
    assert_eq!(tx.state, TxState::Compensating);
    assert_eq!(tx.last_error.as_deref(), Some("step c failed: no stock"));

    let d = apply(&mut tx, ok(1, Phase::Compensate, 1));
    assert_eq!(d.actions, vec![call(0, Phase::Compensate, 1)]);
    let d = apply(&mut tx, ok(0, Phase::Compensate, 1));
    assert!(d.actions.is_empty());
    assert_eq!(kinds(&d), vec!["compensate_ok", "compensated"]);
    assert_eq!(tx.state, TxState::Compensated);
    assert_eq!(
        statuses(&tx),
        vec![
            StepStatus::Compensated,
            StepStatus::Compensated,
            StepStatus::Failed
        ]
    );
}

#[test]
fn transient_errors_back_off_then_the_step_is_deemed_unknown_and_undone() {
    let mut tx = saga(vec![
        step("a", 0, StepKind::Compensatable, true, 3),
        step("b", 1, StepKind::Compensatable, true, 2),
    ]);
    apply(&mut tx, Event::Resume);
    apply(&mut tx, ok(0, Phase::Execute, 1));
    let down = || CallResult::Transient("unavailable".into());
    let d = apply(&mut tx, reply(1, Phase::Execute, 1, down()));
    assert_eq!(
        d.actions,
        vec![Action::Schedule {
            branch: 1,
            phase: Phase::Execute,
            attempt: 2,
            after: Duration::from_millis(5),
        }]
    );
    assert_eq!(tx.branches[1].status, StepStatus::Backoff);
    // A due retry for another attempt is stale.
    let due = |attempt| Event::Due {
        branch: 1,
        phase: Phase::Execute,
        attempt,
    };
    assert_eq!(apply(&mut tx, due(3)), Decision::default());
    let d = apply(&mut tx, due(2));
    assert_eq!(d.actions, vec![call(1, Phase::Execute, 2)]);

    // Out of attempts without an answer: it may have run, so it is compensated first.
    let d = apply(&mut tx, reply(1, Phase::Execute, 2, down()));
    assert_eq!(d.actions, vec![call(1, Phase::Compensate, 1)]);
    assert_eq!(tx.branches[1].status, StepStatus::Compensating);
    assert_eq!(tx.branches[1].done_order, Some(2));
}

#[test]
fn cancel_waits_for_executes_in_flight_then_undoes_in_reverse() {
    let mut tx = saga(vec![
        step("a", 0, StepKind::Compensatable, true, 3),
        step("b", 0, StepKind::Compensatable, true, 3),
        step("c", 1, StepKind::Compensatable, true, 3),
    ]);
    let d = apply(&mut tx, Event::Resume);
    assert_eq!(
        d.actions,
        vec![call(0, Phase::Execute, 1), call(1, Phase::Execute, 1)]
    );
    apply(&mut tx, ok(1, Phase::Execute, 1));
    let d = apply(
        &mut tx,
        Event::Cancel {
            reason: "user asked".into(),
        },
    );
    assert!(d.actions.is_empty(), "a is still executing");
    assert_eq!(kinds(&d), vec!["cancel_requested", "compensating"]);
    assert_eq!(tx.last_error.as_deref(), Some("cancelled: user asked"));
    // A second cancel is a no-op while compensating.
    let again = Event::Cancel {
        reason: "again".into(),
    };
    assert_eq!(apply(&mut tx, again), Decision::default());

    // a finished after b, so it is undone first.
    let d = apply(&mut tx, ok(0, Phase::Execute, 1));
    assert_eq!(d.actions, vec![call(0, Phase::Compensate, 1)]);
    let d = apply(&mut tx, ok(0, Phase::Compensate, 1));
    assert_eq!(d.actions, vec![call(1, Phase::Compensate, 1)]);
    apply(&mut tx, ok(1, Phase::Compensate, 1));
    assert_eq!(tx.state, TxState::Compensated);
    assert_eq!(tx.branches[2].status, StepStatus::Pending, "c never ran");
}

#[test]
fn a_failed_compensation_stops_the_saga_until_an_operator_retries() {
    let mut tx = saga(vec![
        step("a", 0, StepKind::Compensatable, true, 2),
        step("b", 1, StepKind::Compensatable, false, 2),
        step("c", 2, StepKind::Compensatable, true, 2),
    ]);
    apply(&mut tx, Event::Resume);
    apply(&mut tx, ok(0, Phase::Execute, 1));
    apply(&mut tx, ok(1, Phase::Execute, 1));
    let d = apply(
        &mut tx,
        reply(2, Phase::Execute, 1, CallResult::Permanent("bad".into())),
    );
    // b has nothing to undo; a is next.
    assert_eq!(d.actions, vec![call(0, Phase::Compensate, 1)]);
    assert!(kinds(&d).contains(&"compensate_skipped"));
    let d = apply(
        &mut tx,
        reply(0, Phase::Compensate, 1, CallResult::Failed("locked".into())),
    );
    assert_eq!(kinds(&d), vec!["compensate_error"]);
    apply(
        &mut tx,
        Event::Due {
            branch: 0,
            phase: Phase::Compensate,
            attempt: 2,
        },
    );
    let d = apply(
        &mut tx,
        reply(
            0,
            Phase::Compensate,
            2,
            CallResult::Transient("down".into()),
        ),
    );
    assert!(d.actions.is_empty());
    assert_eq!(kinds(&d), vec!["failed"]);
    assert_eq!(tx.state, TxState::Failed);
    assert_eq!(
        tx.last_error.as_deref(),
        Some("compensation of step a failed after 2 attempts: down")
    );
    assert_eq!(apply(&mut tx, Event::Resume), Decision::default());
    assert_eq!(apply(&mut tx, Event::DeadlineExpired), Decision::default());

    let d = apply(&mut tx, Event::Retry);
    assert_eq!(kinds(&d), vec!["retried", "compensate_sent"]);
    assert_eq!(d.actions, vec![call(0, Phase::Compensate, 1)]);
    assert_eq!(tx.state, TxState::Compensating);
    assert_eq!(tx.branches[0].done_order, Some(1));
    apply(&mut tx, ok(0, Phase::Compensate, 1));
    assert_eq!(tx.state, TxState::Compensated);
}

/// A failed saga whose log still shows a step as sent (its progress record was cut short) has
/// nothing in flight: an operator's retry compensates that step as one that may have run,
/// instead of waiting for a reply that will never come.
#[test]
fn a_retry_compensates_a_step_the_log_still_shows_in_flight() {
    let mut tx = saga(vec![
        step("a", 0, StepKind::Compensatable, true, 2),
        step("b", 1, StepKind::Compensatable, true, 2),
    ]);
    apply(&mut tx, Event::Resume);
    apply(&mut tx, ok(0, Phase::Execute, 1));
    assert_eq!(tx.branches[1].status, StepStatus::Running);
    // As recorded by a coordinator that could not write more than this.
    tx.state = TxState::Failed;
    tx.last_error = Some("the database refused to record this transaction's progress".into());

    let d = apply(&mut tx, Event::Retry);
    assert_eq!(tx.state, TxState::Compensating);
    assert_eq!(tx.branches[1].status, StepStatus::Unknown);
    // One at a time, in reverse order of completion; b never recorded one, so a goes first.
    assert_eq!(d.actions, vec![call(0, Phase::Compensate, 1)]);
    let d = apply(&mut tx, ok(0, Phase::Compensate, 1));
    assert_eq!(d.actions, vec![call(1, Phase::Compensate, 1)]);
    apply(&mut tx, ok(1, Phase::Compensate, 1));
    assert_eq!(tx.state, TxState::Compensated);
}

#[test]
fn the_deadline_compensates_before_the_pivot_and_is_ignored_after() {
    let steps = vec![
        step("reserve", 0, StepKind::Compensatable, true, 3),
        step("charge", 1, StepKind::Pivot, false, 2),
        step("ship", 2, StepKind::Retriable, false, 2),
    ];
    let mut tx = saga(steps.clone());
    apply(&mut tx, Event::Resume);
    apply(&mut tx, ok(0, Phase::Execute, 1));
    // The pivot is in flight: neither a deadline nor a cancel can undo it now.
    assert_eq!(apply(&mut tx, Event::DeadlineExpired), Decision::default());
    let err = decide(&mut tx, Event::Cancel { reason: "x".into() }, epoch(), 0.5).unwrap_err();
    assert_eq!(
        err.0,
        format!(
            "transaction {} is running its pivot step charge; it can only go forward unless \
             that step fails",
            tx.id
        )
    );
    // The pivot keeps retrying past its attempts; a retriable step never fails the saga.
    for attempt in 1..=4 {
        apply(
            &mut tx,
            reply(
                1,
                Phase::Execute,
                attempt,
                CallResult::Transient("t".into()),
            ),
        );
        apply(
            &mut tx,
            Event::Due {
                branch: 1,
                phase: Phase::Execute,
                attempt: attempt + 1,
            },
        );
    }
    assert_eq!(tx.state, TxState::Running);
    apply(&mut tx, ok(1, Phase::Execute, 5));
    assert_eq!(apply(&mut tx, Event::DeadlineExpired), Decision::default());
    apply(
        &mut tx,
        reply(2, Phase::Execute, 1, CallResult::Permanent("nope".into())),
    );
    assert_eq!(tx.branches[2].status, StepStatus::Backoff);
    assert_eq!(tx.branches[2].last_error.as_deref(), Some("nope"));
    apply(
        &mut tx,
        Event::Due {
            branch: 2,
            phase: Phase::Execute,
            attempt: 2,
        },
    );
    apply(&mut tx, ok(2, Phase::Execute, 2));
    assert_eq!(tx.state, TxState::Committed);

    let mut early = saga(steps);
    apply(&mut early, Event::Resume);
    let d = apply(&mut early, Event::DeadlineExpired);
    assert_eq!(kinds(&d), vec!["compensating"]);
    assert_eq!(early.last_error.as_deref(), Some("deadline exceeded"));
}

#[test]
fn refusals_say_why() {
    let mut tx = saga(vec![
        step("a", 0, StepKind::Pivot, false, 1),
        step("b", 1, StepKind::Retriable, false, 1),
    ]);
    apply(&mut tx, Event::Resume);
    apply(&mut tx, ok(0, Phase::Execute, 1));
    let id = tx.id;
    let before = tx.clone();
    let cancel = || Event::Cancel {
        reason: "stop".into(),
    };
    let refused = |tx: &mut TxRecord, event| decide(tx, event, epoch(), 0.5).unwrap_err().0;
    assert_eq!(
        refused(&mut tx, cancel()),
        format!("transaction {id} is past its pivot step a; it can only go forward")
    );
    assert_eq!(
        refused(&mut tx, Event::Retry),
        format!("transaction {id} is running; only a failed transaction can be retried")
    );
    assert_eq!(tx, before, "a refusal changes nothing");
    apply(&mut tx, ok(1, Phase::Execute, 1));
    assert_eq!(
        refused(&mut tx, cancel()),
        format!("transaction {id} has already ended (committed)")
    );
    tx.state = TxState::Failed;
    assert_eq!(
        refused(&mut tx, cancel()),
        format!("transaction {id} has already ended (failed) and waits for an operator's retry")
    );
}

#[test]
fn resume_resends_in_flight_calls_and_stale_replies_change_nothing() {
    let mut tx = saga(vec![
        step("a", 0, StepKind::Compensatable, true, 3),
        step("b", 0, StepKind::Compensatable, true, 3),
    ]);
    apply(&mut tx, Event::Resume);
    apply(
        &mut tx,
        reply(1, Phase::Execute, 1, CallResult::Transient("t".into())),
    );
    // Crash: a was in flight, b waiting for its retry; both go out again now.
    let d = apply(&mut tx, Event::Resume);
    assert_eq!(
        d.actions,
        vec![call(0, Phase::Execute, 2), call(1, Phase::Execute, 2)]
    );
    let before = tx.clone();
    for stale in [
        ok(0, Phase::Execute, 1),
        ok(0, Phase::Compensate, 2),
        ok(7, Phase::Execute, 2),
        ok(0, Phase::Prepare, 2),
    ] {
        assert_eq!(apply(&mut tx, stale), Decision::default());
    }
    assert_eq!(tx, before);
}

/// Fails the `phase` call of `branch` on every attempt in `attempts` with `error(attempt)` and
/// fires each due retry; returns the notes written. Checks on the way that each failure schedules
/// the next attempt within the policy's cap and that the branch row shows the current attempt
/// and error.
fn fail_attempts(
    tx: &mut TxRecord,
    branch: u32,
    phase: Phase,
    attempts: std::ops::RangeInclusive<u32>,
    error: impl Fn(u32) -> String,
) -> Vec<Note> {
    let mut notes = Vec::new();
    for attempt in attempts {
        let msg = error(attempt);
        let failed = reply(branch, phase, attempt, CallResult::Transient(msg.clone()));
        let d = apply(tx, failed);
        let [Action::Schedule {
            branch: b,
            phase: p,
            attempt: next,
            after,
        }] = d.actions[..]
        else {
            panic!("attempt {attempt}: expected one retry, got {:?}", d.actions);
        };
        assert_eq!((b, p, next), (branch, phase, attempt + 1));
        assert!(after <= Duration::from_millis(40), "the backoff is capped");
        let row = &tx.branches[branch as usize];
        assert_eq!(row.attempts, attempt);
        assert_eq!(row.last_error.as_deref(), Some(msg.as_str()));
        notes.extend(d.notes);
        let due = Event::Due {
            branch,
            phase,
            attempt: attempt + 1,
        };
        let d = apply(tx, due);
        assert_eq!(d.actions, vec![call(branch, phase, attempt + 1)]);
        notes.extend(d.notes);
    }
    notes
}

/// The error of attempt `n` in the long runs below: "down", except once "timed out" at 4000.
fn down_but_once(n: u32) -> String {
    if n == 4000 { "timed out" } else { "down" }.to_string()
}

/// Checks the notes of 10,000 failed attempts whose errors follow [`down_but_once`]: few of them,
/// every change of error among them, and the run's length told at each power of two.
fn assert_compact(notes: &[Note], error_kind: &str) {
    assert!(notes.len() < 40, "{} notes: {notes:#?}", notes.len());
    let failed = |n: u32| format!("attempt {n} failed: ");
    let find = |n: u32| {
        notes
            .iter()
            .find(|x| x.kind.as_str() == error_kind && x.detail.starts_with(&failed(n)))
    };
    for n in [1, 2, 4, 8192] {
        assert!(find(n).is_some(), "attempt {n} is recorded: {notes:#?}");
    }
    assert!(find(3).is_none() && find(5000).is_none(), "{notes:#?}");
    // A different error is recorded, and so is the return to the earlier one.
    assert!(find(4000).unwrap().detail.contains("timed out"));
    assert!(find(4001).unwrap().detail.contains("down"));
    let tail = "attempts 4097 to 8191 are recorded only where their error changed";
    assert!(find(8192).unwrap().detail.ends_with(tail), "{notes:#?}");
}

#[test]
fn a_retriable_step_failing_for_long_writes_a_compact_history() {
    let mut tx = saga(vec![
        step("pay", 0, StepKind::Pivot, false, 3),
        step("ship", 1, StepKind::Retriable, false, 3),
    ]);
    apply(&mut tx, Event::Resume);
    apply(&mut tx, ok(0, Phase::Execute, 1));
    let notes = fail_attempts(&mut tx, 1, Phase::Execute, 1..=10_000, down_but_once);
    assert_compact(&notes, "execute_error");
    assert_eq!(
        tx.state,
        TxState::Running,
        "a retriable step never gives up"
    );
    let d = apply(&mut tx, ok(1, Phase::Execute, 10_001));
    assert_eq!(kinds(&d), vec!["execute_ok", "committed"]);
    assert_eq!(d.notes[0].detail, "attempt 10001 succeeded");
}

#[test]
fn a_compensation_with_a_long_retry_budget_writes_a_compact_history() {
    let mut tx = saga(vec![
        step("a", 0, StepKind::Compensatable, true, 20_000),
        step("b", 1, StepKind::Compensatable, true, 1),
    ]);
    apply(&mut tx, Event::Resume);
    apply(&mut tx, ok(0, Phase::Execute, 1));
    let no = reply(1, Phase::Execute, 1, CallResult::Failed("no".into()));
    assert_eq!(
        apply(&mut tx, no).actions,
        vec![call(0, Phase::Compensate, 1)]
    );
    let notes = fail_attempts(&mut tx, 0, Phase::Compensate, 1..=10_000, down_but_once);
    assert_compact(&notes, "compensate_error");
    let d = apply(&mut tx, ok(0, Phase::Compensate, 10_001));
    assert_eq!(kinds(&d), vec!["compensate_ok", "compensated"]);
}

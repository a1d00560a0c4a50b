//! Examples of the two-phase-commit engine's behaviour; the property tests live in `sim`.

use super::*;
use crate::model::{BranchDef, TwoPhaseDef};

mod sim;

fn branch(name: &str, max_attempts: u32) -> BranchDef {
    BranchDef {
        name: name.to_string(),
        target: Target::Service("svc".to_string()),
        action: format!("do_{name}"),
        payload: Vec::new(),
        timeout_ms: 1000,
        retry: RetryPolicy {
            max_attempts,
            initial_backoff_ms: 10,
            max_backoff_ms: 40,
        },
    }
}

fn two_phase(branches: Vec<BranchDef>) -> TxRecord {
    let mut tx = saga(Vec::new());
    tx.kind = TxKind::TwoPhase;
    tx.state = TxState::Preparing;
    tx.branches = branches
        .iter()
        .enumerate()
        .map(|(i, b)| BranchRecord {
            index: i as u32,
            name: b.name.clone(),
            ..BranchRecord::default()
        })
        .collect();
    tx.definition = Definition::TwoPhase(TwoPhaseDef {
        branches,
        prepare_timeout_ms: 5000,
    });
    tx
}

/// Three branches that each allow two attempts per call.
fn three_branches() -> TxRecord {
    two_phase(vec![branch("a", 2), branch("b", 2), branch("c", 2)])
}

fn calls(phase: Phase, branches: &[u32], attempt: u32) -> Vec<Action> {
    branches.iter().map(|&b| call(b, phase, attempt)).collect()
}

fn no(branch: u32, attempt: u32, msg: &str) -> Event {
    reply(
        branch,
        Phase::Prepare,
        attempt,
        CallResult::Failed(msg.into()),
    )
}

fn transient(branch: u32, phase: Phase, attempt: u32) -> Event {
    reply(branch, phase, attempt, CallResult::Transient("down".into()))
}

fn due(branch: u32, phase: Phase, attempt: u32) -> Event {
    Event::Due {
        branch,
        phase,
        attempt,
    }
}

fn cancel(reason: &str) -> Event {
    Event::Cancel {
        reason: reason.into(),
    }
}

fn refused(tx: &mut TxRecord, event: Event) -> String {
    let before = tx.clone();
    let err = decide(tx, event, epoch(), 0.5).unwrap_err().0;
    assert_eq!(*tx, before, "a refusal changes nothing");
    err
}

/// Prepares every branch of `tx` (already resumed) with a yes vote on attempt 1.
fn all_vote_yes(tx: &mut TxRecord) -> Decision {
    let n = tx.branches.len() as u32;
    let mut last = Decision::default();
    for i in 0..n {
        last = apply(tx, ok(i, Phase::Prepare, 1));
    }
    last
}

#[test]
fn all_yes_decides_commit_with_the_commit_calls_then_commits() {
    let mut tx = three_branches();
    let d = apply(&mut tx, Event::Begin);
    assert_eq!(d.actions, calls(Phase::Prepare, &[0, 1, 2], 1));
    assert_eq!(kinds(&d), vec!["prepare_sent"; 3]);
    assert_eq!(d.changed, vec![0, 1, 2]);
    assert!(!d.tx_changed);
    assert_eq!(statuses(&tx), vec![StepStatus::Running; 3]);

    let d = apply(&mut tx, ok(1, Phase::Prepare, 1));
    assert!(d.actions.is_empty(), "c and a have not voted yet");
    assert_eq!(kinds(&d), vec!["prepare_ok"]);
    apply(&mut tx, ok(0, Phase::Prepare, 1));
    assert_eq!(tx.state, TxState::Preparing);

    // The last yes vote: the decision and every Commit come out of one decision, which the
    // driver records before it sends anything.
    let d = apply(&mut tx, ok(2, Phase::Prepare, 1));
    assert_eq!(d.actions, calls(Phase::Commit, &[0, 1, 2], 1));
    assert_eq!(
        kinds(&d),
        vec![
            "prepare_ok",
            "commit_decided",
            "commit_sent",
            "commit_sent",
            "commit_sent"
        ]
    );
    assert!(d.tx_changed);
    assert_eq!(d.changed, vec![2, 0, 1]);
    assert_eq!(tx.state, TxState::Committing);
    assert_eq!(statuses(&tx), vec![StepStatus::Committing; 3]);
    assert!(tx.branches.iter().all(|b| b.attempts == 1));

    apply(&mut tx, ok(0, Phase::Commit, 1));
    apply(&mut tx, ok(2, Phase::Commit, 1));
    let d = apply(&mut tx, ok(1, Phase::Commit, 1));
    assert_eq!(kinds(&d), vec!["commit_ok", "committed"]);
    assert!(d.actions.is_empty());
    assert_eq!(tx.state, TxState::Committed);
    assert_eq!(statuses(&tx), vec![StepStatus::Committed; 3]);
    assert_eq!(
        tx.branches[2].output,
        Some(vec![2]),
        "the prepare output is kept"
    );
    assert_eq!(tx.last_error, None);
}

#[test]
fn one_no_vote_aborts_the_prepared_and_skips_the_rest() {
    let mut tx = two_phase(vec![
        branch("a", 2),
        branch("b", 2),
        branch("c", 2),
        branch("d", 2),
    ]);
    apply(&mut tx, Event::Begin);
    // d is waiting for its retry; a prepared; c is still in flight when b votes no.
    apply(&mut tx, transient(3, Phase::Prepare, 1));
    apply(&mut tx, ok(0, Phase::Prepare, 1));
    let d = apply(&mut tx, no(1, 1, "insufficient funds"));
    assert_eq!(
        d.actions,
        vec![
            call(0, Phase::Abort, 1),
            call(2, Phase::Abort, 1),
            call(3, Phase::Abort, 1)
        ]
    );
    assert_eq!(
        kinds(&d),
        vec![
            "prepare_failed",
            "abort_decided",
            "abort_sent",
            "abort_skipped",
            "abort_sent",
            "abort_sent"
        ]
    );
    assert_eq!(tx.state, TxState::Aborting);
    assert_eq!(
        tx.last_error.as_deref(),
        Some("branch b voted no: insufficient funds")
    );
    assert_eq!(
        statuses(&tx),
        vec![
            StepStatus::Aborting,
            StepStatus::Aborted,
            StepStatus::Aborting,
            StepStatus::Aborting
        ]
    );
    assert_eq!(
        tx.branches[1].last_error.as_deref(),
        Some("insufficient funds")
    );

    // c's prepare and d's retry were overtaken by the abort: both are stale now.
    let before = tx.clone();
    assert_eq!(
        apply(&mut tx, ok(2, Phase::Prepare, 1)),
        Decision::default()
    );
    assert_eq!(
        apply(&mut tx, due(3, Phase::Prepare, 2)),
        Decision::default()
    );
    assert_eq!(tx, before);

    apply(&mut tx, ok(0, Phase::Abort, 1));
    apply(&mut tx, ok(2, Phase::Abort, 1));
    let d = apply(&mut tx, ok(3, Phase::Abort, 1));
    assert_eq!(kinds(&d), vec!["abort_ok", "aborted"]);
    assert_eq!(d.notes[1].branch, None);
    assert_eq!(tx.state, TxState::Aborted);
    assert_eq!(statuses(&tx), vec![StepStatus::Aborted; 4]);
}

#[test]
fn a_prepare_without_answer_retries_then_aborts_as_unknown() {
    let mut tx = two_phase(vec![branch("a", 2), branch("b", 3)]);
    apply(&mut tx, Event::Begin);
    apply(&mut tx, ok(0, Phase::Prepare, 1));
    let d = apply(&mut tx, transient(1, Phase::Prepare, 1));
    assert_eq!(
        d.actions,
        vec![Action::Schedule {
            branch: 1,
            phase: Phase::Prepare,
            attempt: 2,
            after: Duration::from_millis(5),
        }]
    );
    assert_eq!(kinds(&d), vec!["prepare_error"]);
    assert_eq!(tx.branches[1].status, StepStatus::Backoff);
    assert_eq!(
        apply(&mut tx, due(1, Phase::Prepare, 3)),
        Decision::default()
    );
    assert_eq!(
        apply(&mut tx, due(1, Phase::Commit, 2)),
        Decision::default()
    );
    let d = apply(&mut tx, due(1, Phase::Prepare, 2));
    assert_eq!(d.actions, vec![call(1, Phase::Prepare, 2)]);
    assert_eq!(kinds(&d), vec!["prepare_sent"]);
    apply(&mut tx, transient(1, Phase::Prepare, 2));
    apply(&mut tx, due(1, Phase::Prepare, 3));

    // Out of attempts: b may have prepared, so it is aborted along with a.
    let d = apply(&mut tx, transient(1, Phase::Prepare, 3));
    assert_eq!(d.actions, calls(Phase::Abort, &[0, 1], 1));
    assert_eq!(
        kinds(&d),
        vec!["prepare_error", "abort_decided", "abort_sent", "abort_sent"]
    );
    assert_eq!(
        tx.last_error.as_deref(),
        Some("branch b gave no answer after 3 attempts: down")
    );
    assert_eq!(tx.branches[1].attempts, 1, "the abort phase counts anew");
}

#[test]
fn the_prepare_timeout_and_the_deadline_abort_only_before_the_decision() {
    for (event, reason) in [
        (Event::PrepareTimeout, "prepare timed out"),
        (Event::DeadlineExpired, "deadline exceeded"),
    ] {
        let mut tx = three_branches();
        apply(&mut tx, Event::Begin);
        apply(&mut tx, ok(0, Phase::Prepare, 1));
        let d = apply(&mut tx, event.clone());
        assert_eq!(d.actions, calls(Phase::Abort, &[0, 1, 2], 1));
        assert_eq!(kinds(&d)[0], "abort_decided");
        assert_eq!(tx.last_error.as_deref(), Some(reason));
        // Once aborting, it is a no-op.
        assert_eq!(apply(&mut tx, event.clone()), Decision::default());

        let mut tx = three_branches();
        apply(&mut tx, Event::Begin);
        all_vote_yes(&mut tx);
        assert_eq!(apply(&mut tx, event.clone()), Decision::default());
        assert_eq!(tx.state, TxState::Committing);
    }
}

#[test]
fn cancel_aborts_while_preparing_and_is_refused_after_the_commit_decision() {
    let mut tx = three_branches();
    tx.cancel_requested = true;
    apply(&mut tx, Event::Begin);
    apply(&mut tx, ok(2, Phase::Prepare, 1));
    let d = apply(&mut tx, cancel("user asked"));
    assert_eq!(
        kinds(&d),
        vec![
            "cancel_requested",
            "abort_decided",
            "abort_sent",
            "abort_sent",
            "abort_sent"
        ]
    );
    assert!(d.tx_changed);
    assert!(!tx.cancel_requested, "the request is acted on");
    assert_eq!(tx.last_error.as_deref(), Some("cancelled: user asked"));
    // While aborting a second cancel is satisfied as it stands.
    assert_eq!(apply(&mut tx, cancel("again")), Decision::default());
    for i in 0..3 {
        apply(&mut tx, ok(i, Phase::Abort, 1));
    }
    assert_eq!(tx.state, TxState::Aborted);
    let id = tx.id;
    assert_eq!(
        refused(&mut tx, cancel("late")),
        format!("transaction {id} has already ended (aborted)")
    );

    let mut tx = three_branches();
    apply(&mut tx, Event::Begin);
    all_vote_yes(&mut tx);
    let id = tx.id;
    assert_eq!(
        refused(&mut tx, cancel("too late")),
        format!("transaction {id} has decided to commit; it cannot be cancelled")
    );
    for i in 0..3 {
        apply(&mut tx, ok(i, Phase::Commit, 1));
    }
    assert_eq!(
        refused(&mut tx, cancel("late")),
        format!("transaction {id} has already ended (committed)")
    );
}

#[test]
fn cancel_before_anything_was_sent_aborts_at_once() {
    let mut tx = three_branches();
    let d = apply(&mut tx, cancel("changed my mind"));
    assert!(d.actions.is_empty(), "nothing prepared, nothing to abort");
    assert_eq!(
        kinds(&d),
        vec![
            "cancel_requested",
            "abort_decided",
            "abort_skipped",
            "abort_skipped",
            "abort_skipped",
            "aborted"
        ]
    );
    assert_eq!(tx.state, TxState::Aborted);
    assert_eq!(apply(&mut tx, Event::Begin), Decision::default());
}

#[test]
fn retry_is_always_refused() {
    let mut tx = three_branches();
    let id = tx.id;
    assert_eq!(
        refused(&mut tx, Event::Retry),
        format!("transaction {id} is preparing; only a failed transaction can be retried")
    );
    apply(&mut tx, Event::Begin);
    all_vote_yes(&mut tx);
    assert_eq!(
        refused(&mut tx, Event::Retry),
        format!("transaction {id} is committing; only a failed transaction can be retried")
    );
}

#[test]
fn phase_two_retries_past_its_budget_and_never_changes_the_decision() {
    let mut tx = two_phase(vec![branch("a", 1), branch("b", 1)]);
    apply(&mut tx, Event::Begin);
    all_vote_yes(&mut tx);
    apply(&mut tx, ok(0, Phase::Commit, 1));
    let failures = [
        CallResult::Failed("locked".into()),
        CallResult::Permanent("unimplemented".into()),
        CallResult::Transient("down".into()),
    ];
    for attempt in 1..=9u32 {
        let result = failures[attempt as usize % 3].clone();
        let d = apply(&mut tx, reply(1, Phase::Commit, attempt, result));
        let [Action::Schedule {
            branch: 1,
            phase: Phase::Commit,
            attempt: next,
            after,
        }] = d.actions[..]
        else {
            panic!("expected one scheduled commit, got {:?}", d.actions);
        };
        assert_eq!(next, attempt + 1);
        assert!(after <= Duration::from_millis(40), "the backoff is capped");
        assert_eq!(kinds(&d), vec!["commit_error"]);
        assert_eq!(tx.branches[1].status, StepStatus::CommitBackoff);
        // Neither the deadline nor a cancel moves a decided commit.
        apply(&mut tx, Event::DeadlineExpired);
        assert!(decide(&mut tx, cancel("stop"), epoch(), 0.5).is_err());
        assert_eq!(tx.state, TxState::Committing);
        let d = apply(&mut tx, due(1, Phase::Commit, attempt + 1));
        assert_eq!(d.actions, vec![call(1, Phase::Commit, attempt + 1)]);
    }
    assert_eq!(tx.branches[1].last_error.as_deref(), Some("locked"));
    assert_eq!(tx.last_error, None, "branch errors stay on the branch");
    let d = apply(&mut tx, ok(1, Phase::Commit, 10));
    assert_eq!(kinds(&d), vec!["commit_ok", "committed"]);
    assert_eq!(tx.state, TxState::Committed);
}

#[test]
fn aborts_retry_past_their_budget_too() {
    let mut tx = two_phase(vec![branch("a", 1), branch("b", 1)]);
    apply(&mut tx, Event::Begin);
    apply(&mut tx, ok(0, Phase::Prepare, 1));
    apply(&mut tx, Event::PrepareTimeout);
    for attempt in 1..=3 {
        let d = apply(&mut tx, transient(0, Phase::Abort, attempt));
        // Attempt 3 failed as attempt 2 did and is not a power of two: not recorded.
        let recorded = if attempt == 3 {
            vec![]
        } else {
            vec!["abort_error"]
        };
        assert_eq!(kinds(&d), recorded);
        assert_eq!(tx.branches[0].status, StepStatus::AbortBackoff);
        let early = due(0, Phase::Abort, attempt + 2);
        assert_eq!(apply(&mut tx, early), Decision::default());
        apply(&mut tx, due(0, Phase::Abort, attempt + 1));
    }
    apply(&mut tx, ok(1, Phase::Abort, 1));
    assert_eq!(tx.state, TxState::Aborting, "a still owes its abort");
    apply(&mut tx, ok(0, Phase::Abort, 4));
    assert_eq!(tx.state, TxState::Aborted);
    assert_eq!(tx.last_error.as_deref(), Some("prepare timed out"));
}

#[test]
fn resume_resends_with_the_next_attempt_in_each_state() {
    // Preparing, once prepares went out: presumed abort. Every branch that may have prepared
    // (in flight, backing off, prepared) is aborted; none is asked to prepare again.
    let mut tx = three_branches();
    apply(&mut tx, Event::Begin);
    apply(&mut tx, transient(1, Phase::Prepare, 1));
    apply(&mut tx, ok(2, Phase::Prepare, 1));
    let d = apply(&mut tx, Event::Begin);
    assert_eq!(
        d.actions,
        vec![
            call(0, Phase::Abort, 1),
            call(1, Phase::Abort, 1),
            call(2, Phase::Abort, 1)
        ]
    );
    assert_eq!(tx.state, TxState::Aborting);
    assert_eq!(
        tx.last_error.as_deref(),
        Some("the coordinator restarted before the decision (presumed abort)")
    );
    assert_eq!(
        apply(&mut tx, ok(0, Phase::Prepare, 1)),
        Decision::default(),
        "a late vote changes nothing"
    );
    // Preparing with nothing sent yet: the prepare phase starts.
    let mut tx = three_branches();
    let d = apply(&mut tx, Event::Begin);
    assert_eq!(
        d.actions,
        vec![
            call(0, Phase::Prepare, 1),
            call(1, Phase::Prepare, 1),
            call(2, Phase::Prepare, 1)
        ]
    );

    // Committing: in flight and backing-off commits go out again.
    let mut tx = three_branches();
    apply(&mut tx, Event::Begin);
    all_vote_yes(&mut tx);
    apply(&mut tx, ok(0, Phase::Commit, 1));
    apply(&mut tx, transient(2, Phase::Commit, 1));
    let d = apply(&mut tx, Event::Begin);
    assert_eq!(
        d.actions,
        vec![call(1, Phase::Commit, 2), call(2, Phase::Commit, 2)]
    );
    assert_eq!(kinds(&d), vec!["commit_sent"; 2]);
    assert!(!d.tx_changed);
    // A committing record whose commits were never sent (a crash between decision and send in
    // a driver that persisted them apart) still gets them.
    tx.branches[1].status = StepStatus::Prepared;
    tx.branches[1].attempts = 0;
    let d = apply(&mut tx, Event::Begin);
    assert_eq!(
        d.actions,
        vec![call(1, Phase::Commit, 1), call(2, Phase::Commit, 3)]
    );

    // Aborting: likewise for aborts.
    let mut tx = three_branches();
    apply(&mut tx, Event::Begin);
    apply(&mut tx, ok(0, Phase::Prepare, 1));
    apply(&mut tx, no(1, 1, "no"));
    apply(&mut tx, transient(0, Phase::Abort, 1));
    let d = apply(&mut tx, Event::Begin);
    assert_eq!(
        d.actions,
        vec![call(0, Phase::Abort, 2), call(2, Phase::Abort, 2)]
    );
    assert_eq!(kinds(&d), vec!["abort_sent"; 2]);
    apply(&mut tx, ok(0, Phase::Abort, 2));
    apply(&mut tx, ok(2, Phase::Abort, 2));
    assert_eq!(tx.state, TxState::Aborted);
    // Resting: nothing is ever sent again.
    assert_eq!(apply(&mut tx, Event::Begin), Decision::default());
}

#[test]
fn stale_and_foreign_events_change_nothing() {
    let mut tx = three_branches();
    apply(&mut tx, Event::Begin);
    apply(&mut tx, Event::Begin);
    apply(&mut tx, ok(0, Phase::Prepare, 2));
    let before = tx.clone();
    for stale in [
        ok(0, Phase::Prepare, 2),
        ok(1, Phase::Prepare, 1),
        ok(1, Phase::Prepare, 3),
        ok(1, Phase::Commit, 2),
        ok(1, Phase::Abort, 2),
        ok(1, Phase::Execute, 2),
        ok(1, Phase::Compensate, 2),
        ok(9, Phase::Prepare, 2),
        due(1, Phase::Prepare, 3),
        due(0, Phase::Commit, 3),
        due(9, Phase::Prepare, 1),
    ] {
        assert_eq!(apply(&mut tx, stale), Decision::default());
    }
    assert_eq!(tx, before);
}

#[test]
fn no_branches_commit_at_once() {
    let mut tx = two_phase(Vec::new());
    let d = apply(&mut tx, Event::Begin);
    assert_eq!(kinds(&d), vec!["commit_decided", "committed"]);
    assert_eq!(tx.state, TxState::Committed);
}

#[test]
fn a_preparing_record_with_a_no_vote_aborts_on_resume() {
    // `decide` never leaves this shape (a no vote aborts at once), but a record found so after a
    // crash must not wait forever for votes that are already in.
    let mut tx = three_branches();
    tx.branches[1].status = StepStatus::Failed;
    tx.branches[2].status = StepStatus::Prepared;
    let d = apply(&mut tx, Event::Resume);
    // Branch 0 shows as never asked, but progress is written lazily: it may have prepared.
    assert_eq!(
        d.actions,
        vec![call(0, Phase::Abort, 1), call(2, Phase::Abort, 1)]
    );
    assert_eq!(tx.state, TxState::Aborting);
    assert_eq!(
        tx.last_error.as_deref(),
        Some("the coordinator restarted before the decision (presumed abort)")
    );
}

#[test]
fn a_preparing_record_found_on_resume_aborts_every_branch_even_unasked() {
    // The log may lag the prepares that went out, so a restart cannot tell "never asked" from
    // "asked and prepared": presumed abort sends every branch an Abort.
    let mut tx = three_branches();
    let d = apply(&mut tx, Event::Resume);
    assert_eq!(tx.state, TxState::Aborting);
    assert_eq!(
        d.actions,
        vec![
            call(0, Phase::Abort, 1),
            call(1, Phase::Abort, 1),
            call(2, Phase::Abort, 1)
        ]
    );
    // The same record just accepted (nothing sent yet) asks for prepares instead.
    let mut fresh = three_branches();
    let d = apply(&mut fresh, Event::Begin);
    assert_eq!(fresh.state, TxState::Preparing);
    assert_eq!(
        d.actions,
        vec![
            call(0, Phase::Prepare, 1),
            call(1, Phase::Prepare, 1),
            call(2, Phase::Prepare, 1)
        ]
    );
}

#[test]
fn a_stuck_abort_writes_a_compact_history_and_never_gives_up() {
    let mut tx = two_phase(vec![branch("a", 2), branch("b", 2)]);
    apply(&mut tx, Event::Begin);
    apply(&mut tx, ok(0, Phase::Prepare, 1));
    apply(&mut tx, Event::PrepareTimeout);
    apply(&mut tx, ok(1, Phase::Abort, 1));
    let notes = fail_attempts(&mut tx, 0, Phase::Abort, 1..=10_000, down_but_once);
    assert_compact(&notes, "abort_error");
    let sent = notes
        .iter()
        .filter(|n| n.kind.as_str() == "abort_sent")
        .count();
    assert_eq!(sent, 13, "sent at attempts 2, 4, ..., 8192: {notes:#?}");
    assert_eq!(tx.state, TxState::Aborting, "the decision stands");
    let d = apply(&mut tx, ok(0, Phase::Abort, 10_001));
    assert_eq!(kinds(&d), vec!["abort_ok", "aborted"]);
}

#[test]
fn a_stuck_commit_writes_a_compact_history_and_never_gives_up() {
    let mut tx = two_phase(vec![branch("a", 1)]);
    apply(&mut tx, Event::Begin);
    all_vote_yes(&mut tx);
    let notes = fail_attempts(&mut tx, 0, Phase::Commit, 1..=10_000, down_but_once);
    assert_compact(&notes, "commit_error");
    assert_eq!(tx.state, TxState::Committing, "the decision stands");
    let d = apply(&mut tx, ok(0, Phase::Commit, 10_001));
    assert_eq!(kinds(&d), vec!["commit_ok", "committed"]);
}

//! A simulator that drives random two-phase commits through random votes and acknowledgements,
//! crashes, stale and duplicate deliveries, cancels, prepare timeouts and deadlines, and checks
//! the protocol's invariants after every event and at the outcome.

use std::collections::BTreeSet;

use proptest::prelude::*;
use proptest::test_runner::{RngAlgorithm, TestRng};

use super::*;

type CallKey = (u32, Phase, u32);

/// Random branch lists: 1 to 5 branches of 1 to 3 attempts each.
fn arb_branches() -> impl Strategy<Value = Vec<BranchDef>> {
    proptest::collection::vec(1u32..=3, 1..=5).prop_map(|maxes| {
        maxes
            .into_iter()
            .enumerate()
            .map(|(i, max)| branch(&format!("b{i}"), max))
            .collect()
    })
}

struct Sim {
    tx: TxRecord,
    rng: TestRng,
    /// Calls the engine considers current.
    inflight: Vec<CallKey>,
    /// Scheduled retries (some become moot; firing those must change nothing).
    timers: Vec<CallKey>,
    /// Calls answered or lost in a crash, replayed as stale or duplicate replies.
    past: Vec<CallKey>,
    /// Branches ever sent a `Prepare`, ever sent an `Abort`, and those that voted no.
    prepare_sent: BTreeSet<u32>,
    abort_sent: BTreeSet<u32>,
    voted_no: BTreeSet<u32>,
    /// Branches that were in `Prepared` at some point.
    prepared: BTreeSet<u32>,
    commit_sent: bool,
    /// `Some(true)` once commit was decided, `Some(false)` once abort was.
    decided: Option<bool>,
    decisions: usize,
    /// How participants behave in this run: 0 harsh, 1 mostly fine, 2 flaky (transient errors).
    mood: u8,
}

impl Sim {
    fn new(branches: Vec<BranchDef>, seed: [u8; 32], mood: u8) -> Self {
        Sim {
            tx: two_phase(branches),
            rng: TestRng::from_seed(RngAlgorithm::ChaCha, &seed),
            inflight: Vec::new(),
            timers: Vec::new(),
            past: Vec::new(),
            prepare_sent: BTreeSet::new(),
            abort_sent: BTreeSet::new(),
            voted_no: BTreeSet::new(),
            prepared: BTreeSet::new(),
            commit_sent: false,
            decided: None,
            decisions: 0,
            mood,
        }
    }

    fn below(&mut self, n: usize) -> usize {
        (self.rng.next_u64() % n.max(1) as u64) as usize
    }

    fn unit(&mut self) -> f64 {
        (self.rng.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }

    fn random_result(&mut self, ok_only: bool) -> CallResult {
        if ok_only {
            return CallResult::Ok(vec![1]);
        }
        let (ok, failed, transient) = match self.mood {
            0 => (10, 3, 5),
            1 => (17, 1, 1),
            _ => (9, 1, 9),
        };
        let roll = self.below(20);
        if roll < ok {
            CallResult::Ok(vec![2])
        } else if roll < ok + failed {
            CallResult::Failed("no".into())
        } else if roll < ok + failed + transient {
            CallResult::Transient("down".into())
        } else {
            CallResult::Permanent("bad".into())
        }
    }

    /// Applies one event and checks everything a single decision must satisfy.
    fn apply(&mut self, event: Event) -> Result<Decision, Refused> {
        let before = self.tx.clone();
        let jitter = self.unit();
        let result = decide(&mut self.tx, event.clone(), epoch(), jitter);
        self.decisions += 1;
        let d = match result {
            Ok(d) => d,
            Err(refused) => {
                assert_eq!(self.tx, before, "a refusal changed the transaction");
                assert!(refused.0.contains(&before.id.to_string()));
                return Err(refused);
            }
        };
        self.check(&before, &event, &d);
        for action in &d.actions {
            match *action {
                Action::Call {
                    branch,
                    phase,
                    attempt,
                } => self.inflight.push((branch, phase, attempt)),
                Action::Schedule {
                    branch,
                    phase,
                    attempt,
                    ..
                } => self.timers.push((branch, phase, attempt)),
            }
        }
        Ok(d)
    }

    fn check(&mut self, before: &TxRecord, event: &Event, d: &Decision) {
        let tx = &self.tx;
        let n = tx.branches.len();

        // Changes are reported exactly, once each.
        let mut changed = d.changed.clone();
        changed.sort_unstable();
        changed.dedup();
        assert_eq!(changed.len(), d.changed.len(), "duplicate changed index");
        let differing: Vec<u32> = (0..n)
            .filter(|&i| tx.branches[i] != before.branches[i])
            .map(|i| i as u32)
            .collect();
        assert_eq!(changed, differing, "changed does not match the records");
        let row_differs = tx.state != before.state
            || tx.stage != before.stage
            || tx.last_error != before.last_error
            || tx.cancel_requested != before.cancel_requested;
        assert_eq!(d.tx_changed, row_differs, "tx_changed is wrong");

        // Property 5: nothing is called or scheduled around an outcome.
        if before.state.is_final() {
            assert_eq!(*d, Decision::default(), "an ended transaction moved");
        }
        if tx.state.is_final() {
            assert!(d.actions.is_empty(), "actions returned with the outcome");
        }

        // A vote yes may be overtaken by the commit decision within the same decision, so the
        // notes, not the final statuses, say who prepared.
        for note in &d.notes {
            let votes = match note.kind.as_str() {
                "prepare_ok" => &mut self.prepared,
                "prepare_failed" => &mut self.voted_no,
                _ => continue,
            };
            votes.insert(note.branch.expect("a vote names its branch"));
        }
        for (i, b) in tx.branches.iter().enumerate() {
            if b.status == StepStatus::Prepared {
                assert!(
                    self.prepared.contains(&(i as u32)),
                    "prepared without a note"
                );
            }
        }

        // Property 3: the states move one way, and the decision is taken once.
        let allowed: &[TxState] = match before.state {
            TxState::Preparing => &[
                TxState::Preparing,
                TxState::Committing,
                TxState::Aborting,
                TxState::Aborted,
            ],
            TxState::Committing => &[TxState::Committing, TxState::Committed],
            TxState::Aborting => &[TxState::Aborting, TxState::Aborted],
            other => &[other],
        };
        assert!(
            allowed.contains(&tx.state),
            "{} became {} on {event:?}",
            before.state,
            tx.state
        );
        let now = match tx.state {
            TxState::Committing | TxState::Committed => Some(true),
            TxState::Aborting | TxState::Aborted => Some(false),
            _ => None,
        };
        if let Some(commit) = now {
            assert!(
                self.decided.is_none_or(|was| was == commit),
                "the decision changed"
            );
            self.decided = Some(commit);
        }
        let decided_now = d
            .notes
            .iter()
            .filter(|n| n.kind.as_str().ends_with("_decided"));
        assert!(decided_now.count() <= 1, "two decisions at once");

        // Property 2: commit is decided only from all-prepared.
        if before.state != TxState::Committing && tx.state == TxState::Committing {
            assert_eq!(before.state, TxState::Preparing);
            let voting = match *event {
                Event::Reply {
                    branch,
                    phase: Phase::Prepare,
                    result: CallResult::Ok(_),
                    ..
                } => Some(branch as usize),
                _ => None,
            };
            for (i, b) in before.branches.iter().enumerate() {
                assert!(
                    b.status == StepStatus::Prepared || Some(i) == voting,
                    "commit decided with branch {i} {}",
                    b.status
                );
            }
        }

        for action in &d.actions {
            let Action::Call { branch, phase, .. } = *action else {
                continue;
            };
            match phase {
                Phase::Prepare => {
                    assert_eq!(before.state, TxState::Preparing);
                    assert_eq!(
                        tx.state,
                        TxState::Preparing,
                        "prepare sent after a decision"
                    );
                    self.prepare_sent.insert(branch);
                }
                Phase::Commit => {
                    assert_eq!(tx.state, TxState::Committing, "commit sent undecided");
                    assert_eq!(self.prepared.len(), n, "commit sent before all prepared");
                    self.commit_sent = true;
                }
                Phase::Abort => {
                    assert_eq!(tx.state, TxState::Aborting, "abort sent undecided");
                    // After a restart the log may not show a prepare that went out, so presumed
                    // abort also aborts branches it cannot tell were asked.
                    assert!(
                        self.prepare_sent.contains(&branch)
                            || tx
                                .last_error
                                .as_deref()
                                .is_some_and(|e| e.contains("presumed abort")),
                        "abort sent to branch {branch} that was never asked to prepare"
                    );
                    self.abort_sent.insert(branch);
                }
                other => panic!("unexpected {other} call"),
            }
        }
        assert!(
            !self.commit_sent || self.abort_sent.is_empty(),
            "both commit and abort were sent"
        );
    }

    /// Property 6: a reply or due that the engine must treat as stale changes nothing.
    fn stale(&mut self, event: Event) {
        let before = self.tx.clone();
        let d = self
            .apply(event.clone())
            .expect("stale events are not refused");
        assert_eq!(d, Decision::default(), "stale {event:?} changed something");
        assert_eq!(self.tx, before);
    }

    fn crash_and_resume(&mut self) {
        self.past.append(&mut self.inflight);
        self.timers.clear();
        self.apply(Event::Resume).expect("resume is never refused");
    }

    fn answer(&mut self, k: usize, ok_only: bool) {
        let (branch, phase, attempt) = self.inflight.swap_remove(k);
        self.past.push((branch, phase, attempt));
        let result = self.random_result(ok_only);
        let event = reply(branch, phase, attempt, result);
        self.apply(event).expect("replies are never refused");
        // Sometimes the network delivers it twice: the second copy is stale.
        if !ok_only && self.below(10) == 0 {
            let result = self.random_result(false);
            self.stale(reply(branch, phase, attempt, result));
        }
    }

    fn fire(&mut self, k: usize) {
        let (branch, phase, attempt) = self.timers.swap_remove(k);
        self.apply(due(branch, phase, attempt))
            .expect("due retries are never refused");
    }

    fn random_stale(&mut self) {
        let key = if !self.past.is_empty() && self.below(2) == 0 {
            let k = self.below(self.past.len());
            self.past[k]
        } else {
            let phases = [Phase::Prepare, Phase::Commit, Phase::Abort, Phase::Execute];
            (
                self.below(7) as u32,
                phases[self.below(phases.len())],
                self.below(5) as u32,
            )
        };
        let (branch, phase, attempt) = key;
        if self.below(2) == 0 {
            if !self.inflight.contains(&key) {
                let result = self.random_result(false);
                self.stale(reply(branch, phase, attempt, result));
            }
        } else if !self.timers.contains(&key) {
            self.stale(due(branch, phase, attempt));
        }
    }

    fn cancel(&mut self) {
        let state = self.tx.state;
        match self.apply(cancel("test")) {
            Ok(_) => {
                assert!(matches!(state, TxState::Preparing | TxState::Aborting));
                assert!(
                    matches!(self.tx.state, TxState::Aborting | TxState::Aborted),
                    "cancel accepted, not acted on"
                );
            }
            Err(refused) if state.is_final() => {
                assert!(refused.0.contains("has already ended"), "{refused}")
            }
            Err(refused) => {
                assert_eq!(state, TxState::Committing);
                assert!(refused.0.contains("decided to commit"), "{refused}");
            }
        }
    }

    /// A prepare timeout or the deadline: aborts while preparing, and only then.
    fn timeout(&mut self, event: Event) {
        let was = self.tx.clone();
        let d = self.apply(event).expect("never refused");
        if was.state == TxState::Preparing {
            assert!(matches!(
                self.tx.state,
                TxState::Aborting | TxState::Aborted
            ));
        } else {
            assert_eq!(d, Decision::default());
            assert_eq!(self.tx, was);
        }
    }

    /// Drives the transaction to an outcome: `chaos` random events first, then only successes.
    fn run(&mut self, chaos: usize) {
        self.apply(Event::Begin).expect("begin is never refused");
        for round in 0..chaos + 500 {
            let ok_only = round >= chaos;
            if self.tx.state.is_final() && self.inflight.is_empty() && self.timers.is_empty() {
                break;
            }
            let roll = if ok_only { 99 } else { self.below(100) };
            match roll {
                0 => self.cancel(),
                1 => self.timeout(Event::PrepareTimeout),
                2 => self.timeout(Event::DeadlineExpired),
                3..=7 => self.crash_and_resume(),
                8..=22 => self.random_stale(),
                23 => {
                    let err = self.apply(Event::Retry).expect_err("2PC is never retried");
                    assert!(err.0.contains("only a failed transaction"), "{err}");
                }
                _ => {
                    let pending = self.inflight.len() + self.timers.len();
                    assert!(
                        pending > 0,
                        "stuck in {} with nothing to wait for",
                        self.tx.state
                    );
                    // Answer calls before firing timers once only successes remain, so that
                    // moot timers drain without delaying the outcome.
                    let k = if ok_only && !self.inflight.is_empty() {
                        0
                    } else {
                        self.below(pending)
                    };
                    if k < self.inflight.len() {
                        self.answer(k, ok_only);
                    } else {
                        self.fire(k - self.inflight.len());
                    }
                }
            }
        }
    }

    /// Properties 1 and 4: an outcome, and the outcome's promise about the branches.
    fn check_outcome(&self) {
        let tx = &self.tx;
        match tx.state {
            TxState::Committed => {
                assert_eq!(statuses(tx), vec![StepStatus::Committed; tx.branches.len()]);
                assert!(self.abort_sent.is_empty(), "a committed branch was aborted");
            }
            TxState::Aborted => {
                assert_eq!(statuses(tx), vec![StepStatus::Aborted; tx.branches.len()]);
                assert!(!self.commit_sent, "an aborted transaction sent a commit");
                for i in &self.prepare_sent {
                    assert!(
                        self.abort_sent.contains(i) || self.voted_no.contains(i),
                        "branch {i} was asked to prepare and never aborted"
                    );
                }
                assert!(tx.last_error.is_some(), "an abort says why");
            }
            other => panic!("ended {other} after {} decisions", self.decisions),
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    #[test]
    fn random_two_phase_commits_keep_the_protocol_invariants(
        branches in arb_branches(),
        seed in any::<[u8; 32]>(),
        chaos in 0usize..150,
        mood in 0u8..3,
    ) {
        let mut sim = Sim::new(branches, seed, mood);
        sim.run(chaos);
        sim.check_outcome();
    }
}

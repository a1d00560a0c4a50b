//! A simulator that drives random sagas through random replies, crashes, stale and duplicate
//! deliveries, cancels, deadlines and retries, and checks the saga invariants after every event.

use proptest::prelude::*;

use super::*;

/// splitmix64: the simulator's own deterministic randomness, seeded by proptest.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }

    fn unit(&mut self) -> f64 {
        (self.next() >> 11) as f64 / (1u64 << 53) as f64
    }
}

type CallKey = (u32, Phase, u32);

/// Random saga shapes that pass the API's validation: stages non-decreasing, at most one pivot
/// alone in its stage and without compensation, only retriable steps after it.
fn arb_steps() -> impl Strategy<Value = Vec<StepDef>> {
    (
        1usize..=6,
        proptest::collection::vec(any::<bool>(), 6),
        proptest::option::of(0usize..6),
        proptest::collection::vec(any::<bool>(), 6),
        proptest::collection::vec(1u32..=3, 6),
    )
        .prop_map(|(n, bumps, pivot, comps, maxes)| {
            let pivot = pivot.filter(|&p| p < n);
            let mut stage = 0;
            (0..n)
                .map(|i| {
                    let kind = match pivot {
                        Some(p) if i == p => StepKind::Pivot,
                        Some(p) if i > p => StepKind::Retriable,
                        _ => StepKind::Compensatable,
                    };
                    let alone = pivot.is_some_and(|p| i == p || i == p + 1);
                    if i > 0 && (bumps[i] || alone) {
                        stage += 1;
                    }
                    let compensate = comps[i] && kind != StepKind::Pivot;
                    step(&format!("s{i}"), stage, kind, compensate, maxes[i])
                })
                .collect()
        })
}

struct Sim {
    tx: TxRecord,
    rng: Rng,
    /// Calls the engine considers current.
    inflight: Vec<CallKey>,
    /// Scheduled retries (some become moot; firing those must change nothing).
    timers: Vec<CallKey>,
    /// Calls answered or lost in a crash, replayed as stale or duplicate replies.
    past: Vec<CallKey>,
    forward_done: u32,
    last_undone: Option<u32>,
    pivot_succeeded: bool,
    decisions: usize,
    /// How participants behave in this run: 0 harsh, 1 mostly fine, 2 flaky (transient errors).
    mood: u8,
}

impl Sim {
    fn new(steps: Vec<StepDef>, seed: u64, mood: u8) -> Self {
        Sim {
            tx: saga(steps),
            rng: Rng(seed),
            inflight: Vec::new(),
            timers: Vec::new(),
            past: Vec::new(),
            forward_done: 0,
            last_undone: None,
            pivot_succeeded: false,
            decisions: 0,
            mood,
        }
    }

    fn steps(&self) -> &[StepDef] {
        match &self.tx.definition {
            Definition::Saga(def) => &def.steps,
            Definition::TwoPhase(_) => &[],
        }
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
        let roll = self.rng.below(20);
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
        let jitter = self.rng.unit();
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
        let compensating = self.inflight.iter().filter(|c| c.1 == Phase::Compensate);
        assert!(compensating.count() <= 1, "two compensations in flight");
        Ok(d)
    }

    fn check(&mut self, before: &TxRecord, event: &Event, d: &Decision) {
        let tx = &self.tx;
        let steps = self.steps().to_vec();

        // Changes are reported exactly, once each.
        let mut changed = d.changed.clone();
        changed.sort_unstable();
        changed.dedup();
        assert_eq!(changed.len(), d.changed.len(), "duplicate changed index");
        let differing: Vec<u32> = (0..tx.branches.len())
            .filter(|&i| tx.branches[i] != before.branches[i])
            .map(|i| i as u32)
            .collect();
        assert_eq!(changed, differing, "changed does not match the records");
        let row_differs = tx.state != before.state
            || tx.stage != before.stage
            || tx.last_error != before.last_error
            || tx.cancel_requested != before.cancel_requested;
        assert_eq!(d.tx_changed, row_differs, "tx_changed is wrong");

        // Property 4: nothing is called or scheduled around an outcome.
        if before.state.is_resting() && *event != Event::Retry {
            assert_eq!(*d, Decision::default(), "a resting saga moved");
        }
        if tx.state.is_resting() {
            assert!(d.actions.is_empty(), "actions returned with the outcome");
        }

        // Property 2: forward completion numbers compensation order.
        // Several steps can end in one decision (a step runs out of retries and the waiting
        // ones are abandoned), so the new numbers form the next block, in any order.
        let mut ended: Vec<u32> = before
            .branches
            .iter()
            .zip(&tx.branches)
            .filter(|(b, _)| b.done_order.is_none())
            .filter_map(|(_, a)| a.done_order)
            .collect();
        ended.sort_unstable();
        let expected: Vec<u32> = (1..=ended.len() as u32)
            .map(|k| self.forward_done + k)
            .collect();
        assert_eq!(ended, expected, "done_order is not the order of completion");
        self.forward_done += ended.len() as u32;
        for a in &tx.branches {
            let may_have_run = !matches!(
                a.status,
                StepStatus::Pending
                    | StepStatus::Running
                    | StepStatus::Backoff
                    | StepStatus::Failed
            );
            assert_eq!(a.done_order.is_some(), may_have_run, "{a:?}");
        }
        let mut undone: Vec<u32> = Vec::new();
        for note in &d.notes {
            if matches!(note.kind.as_str(), "compensate_ok" | "compensate_skipped") {
                let i = note.branch.expect("compensation notes name their branch");
                let order = tx.branches[i as usize]
                    .done_order
                    .expect("only a step that may have run is compensated");
                if let Some(last) = self.last_undone {
                    assert!(order < last, "compensation out of reverse order");
                }
                self.last_undone = Some(order);
                undone.push(i);
            }
        }
        let mut newly: Vec<u32> = (0..tx.branches.len())
            .filter(|&i| {
                tx.branches[i].status == StepStatus::Compensated
                    && before.branches[i].status != StepStatus::Compensated
            })
            .map(|i| i as u32)
            .collect();
        undone.sort_unstable();
        newly.sort_unstable();
        assert_eq!(undone, newly, "compensated branches without notes");

        for action in &d.actions {
            let Action::Call { branch, phase, .. } = *action else {
                continue;
            };
            let b = branch as usize;
            match phase {
                Phase::Execute => {
                    let forward = before.state == TxState::Running && tx.state == TxState::Running;
                    let resend =
                        *event == Event::Resume && before.branches[b].status == StepStatus::Running;
                    assert!(forward || resend, "execute sent while compensating");
                }
                Phase::Compensate => {
                    assert!(tx.branches[b].done_order.is_some(), "never ran");
                    assert!(steps[b].compensate.is_some());
                    assert_eq!(steps[b].kind, StepKind::Compensatable);
                    assert!(
                        tx.branches.iter().all(|x| x.status != StepStatus::Running),
                        "compensation sent with an execute in flight"
                    );
                }
                other => panic!("unexpected {other} call"),
            }
        }
        let undoing = tx.branches.iter().filter(|b| {
            matches!(
                b.status,
                StepStatus::Compensating | StepStatus::CompensateBackoff
            )
        });
        assert!(undoing.count() <= 1, "two compensations at once");

        // Property 3: a succeeded pivot is the point of no return.
        let pivot_ok = steps
            .iter()
            .zip(&tx.branches)
            .any(|(s, b)| s.kind == StepKind::Pivot && b.status == StepStatus::Succeeded);
        self.pivot_succeeded |= pivot_ok;
        if self.pivot_succeeded {
            assert!(
                matches!(tx.state, TxState::Running | TxState::Committed),
                "compensating after the pivot succeeded"
            );
        }
    }

    /// A reply or due that the engine must treat as stale: asserts it changes nothing.
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
    }

    fn fire(&mut self, k: usize) {
        let (branch, phase, attempt) = self.timers.swap_remove(k);
        let event = Event::Due {
            branch,
            phase,
            attempt,
        };
        self.apply(event).expect("due retries are never refused");
    }

    fn random_stale(&mut self) {
        let key = if !self.past.is_empty() && self.rng.below(2) == 0 {
            self.past[self.rng.below(self.past.len())]
        } else {
            let phases = [Phase::Execute, Phase::Compensate, Phase::Prepare];
            (
                self.rng.below(8) as u32,
                phases[self.rng.below(3)],
                self.rng.below(5) as u32,
            )
        };
        let (branch, phase, attempt) = key;
        if self.rng.below(2) == 0 {
            if !self.inflight.contains(&key) {
                let result = self.random_result(false);
                self.stale(reply(branch, phase, attempt, result));
            }
        } else if !self.timers.contains(&key) {
            self.stale(Event::Due {
                branch,
                phase,
                attempt,
            });
        }
    }

    fn cancel(&mut self) {
        let state = self.tx.state;
        let reason = "test".to_string();
        match self.apply(Event::Cancel { reason }) {
            Ok(_) => {
                assert!(matches!(state, TxState::Running | TxState::Compensating));
                assert_ne!(
                    self.tx.state,
                    TxState::Running,
                    "cancel accepted, not acted on"
                );
            }
            Err(refused) if state.is_resting() => {
                assert!(refused.0.contains("has already ended"), "{refused}")
            }
            Err(refused) => {
                assert_eq!(state, TxState::Running);
                assert!(refused.0.contains("pivot step"), "{refused}");
            }
        }
    }

    /// Drives the saga to an outcome: `chaos` random events first, then only successes.
    fn run(&mut self, chaos: usize, retry_failed: bool) {
        self.apply(Event::Resume).expect("resume is never refused");
        let mut retried = false;
        for round in 0..chaos + 500 {
            let ok_only = round >= chaos || retried;
            if self.tx.state == TxState::Failed && retry_failed && !retried {
                self.cancel();
                self.apply(Event::Retry)
                    .expect("a failed saga can be retried");
                retried = true;
                continue;
            }
            if self.tx.state.is_resting() && self.inflight.is_empty() && self.timers.is_empty() {
                break;
            }
            let roll = if ok_only { 99 } else { self.rng.below(100) };
            match roll {
                0..=2 => self.cancel(),
                3..=4 => {
                    let was = self.tx.state;
                    self.apply(Event::DeadlineExpired).expect("never refused");
                    if was != TxState::Running {
                        assert_eq!(self.tx.state, was);
                    }
                }
                5..=9 => self.crash_and_resume(),
                10..=24 => self.random_stale(),
                25..=26 => {
                    if self.tx.state != TxState::Failed {
                        assert!(self.apply(Event::Retry).is_err());
                    }
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
                        self.rng.below(pending)
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

    /// Property 1 and 5: an outcome, and the outcome's promise about the steps.
    fn check_outcome(&self, retry_failed: bool) {
        let tx = &self.tx;
        assert!(
            tx.state.is_resting(),
            "ended {} after {} decisions",
            tx.state,
            self.decisions
        );
        match tx.state {
            TxState::Committed => assert!(tx
                .branches
                .iter()
                .all(|b| b.status == StepStatus::Succeeded)),
            TxState::Compensated => {
                for b in &tx.branches {
                    match b.status {
                        StepStatus::Compensated => assert!(b.done_order.is_some()),
                        StepStatus::Pending | StepStatus::Failed => {
                            assert!(b.done_order.is_none())
                        }
                        other => panic!("branch {} left {other} in a compensated saga", b.index),
                    }
                }
            }
            TxState::Failed => {
                assert!(
                    !retry_failed,
                    "a retried saga with good participants failed"
                );
                let stuck = tx
                    .branches
                    .iter()
                    .filter(|b| b.status == StepStatus::CompensationFailed);
                assert_eq!(stuck.count(), 1);
            }
            other => panic!("not a saga outcome: {other}"),
        }
        if self.pivot_succeeded {
            assert_eq!(tx.state, TxState::Committed);
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    #[test]
    fn random_sagas_keep_the_saga_invariants(
        steps in arb_steps(),
        seed in any::<u64>(),
        chaos in 0usize..150,
        retry_failed in any::<bool>(),
        mood in 0u8..3,
    ) {
        let mut sim = Sim::new(steps, seed, mood);
        sim.run(chaos, retry_failed);
        sim.check_outcome(retry_failed);
    }
}

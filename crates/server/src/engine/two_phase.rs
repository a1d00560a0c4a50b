//! The two-phase-commit half of the engine: `Prepare` to every branch in parallel; when all vote
//! yes, the commit decision, then `Commit` to every branch until each acknowledges; on any no, a
//! prepare that never answers, a prepare timeout, the deadline or a cancel, the abort decision,
//! then `Abort` to every branch that may have prepared.
//!
//! A decision is taken once and never revised: phase two retries past the branch's retry budget
//! (with capped backoff) instead of giving up, because a participant that prepared holds its locks
//! until it hears the outcome. Such a run of failures is recorded compactly (the first attempt,
//! every power of two and every change of error; see `Core::note_retry`), so a participant that
//! never answers does not flood the history. The driver persists a [`Decision`] before it sends any of its calls,
//! so the commit decision is durable before the first `Commit` leaves.

use crate::model::{BranchDef, Definition, EventKind, Phase, StepStatus, TxId, TxRecord, TxState};

use super::book::{deref_core, recorded_attempt, Core};
use super::{Action, CallResult, Decision, Event, Refused};

/// Applies `event` to a two-phase commit. Anything that is not one is left alone.
pub(super) fn decide(tx: &mut TxRecord, event: Event, jitter: f64) -> Result<Decision, Refused> {
    let TxRecord {
        id,
        state,
        definition,
        last_error,
        cancel_requested,
        branches,
        ..
    } = tx;
    let Definition::TwoPhase(def) = &*definition else {
        return Ok(Decision::default());
    };
    let mut tpc = TwoPhase {
        id: *id,
        defs: &def.branches,
        jitter,
        core: Core {
            len: def.branches.len().min(branches.len()),
            branches,
            state,
            last_error,
            cancel_requested,
            out: Decision::default(),
        },
    };
    tpc.apply(event)?;
    Ok(tpc.core.out)
}

/// One decision in progress: borrowed views of the transaction plus the answer being built.
struct TwoPhase<'a> {
    id: TxId,
    defs: &'a [BranchDef],
    jitter: f64,
    core: Core<'a>,
}

deref_core!(TwoPhase);

impl TwoPhase<'_> {
    fn apply(&mut self, event: Event) -> Result<(), Refused> {
        match event {
            Event::Retry => return self.retry(),
            Event::Cancel { reason } => return self.cancel(&reason),
            // After the outcome nothing is ever called again; late replies and timers are moot.
            _ if self.state.is_resting() => {}
            Event::Begin
                if *self.state == TxState::Preparing
                    && (0..self.len()).all(|i| self.status(i) == StepStatus::Pending) =>
            {
                self.begin()
            }
            Event::Begin | Event::Resume => self.resume(),
            Event::Reply {
                branch,
                phase,
                attempt,
                result,
            } => {
                if let Some(i) = self.index(branch) {
                    self.reply(i, phase, attempt, result);
                }
            }
            Event::Due {
                branch,
                phase,
                attempt,
            } => {
                if let Some(i) = self.index(branch) {
                    self.due(i, phase, attempt);
                }
            }
            Event::PrepareTimeout => {
                if *self.state == TxState::Preparing {
                    self.decide_abort("prepare timed out".to_string());
                }
            }
            Event::DeadlineExpired => {
                if *self.state == TxState::Preparing {
                    self.decide_abort("deadline exceeded".to_string());
                }
            }
        }
        Ok(())
    }

    // ---- bookkeeping ----

    fn all_status(&self, wanted: StepStatus) -> bool {
        self.branches[..self.len()]
            .iter()
            .all(|b| b.status == wanted)
    }

    /// The attempt after the last one issued in the current phase: a re-send keeps the key
    /// (tx, branch, phase) and only bumps the attempt, so a participant that already applied it
    /// answers as before.
    fn next_attempt(&self, i: usize) -> u32 {
        self.branches[i].attempts.saturating_add(1)
    }

    /// Issues `phase` to branch `i` as `attempt`, with the branch status that says it is in flight.
    fn send(&mut self, i: usize, phase: Phase, attempt: u32) {
        self.send_as(i, phase, attempt, true);
    }

    /// [`Self::send`] for a retry that is due: recorded only on a [`recorded_attempt`], so a
    /// call retried for as long as phase two takes does not write an event per attempt.
    fn send_retry(&mut self, i: usize, phase: Phase, attempt: u32) {
        self.send_as(i, phase, attempt, recorded_attempt(attempt));
    }

    fn send_as(&mut self, i: usize, phase: Phase, attempt: u32, record: bool) {
        let (status, kind) = match phase {
            Phase::Prepare => (StepStatus::Running, EventKind::PrepareSent),
            Phase::Commit => (StepStatus::Committing, EventKind::CommitSent),
            Phase::Abort => (StepStatus::Aborting, EventKind::AbortSent),
            // A two-phase commit has no saga phases.
            Phase::Execute | Phase::Compensate => return,
        };
        let b = &mut self.branches[i];
        b.status = status;
        b.attempts = attempt;
        self.touch(i);
        self.out.actions.push(Action::Call {
            branch: i as u32,
            phase,
            attempt,
        });
        if record {
            self.note(kind, Some(i), format!("attempt {attempt}"));
        }
    }

    /// Puts branch `i` in `status` after failed attempt `attempt`, schedules the next one and
    /// records the failure as an `error_kind` event (compactly, see [`Core::note_retry`]).
    fn back_off(
        &mut self,
        i: usize,
        phase: Phase,
        status: StepStatus,
        attempt: u32,
        msg: String,
        error_kind: EventKind,
    ) {
        let next = self.next_attempt(i);
        let b = &mut self.branches[i];
        b.status = status;
        let previous = b.last_error.take();
        self.touch(i);
        let after = self.defs[i].retry.backoff(next, self.jitter);
        self.out.actions.push(Action::Schedule {
            branch: i as u32,
            phase,
            attempt: next,
            after,
        });
        let ms = after.as_millis();
        self.note_retry(error_kind, i, attempt, previous.as_deref(), &msg, ms);
        self.branches[i].last_error = Some(msg);
    }

    // ---- driving ----

    /// Asks every branch to prepare.
    fn begin(&mut self) {
        for i in 0..self.len() {
            self.send(i, Phase::Prepare, 1);
        }
        self.check_votes();
    }

    fn resume(&mut self) {
        match *self.state {
            TxState::Preparing => {
                // Presumed abort: there is no decision in the log, so the transaction aborts.
                // Progress is written lazily, so a branch the log shows as never asked may have
                // been asked and may have prepared: every such branch is sent an Abort too (its
                // barrier turns an abort without a prepare into a no-op, and refuses a prepare
                // that arrives after it).
                for i in 0..self.len() {
                    if self.status(i) == StepStatus::Pending {
                        self.branches[i].status = StepStatus::Unknown;
                        self.touch(i);
                    }
                }
                self.decide_abort(
                    "the coordinator restarted before the decision (presumed abort)".into(),
                );
            }
            TxState::Committing => {
                for i in 0..self.len() {
                    match self.status(i) {
                        StepStatus::Prepared => self.send(i, Phase::Commit, 1),
                        StepStatus::Committing | StepStatus::CommitBackoff => {
                            self.send(i, Phase::Commit, self.next_attempt(i))
                        }
                        _ => {}
                    }
                }
                self.check_committed();
            }
            TxState::Aborting => self.send_aborts(),
            _ => {}
        }
    }

    fn reply(&mut self, i: usize, phase: Phase, attempt: u32, result: CallResult) {
        let in_flight = match phase {
            Phase::Prepare => (TxState::Preparing, StepStatus::Running),
            Phase::Commit => (TxState::Committing, StepStatus::Committing),
            Phase::Abort => (TxState::Aborting, StepStatus::Aborting),
            Phase::Execute | Phase::Compensate => return,
        };
        let b = &self.branches[i];
        // Anything but the answer to the call in flight is stale: an earlier attempt, a prepare
        // overtaken by the abort decision, a duplicate delivery.
        if (*self.state, b.status) != in_flight || b.attempts != attempt {
            return;
        }
        match phase {
            Phase::Prepare => self.reply_prepare(i, attempt, result),
            Phase::Commit => self.reply_phase_two(i, attempt, result, Phase::Commit),
            _ => self.reply_phase_two(i, attempt, result, Phase::Abort),
        }
    }

    fn due(&mut self, i: usize, phase: Phase, attempt: u32) {
        if self.branches[i].attempts.checked_add(1) != Some(attempt) {
            return;
        }
        match (phase, *self.state, self.status(i)) {
            (Phase::Prepare, TxState::Preparing, StepStatus::Backoff)
            | (Phase::Commit, TxState::Committing, StepStatus::CommitBackoff)
            | (Phase::Abort, TxState::Aborting, StepStatus::AbortBackoff) => {
                self.send_retry(i, phase, attempt)
            }
            _ => {}
        }
    }

    // ---- phase one ----

    fn reply_prepare(&mut self, i: usize, attempt: u32, result: CallResult) {
        let defs = self.defs;
        let def = &defs[i];
        match result {
            CallResult::Ok(output) => {
                let b = &mut self.branches[i];
                b.status = StepStatus::Prepared;
                b.output = Some(output);
                self.touch(i);
                self.note(
                    EventKind::PrepareOk,
                    Some(i),
                    format!("attempt {attempt} voted yes"),
                );
                self.check_votes();
            }
            // A definite no (or a participant that rejects the call): it did not prepare.
            CallResult::Failed(msg) | CallResult::Permanent(msg) => {
                let b = &mut self.branches[i];
                b.status = StepStatus::Failed;
                b.last_error = Some(msg.clone());
                self.touch(i);
                self.note(
                    EventKind::PrepareFailed,
                    Some(i),
                    format!("voted no: {msg}"),
                );
                self.decide_abort(format!("branch {} voted no: {msg}", def.name));
            }
            CallResult::Transient(msg) if attempt < def.retry.max_attempts => {
                self.back_off(
                    i,
                    Phase::Prepare,
                    StepStatus::Backoff,
                    attempt,
                    msg,
                    EventKind::PrepareError,
                );
            }
            // Out of retries without an answer: it may have prepared, so it is sent an abort.
            CallResult::Transient(msg) => {
                let b = &mut self.branches[i];
                b.status = StepStatus::Unknown;
                b.last_error = Some(msg.clone());
                self.touch(i);
                self.note(
                    EventKind::PrepareError,
                    Some(i),
                    format!(
                        "attempt {attempt} failed: {msg}; out of retries, it may have prepared"
                    ),
                );
                self.decide_abort(format!(
                    "branch {} gave no answer after {}: {msg}",
                    def.name,
                    attempts_text(attempt)
                ));
            }
        }
    }

    /// Takes the commit decision once every branch voted yes, and starts phase two in the same
    /// decision: the driver records it before it sends any `Commit`.
    fn check_votes(&mut self) {
        if *self.state != TxState::Preparing || !self.all_status(StepStatus::Prepared) {
            return;
        }
        self.set_state(TxState::Committing);
        self.note(
            EventKind::CommitDecided,
            None,
            "every branch voted yes".to_string(),
        );
        for i in 0..self.len() {
            self.send(i, Phase::Commit, 1);
        }
        self.check_committed();
    }

    /// Takes the abort decision and sends `Abort` to every branch that may have prepared.
    fn decide_abort(&mut self, reason: String) {
        self.set_state(TxState::Aborting);
        self.set_last_error(reason.clone());
        self.clear_cancel_request();
        self.note(EventKind::AbortDecided, None, reason);
        self.send_aborts();
    }

    // ---- phase two ----

    /// Sends (or, after a restart, re-sends) `Abort` wherever it is needed and marks the branches
    /// that never prepared as aborted; ends the transaction when nothing is left to abort.
    fn send_aborts(&mut self) {
        for i in 0..self.len() {
            match self.status(i) {
                // A prepare in flight is overtaken: the participant's barrier refuses a prepare
                // that arrives after its abort, and the late reply is stale here.
                StepStatus::Prepared
                | StepStatus::Unknown
                | StepStatus::Running
                | StepStatus::Backoff => self.send(i, Phase::Abort, 1),
                StepStatus::Aborting | StepStatus::AbortBackoff => {
                    self.send(i, Phase::Abort, self.next_attempt(i))
                }
                StepStatus::Pending | StepStatus::Failed => {
                    let why = if self.status(i) == StepStatus::Pending {
                        "prepare never sent; nothing to abort"
                    } else {
                        "voted no; nothing to abort"
                    };
                    let b = &mut self.branches[i];
                    b.status = StepStatus::Aborted;
                    b.attempts = 0;
                    self.touch(i);
                    self.note(EventKind::AbortSkipped, Some(i), why.to_string());
                }
                _ => {}
            }
        }
        self.check_aborted();
    }

    /// A `Commit` or `Abort` answer. Only `Ok` ends the branch: any failure is retried with
    /// backoff for as long as it takes, because the decision is already taken and durable.
    fn reply_phase_two(&mut self, i: usize, attempt: u32, result: CallResult, phase: Phase) {
        let (done, backoff, ok_kind, error_kind) = if phase == Phase::Commit {
            (
                StepStatus::Committed,
                StepStatus::CommitBackoff,
                EventKind::CommitOk,
                EventKind::CommitError,
            )
        } else {
            (
                StepStatus::Aborted,
                StepStatus::AbortBackoff,
                EventKind::AbortOk,
                EventKind::AbortError,
            )
        };
        match result {
            CallResult::Ok(_) => {
                // The output kept is the prepare's; an acknowledgement adds nothing to it.
                self.branches[i].status = done;
                self.touch(i);
                self.note(ok_kind, Some(i), format!("attempt {attempt} succeeded"));
                if phase == Phase::Commit {
                    self.check_committed();
                } else {
                    self.check_aborted();
                }
            }
            CallResult::Failed(msg) | CallResult::Transient(msg) | CallResult::Permanent(msg) => {
                self.back_off(i, phase, backoff, attempt, msg, error_kind);
            }
        }
    }

    fn check_committed(&mut self) {
        if *self.state == TxState::Committing && self.all_status(StepStatus::Committed) {
            self.set_state(TxState::Committed);
            self.note(
                EventKind::Committed,
                None,
                "every branch committed".to_string(),
            );
        }
    }

    fn check_aborted(&mut self) {
        if *self.state == TxState::Aborting && self.all_status(StepStatus::Aborted) {
            self.set_state(TxState::Aborted);
            self.note(
                EventKind::Aborted,
                None,
                "every branch that may have prepared was aborted".to_string(),
            );
        }
    }

    // ---- operator verbs ----

    fn cancel(&mut self, reason: &str) -> Result<(), Refused> {
        let state = *self.state;
        if state.is_resting() {
            return Err(Refused(format!(
                "transaction {} has already ended ({state})",
                self.id
            )));
        }
        match state {
            TxState::Preparing => {
                self.note(EventKind::CancelRequested, None, reason.to_string());
                self.decide_abort(format!("cancelled: {reason}"));
            }
            // Already aborting: the cancel is satisfied as it stands.
            TxState::Aborting => self.clear_cancel_request(),
            TxState::Committing => {
                return Err(Refused(format!(
                    "transaction {} has decided to commit; it cannot be cancelled",
                    self.id
                )))
            }
            _ => {}
        }
        Ok(())
    }

    /// A two-phase commit never rests in `failed` (phase two retries instead), so there is
    /// never anything for an operator's retry to resume.
    fn retry(&mut self) -> Result<(), Refused> {
        Err(Refused(format!(
            "transaction {} is {}; only a failed transaction can be retried",
            self.id, self.state
        )))
    }
}

fn attempts_text(n: u32) -> String {
    if n == 1 {
        "1 attempt".to_string()
    } else {
        format!("{n} attempts")
    }
}

//! The saga half of the engine: forward execution stage by stage, then, if a step fails or the
//! saga is cancelled before its pivot, compensation of every step that may have run, one at a
//! time, in reverse order of completion.

use crate::model::{
    Definition, EventKind, Phase, StepDef, StepKind, StepStatus, TxId, TxRecord, TxState,
};

use super::book::{deref_core, recorded_attempt, Core};
use super::{Action, CallResult, Decision, Event, Refused};

/// Applies `event` to a saga. Anything that is not a saga is left alone.
pub(super) fn decide(tx: &mut TxRecord, event: Event, jitter: f64) -> Result<Decision, Refused> {
    let TxRecord {
        id,
        state,
        definition,
        stage,
        last_error,
        cancel_requested,
        branches,
        ..
    } = tx;
    let Definition::Saga(def) = &*definition else {
        return Ok(Decision::default());
    };
    let mut saga = Saga {
        id: *id,
        steps: &def.steps,
        stage,
        jitter,
        core: Core {
            len: def.steps.len().min(branches.len()),
            branches,
            state,
            last_error,
            cancel_requested,
            out: Decision::default(),
        },
    };
    saga.apply(event)?;
    Ok(saga.core.out)
}

/// One decision in progress: borrowed views of the transaction plus the answer being built.
struct Saga<'a> {
    id: TxId,
    steps: &'a [StepDef],
    stage: &'a mut u32,
    jitter: f64,
    core: Core<'a>,
}

deref_core!(Saga);

impl Saga<'_> {
    fn apply(&mut self, event: Event) -> Result<(), Refused> {
        match event {
            Event::Retry => return self.retry(),
            Event::Cancel { reason } => return self.cancel(&reason),
            // After the outcome nothing is ever called again; late replies and timers are moot.
            _ if self.state.is_resting() => {}
            Event::Begin | Event::Resume => self.resume(),
            Event::Reply {
                branch,
                phase,
                attempt,
                result,
            } => match (self.index(branch), phase) {
                (Some(i), Phase::Execute) => self.reply_execute(i, attempt, result),
                (Some(i), Phase::Compensate) => self.reply_compensate(i, attempt, result),
                _ => {}
            },
            Event::Due {
                branch,
                phase,
                attempt,
            } => {
                if let Some(i) = self.index(branch) {
                    self.due(i, phase, attempt);
                }
            }
            Event::DeadlineExpired => {
                if *self.state == TxState::Running && self.pivot_blocking_cancel().is_none() {
                    self.start_compensating("deadline exceeded".to_string());
                }
            }
            // A saga has no prepare phase.
            Event::PrepareTimeout => {}
        }
        Ok(())
    }

    // ---- bookkeeping ----

    fn any_status(&self, wanted: &[StepStatus]) -> bool {
        self.branches[..self.len()]
            .iter()
            .any(|b| wanted.contains(&b.status))
    }

    /// Marks forward execution of `i` as ended, so compensation can later run in reverse.
    fn finish_forward(&mut self, i: usize, status: StepStatus) {
        let next = self
            .branches
            .iter()
            .filter_map(|b| b.done_order)
            .max()
            .unwrap_or(0)
            .saturating_add(1);
        let b = &mut self.branches[i];
        b.status = status;
        b.done_order = Some(next);
        self.touch(i);
    }

    fn schedule(&mut self, i: usize, phase: Phase, attempt: u32) -> u128 {
        let after = self.steps[i].retry.backoff(attempt, self.jitter);
        self.out.actions.push(Action::Schedule {
            branch: i as u32,
            phase,
            attempt,
            after,
        });
        after.as_millis()
    }

    /// The pivot step, if it has succeeded or may be running: the saga can then no longer be
    /// cancelled, because undoing the steps before a pivot that may have run would leave the
    /// participants inconsistent. A pivot in flight is retried until it answers definitely.
    fn pivot_blocking_cancel(&self) -> Option<(usize, bool)> {
        (0..self.len())
            .find(|&i| self.steps[i].kind == StepKind::Pivot)
            .and_then(|i| match self.status(i) {
                StepStatus::Succeeded => Some((i, true)),
                StepStatus::Running | StepStatus::Backoff => Some((i, false)),
                _ => None,
            })
    }

    // ---- forward ----

    fn resume(&mut self) {
        match *self.state {
            TxState::Running => {
                // Calls that were in flight or waiting when the last driver stopped go out again
                // with the same key; a participant that already applied one answers as before.
                for i in 0..self.len() {
                    if matches!(self.status(i), StepStatus::Running | StepStatus::Backoff) {
                        let next = self.branches[i].attempts.saturating_add(1);
                        self.send_execute(i, next);
                    }
                }
                self.advance();
            }
            TxState::Compensating => {
                for i in 0..self.len() {
                    match self.status(i) {
                        // Not expected here (compensation turns waiting retries into unknowns),
                        // but if found it may have run, so it is undone rather than called.
                        StepStatus::Backoff => self.finish_forward(i, StepStatus::Unknown),
                        // Forward recovery first: learn the outcome of executes that were in
                        // flight before compensating anything.
                        StepStatus::Running => {
                            let next = self.branches[i].attempts.saturating_add(1);
                            self.send_execute(i, next);
                        }
                        _ => {}
                    }
                }
                if !self.any_status(&[StepStatus::Running]) {
                    for i in 0..self.len() {
                        if matches!(
                            self.status(i),
                            StepStatus::Compensating | StepStatus::CompensateBackoff
                        ) {
                            let next = self.branches[i].attempts.saturating_add(1);
                            self.send_compensate(i, next);
                        }
                    }
                }
                self.continue_compensation();
            }
            _ => {}
        }
    }

    /// Starts the lowest stage that is not done yet, or commits when every step succeeded.
    fn advance(&mut self) {
        let current = (0..self.len())
            .filter(|&i| self.status(i) != StepStatus::Succeeded)
            .map(|i| self.steps[i].stage)
            .min();
        let Some(current) = current else {
            self.set_state(TxState::Committed);
            self.note(
                EventKind::Committed,
                None,
                "every step succeeded".to_string(),
            );
            return;
        };
        if *self.stage != current {
            *self.stage = current;
            self.out.tx_changed = true;
        }
        for i in 0..self.len() {
            if self.steps[i].stage == current && self.status(i) == StepStatus::Pending {
                self.send_execute(i, 1);
            }
        }
    }

    fn send_execute(&mut self, i: usize, attempt: u32) {
        self.send_execute_as(i, attempt, true);
    }

    /// Sends execute attempt `attempt` of branch `i`, recording it only if `record`: a due
    /// retry is recorded only on a [`recorded_attempt`], because a retriable step or a pivot is
    /// retried for as long as it takes and must not write an event per attempt.
    fn send_execute_as(&mut self, i: usize, attempt: u32, record: bool) {
        let b = &mut self.branches[i];
        b.status = StepStatus::Running;
        b.attempts = attempt;
        self.touch(i);
        self.out.actions.push(Action::Call {
            branch: i as u32,
            phase: Phase::Execute,
            attempt,
        });
        if record {
            self.note(
                EventKind::ExecuteSent,
                Some(i),
                format!("attempt {attempt}"),
            );
        }
    }

    fn reply_execute(&mut self, i: usize, attempt: u32, result: CallResult) {
        let b = &self.branches[i];
        if b.status != StepStatus::Running || b.attempts != attempt {
            return;
        }
        match *self.state {
            TxState::Running => self.forward_reply(i, attempt, result),
            TxState::Compensating => self.late_reply(i, result),
            _ => {}
        }
    }

    fn forward_reply(&mut self, i: usize, attempt: u32, result: CallResult) {
        let steps = self.steps;
        let step = &steps[i];
        let exhausted = attempt >= step.retry.max_attempts;
        match result {
            CallResult::Ok(output) => {
                self.branches[i].output = Some(output);
                self.finish_forward(i, StepStatus::Succeeded);
                self.note(
                    EventKind::ExecuteOk,
                    Some(i),
                    format!("attempt {attempt} succeeded"),
                );
                self.advance();
            }
            // A definite failure: the step did not run, so only the steps before it are undone.
            // Retriable steps never fail the saga and fall through to the retry below.
            CallResult::Failed(msg) | CallResult::Permanent(msg)
                if step.kind != StepKind::Retriable =>
            {
                let b = &mut self.branches[i];
                b.status = StepStatus::Failed;
                b.last_error = Some(msg.clone());
                self.touch(i);
                self.note(
                    EventKind::ExecuteFailed,
                    Some(i),
                    format!("step failed: {msg}"),
                );
                self.start_compensating(format!("step {} failed: {msg}", step.name));
            }
            // Out of retries without a definite answer: it may have run, so it is undone too.
            // A pivot cannot be treated so (it has no compensation) and keeps retrying below.
            CallResult::Transient(msg) if exhausted && step.kind == StepKind::Compensatable => {
                self.branches[i].last_error = Some(msg.clone());
                self.finish_forward(i, StepStatus::Unknown);
                self.note(
                    EventKind::ExecuteError,
                    Some(i),
                    format!("attempt {attempt} failed: {msg}; out of retries, it may have run"),
                );
                self.start_compensating(format!(
                    "step {} gave no answer after {}: {msg}",
                    step.name,
                    attempts_text(attempt)
                ));
            }
            CallResult::Failed(msg) | CallResult::Transient(msg) | CallResult::Permanent(msg) => {
                let next = attempt.saturating_add(1);
                let b = &mut self.branches[i];
                b.status = StepStatus::Backoff;
                let previous = b.last_error.take();
                self.touch(i);
                let ms = self.schedule(i, Phase::Execute, next);
                self.note_retry(
                    EventKind::ExecuteError,
                    i,
                    attempt,
                    previous.as_deref(),
                    &msg,
                    ms,
                );
                self.branches[i].last_error = Some(msg);
            }
        }
    }

    /// An execute that was in flight when compensation started: record what it did, never retry
    /// it, and go on compensating once nothing is in flight.
    fn late_reply(&mut self, i: usize, result: CallResult) {
        match result {
            CallResult::Ok(output) => {
                self.branches[i].output = Some(output);
                self.finish_forward(i, StepStatus::Succeeded);
                self.note(
                    EventKind::ExecuteOk,
                    Some(i),
                    "succeeded; to be undone".to_string(),
                );
            }
            CallResult::Failed(msg) | CallResult::Permanent(msg) => {
                let b = &mut self.branches[i];
                b.status = StepStatus::Failed;
                b.last_error = Some(msg.clone());
                self.touch(i);
                self.note(
                    EventKind::ExecuteFailed,
                    Some(i),
                    format!("step failed: {msg}"),
                );
            }
            CallResult::Transient(msg) => {
                self.branches[i].last_error = Some(msg.clone());
                self.finish_forward(i, StepStatus::Unknown);
                self.note(
                    EventKind::ExecuteError,
                    Some(i),
                    format!("{msg}; not retried while compensating, it may have run"),
                );
            }
        }
        self.continue_compensation();
    }

    fn due(&mut self, i: usize, phase: Phase, attempt: u32) {
        let b = &self.branches[i];
        if b.attempts.checked_add(1) != Some(attempt) {
            return;
        }
        match (phase, *self.state, b.status) {
            (Phase::Execute, TxState::Running, StepStatus::Backoff) => {
                self.send_execute_as(i, attempt, recorded_attempt(attempt))
            }
            (Phase::Compensate, TxState::Compensating, StepStatus::CompensateBackoff) => {
                self.send_compensate_as(i, attempt, recorded_attempt(attempt))
            }
            _ => {}
        }
    }

    // ---- compensation ----

    fn start_compensating(&mut self, reason: String) {
        self.set_state(TxState::Compensating);
        self.set_last_error(reason.clone());
        self.clear_cancel_request();
        self.note(EventKind::Compensating, None, reason);
        for i in 0..self.len() {
            // A failed attempt waiting for its retry may still have taken effect.
            if self.status(i) == StepStatus::Backoff {
                self.finish_forward(i, StepStatus::Unknown);
                self.note(
                    EventKind::ExecuteError,
                    Some(i),
                    "retry abandoned; it may have run".to_string(),
                );
            }
        }
        self.continue_compensation();
    }

    /// Issues the next compensation, skipping steps with nothing to undo, or ends the saga as
    /// compensated. Waits while an execute or a compensation is in flight.
    fn continue_compensation(&mut self) {
        loop {
            if self.any_status(&[
                StepStatus::Running,
                StepStatus::Compensating,
                StepStatus::CompensateBackoff,
                StepStatus::CompensationFailed,
            ]) {
                return;
            }
            let next = (0..self.len())
                .filter(|&i| matches!(self.status(i), StepStatus::Succeeded | StepStatus::Unknown))
                .max_by_key(|&i| (self.branches[i].done_order.unwrap_or(0), i));
            let Some(i) = next else {
                self.set_state(TxState::Compensated);
                self.note(
                    EventKind::Compensated,
                    None,
                    "every step that may have run was undone".to_string(),
                );
                return;
            };
            if self.steps[i].compensate.is_some() {
                self.send_compensate(i, 1);
                return;
            }
            let b = &mut self.branches[i];
            b.status = StepStatus::Compensated;
            b.attempts = 0;
            self.touch(i);
            self.note(
                EventKind::CompensateSkipped,
                Some(i),
                "nothing to undo".to_string(),
            );
        }
    }

    fn send_compensate(&mut self, i: usize, attempt: u32) {
        self.send_compensate_as(i, attempt, true);
    }

    /// Sends compensate attempt `attempt` of branch `i`, recording it only if `record` (see
    /// [`Self::send_execute_as`]).
    fn send_compensate_as(&mut self, i: usize, attempt: u32, record: bool) {
        let b = &mut self.branches[i];
        b.status = StepStatus::Compensating;
        b.attempts = attempt;
        self.touch(i);
        self.out.actions.push(Action::Call {
            branch: i as u32,
            phase: Phase::Compensate,
            attempt,
        });
        if record {
            self.note(
                EventKind::CompensateSent,
                Some(i),
                format!("attempt {attempt}"),
            );
        }
    }

    fn reply_compensate(&mut self, i: usize, attempt: u32, result: CallResult) {
        let b = &self.branches[i];
        if *self.state != TxState::Compensating
            || b.status != StepStatus::Compensating
            || b.attempts != attempt
        {
            return;
        }
        let exhausted = attempt >= self.steps[i].retry.max_attempts;
        match result {
            CallResult::Ok(_) => {
                self.branches[i].status = StepStatus::Compensated;
                self.touch(i);
                self.note(
                    EventKind::CompensateOk,
                    Some(i),
                    format!("attempt {attempt} succeeded"),
                );
                self.continue_compensation();
            }
            CallResult::Failed(msg) | CallResult::Transient(msg) if !exhausted => {
                let next = attempt.saturating_add(1);
                let b = &mut self.branches[i];
                b.status = StepStatus::CompensateBackoff;
                let previous = b.last_error.take();
                self.touch(i);
                let ms = self.schedule(i, Phase::Compensate, next);
                let kind = EventKind::CompensateError;
                self.note_retry(kind, i, attempt, previous.as_deref(), &msg, ms);
                self.branches[i].last_error = Some(msg);
            }
            CallResult::Failed(msg) | CallResult::Transient(msg) | CallResult::Permanent(msg) => {
                // The saga stops here rather than skip an undo: an operator must look.
                let b = &mut self.branches[i];
                b.status = StepStatus::CompensationFailed;
                b.last_error = Some(msg.clone());
                self.touch(i);
                let reason = format!(
                    "compensation of step {} failed after {}: {msg}",
                    self.steps[i].name,
                    attempts_text(attempt)
                );
                self.set_state(TxState::Failed);
                self.set_last_error(reason.clone());
                self.note(EventKind::Failed, Some(i), reason);
            }
        }
    }

    // ---- operator verbs ----

    fn cancel(&mut self, reason: &str) -> Result<(), Refused> {
        let state = *self.state;
        if state.is_resting() {
            let tail = if state == TxState::Failed {
                " and waits for an operator's retry"
            } else {
                ""
            };
            return Err(Refused(format!(
                "transaction {} has already ended ({state}){tail}",
                self.id
            )));
        }
        match state {
            TxState::Running => {
                if let Some((p, succeeded)) = self.pivot_blocking_cancel() {
                    let name = &self.steps[p].name;
                    return Err(Refused(if succeeded {
                        format!(
                            "transaction {} is past its pivot step {name}; it can only go forward",
                            self.id
                        )
                    } else {
                        format!(
                            "transaction {} is running its pivot step {name}; it can only go \
                             forward unless that step fails",
                            self.id
                        )
                    }));
                }
                self.note(EventKind::CancelRequested, None, reason.to_string());
                self.start_compensating(format!("cancelled: {reason}"));
            }
            // Already undoing: the cancel is satisfied as it stands.
            TxState::Compensating => self.clear_cancel_request(),
            _ => {}
        }
        Ok(())
    }

    fn retry(&mut self) -> Result<(), Refused> {
        if *self.state != TxState::Failed {
            return Err(Refused(format!(
                "transaction {} is {}; only a failed transaction can be retried",
                self.id, self.state
            )));
        }
        for i in 0..self.len() {
            // A failed transaction has nothing in flight: a step its log still shows as sent
            // (its record was cut short, e.g. by a refused write) may have run.
            if matches!(self.status(i), StepStatus::Running | StepStatus::Backoff) {
                let b = &mut self.branches[i];
                b.status = StepStatus::Unknown;
                b.attempts = 0;
                self.touch(i);
                continue;
            }
            if matches!(
                self.status(i),
                StepStatus::CompensationFailed
                    | StepStatus::Compensating
                    | StepStatus::CompensateBackoff
            ) {
                let b = &mut self.branches[i];
                // Back to where it stood before compensation, keeping its done_order so the
                // reverse order still holds; only a step that succeeded has an output.
                b.status = if b.output.is_some() {
                    StepStatus::Succeeded
                } else {
                    StepStatus::Unknown
                };
                b.attempts = 0;
                self.touch(i);
            }
        }
        self.set_state(TxState::Compensating);
        self.note(
            EventKind::Retried,
            None,
            "operator retry: compensating again".to_string(),
        );
        self.continue_compensation();
        Ok(())
    }
}

fn attempts_text(n: u32) -> String {
    if n == 1 {
        "1 attempt".to_string()
    } else {
        format!("{n} attempts")
    }
}

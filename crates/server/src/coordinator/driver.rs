//! The driver of one transaction: feeds events to the engine, records each decision through the
//! log writer (fenced by owner and epoch), then carries out the decision's calls and timers.
//!
//! What must be durable before Baton acts is awaited: the outcome (before any waiter hears it), a
//! 2PC decision (before phase two), and a cancel or retry (before its caller is answered).
//! Progress in between is queued to the log writer and the calls go out at once (docs/ARCHITECTURE.md §7.1):
//! recovery re-sends, with the same keys, every call not recorded as finished. History reaches
//! watchers only once committed. Writes of one transaction apply in order, and each is
//! conditional on the one before it (`expected_last_seq`), so none lands on top of a failed one.
//! If a write fails or is fenced, the driver re-reads the transaction: if it still owns it, it
//! resumes from what the log says; if not, it stops.
//!
//! A write the database refuses for its data would be refused again after every resume, and
//! each resume re-sends the calls. So such a refusal ends the transaction instead: it is recorded
//! `failed` with a `last_error` that names the refused write, in a small write of its own that
//! repeats none of the refused data, where an operator sees it and can retry or look. If even
//! that is refused, the driver stops driving it, says so once, and answers every cancel with why.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{broadcast, mpsc, watch};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use super::call::{self, CallSpec};
use super::writer::Ack;
use super::{Command, Coordinator, WriteError};
use crate::engine::{self, Action, Decision, Event, Refused};
use crate::model::{
    BranchRecord, Definition, EventKind, EventRecord, Phase, StepStatus, TxRecord, TxState,
};
use crate::proto::StepOutput;
use crate::store::{LogWrite, NewEvent, TxUpdate, WriteOutcome};

/// The driver cannot go on with this transaction (fenced, or shutting down).
struct Stop;

enum Persisted {
    Written,
    /// The write failed and the transaction was re-read from the log.
    Reloaded,
}

pub(super) async fn drive(
    co: &Arc<Coordinator>,
    tx: TxRecord,
    first: Event,
    commands: mpsc::Receiver<Command>,
    events: broadcast::Sender<EventRecord>,
    rested: watch::Sender<Option<TxRecord>>,
    stop: CancellationToken,
) {
    let trace_id = call::trace_id(tx.id, &tx.labels);
    let span = tracing::info_span!("tx", tx_id = %tx.id, %trace_id);
    // Exported spans join the transaction's trace; the parent span id is only a placeholder for
    // the client's span, whose id is not kept.
    let placeholder = crate::trace::SpanId::from_bytes(tx.id.0.as_u64_pair().1.to_be_bytes())
        .unwrap_or_else(crate::trace::SpanId::random);
    crate::telemetry::set_parent(
        &span,
        &crate::trace::TraceParent::new(trace_id, placeholder),
    );
    Driver {
        co: co.clone(),
        stop,
        tx,
        work: JoinSet::new(),
        events,
        rested,
        resume_after_reload: false,
        held: None,
        unacked: VecDeque::new(),
        gave_up: false,
        parked: None,
    }
    .run(first, commands)
    .instrument(span)
    .await;
}

struct Driver {
    co: Arc<Coordinator>,
    /// Cancelled at shutdown, or when this coordinator can no longer renew its lease.
    stop: CancellationToken,
    tx: TxRecord,
    /// In-flight calls and retry timers; each yields the event it produces.
    work: JoinSet<Event>,
    events: broadcast::Sender<EventRecord>,
    /// The transaction as it was recorded at rest, for callers waiting on its outcome.
    rested: watch::Sender<Option<TxRecord>>,
    /// Set when a failed write made the driver re-read the transaction.
    resume_after_reload: bool,
    /// Progress not yet handed to the log writer (decisions folded into one write), and when
    /// it must be handed over at the latest.
    held: Option<(TxUpdate, tokio::time::Instant)>,
    /// Progress writes submitted and not yet acknowledged, oldest first, with their history.
    unacked: VecDeque<(Ack, Vec<NewEvent>)>,
    /// Set once the transaction was recorded `failed` because the log refused its progress.
    gave_up: bool,
    /// Why the transaction can no longer be recorded at all, once even its `failed` record was
    /// refused: the driver then only answers cancels (see [`Driver::park`]).
    parked: Option<String>,
}

impl Driver {
    async fn run(mut self, first: Event, mut commands: mpsc::Receiver<Command>) {
        self.drive(first, &mut commands).await;
        if let Some(why) = self.parked.take() {
            self.park(why, commands).await;
        }
    }

    async fn drive(&mut self, first: Event, commands: &mut mpsc::Receiver<Command>) {
        let stop = self.stop.clone();
        let mut queue = VecDeque::from([first]);
        let mut deadline = self.tx.deadline_at.map(instant_of);
        let mut prepare_timeout = match (&self.tx.definition, self.tx.state) {
            (Definition::TwoPhase(tp), TxState::Preparing) => Some(instant_of(
                self.tx.created_at + chrono::Duration::milliseconds(tp.prepare_timeout_ms as i64),
            )),
            _ => None,
        };
        loop {
            while let Some(event) = queue.pop_front() {
                match self.apply(event).await {
                    Ok(Ok(())) => {}
                    Ok(Err(refused)) => tracing::debug!(%refused, "event refused"),
                    Err(Stop) => return,
                }
                if self.reloaded_needs_resume() {
                    queue.push_back(Event::Resume);
                }
            }
            if self.tx.state.is_resting() {
                tracing::debug!(state = %self.tx.state, "transaction at rest");
                return;
            }
            if self.work.is_empty() {
                tracing::warn!(state = %self.tx.state, "nothing in flight for an unfinished transaction");
            }
            tokio::select! {
                _ = stop.cancelled() => return,
                ack = next_ack(&mut self.unacked), if !self.unacked.is_empty() => {
                    if let Err(Stop) = self.acknowledged(ack).await {
                        return;
                    }
                    if self.reloaded_needs_resume() {
                        queue.push_back(Event::Resume);
                    }
                }
                Some(done) = self.work.join_next() => {
                    if let Ok(event) = done {
                        queue.push_back(event);
                    }
                }
                Some(command) = commands.recv() => match command {
                    Command::Cancel { reason, reply } => {
                        match self.apply(Event::Cancel { reason }).await {
                            // The cancel's own write was refused: it failed instead of cancelling.
                            Ok(Ok(())) if self.gave_up => {
                                let _ = reply.send(Err(Refused(self.stuck_text())));
                            }
                            Ok(answer) => { let _ = reply.send(answer); }
                            Err(Stop) => {
                                let text = match &self.parked {
                                    Some(why) => why.clone(),
                                    None => format!(
                                        "transaction {} is no longer driven by this coordinator", self.tx.id
                                    ),
                                };
                                let _ = reply.send(Err(Refused(text)));
                                return;
                            }
                        }
                        if self.reloaded_needs_resume() {
                            queue.push_back(Event::Resume);
                        }
                    }
                },
                _ = sleep_until(self.held.as_ref().map(|(_, at)| *at)), if self.held.is_some() => {
                    if let Err(Stop) = self.hand_over().await {
                        return;
                    }
                }
                _ = sleep_until(deadline), if deadline.is_some() => {
                    deadline = None;
                    queue.push_back(Event::DeadlineExpired);
                }
                _ = sleep_until(prepare_timeout), if prepare_timeout.is_some() => {
                    prepare_timeout = None;
                    queue.push_back(Event::PrepareTimeout);
                }
            }
        }
    }

    /// After a reload the in-memory calls no longer match the log; resume from the log.
    fn reloaded_needs_resume(&mut self) -> bool {
        std::mem::take(&mut self.resume_after_reload)
    }

    /// One event: decide, record, act.
    async fn apply(&mut self, event: Event) -> Result<Result<(), Refused>, Stop> {
        let jitter: f64 = rand::random();
        let state_before = self.tx.state;
        let answers_a_caller = matches!(event, Event::Cancel { .. } | Event::Retry);
        let decision = match engine::decide(&mut self.tx, event, chrono::Utc::now(), jitter) {
            Ok(d) => d,
            Err(refused) => return Ok(Err(refused)),
        };
        let decided = state_before != self.tx.state
            && matches!(self.tx.state, TxState::Committing | TxState::Aborting);
        let durable = answers_a_caller || decided || self.tx.state.is_resting();
        match self.persist(&decision, durable).await? {
            Persisted::Written => {
                if state_before != TxState::Committing && self.tx.state == TxState::Committing {
                    super::failpoint::hit(super::failpoint::AFTER_COMMIT_DECISION).await;
                }
                for action in decision.actions {
                    self.launch(action);
                }
            }
            Persisted::Reloaded => {
                self.work.abort_all();
                self.work = JoinSet::new();
                self.resume_after_reload = true;
            }
        }
        Ok(Ok(()))
    }

    /// Records the decision: changed rows and history, conditional on owner, epoch and the
    /// history so far. With `durable`, waits until it (and every write before it) is committed;
    /// otherwise holds it for up to `progress_flush`, folded with the decisions after it, so that
    /// a transaction that ends sooner writes its progress with its outcome, in one statement.
    async fn persist(&mut self, decision: &Decision, durable: bool) -> Result<Persisted, Stop> {
        let nothing =
            decision.notes.is_empty() && decision.changed.is_empty() && !decision.tx_changed;
        if nothing && !durable {
            return Ok(Persisted::Written);
        }
        if !nothing {
            let now = chrono::Utc::now();
            let events: Vec<NewEvent> = decision
                .notes
                .iter()
                .enumerate()
                .map(|(i, note)| NewEvent {
                    seq: self.tx.last_seq + 1 + i as u64,
                    at: now,
                    kind: note.kind,
                    branch: note.branch,
                    detail: note.detail.clone(),
                })
                .collect();
            let release = self.tx.state.is_resting();
            let update = TxUpdate {
                id: self.tx.id,
                owner: self.co.config.id.clone(),
                epoch: self.tx.epoch,
                expected_last_seq: self.tx.last_seq,
                state: self.tx.state,
                stage: self.tx.stage,
                last_error: self.tx.last_error.clone(),
                cancel_requested: self.tx.cancel_requested,
                release,
                branches: decision
                    .changed
                    .iter()
                    .filter_map(|&i| self.tx.branches.get(i as usize).cloned())
                    .collect(),
                events,
            };
            self.tx.updated_at = now;
            if release {
                self.tx.owner = None;
                self.co.metrics.finished(self.tx.kind, self.tx.state);
            }
            let held = match &mut self.held {
                Some((held, _)) => {
                    held.absorb(update);
                    held
                }
                None => {
                    let due = tokio::time::Instant::now() + self.co.config.progress_flush;
                    &mut self.held.insert((update, due)).0
                }
            };
            // Nothing held is queued yet, so its history may still be renumbered: a call
            // answered within it keeps only its answer.
            let events = std::mem::take(&mut held.events);
            held.events = crate::engine::drop_answered_sends(events, |e| (e.kind, e.branch));
            held.renumber_events();
            self.tx.last_seq = held.expected_last_seq + held.events.len() as u64;
            if self.co.config.progress_flush.is_zero() {
                self.hand_over().await?;
            }
        }
        if durable {
            self.hand_over().await?;
            while let Some((ack, events)) = self.unacked.pop_front() {
                let outcome = ack.await.unwrap_or(Err(WriteError::Closed));
                if self.settle(outcome, events).await? {
                    return Ok(Persisted::Reloaded);
                }
            }
            if self.tx.state.is_resting() {
                let _ = self.rested.send_replace(Some(self.tx.clone()));
            }
        }
        Ok(Persisted::Written)
    }

    /// Queues the held progress to the log writer.
    async fn hand_over(&mut self) -> Result<(), Stop> {
        let Some((update, _)) = self.held.take() else {
            return Ok(());
        };
        let events = update.events.clone();
        match self
            .co
            .writer
            .submit(LogWrite::Update(Box::new(update)))
            .await
        {
            Ok(ack) => {
                self.unacked.push_back((ack, events));
                Ok(())
            }
            Err(_) => Err(Stop),
        }
    }

    /// Handles the acknowledgement of the oldest queued write.
    async fn acknowledged(
        &mut self,
        (outcome, events): (Result<WriteOutcome, WriteError>, Vec<NewEvent>),
    ) -> Result<(), Stop> {
        if self.settle(outcome, events).await? {
            self.work.abort_all();
            self.work = JoinSet::new();
            self.resume_after_reload = true;
        }
        Ok(())
    }

    /// Publishes a committed write's history; after a failed or refused one, re-reads the
    /// transaction (returns `true`: the in-memory state was replaced and queued writes dropped).
    async fn settle(
        &mut self,
        outcome: Result<WriteOutcome, WriteError>,
        events: Vec<NewEvent>,
    ) -> Result<bool, Stop> {
        match outcome {
            Ok(WriteOutcome::Updated) => {
                self.publish(events);
                Ok(false)
            }
            Ok(WriteOutcome::Fenced) => {
                // Another owner, or a write before this one failed: the log decides which.
                self.co.metrics.fenced();
                self.unacked.clear();
                self.held = None;
                self.reload().await.map(|_| true)
            }
            Ok(WriteOutcome::Refused(reason)) => {
                self.unacked.clear();
                self.held = None;
                self.give_up(&reason, &events).await.map(|_| true)
            }
            Ok(other) => {
                tracing::error!(?other, "unexpected log outcome for an update");
                Err(Stop)
            }
            Err(WriteError::Closed) => Err(Stop),
            Err(WriteError::Store(error)) => {
                tracing::warn!(%error, "could not record progress; re-reading the transaction");
                self.unacked.clear();
                self.held = None;
                self.reload().await.map(|_| true)
            }
        }
    }

    /// Ends the transaction after the database refused its progress write (whose history was
    /// `refused`) for its data: resuming would build the same write and be refused again, after
    /// re-sending every call. Re-reads the log and records the transaction `failed` from there,
    /// with a `last_error` naming the refused write and the database's reason, and no text of
    /// the refused write. For a saga, branches the log shows in flight, or that memory knows were
    /// called, are recorded `unknown` (they may have run), so an operator's retry compensates
    /// them; if that write is refused too (a branch state itself is the trouble), the transaction
    /// row and its history alone are written. If everything is refused, the driver parks.
    async fn give_up(&mut self, reason: &str, refused: &[NewEvent]) -> Result<(), Stop> {
        self.work.abort_all();
        self.work = JoinSet::new();
        let was_resting = self.tx.state.is_resting();
        // What memory knows was called, before the log's record replaces it.
        let called: Vec<bool> = self
            .tx
            .branches
            .iter()
            .map(|b| !matches!(b.status, StepStatus::Pending | StepStatus::Failed))
            .collect();
        self.reload().await?;
        if self.tx.state.is_resting() {
            return Ok(());
        }
        let last_error = format!(
            "the database refused to record this transaction's progress ({}): {reason}; it was \
             stopped as failed and waits for an operator",
            describe(refused)
        );
        tracing::error!(error = %last_error, "log write refused; the transaction is failed");
        for with_branches in [true, false] {
            let update = self.failed_update(&last_error, &called, with_branches);
            let write = LogWrite::Update(Box::new(update.clone()));
            match self.co.writer.write(write).await {
                Ok(WriteOutcome::Updated) => {
                    self.gave_up = true;
                    self.tx.state = TxState::Failed;
                    self.tx.last_error = update.last_error.clone();
                    self.tx.owner = None;
                    self.tx.last_seq = update.expected_last_seq + update.events.len() as u64;
                    self.tx.updated_at = chrono::Utc::now();
                    for b in update.branches {
                        if let Some(slot) = self.tx.branches.get_mut(b.index as usize) {
                            *slot = b;
                        }
                    }
                    if !was_resting {
                        self.co.metrics.finished(self.tx.kind, self.tx.state);
                    }
                    self.publish(update.events);
                    let _ = self.rested.send_replace(Some(self.tx.clone()));
                    return Ok(());
                }
                Ok(WriteOutcome::Refused(again)) => {
                    tracing::warn!(error = %again, with_branches, "the failed record was refused too");
                }
                // The log moved on (fenced) or could not be reached: the usual path decides.
                Ok(WriteOutcome::Fenced) | Err(WriteError::Store(_)) => {
                    return self.reload().await.map(|_| ());
                }
                Ok(other) => {
                    tracing::error!(?other, "unexpected log outcome for an update");
                    return Err(Stop);
                }
                Err(WriteError::Closed) => return Err(Stop),
            }
        }
        let why = format!(
            "transaction {} cannot be recorded: {last_error}; even its failed record was \
             refused, so it is no longer driven (a restart of this coordinator tries again)",
            self.tx.id
        );
        tracing::error!(error = %why, "transaction parked");
        self.parked = Some(why);
        Err(Stop)
    }

    /// The write that records the transaction `failed` after a refusal; see [`Self::give_up`].
    fn failed_update(&self, last_error: &str, called: &[bool], with_branches: bool) -> TxUpdate {
        let saga = matches!(self.tx.definition, Definition::Saga(_));
        let may_have_run: Vec<&BranchRecord> = if saga {
            self.tx
                .branches
                .iter()
                .filter(|b| match b.status {
                    StepStatus::Running | StepStatus::Backoff => true,
                    StepStatus::Pending => called.get(b.index as usize).copied().unwrap_or(false),
                    _ => false,
                })
                .collect()
        } else {
            Vec::new()
        };
        let mut last_error = last_error.to_string();
        let branches = if with_branches {
            may_have_run
                .iter()
                .map(|b| BranchRecord {
                    status: StepStatus::Unknown,
                    ..(*b).clone()
                })
                .collect()
        } else {
            // The operator must know what a retry will not compensate.
            if !may_have_run.is_empty() {
                let indexes: Vec<String> =
                    may_have_run.iter().map(|b| b.index.to_string()).collect();
                last_error.push_str(&format!(
                    "; steps {} may have run, but not even that could be recorded",
                    indexes.join(", ")
                ));
            }
            Vec::new()
        };
        let last_error = last_error.as_str();
        TxUpdate {
            id: self.tx.id,
            owner: self.co.config.id.clone(),
            epoch: self.tx.epoch,
            expected_last_seq: self.tx.last_seq,
            state: TxState::Failed,
            stage: self.tx.stage,
            last_error: Some(last_error.to_string()),
            cancel_requested: self.tx.cancel_requested,
            release: true,
            branches,
            events: vec![NewEvent {
                seq: self.tx.last_seq + 1,
                at: chrono::Utc::now(),
                kind: EventKind::Failed,
                branch: None,
                detail: last_error.to_string(),
            }],
        }
    }

    /// Why a cancel of a transaction that failed for a refused write did not cancel it.
    fn stuck_text(&self) -> String {
        format!(
            "transaction {} could not be cancelled: {}",
            self.tx.id,
            self.tx
                .last_error
                .as_deref()
                .unwrap_or("its progress could not be recorded")
        )
    }

    /// Holds a transaction that can no longer be recorded: nothing is called or written for it
    /// any more, and each cancel is refused with why, instead of being accepted and never acted
    /// on. Callers waiting for its outcome are released. Ends at shutdown (or lease loss), after
    /// which it is handed back and claimed again like any unfinished transaction.
    async fn park(mut self, why: String, mut commands: mpsc::Receiver<Command>) {
        drop(std::mem::replace(&mut self.rested, watch::channel(None).0));
        loop {
            tokio::select! {
                _ = self.stop.cancelled() => return,
                command = commands.recv() => match command {
                    Some(Command::Cancel { reply, .. }) => {
                        let _ = reply.send(Err(Refused(why.clone())));
                    }
                    None => return,
                },
            }
        }
    }

    /// Hands a committed write's history to the transaction's watchers.
    fn publish(&self, events: Vec<NewEvent>) {
        for e in events {
            let _ = self.events.send(EventRecord {
                tx_id: self.tx.id,
                seq: e.seq,
                at: e.at,
                kind: e.kind,
                branch: e.branch,
                detail: e.detail,
            });
        }
    }

    /// Re-reads the transaction after a failed write, with backoff while the log is unreachable.
    async fn reload(&mut self) -> Result<Persisted, Stop> {
        let mut delay = Duration::from_millis(50);
        loop {
            tokio::select! {
                _ = self.stop.cancelled() => return Err(Stop),
                _ = tokio::time::sleep(delay) => {}
            }
            delay = (delay * 2).min(Duration::from_secs(5));
            match self.co.store.get(self.tx.id).await {
                Ok(Some(stored))
                    if stored.epoch == self.tx.epoch
                        && (stored.owner.as_deref() == Some(self.co.config.id.as_str())
                            || (stored.owner.is_none() && stored.state.is_resting())) =>
                {
                    self.tx = stored;
                    self.held = None;
                    return Ok(Persisted::Reloaded);
                }
                Ok(_) => return Err(Stop),
                Err(error) => tracing::warn!(%error, "log still unreachable"),
            }
        }
    }

    /// Starts a call or a retry timer; its event comes back through `work`.
    fn launch(&mut self, action: Action) {
        match action {
            Action::Schedule {
                branch,
                phase,
                attempt,
                after,
            } => {
                self.work.spawn(async move {
                    tokio::time::sleep(after).await;
                    Event::Due {
                        branch,
                        phase,
                        attempt,
                    }
                });
            }
            Action::Call {
                branch,
                phase,
                attempt,
            } => {
                let Some(mut spec) = self.call_spec(branch, phase, attempt) else {
                    tracing::error!(branch, %phase, "engine asked for a call the definition has no step for");
                    return;
                };
                let registry = self.co.registry.clone();
                self.co.metrics.call(attempt > 1);
                let metrics = self.co.metrics.clone();
                let span = call::span(&mut spec);
                self.work.spawn(
                    async move {
                        let sent = std::time::Instant::now();
                        // Boxed: a call's future (the channel's send, the answer's decoding)
                        // is kilobytes, and a task's future is copied as it is spawned and its
                        // cell rewritten as it ends; callgrind put those copies at an eighth of
                        // the coordinator's instructions (docs/BENCHMARKS.md).
                        let result = Box::pin(call::call(&registry, spec)).await;
                        metrics.step(phase, &result, sent.elapsed());
                        Event::Reply {
                            branch,
                            phase,
                            attempt,
                            result,
                        }
                    }
                    .instrument(span),
                );
            }
        }
    }

    fn call_spec(&self, branch: u32, phase: Phase, attempt: u32) -> Option<CallSpec> {
        let (name, target, action, payload, timeout_ms) = match &self.tx.definition {
            Definition::Saga(saga) => {
                let step = saga.steps.get(branch as usize)?;
                let action = match phase {
                    Phase::Compensate => step.compensate.clone()?,
                    _ => step.action.clone(),
                };
                (
                    &step.name,
                    &step.target,
                    action,
                    &step.payload,
                    step.timeout_ms,
                )
            }
            // Prepare, Commit and Abort all carry the branch's action; the RPC names the phase.
            Definition::TwoPhase(tp) => {
                let b = tp.branches.get(branch as usize)?;
                (
                    &b.name,
                    &b.target,
                    b.action.clone(),
                    &b.payload,
                    b.timeout_ms,
                )
            }
        };
        // Later phases of a branch also see its own earlier output.
        let own_output_too = !matches!(phase, Phase::Execute | Phase::Prepare);
        let outputs = self
            .tx
            .branches
            .iter()
            .filter(|b| own_output_too || b.index != branch)
            .filter_map(|b| {
                b.output.as_ref().map(|output| StepOutput {
                    index: b.index,
                    name: b.name.clone(),
                    output: output.clone(),
                })
            })
            .collect();
        Some(CallSpec {
            tx_id: self.tx.id,
            branch,
            branch_name: name.clone(),
            target: target.clone(),
            phase,
            action,
            payload: payload.clone(),
            attempt,
            timeout: Duration::from_millis(timeout_ms.max(1)),
            outputs,
            labels: self.tx.labels.clone(),
            traceparent: crate::trace::TraceParent::new(
                call::trace_id(self.tx.id, &self.tx.labels),
                crate::trace::SpanId::random(),
            ),
        })
    }
}

/// Names a refused write by its history, without its text: the seqs and kinds of its events.
fn describe(events: &[NewEvent]) -> String {
    let (Some(first), Some(last)) = (events.first(), events.last()) else {
        return "a write with no history".into();
    };
    let mut kinds: Vec<&str> = Vec::new();
    for e in events {
        if !kinds.contains(&e.kind.as_str()) {
            kinds.push(e.kind.as_str());
        }
    }
    const SHOWN: usize = 4;
    let more = if kinds.len() > SHOWN { ", ..." } else { "" };
    kinds.truncate(SHOWN);
    format!(
        "events {} to {}: {}{more}",
        first.seq,
        last.seq,
        kinds.join(", ")
    )
}

/// The monotonic instant of a wall-clock time (now, if it has passed).
fn instant_of(at: chrono::DateTime<chrono::Utc>) -> tokio::time::Instant {
    let left = (at - chrono::Utc::now()).to_std().unwrap_or(Duration::ZERO);
    tokio::time::Instant::now() + left
}

/// The oldest queued write's outcome, with its history.
async fn next_ack(
    unacked: &mut VecDeque<(Ack, Vec<NewEvent>)>,
) -> (Result<WriteOutcome, WriteError>, Vec<NewEvent>) {
    match unacked.front_mut() {
        Some((ack, _)) => {
            let outcome = ack.await.unwrap_or(Err(WriteError::Closed));
            let events = unacked.pop_front().map(|(_, e)| e).unwrap_or_default();
            (outcome, events)
        }
        None => std::future::pending().await,
    }
}

async fn sleep_until(at: Option<tokio::time::Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

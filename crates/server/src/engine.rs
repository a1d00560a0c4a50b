//! The saga state machine: a pure function of a transaction's state and one event, returning the
//! changes to persist and the calls to make. No I/O, no clock, no randomness of its own (the
//! caller passes `now` and a jitter value), so its invariants are property-tested.
//!
//! Sagas are decided in `saga`: forward stage by stage, then, after a failure, a cancel or the
//! deadline before the pivot, compensation of every step that may have run in reverse order of
//! completion. Two-phase commits are decided in `two_phase`: prepare everywhere, then commit
//! everywhere or abort every branch that may have prepared, never changing the decision.
//!
//! The driver (`coordinator::driver`) feeds it events — replies, due retries, cancels, the
//! deadline, an operator's retry — and carries out the [`Action`]s it returns.

use std::time::Duration;

use chrono::{DateTime, Utc};

use crate::model::{Definition, EventKind, Phase, TxRecord};

mod book;
mod history;
mod saga;
#[cfg(test)]
mod tests;
mod two_phase;

pub use history::drop_answered_sends;

/// What happened to a transaction.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Event {
    /// The first drive of a transaction this coordinator has just accepted: nothing of it has
    /// been sent yet.
    Begin,
    /// Drive a transaction read from the log (after a claim, a restart or a failed write): issue
    /// the calls for everything that is due or may have been in flight, with the same keys.
    Resume,
    /// The result of the call `(branch, phase, attempt)`.
    Reply {
        branch: u32,
        phase: Phase,
        attempt: u32,
        result: CallResult,
    },
    /// A retry scheduled with [`Action::Schedule`] is due.
    Due {
        branch: u32,
        phase: Phase,
        attempt: u32,
    },
    /// An application or operator asked to cancel.
    Cancel { reason: String },
    /// The transaction's deadline passed.
    DeadlineExpired,
    /// 2PC: the prepare timeout passed (armed by the driver from `prepare_timeout_ms`, counted
    /// from when the transaction was accepted).
    PrepareTimeout,
    /// An operator asked to resume a `failed` transaction.
    Retry,
}

/// How a participant call ended, classified once by the driver (see `coordinator::call`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum CallResult {
    /// `OUTCOME_OK`, with the branch's output.
    Ok(Vec<u8>),
    /// `OUTCOME_FAILED`: a business failure. Not retried for compensatable steps.
    Failed(String),
    /// A transport error or a transient status (UNAVAILABLE, DEADLINE_EXCEEDED, ...): the call
    /// may or may not have taken effect; retried with backoff within the policy.
    Transient(String),
    /// A permanent status (INVALID_ARGUMENT, NOT_FOUND, UNIMPLEMENTED, ...): not retried.
    Permanent(String),
}

/// What the driver must do.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Action {
    /// Send the call now. Attempt numbers start at 1 for each (branch, phase).
    Call {
        branch: u32,
        phase: Phase,
        attempt: u32,
    },
    /// Feed [`Event::Due`] with these fields back after `after`.
    Schedule {
        branch: u32,
        phase: Phase,
        attempt: u32,
        after: Duration,
    },
}

/// A history entry to append (the driver gives it its seq and time).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Note {
    pub kind: EventKind,
    pub branch: Option<u32>,
    pub detail: String,
}

/// The engine's answer to one event.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Decision {
    /// Calls to make and retries to schedule.
    pub actions: Vec<Action>,
    /// History to append, in order.
    pub notes: Vec<Note>,
    /// Indexes of the branch records that changed (to persist).
    pub changed: Vec<u32>,
    /// Whether the transaction row itself changed (state, stage, last_error, cancel flag).
    pub tx_changed: bool,
}

/// Why an operator's verb does not apply to the transaction's state.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct Refused(pub String);

/// Applies `event` to `tx` (mutating it) and returns what to persist and do.
///
/// `jitter` is a number in `[0, 1)` used for the backoff of any retry this event schedules.
/// Stale events (a reply or due retry whose attempt is no longer the current one) change nothing.
/// `Cancel` and `Retry` in a state that does not allow them return [`Refused`] and change nothing;
/// a saga cannot be cancelled once its pivot step has been sent (it may have run and has no
/// compensation), and the deadline is then ignored. A two-phase commit cannot be cancelled once it
/// has decided to commit.
pub fn decide(
    tx: &mut TxRecord,
    event: Event,
    now: DateTime<Utc>,
    jitter: f64,
) -> Result<Decision, Refused> {
    // Neither machine needs a clock: deadlines, timeouts and due retries arrive as events.
    let _ = now;
    match tx.definition {
        Definition::Saga(_) => saga::decide(tx, event, jitter),
        Definition::TwoPhase(_) => two_phase::decide(tx, event, jitter),
    }
}

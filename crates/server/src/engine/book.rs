//! Bookkeeping both machines share: the borrowed parts of the transaction every decision may
//! change, and the [`Decision`] being built from those changes.

use crate::model::{BranchRecord, EventKind, StepStatus, TxState};

use super::{Decision, Note};

/// The transaction's mutable parts during one decision, and the answer being built.
pub(super) struct Core<'a> {
    pub(super) branches: &'a mut [BranchRecord],
    pub(super) state: &'a mut TxState,
    pub(super) last_error: &'a mut Option<String>,
    pub(super) cancel_requested: &'a mut bool,
    /// How many branches have both a definition and a record (equal for a well-formed record; a
    /// mismatch is tolerated rather than panicking on it).
    pub(super) len: usize,
    pub(super) out: Decision,
}

impl Core<'_> {
    pub(super) fn len(&self) -> usize {
        self.len
    }

    pub(super) fn index(&self, branch: u32) -> Option<usize> {
        usize::try_from(branch).ok().filter(|&i| i < self.len)
    }

    pub(super) fn touch(&mut self, i: usize) {
        let i = i as u32;
        if !self.out.changed.contains(&i) {
            self.out.changed.push(i);
        }
    }

    pub(super) fn note(&mut self, kind: EventKind, branch: Option<usize>, detail: String) {
        self.out.notes.push(Note {
            kind,
            branch: branch.map(|i| i as u32),
            detail,
        });
    }

    /// Records the failed attempt `attempt` of branch `i`'s current call, which will be retried
    /// after `ms` milliseconds, unless it failed exactly as the one before it (`previous`, the
    /// branch's last error before this one) and is not a [`recorded_attempt`].
    ///
    /// Phase two and a retriable step retry for as long as it takes, and one event per attempt
    /// let a participant that never answers write tens of thousands of identical events. Here a
    /// run of N identical failures writes O(log N) events, while every change of error is still
    /// recorded; the branch row keeps the current attempt and error either way.
    pub(super) fn note_retry(
        &mut self,
        kind: EventKind,
        i: usize,
        attempt: u32,
        previous: Option<&str>,
        msg: &str,
        ms: u128,
    ) {
        if !recorded_attempt(attempt) && previous == Some(msg) {
            return;
        }
        let mut detail = format!("attempt {attempt} failed: {msg}; retrying in {ms}ms");
        // Since the previous power of two, only changes of error were recorded.
        if recorded_attempt(attempt) && attempt >= 4 {
            let from = attempt / 2 + 1;
            let to = attempt - 1;
            detail.push_str(&format!(
                "; attempts {from} to {to} are recorded only where their error changed"
            ));
        }
        self.note(kind, Some(i), detail);
    }

    pub(super) fn set_state(&mut self, state: TxState) {
        if *self.state != state {
            *self.state = state;
            self.out.tx_changed = true;
        }
    }

    pub(super) fn set_last_error(&mut self, reason: String) {
        if self.last_error.as_deref() != Some(reason.as_str()) {
            *self.last_error = Some(reason);
            self.out.tx_changed = true;
        }
    }

    pub(super) fn clear_cancel_request(&mut self) {
        if *self.cancel_requested {
            *self.cancel_requested = false;
            self.out.tx_changed = true;
        }
    }

    pub(super) fn status(&self, i: usize) -> StepStatus {
        self.branches[i].status
    }
}

/// Whether attempt `attempt` of a retried call is recorded whatever happened before it: the first,
/// then every power of two, so a call retried N times writes O(log N) `sent` and error events.
pub(super) fn recorded_attempt(attempt: u32) -> bool {
    attempt.is_power_of_two()
}

/// Lets each machine call the shared bookkeeping as its own methods.
macro_rules! deref_core {
    ($machine:ident) => {
        impl<'a> std::ops::Deref for $machine<'a> {
            type Target = super::book::Core<'a>;
            fn deref(&self) -> &Self::Target {
                &self.core
            }
        }
        impl<'a> std::ops::DerefMut for $machine<'a> {
            fn deref_mut(&mut self) -> &mut Self::Target {
                &mut self.core
            }
        }
    };
}
pub(super) use deref_core;

//! Bookkeeping both machines share: the borrowed parts of the transaction every decision may
//! change, and the [`Decision`] being built from those changes.

use crate::model::{BranchRecord, StepStatus, TxState};

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

    pub(super) fn note(&mut self, kind: &'static str, branch: Option<usize>, detail: String) {
        self.out.notes.push(Note {
            kind,
            branch: branch.map(|i| i as u32),
            detail,
        });
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

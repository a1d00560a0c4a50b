//! Defining a two-phase commit (or its TCC spelling) in code.
//!
//! Every branch is sent `Prepare` (TCC: try) in parallel; if all vote yes the coordinator records
//! the commit decision durably and sends `Commit` (confirm) until each acknowledges; otherwise it
//! sends `Abort` (cancel) to every branch that may have prepared. The participant routes all
//! three phases by the branch's one action name.

use std::time::Duration;

use super::definition::{call_options, tx_options, Body, Call, Definition, TxOptions};
use crate::types::Target;

/// One branch of a two-phase commit.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Branch {
    pub(super) call: Call,
}

impl Branch {
    /// A branch named `name` on the participant service `service`. Its action defaults to the
    /// name.
    pub fn new(name: impl Into<String>, service: impl Into<String>) -> Self {
        Branch {
            call: Call::new(name.into(), Target::Service(service.into())),
        }
    }

    /// A branch on one fixed endpoint, such as `http://127.0.0.1:9001`.
    pub fn to_endpoint(name: impl Into<String>, endpoint: impl Into<String>) -> Self {
        Branch {
            call: Call::new(name.into(), Target::Endpoint(endpoint.into())),
        }
    }

    fn call_mut(&mut self) -> &mut Call {
        &mut self.call
    }
}

call_options!(
    Branch,
    action: "The action passed with Prepare, Commit and Abort (the branch's name unless set).",
    retry: "Retry transient failures during prepare up to `max_attempts` calls in all, backing \
            off from `initial` doubling up to `max`. Phase two retries until acknowledged."
);

/// A two-phase commit: branches that prepare, then all commit or all abort.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TwoPhase {
    branches: Vec<Branch>,
    prepare_timeout: Option<Duration>,
    options: TxOptions,
}

impl TwoPhase {
    /// A two-phase commit with no branches yet.
    pub fn new() -> Self {
        TwoPhase::default()
    }

    /// Add a branch.
    pub fn branch(mut self, branch: Branch) -> Self {
        self.branches.push(branch);
        self
    }

    /// How long to wait for every vote before aborting (the coordinator's default otherwise).
    pub fn prepare_timeout(mut self, timeout: Duration) -> Self {
        self.prepare_timeout = Some(timeout);
        self
    }

    fn options_mut(&mut self) -> &mut TxOptions {
        &mut self.options
    }
}

tx_options!(
    TwoPhase,
    timeout: "The deadline from acceptance: a transaction still preparing then aborts."
);

impl From<TwoPhase> for Definition {
    fn from(tp: TwoPhase) -> Self {
        Definition {
            body: Body::TwoPhase {
                branches: tp.branches,
                prepare_timeout: tp.prepare_timeout,
            },
            options: tp.options,
        }
    }
}

/// The TCC (try / confirm / cancel) spelling of [`TwoPhase`]: the same protocol, where the
/// participant's try is `Prepare`, confirm is `Commit` and cancel is `Abort`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Tcc(TwoPhase);

impl Tcc {
    /// A TCC transaction with no participants yet.
    pub fn new() -> Self {
        Tcc::default()
    }

    /// Add a participant whose try/confirm/cancel handlers are registered under `action`.
    pub fn participant(self, branch: Branch) -> Self {
        Tcc(self.0.branch(branch))
    }

    /// How long every try may take before the whole transaction cancels.
    pub fn try_timeout(self, timeout: Duration) -> Self {
        Tcc(self.0.prepare_timeout(timeout))
    }

    fn options_mut(&mut self) -> &mut TxOptions {
        &mut self.0.options
    }
}

tx_options!(
    Tcc,
    timeout: "The deadline from acceptance: a transaction still trying then cancels."
);

impl From<Tcc> for Definition {
    fn from(tcc: Tcc) -> Self {
        tcc.0.into()
    }
}

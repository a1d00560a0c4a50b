//! Defining a saga in code: steps, stages, and the transaction's options.

use super::definition::{call_options, tx_options, Body, Call, Definition, TxOptions};
use crate::types::{StepKind, Target};

/// One saga step: whom to call, with what, and how patiently.
///
/// The action defaults to the step's name; set it with [`Step::action`] when they differ.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Step {
    pub(super) call: Call,
    pub(super) compensate: Option<String>,
    pub(super) kind: StepKind,
}

impl Step {
    /// A step named `name` that calls the participant service `service`, resolved through the
    /// coordinator's registry on every call.
    pub fn new(name: impl Into<String>, service: impl Into<String>) -> Self {
        Step::with_target(name.into(), Target::Service(service.into()))
    }

    /// A step named `name` that calls one fixed endpoint, such as `http://127.0.0.1:9001`.
    pub fn to_endpoint(name: impl Into<String>, endpoint: impl Into<String>) -> Self {
        Step::with_target(name.into(), Target::Endpoint(endpoint.into()))
    }

    fn with_target(name: String, target: Target) -> Self {
        Step {
            call: Call::new(name, target),
            compensate: None,
            kind: StepKind::Compensatable,
        }
    }

    fn call_mut(&mut self) -> &mut Call {
        &mut self.call
    }

    /// The participant action that undoes this step. Without one there is nothing to undo.
    pub fn compensate(mut self, action: impl Into<String>) -> Self {
        self.compensate = Some(action.into());
        self
    }

    /// Make this the pivot: once it succeeds the saga only goes forward.
    pub fn pivot(mut self) -> Self {
        self.kind = StepKind::Pivot;
        self
    }

    /// Make this a retriable step (after the pivot): retried until it succeeds.
    pub fn retriable(mut self) -> Self {
        self.kind = StepKind::Retriable;
        self
    }

    /// Set the step's kind explicitly (compensatable is the default).
    pub fn kind(mut self, kind: StepKind) -> Self {
        self.kind = kind;
        self
    }
}

call_options!(
    Step,
    action: "The participant action to execute (the step's name unless set); its compensation is \
             [`Step::compensate`].",
    retry: "Retry transient failures up to `max_attempts` calls in all, backing off from \
            `initial` doubling up to `max`. Unset means the coordinator's default policy."
);

/// A saga: stages of steps that run in order, each stage's steps concurrently, plus the
/// transaction's options. Hand it to [`Client::start`](super::Client::start) or
/// [`Client::run`](super::Client::run).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Saga {
    stages: Vec<Vec<Step>>,
    options: TxOptions,
}

impl Saga {
    /// An empty saga.
    pub fn new() -> Self {
        Saga::default()
    }

    /// Add a step in a stage of its own, after every step added so far.
    pub fn step(mut self, step: Step) -> Self {
        self.stages.push(vec![step]);
        self
    }

    /// Add one stage whose steps run concurrently, after every step added so far. An empty list
    /// adds nothing.
    pub fn parallel(mut self, steps: impl IntoIterator<Item = Step>) -> Self {
        let steps: Vec<Step> = steps.into_iter().collect();
        if !steps.is_empty() {
            self.stages.push(steps);
        }
        self
    }

    fn options_mut(&mut self) -> &mut TxOptions {
        &mut self.options
    }
}

tx_options!(
    Saga,
    timeout: "The saga's deadline from acceptance: past it, a saga before its pivot compensates."
);

impl From<Saga> for Definition {
    fn from(saga: Saga) -> Self {
        Definition {
            body: Body::Saga(saga.stages),
            options: saga.options,
        }
    }
}

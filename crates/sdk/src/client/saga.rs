//! Defining a saga in code: steps, stages, and the transaction's options.

use std::collections::HashMap;
use std::time::Duration;

use serde::Serialize;

use super::ClientError;
use crate::proto::{self, start_request, StartRequest, StepKind};
use crate::types::Target;

/// One saga step: whom to call, with what, and how patiently.
///
/// The action defaults to the step's name; set it with [`Step::action`] when they differ.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Step {
    name: String,
    target: Target,
    action: Option<String>,
    compensate: Option<String>,
    payload: Vec<u8>,
    kind: StepKind,
    timeout: Option<Duration>,
    retry: Option<proto::RetryPolicy>,
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
            name,
            target,
            action: None,
            compensate: None,
            payload: Vec::new(),
            kind: StepKind::Compensatable,
            timeout: None,
            retry: None,
        }
    }

    /// The participant action to execute.
    pub fn action(mut self, action: impl Into<String>) -> Self {
        self.action = Some(action.into());
        self
    }

    /// The participant action that undoes this step. Without one there is nothing to undo.
    pub fn compensate(mut self, action: impl Into<String>) -> Self {
        self.compensate = Some(action.into());
        self
    }

    /// The payload passed to the action and its compensation, as raw bytes.
    pub fn payload(mut self, payload: impl Into<Vec<u8>>) -> Self {
        self.payload = payload.into();
        self
    }

    /// The payload, encoded as JSON (the convention participants expect).
    pub fn json<T: Serialize + ?Sized>(mut self, value: &T) -> Result<Self, ClientError> {
        self.payload = serde_json::to_vec(value)?;
        Ok(self)
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

    /// How long the coordinator waits for each call; unset means the coordinator's default.
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = Some(timeout);
        self
    }

    /// Retry transient failures up to `max_attempts` calls in all, backing off from `initial`
    /// doubling up to `max`. Unset means the coordinator's default policy.
    pub fn retry(mut self, max_attempts: u32, initial: Duration, max: Duration) -> Self {
        self.retry = Some(proto::RetryPolicy {
            max_attempts,
            initial_backoff_ms: millis(initial),
            max_backoff_ms: millis(max),
        });
        self
    }

    fn into_proto(self, stage: u32) -> proto::SagaStep {
        let (service, endpoint) = match self.target {
            Target::Service(service) => (service, String::new()),
            Target::Endpoint(endpoint) => (String::new(), endpoint),
        };
        proto::SagaStep {
            action: self.action.unwrap_or_else(|| self.name.clone()),
            name: self.name,
            service,
            endpoint,
            compensate: self.compensate.unwrap_or_default(),
            payload: self.payload,
            kind: self.kind as i32,
            stage,
            timeout_ms: self.timeout.map(millis).unwrap_or(0),
            retry: self.retry,
        }
    }
}

/// A saga: stages of steps that run in order, each stage's steps concurrently, plus the
/// transaction's options. Hand it to [`Client::start`](super::Client::start) or
/// [`Client::run`](super::Client::run).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Saga {
    stages: Vec<Vec<Step>>,
    options: TxOptions,
}

/// Options every transaction kind shares.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct TxOptions {
    pub(crate) idempotency_key: Option<String>,
    pub(crate) labels: HashMap<String, String>,
    pub(crate) timeout: Option<Duration>,
}

impl TxOptions {
    pub(crate) fn apply(self, request: &mut StartRequest) {
        request.idempotency_key = self.idempotency_key.unwrap_or_default();
        request.labels = self.labels;
        request.timeout_ms = self.timeout.map(millis).unwrap_or(0);
    }
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

    /// Starting twice with the same key returns the first transaction instead of a second one.
    /// Also makes [`Client::start`](super::Client::start) safe to fail over between coordinators.
    pub fn idempotency_key(mut self, key: impl Into<String>) -> Self {
        self.options.idempotency_key = Some(key.into());
        self
    }

    /// Attach a label (searchable with `List`, passed to participants).
    pub fn label(mut self, key: impl Into<String>, value: impl Into<String>) -> Self {
        self.options.labels.insert(key.into(), value.into());
        self
    }

    /// The saga's deadline from acceptance: past it, a saga before its pivot compensates.
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.options.timeout = Some(timeout);
        self
    }
}

impl From<Saga> for StartRequest {
    fn from(saga: Saga) -> Self {
        let steps = saga
            .stages
            .into_iter()
            .enumerate()
            .flat_map(|(stage, steps)| {
                let stage = u32::try_from(stage).unwrap_or(u32::MAX);
                steps.into_iter().map(move |step| step.into_proto(stage))
            })
            .collect();
        let mut request = StartRequest {
            definition: Some(start_request::Definition::Saga(proto::Saga { steps })),
            ..StartRequest::default()
        };
        saga.options.apply(&mut request);
        request
    }
}

/// Whole milliseconds, rounded up so that a small non-zero duration never becomes 0 (which the
/// protocol reads as "use the default").
pub(crate) fn millis(duration: Duration) -> u64 {
    let ms = duration.as_millis() + u128::from(!duration.subsec_nanos().is_multiple_of(1_000_000));
    u64::try_from(ms).unwrap_or(u64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn saga_of(request: &StartRequest) -> &proto::Saga {
        match &request.definition {
            Some(start_request::Definition::Saga(saga)) => saga,
            other => panic!("expected a saga, got {other:?}"),
        }
    }

    #[test]
    fn builds_the_start_request() {
        let saga = Saga::new()
            .step(
                Step::new("reserve", "inventory")
                    .action("reserve")
                    .compensate("release")
                    .json(&serde_json::json!({"sku": "A1", "qty": 2}))
                    .unwrap()
                    .timeout(Duration::from_secs(2))
                    .retry(4, Duration::from_millis(50), Duration::from_secs(1)),
            )
            .step(
                Step::to_endpoint("charge", "http://127.0.0.1:9001")
                    .action("charge")
                    .compensate("refund")
                    .payload(b"raw".to_vec()),
            )
            .step(Step::new("ship", "shipping").action("ship").pivot())
            .parallel(vec![
                Step::new("email", "notify").retriable(),
                Step::new("audit", "audit").action("record").retriable(),
            ])
            .step(Step::new("close", "orders"))
            .idempotency_key("order-42")
            .label("order", "42")
            .label("team", "shop")
            .timeout(Duration::from_secs(30));
        let request = StartRequest::from(saga);

        assert_eq!(request.idempotency_key, "order-42");
        assert_eq!(request.labels.len(), 2);
        assert_eq!(request.labels["order"], "42");
        assert_eq!(request.timeout_ms, 30_000);
        assert!(!request.wait);

        let steps = &saga_of(&request).steps;
        let stages: Vec<(&str, u32)> = steps.iter().map(|s| (s.name.as_str(), s.stage)).collect();
        assert_eq!(
            stages,
            [
                ("reserve", 0),
                ("charge", 1),
                ("ship", 2),
                ("email", 3),
                ("audit", 3),
                ("close", 4)
            ]
        );

        let reserve = &steps[0];
        assert_eq!(reserve.service, "inventory");
        assert_eq!(reserve.endpoint, "");
        assert_eq!(reserve.action, "reserve");
        assert_eq!(reserve.compensate, "release");
        assert_eq!(reserve.kind(), StepKind::Compensatable);
        assert_eq!(
            serde_json::from_slice::<serde_json::Value>(&reserve.payload).unwrap(),
            serde_json::json!({"sku": "A1", "qty": 2})
        );
        assert_eq!(reserve.timeout_ms, 2_000);
        assert_eq!(
            reserve.retry,
            Some(proto::RetryPolicy {
                max_attempts: 4,
                initial_backoff_ms: 50,
                max_backoff_ms: 1_000
            })
        );

        let charge = &steps[1];
        assert_eq!(charge.service, "");
        assert_eq!(charge.endpoint, "http://127.0.0.1:9001");
        assert_eq!(charge.payload, b"raw");
        assert_eq!(charge.timeout_ms, 0);
        assert_eq!(charge.retry, None);

        assert_eq!(steps[2].kind(), StepKind::Pivot);
        assert_eq!(steps[2].compensate, "");
        assert_eq!(steps[3].kind(), StepKind::Retriable);
        // The action defaults to the step's name.
        assert_eq!(steps[3].action, "email");
        assert_eq!(steps[4].action, "record");
    }

    #[test]
    fn empty_options_are_protocol_defaults() {
        let request = StartRequest::from(Saga::new().parallel(vec![]).step(Step::new("a", "s")));
        assert_eq!(request.idempotency_key, "");
        assert!(request.labels.is_empty());
        assert_eq!(request.timeout_ms, 0);
        // An empty parallel group does not use up a stage number.
        assert_eq!(saga_of(&request).steps[0].stage, 0);
    }

    #[test]
    fn millis_rounds_up_but_keeps_zero() {
        assert_eq!(millis(Duration::ZERO), 0);
        assert_eq!(millis(Duration::from_micros(1)), 1);
        assert_eq!(millis(Duration::from_micros(1500)), 2);
        assert_eq!(millis(Duration::from_secs(2)), 2_000);
        assert_eq!(millis(Duration::MAX), u64::MAX);
    }
}

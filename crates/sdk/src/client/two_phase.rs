//! Defining a two-phase commit (or its TCC spelling) in code.
//!
//! Every branch is sent `Prepare` (TCC: try) in parallel; if all vote yes the coordinator records
//! the commit decision durably and sends `Commit` (confirm) until each acknowledges; otherwise it
//! sends `Abort` (cancel) to every branch that may have prepared. The participant routes all
//! three phases by the branch's one action name.

use std::time::Duration;

use serde::Serialize;

use super::saga::{millis, TxOptions};
use super::ClientError;
use crate::proto::{self, start_request, StartRequest};
use crate::types::Target;

/// One branch of a two-phase commit.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Branch {
    name: String,
    target: Target,
    action: Option<String>,
    payload: Vec<u8>,
    timeout: Option<Duration>,
    retry: Option<proto::RetryPolicy>,
}

impl Branch {
    /// A branch named `name` on the participant service `service`. Its action defaults to the
    /// name.
    pub fn new(name: impl Into<String>, service: impl Into<String>) -> Self {
        Branch::with_target(name.into(), Target::Service(service.into()))
    }

    /// A branch on one fixed endpoint, such as `http://127.0.0.1:9001`.
    pub fn to_endpoint(name: impl Into<String>, endpoint: impl Into<String>) -> Self {
        Branch::with_target(name.into(), Target::Endpoint(endpoint.into()))
    }

    fn with_target(name: String, target: Target) -> Self {
        Branch {
            name,
            target,
            action: None,
            payload: Vec::new(),
            timeout: None,
            retry: None,
        }
    }

    /// The action passed with Prepare, Commit and Abort.
    pub fn action(mut self, action: impl Into<String>) -> Self {
        self.action = Some(action.into());
        self
    }

    /// The branch's payload, as bytes.
    pub fn payload(mut self, payload: impl Into<Vec<u8>>) -> Self {
        self.payload = payload.into();
        self
    }

    /// The branch's payload, serialized as JSON.
    pub fn json<T: Serialize + ?Sized>(mut self, value: &T) -> Result<Self, ClientError> {
        self.payload = serde_json::to_vec(value).map_err(ClientError::Json)?;
        Ok(self)
    }

    /// Per-call timeout (the coordinator's default otherwise).
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = Some(timeout);
        self
    }

    /// Retry policy for transient errors during prepare. Phase two retries until acknowledged.
    pub fn retry(mut self, max_attempts: u32, initial: Duration, max: Duration) -> Self {
        self.retry = Some(proto::RetryPolicy {
            max_attempts,
            initial_backoff_ms: millis(initial),
            max_backoff_ms: millis(max),
        });
        self
    }

    fn into_proto(self) -> proto::TwoPhaseBranch {
        let (service, endpoint) = match self.target {
            Target::Service(s) => (s, String::new()),
            Target::Endpoint(e) => (String::new(), e),
        };
        proto::TwoPhaseBranch {
            action: self.action.unwrap_or_else(|| self.name.clone()),
            name: self.name,
            service,
            endpoint,
            payload: self.payload,
            timeout_ms: self.timeout.map(millis).unwrap_or(0),
            retry: self.retry,
        }
    }
}

/// A two-phase commit: branches that prepare, then all commit or all abort.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TwoPhase {
    branches: Vec<Branch>,
    prepare_timeout: Option<Duration>,
    options: TxOptions,
}

impl TwoPhase {
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

    /// Starting twice with the same key returns the first transaction.
    pub fn idempotency_key(mut self, key: impl Into<String>) -> Self {
        self.options.idempotency_key = Some(key.into());
        self
    }

    /// Attach a label (searchable with `List`, passed to participants).
    pub fn label(mut self, key: impl Into<String>, value: impl Into<String>) -> Self {
        self.options.labels.insert(key.into(), value.into());
        self
    }

    /// The deadline from acceptance: a transaction still preparing then aborts.
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.options.timeout = Some(timeout);
        self
    }
}

impl From<TwoPhase> for StartRequest {
    fn from(tp: TwoPhase) -> Self {
        let mut request = StartRequest {
            definition: Some(start_request::Definition::TwoPhase(proto::TwoPhase {
                branches: tp.branches.into_iter().map(Branch::into_proto).collect(),
                prepare_timeout_ms: tp.prepare_timeout.map(millis).unwrap_or(0),
            })),
            ..StartRequest::default()
        };
        tp.options.apply(&mut request);
        request
    }
}

/// The TCC (try / confirm / cancel) spelling of [`TwoPhase`]: the same protocol, where the
/// participant's try is `Prepare`, confirm is `Commit` and cancel is `Abort`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Tcc(TwoPhase);

impl Tcc {
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

    pub fn idempotency_key(self, key: impl Into<String>) -> Self {
        Tcc(self.0.idempotency_key(key))
    }

    pub fn label(self, key: impl Into<String>, value: impl Into<String>) -> Self {
        Tcc(self.0.label(key, value))
    }

    pub fn timeout(self, timeout: Duration) -> Self {
        Tcc(self.0.timeout(timeout))
    }
}

impl From<Tcc> for StartRequest {
    fn from(tcc: Tcc) -> Self {
        tcc.0.into()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn builds_the_start_request() {
        let request: StartRequest = TwoPhase::new()
            .branch(Branch::new("debit", "bank-a").json(&5).unwrap())
            .branch(
                Branch::to_endpoint("credit", "http://127.0.0.1:9001")
                    .action("credit_account")
                    .timeout(Duration::from_millis(250)),
            )
            .prepare_timeout(Duration::from_secs(2))
            .idempotency_key("t-1")
            .label("kind", "transfer")
            .into();
        let Some(start_request::Definition::TwoPhase(tp)) = &request.definition else {
            panic!("expected a two-phase definition");
        };
        assert_eq!(tp.prepare_timeout_ms, 2000);
        assert_eq!(tp.branches[0].service, "bank-a");
        assert_eq!(tp.branches[0].action, "debit");
        assert_eq!(tp.branches[0].payload, b"5");
        assert_eq!(tp.branches[1].endpoint, "http://127.0.0.1:9001");
        assert_eq!(tp.branches[1].action, "credit_account");
        assert_eq!(tp.branches[1].timeout_ms, 250);
        assert_eq!(request.idempotency_key, "t-1");
        assert_eq!(request.labels["kind"], "transfer");
    }

    #[test]
    fn tcc_is_the_same_protocol() {
        let tcc: StartRequest = Tcc::new()
            .participant(Branch::new("hold", "hotel"))
            .try_timeout(Duration::from_secs(1))
            .into();
        let tp: StartRequest = TwoPhase::new()
            .branch(Branch::new("hold", "hotel"))
            .prepare_timeout(Duration::from_secs(1))
            .into();
        assert_eq!(tcc, tp);
    }
}

//! What [`Client::start`](super::Client::start) and [`Client::run`](super::Client::run) take: a
//! transaction [`Definition`], and the builder pieces the saga and two-phase builders share (the
//! transaction's options, and how one participant call is made).

use std::collections::HashMap;
use std::time::Duration;

use super::saga::Step;
use super::two_phase::Branch;
use crate::types::{Target, TxKind};

/// A transaction ready to start: a saga or a two-phase commit, with its options. Built from a
/// [`Saga`](super::Saga), a [`TwoPhase`](super::TwoPhase) or a [`Tcc`](super::Tcc), which all
/// convert into it; the coordinator checks it when it is started.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Definition {
    pub(super) body: Body,
    pub(super) options: TxOptions,
}

/// The kind-specific part of a [`Definition`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Body {
    /// Stages of steps: stages in order, the steps of one stage concurrently.
    Saga(Vec<Vec<Step>>),
    TwoPhase {
        branches: Vec<Branch>,
        prepare_timeout: Option<Duration>,
    },
}

impl Definition {
    /// Saga or two-phase commit.
    pub fn kind(&self) -> TxKind {
        match self.body {
            Body::Saga(_) => TxKind::Saga,
            Body::TwoPhase { .. } => TxKind::TwoPhase,
        }
    }

    /// The idempotency key, if one was set.
    pub fn idempotency_key(&self) -> Option<&str> {
        self.options.idempotency_key.as_deref()
    }

    /// The transaction's labels.
    pub fn labels(&self) -> &HashMap<String, String> {
        &self.options.labels
    }

    /// The deadline from acceptance, if one was set.
    pub fn timeout(&self) -> Option<Duration> {
        self.options.timeout
    }
}

/// Options every transaction kind shares.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(super) struct TxOptions {
    pub(super) idempotency_key: Option<String>,
    pub(super) labels: HashMap<String, String>,
    pub(super) timeout: Option<Duration>,
}

/// The transaction options' builder methods, the same on every transaction builder. The type
/// must have `fn options_mut(&mut self) -> &mut TxOptions`; `$timeout` documents what the
/// deadline does for that kind.
macro_rules! tx_options {
    ($ty:ty, timeout: $timeout:literal) => {
        impl $ty {
            /// Starting twice with the same key returns the first transaction instead of a second
            /// one. Also makes [`Client::start`](crate::client::Client::start) safe to fail over
            /// between coordinators.
            pub fn idempotency_key(mut self, key: impl Into<String>) -> Self {
                self.options_mut().idempotency_key = Some(key.into());
                self
            }

            /// Attach a label (searchable with [`Client::list`](crate::client::Client::list),
            /// passed to participants).
            pub fn label(mut self, key: impl Into<String>, value: impl Into<String>) -> Self {
                self.options_mut().labels.insert(key.into(), value.into());
                self
            }

            #[doc = $timeout]
            pub fn timeout(mut self, timeout: ::std::time::Duration) -> Self {
                self.options_mut().timeout = Some(timeout);
                self
            }
        }
    };
}
pub(super) use tx_options;

/// How the coordinator calls one participant for a saga step or a two-phase branch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Call {
    pub(super) name: String,
    pub(super) target: Target,
    pub(super) action: Option<String>,
    pub(super) payload: Vec<u8>,
    pub(super) timeout: Option<Duration>,
    pub(super) retry: Option<Retry>,
}

impl Call {
    pub(super) fn new(name: String, target: Target) -> Self {
        Call {
            name,
            target,
            action: None,
            payload: Vec::new(),
            timeout: None,
            retry: None,
        }
    }
}

/// A retry policy for transient failures.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Retry {
    pub(super) max_attempts: u32,
    pub(super) initial: Duration,
    pub(super) max: Duration,
}

/// The participant call's builder methods, the same on saga steps and two-phase branches. The
/// type must have `fn call_mut(&mut self) -> &mut Call`; `$action` and `$retry` document what
/// the action and the retry policy mean for it.
macro_rules! call_options {
    ($ty:ty, action: $action:literal, retry: $retry:literal) => {
        impl $ty {
            #[doc = $action]
            pub fn action(mut self, action: impl Into<String>) -> Self {
                self.call_mut().action = Some(action.into());
                self
            }

            /// The payload passed to the participant, as raw bytes.
            pub fn payload(mut self, payload: impl Into<Vec<u8>>) -> Self {
                self.call_mut().payload = payload.into();
                self
            }

            /// The payload, encoded as JSON (the convention participants expect).
            pub fn json<T: ::serde::Serialize + ?Sized>(
                mut self,
                value: &T,
            ) -> Result<Self, crate::client::ClientError> {
                self.call_mut().payload = serde_json::to_vec(value)?;
                Ok(self)
            }

            /// How long the coordinator waits for each call; unset means the coordinator's
            /// default.
            pub fn timeout(mut self, timeout: ::std::time::Duration) -> Self {
                self.call_mut().timeout = Some(timeout);
                self
            }

            #[doc = $retry]
            pub fn retry(
                mut self,
                max_attempts: u32,
                initial: ::std::time::Duration,
                max: ::std::time::Duration,
            ) -> Self {
                self.call_mut().retry = Some(crate::client::definition::Retry {
                    max_attempts,
                    initial,
                    max,
                });
                self
            }
        }
    };
}
pub(super) use call_options;

//! What the client's calls return: transactions, their branches and history, list pages, and the
//! registry's and the cluster's view. Converted from the wire protocol once, in `convert.rs`.

use std::collections::HashMap;
use std::time::SystemTime;

use crate::types::{EventKind, StepKind, StepStatus, Target, TxId, TxKind, TxState};

/// The answer to [`Client::start`](super::Client::start).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Started {
    /// The transaction's id.
    pub tx_id: TxId,
    /// False when the idempotency key named a transaction that already existed.
    pub created: bool,
}

/// A transaction as the coordinator answered: its definition's outline, where it stands, and
/// each branch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Transaction {
    /// The transaction's id.
    pub id: TxId,
    /// Saga or two-phase commit.
    pub kind: TxKind,
    /// Where it stands.
    pub state: TxState,
    /// The labels it was started with (plus the trace label, when its client sent a trace).
    pub labels: HashMap<String, String>,
    /// The idempotency key it was started with, if any.
    pub idempotency_key: Option<String>,
    /// When the coordinator accepted it.
    pub created_at: SystemTime,
    /// When its record last changed.
    pub updated_at: SystemTime,
    /// Its deadline, if it has one.
    pub deadline: Option<SystemTime>,
    /// Why it failed or compensated (or a branch's last error while it is in doubt).
    pub last_error: Option<String>,
    /// Its saga steps or two-phase branches, by index.
    pub branches: Vec<Branch>,
    /// The coordinator driving it, if one is.
    pub owner: Option<String>,
    /// The owner's lease epoch (0 when never owned).
    pub epoch: u64,
    /// A two-phase commit in phase two whose branches have not all acknowledged.
    pub in_doubt: bool,
}

impl Transaction {
    /// Whether it has an outcome: nothing will ever happen to it again.
    pub fn is_final(&self) -> bool {
        self.state.is_final()
    }

    /// The branch (saga step or two-phase branch) called `name`.
    pub fn branch(&self, name: &str) -> Option<&Branch> {
        self.branches.iter().find(|b| b.name == name)
    }
}

/// One saga step or two-phase branch of a [`Transaction`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Branch {
    /// Its position in the definition, from 0.
    pub index: u32,
    /// Its name in the definition.
    pub name: String,
    /// Its saga stage (0 for a two-phase branch).
    pub stage: u32,
    /// The saga step kind (compensatable for a two-phase branch).
    pub kind: StepKind,
    /// Whom it calls.
    pub target: Target,
    /// The action it calls.
    pub action: String,
    /// The saga step's compensation, if it has one.
    pub compensate: Option<String>,
    /// Where it stands.
    pub status: StepStatus,
    /// Calls made for its current phase.
    pub attempts: u32,
    /// What the participant answered with (kept for later steps and compensations).
    pub output: Vec<u8>,
    /// Its last error, if any.
    pub last_error: Option<String>,
}

/// One entry of a transaction's history ([`Client::events`](super::Client::events),
/// [`Client::watch`](super::Client::watch)).
///
/// **Event kinds this SDK does not know** (a newer coordinator may record new ones) are kept, not
/// dropped and not an error: `kind` is `None` and `kind_name` holds the name the coordinator
/// sent, so tools can still show them. A known kind has both.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Event {
    /// The transaction it belongs to.
    pub tx_id: TxId,
    /// Its position in the transaction's history, from 1.
    pub seq: u64,
    /// When it was recorded.
    pub at: SystemTime,
    /// What it records, or `None` for a kind this SDK does not know (see above).
    pub kind: Option<EventKind>,
    /// The kind's name as the coordinator sent it (`execute_ok`, ...).
    pub kind_name: String,
    /// The branch it is about, if any.
    pub branch: Option<u32>,
    /// Free text: an error, a reason, a participant's message.
    pub detail: String,
}

/// One page of [`Client::list`](super::Client::list).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ListPage {
    /// The transactions, newest first.
    pub transactions: Vec<Transaction>,
    /// Pass as [`ListQuery::page_token`](super::ListQuery::page_token) for the next page;
    /// `None` on the last page.
    pub next_page_token: Option<String>,
}

/// A registered participant endpoint, with the answering coordinator's balancing state.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParticipantInfo {
    /// The participant service.
    pub service: String,
    /// The endpoint's URL.
    pub endpoint: String,
    /// Its share of the service's calls (weighted policies).
    pub weight: u32,
    /// Its zone, if it gave one.
    pub zone: Option<String>,
    /// When its registration expires unless renewed; `None` when it does not (and for endpoints
    /// configured statically on the coordinator).
    pub expires_at: Option<SystemTime>,
    /// The service's load-balancing policy on the answering coordinator (`round_robin`, ...);
    /// only listings fill it.
    pub policy: Option<String>,
    /// Calls in flight from the answering coordinator to this endpoint.
    pub outstanding: u32,
    /// Until when the answering coordinator passes this endpoint over after transport failures;
    /// `None` when it is not ejected.
    pub ejected_until: Option<SystemTime>,
}

/// A coordinator sharing the log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CoordinatorInfo {
    /// Its id.
    pub id: String,
    /// The address it advertises.
    pub address: String,
    /// When it started.
    pub started_at: SystemTime,
    /// Its last heartbeat.
    pub heartbeat_at: SystemTime,
    /// Its build's version.
    pub version: String,
    /// How many transactions it drove at its last heartbeat (published by it, at most one claim
    /// interval old).
    pub owned: u64,
}

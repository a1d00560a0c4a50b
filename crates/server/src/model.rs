//! Plain types of the coordinator: definitions, retry policies and history records, with the
//! vocabulary (ids, states, endpoints) the SDK defines and the coordinator shares.
//!
//! Nothing here does I/O. The engine decides with these types, the store persists them, and the
//! API converts them to and from the generated protobuf messages.

use std::collections::BTreeMap;
use std::time::Duration;

use serde::{Deserialize, Serialize};

pub use baton_tx::types::{
    parse_endpoint, BadEndpoint, BadTxId, CallMark, EventKind, ParsedEndpoint, Phase, StepKind,
    StepStatus, Target, TxId, TxKind, TxState,
};

/// How often and how patiently a call is retried after transient errors.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RetryPolicy {
    /// Attempts per call, including the first (at least 1).
    pub max_attempts: u32,
    pub initial_backoff_ms: u64,
    pub max_backoff_ms: u64,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        RetryPolicy {
            max_attempts: 5,
            initial_backoff_ms: 100,
            max_backoff_ms: 10_000,
        }
    }
}

impl RetryPolicy {
    /// The delay before attempt `next_attempt` (2 or more): exponential in the attempt, capped,
    /// with full jitter. `unit` is a random number in [0, 1); passing it in keeps this pure.
    pub fn backoff(&self, next_attempt: u32, unit: f64) -> Duration {
        let exp = next_attempt.saturating_sub(2).min(32);
        let ceiling = self
            .initial_backoff_ms
            .saturating_mul(1u64 << exp)
            .min(self.max_backoff_ms.max(self.initial_backoff_ms));
        let unit = unit.clamp(0.0, 1.0);
        Duration::from_millis((ceiling as f64 * unit) as u64)
    }
}

// The stored definition (JSON, `baton_definitions.definition`) leaves out a field that holds
// its stored default: a W1 saga's definition is about half as long, and a saga's definition is
// most of the log volume it writes (docs/BENCHMARKS.md, "Log volume"). These defaults belong to
// the stored format, not to the API: rows written with them are read back with them, so they
// must never change, whatever the coordinator's own defaults become.

/// A call's timeout when the stored definition names none.
const STORED_TIMEOUT_MS: u64 = 10_000;
/// A call's retry policy when the stored definition names none.
const STORED_RETRY: RetryPolicy = RetryPolicy {
    max_attempts: 5,
    initial_backoff_ms: 100,
    max_backoff_ms: 10_000,
};

fn stored_timeout_ms() -> u64 {
    STORED_TIMEOUT_MS
}

fn is_stored_timeout_ms(ms: &u64) -> bool {
    *ms == STORED_TIMEOUT_MS
}

fn stored_retry() -> RetryPolicy {
    STORED_RETRY
}

fn is_stored_retry(retry: &RetryPolicy) -> bool {
    *retry == STORED_RETRY
}

fn is_zero(n: &u32) -> bool {
    *n == 0
}

fn is_compensatable(kind: &StepKind) -> bool {
    *kind == StepKind::Compensatable
}

/// One saga step as the application defined it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct StepDef {
    pub name: String,
    pub target: Target,
    pub action: String,
    /// `None` when there is nothing to undo.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub compensate: Option<String>,
    #[serde(with = "base64_bytes", default, skip_serializing_if = "Vec::is_empty")]
    pub payload: Vec<u8>,
    #[serde(default, skip_serializing_if = "is_compensatable")]
    pub kind: StepKind,
    /// Steps of one stage run concurrently; stages run in increasing order.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub stage: u32,
    /// Per-call timeout.
    #[serde(
        default = "stored_timeout_ms",
        skip_serializing_if = "is_stored_timeout_ms"
    )]
    pub timeout_ms: u64,
    #[serde(default = "stored_retry", skip_serializing_if = "is_stored_retry")]
    pub retry: RetryPolicy,
}

/// A saga: steps ordered by stage.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SagaDef {
    pub steps: Vec<StepDef>,
}

impl SagaDef {
    /// The highest stage number, or `None` for an empty saga.
    pub fn last_stage(&self) -> Option<u32> {
        self.steps.iter().map(|s| s.stage).max()
    }

    /// Indexes of the steps of `stage`.
    pub fn stage_steps(&self, stage: u32) -> impl Iterator<Item = usize> + '_ {
        self.steps
            .iter()
            .enumerate()
            .filter(move |(_, s)| s.stage == stage)
            .map(|(i, _)| i)
    }
}

/// One branch of a two-phase commit.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct BranchDef {
    pub name: String,
    pub target: Target,
    pub action: String,
    #[serde(with = "base64_bytes", default, skip_serializing_if = "Vec::is_empty")]
    pub payload: Vec<u8>,
    #[serde(
        default = "stored_timeout_ms",
        skip_serializing_if = "is_stored_timeout_ms"
    )]
    pub timeout_ms: u64,
    #[serde(default = "stored_retry", skip_serializing_if = "is_stored_retry")]
    pub retry: RetryPolicy,
}

/// A two-phase commit: branches that prepare, then all commit or all abort.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct TwoPhaseDef {
    pub branches: Vec<BranchDef>,
    pub prepare_timeout_ms: u64,
}

/// What the application asked for.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Definition {
    Saga(SagaDef),
    TwoPhase(TwoPhaseDef),
}

impl Definition {
    pub fn kind(&self) -> TxKind {
        match self {
            Definition::Saga(_) => TxKind::Saga,
            Definition::TwoPhase(_) => TxKind::TwoPhase,
        }
    }

    /// Branch (or step) names in index order.
    pub fn branch_names(&self) -> Vec<&str> {
        match self {
            Definition::Saga(saga) => saga.steps.iter().map(|s| s.name.as_str()).collect(),
            Definition::TwoPhase(tp) => tp.branches.iter().map(|b| b.name.as_str()).collect(),
        }
    }
}

/// One step's persisted state (an entry of the transaction row's `branches` on PostgreSQL, a
/// `baton_branches` row on SQLite).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct BranchRecord {
    pub index: u32,
    pub name: String,
    pub status: StepStatus,
    /// Attempts of the current phase's call (execute, then compensate).
    pub attempts: u32,
    #[serde(with = "base64_opt_bytes")]
    pub output: Option<Vec<u8>>,
    pub last_error: Option<String>,
    /// The order in which forward execution ended (succeeded or unknown), from 1; compensation
    /// runs in reverse of it.
    pub done_order: Option<u32>,
}

/// A transaction as stored: its row and its branches.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TxRecord {
    pub id: TxId,
    pub kind: TxKind,
    pub state: TxState,
    pub definition: Definition,
    pub labels: BTreeMap<String, String>,
    pub idempotency_key: Option<String>,
    /// The coordinator driving it, if any.
    pub owner: Option<String>,
    /// Bumped on every change of owner; writes are conditional on it (fencing).
    pub epoch: i64,
    /// Saga: the forward stage reached.
    pub stage: u32,
    /// Why the saga is compensating (a failure or a cancel), or the last error seen.
    pub last_error: Option<String>,
    /// A cancel was requested and not yet acted on.
    pub cancel_requested: bool,
    pub deadline_at: Option<chrono::DateTime<chrono::Utc>>,
    pub created_at: chrono::DateTime<chrono::Utc>,
    pub updated_at: chrono::DateTime<chrono::Utc>,
    /// Events written so far (the next event's seq is this + 1).
    pub last_seq: u64,
    pub branches: Vec<BranchRecord>,
}

/// One entry of a transaction's history (`baton_events`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct EventRecord {
    pub tx_id: TxId,
    /// 1, 2, 3, ... per transaction.
    pub seq: u64,
    pub at: chrono::DateTime<chrono::Utc>,
    pub kind: EventKind,
    pub branch: Option<u32>,
    pub detail: String,
}

/// A registered participant endpoint.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ParticipantRecord {
    pub service: String,
    pub endpoint: String,
    pub weight: u32,
    pub zone: String,
    /// `None` when the registration does not expire.
    pub expires_at: Option<chrono::DateTime<chrono::Utc>>,
}

/// A coordinator sharing the log.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CoordinatorRecord {
    pub id: String,
    pub address: String,
    pub started_at: chrono::DateTime<chrono::Utc>,
    pub heartbeat_at: chrono::DateTime<chrono::Utc>,
    pub version: String,
    /// The transactions it drove when it last heartbeat, as it published them.
    pub owned: u64,
}

/// Payload bytes as base64 text inside JSON definitions.
mod base64_bytes {
    use base64::Engine as _;
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(bytes: &[u8], s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&base64::engine::general_purpose::STANDARD.encode(bytes))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<u8>, D::Error> {
        let text = String::deserialize(d)?;
        base64::engine::general_purpose::STANDARD
            .decode(text)
            .map_err(serde::de::Error::custom)
    }
}

mod base64_opt_bytes {
    use base64::Engine as _;
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(bytes: &Option<Vec<u8>>, s: S) -> Result<S::Ok, S::Error> {
        match bytes {
            Some(b) => s.serialize_some(&base64::engine::general_purpose::STANDARD.encode(b)),
            None => s.serialize_none(),
        }
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Vec<u8>>, D::Error> {
        let text = Option::<String>::deserialize(d)?;
        text.map(|t| {
            base64::engine::general_purpose::STANDARD
                .decode(t)
                .map_err(serde::de::Error::custom)
        })
        .transpose()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_is_capped_and_jittered() {
        let p = RetryPolicy {
            max_attempts: 10,
            initial_backoff_ms: 100,
            max_backoff_ms: 1000,
        };
        assert_eq!(p.backoff(2, 0.0), Duration::ZERO);
        assert_eq!(p.backoff(2, 0.999), Duration::from_millis(99));
        assert_eq!(p.backoff(3, 0.5), Duration::from_millis(100));
        assert!(p.backoff(40, 0.999) <= Duration::from_millis(1000));
    }

    #[test]
    fn definition_json_round_trips_payload_bytes() {
        let def = Definition::Saga(SagaDef {
            steps: vec![StepDef {
                name: "a".into(),
                target: Target::Service("svc".into()),
                action: "do".into(),
                compensate: Some("undo".into()),
                payload: vec![0, 1, 255],
                kind: StepKind::Compensatable,
                stage: 0,
                timeout_ms: 1000,
                retry: RetryPolicy::default(),
            }],
        });
        let json = serde_json::to_string(&def).unwrap();
        assert_eq!(serde_json::from_str::<Definition>(&json).unwrap(), def);
    }

    #[test]
    fn stored_definitions_leave_out_defaults_and_read_both_forms() {
        let step = |stage, compensate: Option<&str>, payload: Vec<u8>| StepDef {
            name: format!("s{stage}"),
            target: Target::Endpoint("http://127.0.0.1:1".into()),
            action: "do".into(),
            compensate: compensate.map(Into::into),
            payload,
            kind: StepKind::Compensatable,
            stage,
            timeout_ms: 10_000,
            retry: RetryPolicy::default(),
        };
        let def = Definition::Saga(SagaDef {
            steps: vec![step(0, Some("undo"), vec![7; 3]), step(1, None, Vec::new())],
        });
        let json = serde_json::to_string(&def).unwrap();
        assert_eq!(
            json,
            r#"{"saga":{"steps":[{"name":"s0","target":{"endpoint":"http://127.0.0.1:1"},"action":"do","compensate":"undo","payload":"BwcH"},{"name":"s1","target":{"endpoint":"http://127.0.0.1:1"},"action":"do","stage":1}]}}"#
        );
        assert_eq!(serde_json::from_str::<Definition>(&json).unwrap(), def);
        // Values other than the stored defaults are written out and read back.
        let mut other = step(2, None, Vec::new());
        other.kind = StepKind::Pivot;
        other.timeout_ms = 250;
        other.retry.max_attempts = 1;
        let other = Definition::Saga(SagaDef { steps: vec![other] });
        let json = serde_json::to_string(&other).unwrap();
        assert!(
            json.contains(r#""kind":"pivot""#) && json.contains(r#""timeout_ms":250"#),
            "{json}"
        );
        assert_eq!(serde_json::from_str::<Definition>(&json).unwrap(), other);
        // Rows written before the compact form spell every field out.
        let full = r#"{"saga":{"steps":[{"name":"s1","target":{"endpoint":"http://127.0.0.1:1"},"action":"do","compensate":null,"payload":"","kind":"compensatable","stage":1,"timeout_ms":10000,"retry":{"max_attempts":5,"initial_backoff_ms":100,"max_backoff_ms":10000}}]}}"#;
        assert_eq!(
            serde_json::from_str::<Definition>(full).unwrap(),
            Definition::Saga(SagaDef {
                steps: vec![step(1, None, Vec::new())]
            })
        );
        let two_phase = r#"{"two_phase":{"branches":[{"name":"b","target":{"service":"svc"},"action":"pay"}],"prepare_timeout_ms":5}}"#;
        let Definition::TwoPhase(tp) = serde_json::from_str::<Definition>(two_phase).unwrap()
        else {
            panic!("a two-phase definition");
        };
        assert_eq!(
            (tp.branches[0].timeout_ms, tp.branches[0].retry),
            (10_000, RetryPolicy::default())
        );
    }
}

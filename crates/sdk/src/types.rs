//! The vocabulary shared by applications, participants and the coordinator: transaction ids,
//! kinds and states, step kinds and states, participant phases, and participant endpoints.
//!
//! The coordinator's log stores these values as the text of [`TxState::as_str`] and friends; the
//! SDK converts the wire protocol's numbers into them once, at the edge.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};
use uuid::Uuid;

/// A transaction id: a UUID v7, so ids sort by creation time.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct TxId(pub Uuid);

impl TxId {
    /// A new time-ordered id.
    pub fn new() -> Self {
        TxId(Uuid::now_v7())
    }
}

impl Default for TxId {
    fn default() -> Self {
        Self::new()
    }
}

impl fmt::Display for TxId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

/// The text was not a transaction id.
#[derive(Debug, thiserror::Error)]
#[error("tx_id: {0:?} is not a transaction id (expected a uuid)")]
pub struct BadTxId(pub String);

impl FromStr for TxId {
    type Err = BadTxId;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Uuid::parse_str(s.trim())
            .map(TxId)
            .map_err(|_| BadTxId(s.to_string()))
    }
}

/// Saga or two-phase commit.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TxKind {
    Saga,
    TwoPhase,
}

impl TxKind {
    pub fn as_str(self) -> &'static str {
        match self {
            TxKind::Saga => "saga",
            TxKind::TwoPhase => "two_phase",
        }
    }
}

impl FromStr for TxKind {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "saga" => Ok(TxKind::Saga),
            "two_phase" => Ok(TxKind::TwoPhase),
            other => Err(format!("unknown transaction kind {other:?}")),
        }
    }
}

/// Where a transaction stands. Sagas use the first five; two-phase commits the rest and
/// `Committed`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TxState {
    /// Saga steps going forward.
    Running,
    /// Undoing every step that may have run.
    Compensating,
    /// Every step (or branch) done.
    Committed,
    /// A step failed or the saga was cancelled, and everything that may have run was undone.
    Compensated,
    /// A compensation exhausted its retry budget, or the database refused to record the
    /// transaction's progress for its data; waits for an operator's retry.
    Failed,
    /// 2PC phase one.
    Preparing,
    /// 2PC: commit decided (durably), phase two in progress.
    Committing,
    /// 2PC: abort decided, phase two in progress.
    Aborting,
    /// 2PC: every branch that may have prepared was aborted.
    Aborted,
}

impl TxState {
    pub const ALL: [TxState; 9] = [
        TxState::Running,
        TxState::Compensating,
        TxState::Committed,
        TxState::Compensated,
        TxState::Failed,
        TxState::Preparing,
        TxState::Committing,
        TxState::Aborting,
        TxState::Aborted,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            TxState::Running => "running",
            TxState::Compensating => "compensating",
            TxState::Committed => "committed",
            TxState::Compensated => "compensated",
            TxState::Failed => "failed",
            TxState::Preparing => "preparing",
            TxState::Committing => "committing",
            TxState::Aborting => "aborting",
            TxState::Aborted => "aborted",
        }
    }

    /// An outcome: nothing will ever happen to the transaction again.
    pub fn is_final(self) -> bool {
        matches!(
            self,
            TxState::Committed | TxState::Compensated | TxState::Aborted
        )
    }

    /// No coordinator drives it: it is final, or it waits for an operator (`Failed`).
    pub fn is_resting(self) -> bool {
        self.is_final() || self == TxState::Failed
    }
}

impl fmt::Display for TxState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for TxState {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        TxState::ALL
            .into_iter()
            .find(|state| state.as_str() == s)
            .ok_or_else(|| format!("unknown transaction state {s:?}"))
    }
}

/// The classic saga step kinds.
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize,
)]
#[serde(rename_all = "snake_case")]
pub enum StepKind {
    /// May run, and be undone by its compensation.
    #[default]
    Compensatable,
    /// The point of no return: after it succeeds the saga only goes forward.
    Pivot,
    /// After the pivot: retried until it succeeds, never fails the saga.
    Retriable,
}

impl StepKind {
    pub fn as_str(self) -> &'static str {
        match self {
            StepKind::Compensatable => "compensatable",
            StepKind::Pivot => "pivot",
            StepKind::Retriable => "retriable",
        }
    }
}

/// Whom a step calls.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Target {
    /// A participant service, resolved through the registry on every call.
    Service(String),
    /// A fixed endpoint such as `http://127.0.0.1:9000`.
    Endpoint(String),
}

impl fmt::Display for Target {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Target::Service(name) => f.write_str(name),
            Target::Endpoint(url) => f.write_str(url),
        }
    }
}

/// Where one saga step (or 2PC branch) stands. Persisted in `baton_branches.state`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum StepStatus {
    /// Not called yet.
    #[default]
    Pending,
    /// A call is in flight (or was, when the coordinator stopped).
    Running,
    /// The last call failed transiently; the next attempt is scheduled.
    Backoff,
    /// Done; its output is kept.
    Succeeded,
    /// A definite failure: the participant said FAILED or rejected the call. It did not run.
    Failed,
    /// Retries ran out without a definite answer: it may have run.
    Unknown,
    /// Its compensation is in flight.
    Compensating,
    /// Its compensation failed transiently; the next attempt is scheduled.
    CompensateBackoff,
    /// Undone (or there was nothing to undo).
    Compensated,
    /// Its compensation exhausted the retry budget; waits for an operator.
    CompensationFailed,
    /// 2PC: voted yes (prepared); waits for the decision.
    Prepared,
    /// 2PC: `Commit` is in flight.
    Committing,
    /// 2PC: `Commit` failed; the next attempt is scheduled (phase two never gives up).
    CommitBackoff,
    /// 2PC: committed.
    Committed,
    /// 2PC: `Abort` is in flight.
    Aborting,
    /// 2PC: `Abort` failed; the next attempt is scheduled.
    AbortBackoff,
    /// 2PC: aborted (or never prepared, so nothing to abort).
    Aborted,
}

impl StepStatus {
    pub const ALL: [StepStatus; 17] = [
        StepStatus::Pending,
        StepStatus::Running,
        StepStatus::Backoff,
        StepStatus::Succeeded,
        StepStatus::Failed,
        StepStatus::Unknown,
        StepStatus::Compensating,
        StepStatus::CompensateBackoff,
        StepStatus::Compensated,
        StepStatus::CompensationFailed,
        StepStatus::Prepared,
        StepStatus::Committing,
        StepStatus::CommitBackoff,
        StepStatus::Committed,
        StepStatus::Aborting,
        StepStatus::AbortBackoff,
        StepStatus::Aborted,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            StepStatus::Pending => "pending",
            StepStatus::Running => "running",
            StepStatus::Backoff => "backoff",
            StepStatus::Succeeded => "succeeded",
            StepStatus::Failed => "failed",
            StepStatus::Unknown => "unknown",
            StepStatus::Compensating => "compensating",
            StepStatus::CompensateBackoff => "compensate_backoff",
            StepStatus::Compensated => "compensated",
            StepStatus::CompensationFailed => "compensation_failed",
            StepStatus::Prepared => "prepared",
            StepStatus::Committing => "committing",
            StepStatus::CommitBackoff => "commit_backoff",
            StepStatus::Committed => "committed",
            StepStatus::Aborting => "aborting",
            StepStatus::AbortBackoff => "abort_backoff",
            StepStatus::Aborted => "aborted",
        }
    }
}

impl fmt::Display for StepStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for StepStatus {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        StepStatus::ALL
            .into_iter()
            .find(|st| st.as_str() == s)
            .ok_or_else(|| format!("unknown step status {s:?}"))
    }
}

/// Which participant RPC a call is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Phase {
    Execute,
    Compensate,
    Prepare,
    Commit,
    Abort,
}

impl Phase {
    pub fn as_str(self) -> &'static str {
        match self {
            Phase::Execute => "execute",
            Phase::Compensate => "compensate",
            Phase::Prepare => "prepare",
            Phase::Commit => "commit",
            Phase::Abort => "abort",
        }
    }
}

impl fmt::Display for Phase {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A participant endpoint as [`parse_endpoint`] read it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ParsedEndpoint {
    /// `https://` rather than `http://`.
    pub tls: bool,
    /// A DNS name, an IPv4 address or a bracketed IPv6 address, as given.
    pub host: String,
    /// The port given, or 80 (`http`) / 443 (`https`) when none was.
    pub port: u16,
    /// `Some` for an HTTP/JSON participant: the URL had a path (even just `/`), which is kept
    /// without its trailing `/` (so `""` for `/`), and calls go to `POST {base}/{action}`.
    /// `None` for a gRPC participant: gRPC has no base path, its method is the whole path.
    pub http_base: Option<String>,
}

impl ParsedEndpoint {
    /// Whether calls to this endpoint are HTTP/JSON (docs/HTTP.md) rather than gRPC.
    pub fn is_http(&self) -> bool {
        self.http_base.is_some()
    }
}

/// Why a text is not a participant endpoint. The messages never repeat the text: the caller
/// names the field, and the text may be huge.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum BadEndpoint {
    #[error("must not be empty")]
    Empty,
    #[error("longer than 512 bytes")]
    TooLong,
    #[error("must not contain spaces, control or non-ascii characters (use punycode for a host)")]
    Characters,
    #[error("must start with http:// or https://")]
    Scheme,
    #[error("must not contain user information (user@)")]
    UserInfo,
    #[error("has no host")]
    NoHost,
    #[error("host must be a dns name, an ipv4 address or a bracketed ipv6 address")]
    Host,
    #[error("port must be a number from 1 to 65535")]
    Port,
    #[error(
        "path may only hold segments of letters, digits, '-', '.', '_' and '~' (no empty, '.' or '..' segment)"
    )]
    Path,
    #[error("must not have a query or a fragment")]
    QueryOrFragment,
}

/// Longest endpoint [`parse_endpoint`] accepts (as [`BadEndpoint::TooLong`] says); the host
/// alone is limited to 253 by DNS.
const MAX_ENDPOINT_LEN: usize = 512;

/// Reads `scheme://host[:port][/base]`, the only endpoint form a participant call can use: the
/// scheme `http` or `https`, a host, an optional port from 1 to 65535 (80 or 443 when none is
/// given), no user information, no query and no fragment.
///
/// Without a path the endpoint is a gRPC participant; with one (even just `/`) it is an
/// HTTP/JSON participant whose actions are under that base path (docs/HTTP.md). The path is
/// plain segments only, so that joining `{base}/{action}` can never form a different URL.
///
/// Strict because the channel code reads what it understands and ignores the rest: a port of
/// 99999 or -1 used to be dropped and the call made on port 80.
pub fn parse_endpoint(text: &str) -> Result<ParsedEndpoint, BadEndpoint> {
    if text.is_empty() {
        return Err(BadEndpoint::Empty);
    }
    if text.len() > MAX_ENDPOINT_LEN {
        return Err(BadEndpoint::TooLong);
    }
    if !text.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(BadEndpoint::Characters);
    }
    let (tls, rest) = if let Some(rest) = text.strip_prefix("http://") {
        (false, rest)
    } else if let Some(rest) = text.strip_prefix("https://") {
        (true, rest)
    } else {
        return Err(BadEndpoint::Scheme);
    };
    let end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let (authority, tail) = rest.split_at(end);
    if tail.contains(['?', '#']) {
        return Err(BadEndpoint::QueryOrFragment);
    }
    let http_base = match tail {
        "" => None,
        _ => Some(base_path(tail)?),
    };
    if authority.contains('@') {
        return Err(BadEndpoint::UserInfo);
    }
    if authority.is_empty() {
        return Err(BadEndpoint::NoHost);
    }
    let (host, port) = if let Some(v6) = authority.strip_prefix('[') {
        let (addr, after) = v6.split_once(']').ok_or(BadEndpoint::Host)?;
        if addr.parse::<std::net::Ipv6Addr>().is_err() {
            return Err(BadEndpoint::Host);
        }
        let port = match after {
            "" => None,
            _ => Some(after.strip_prefix(':').ok_or(BadEndpoint::Port)?),
        };
        (&authority[..addr.len() + 2], port)
    } else {
        match authority.split_once(':') {
            Some((host, port)) => (host, Some(port)),
            None => (authority, None),
        }
    };
    if host.is_empty() {
        return Err(BadEndpoint::NoHost);
    }
    if !host.starts_with('[') && host.parse::<std::net::Ipv4Addr>().is_err() && !dns_name(host) {
        return Err(BadEndpoint::Host);
    }
    let port = match port {
        None if tls => 443,
        None => 80,
        // Digits only: `u16::from_str` would take a leading `+`.
        Some(p) if !p.is_empty() && p.len() <= 5 && p.bytes().all(|b| b.is_ascii_digit()) => {
            match p.parse::<u16>() {
                Ok(port) if port > 0 => port,
                _ => return Err(BadEndpoint::Port),
            }
        }
        Some(_) => return Err(BadEndpoint::Port),
    };
    Ok(ParsedEndpoint {
        tls,
        host: host.to_string(),
        port,
        http_base,
    })
}

/// The base path of an HTTP participant (`tail` starts with `/`), without a trailing `/`.
fn base_path(tail: &str) -> Result<String, BadEndpoint> {
    let trimmed = tail.strip_suffix('/').unwrap_or(tail);
    if trimmed.is_empty() {
        return Ok(String::new());
    }
    let segments_ok = trimmed[1..].split('/').all(|segment| {
        !segment.is_empty()
            && segment != "."
            && segment != ".."
            && segment
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~'))
    });
    if !segments_ok {
        return Err(BadEndpoint::Path);
    }
    Ok(trimmed.to_string())
}

/// A DNS host name: dot-separated labels of letters, digits, `-` and `_`, none empty, none
/// starting or ending with `-`, the last not all digits (that would be a malformed address).
fn dns_name(host: &str) -> bool {
    let labels: Vec<&str> = host.split('.').collect();
    host.len() <= 253
        && labels.iter().all(|l| {
            !l.is_empty()
                && l.len() <= 63
                && !l.starts_with('-')
                && !l.ends_with('-')
                && l.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        })
        && labels
            .last()
            .is_some_and(|l| !l.bytes().all(|b| b.is_ascii_digit()))
}

/// What an entry of a transaction's history records. Stored as the text of
/// [`EventKind::as_str`] (`execute_sent`, `commit_decided`, ...) in the log's `kind` column and
/// sent as that text on the wire.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EventKind {
    /// The coordinator accepted the transaction (the first event).
    Accepted,
    /// A saga step's `Execute` call was sent.
    ExecuteSent,
    /// A saga step succeeded.
    ExecuteOk,
    /// A saga step failed definitely (it did not run).
    ExecuteFailed,
    /// A saga step's call failed transiently (retried, or out of retries: it may have run).
    ExecuteError,
    /// The saga started undoing its steps (a step failed or it was cancelled).
    Compensating,
    /// A step's `Compensate` call was sent.
    CompensateSent,
    /// A step was undone.
    CompensateOk,
    /// A step's `Compensate` call failed; it is retried.
    CompensateError,
    /// A step had nothing to undo.
    CompensateSkipped,
    /// Every step that may have run was undone (the saga's outcome).
    Compensated,
    /// A compensation exhausted its retries, or the log refused a write: waits for an operator.
    Failed,
    /// An operator or application asked to cancel the transaction.
    CancelRequested,
    /// An operator retried a failed transaction.
    Retried,
    /// Every step or branch is done (the outcome).
    Committed,
    /// A 2PC branch's `Prepare` call was sent.
    PrepareSent,
    /// A 2PC branch voted yes.
    PrepareOk,
    /// A 2PC branch voted no.
    PrepareFailed,
    /// A 2PC branch's `Prepare` call failed transiently.
    PrepareError,
    /// Every branch voted yes; commit is decided (durably).
    CommitDecided,
    /// Abort is decided (a branch voted no, timed out, or a cancel).
    AbortDecided,
    /// A branch that never prepared needs no `Abort`.
    AbortSkipped,
    /// A branch's `Commit` call was sent.
    CommitSent,
    /// A branch committed.
    CommitOk,
    /// A branch's `Commit` call failed; it is retried until it succeeds.
    CommitError,
    /// A branch's `Abort` call was sent.
    AbortSent,
    /// A branch aborted.
    AbortOk,
    /// A branch's `Abort` call failed; it is retried until it succeeds.
    AbortError,
    /// Every branch that may have prepared was aborted (the outcome).
    Aborted,
}

/// What an event says about one participant call ([`EventKind::call`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum CallMark {
    /// The call was sent: until an answer is recorded, it may be in flight.
    Sent,
    /// The participant answered OK.
    Ok,
    /// The participant answered FAILED (a definite no).
    Failed,
    /// The call failed transiently (no answer, or a retryable status).
    Error,
    /// No call was needed.
    Skipped,
}

impl EventKind {
    pub const ALL: [EventKind; 29] = [
        EventKind::Accepted,
        EventKind::ExecuteSent,
        EventKind::ExecuteOk,
        EventKind::ExecuteFailed,
        EventKind::ExecuteError,
        EventKind::Compensating,
        EventKind::CompensateSent,
        EventKind::CompensateOk,
        EventKind::CompensateError,
        EventKind::CompensateSkipped,
        EventKind::Compensated,
        EventKind::Failed,
        EventKind::CancelRequested,
        EventKind::Retried,
        EventKind::Committed,
        EventKind::PrepareSent,
        EventKind::PrepareOk,
        EventKind::PrepareFailed,
        EventKind::PrepareError,
        EventKind::CommitDecided,
        EventKind::AbortDecided,
        EventKind::AbortSkipped,
        EventKind::CommitSent,
        EventKind::CommitOk,
        EventKind::CommitError,
        EventKind::AbortSent,
        EventKind::AbortOk,
        EventKind::AbortError,
        EventKind::Aborted,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            EventKind::Accepted => "accepted",
            EventKind::ExecuteSent => "execute_sent",
            EventKind::ExecuteOk => "execute_ok",
            EventKind::ExecuteFailed => "execute_failed",
            EventKind::ExecuteError => "execute_error",
            EventKind::Compensating => "compensating",
            EventKind::CompensateSent => "compensate_sent",
            EventKind::CompensateOk => "compensate_ok",
            EventKind::CompensateError => "compensate_error",
            EventKind::CompensateSkipped => "compensate_skipped",
            EventKind::Compensated => "compensated",
            EventKind::Failed => "failed",
            EventKind::CancelRequested => "cancel_requested",
            EventKind::Retried => "retried",
            EventKind::Committed => "committed",
            EventKind::PrepareSent => "prepare_sent",
            EventKind::PrepareOk => "prepare_ok",
            EventKind::PrepareFailed => "prepare_failed",
            EventKind::PrepareError => "prepare_error",
            EventKind::CommitDecided => "commit_decided",
            EventKind::AbortDecided => "abort_decided",
            EventKind::AbortSkipped => "abort_skipped",
            EventKind::CommitSent => "commit_sent",
            EventKind::CommitOk => "commit_ok",
            EventKind::CommitError => "commit_error",
            EventKind::AbortSent => "abort_sent",
            EventKind::AbortOk => "abort_ok",
            EventKind::AbortError => "abort_error",
            EventKind::Aborted => "aborted",
        }
    }

    /// The participant call this event is about, if any: its phase and what happened to it.
    pub fn call(self) -> Option<(Phase, CallMark)> {
        match self {
            EventKind::ExecuteSent => Some((Phase::Execute, CallMark::Sent)),
            EventKind::ExecuteOk => Some((Phase::Execute, CallMark::Ok)),
            EventKind::ExecuteFailed => Some((Phase::Execute, CallMark::Failed)),
            EventKind::ExecuteError => Some((Phase::Execute, CallMark::Error)),
            EventKind::CompensateSent => Some((Phase::Compensate, CallMark::Sent)),
            EventKind::CompensateOk => Some((Phase::Compensate, CallMark::Ok)),
            EventKind::CompensateError => Some((Phase::Compensate, CallMark::Error)),
            EventKind::CompensateSkipped => Some((Phase::Compensate, CallMark::Skipped)),
            EventKind::PrepareSent => Some((Phase::Prepare, CallMark::Sent)),
            EventKind::PrepareOk => Some((Phase::Prepare, CallMark::Ok)),
            EventKind::PrepareFailed => Some((Phase::Prepare, CallMark::Failed)),
            EventKind::PrepareError => Some((Phase::Prepare, CallMark::Error)),
            EventKind::AbortSkipped => Some((Phase::Abort, CallMark::Skipped)),
            EventKind::CommitSent => Some((Phase::Commit, CallMark::Sent)),
            EventKind::CommitOk => Some((Phase::Commit, CallMark::Ok)),
            EventKind::CommitError => Some((Phase::Commit, CallMark::Error)),
            EventKind::AbortSent => Some((Phase::Abort, CallMark::Sent)),
            EventKind::AbortOk => Some((Phase::Abort, CallMark::Ok)),
            EventKind::AbortError => Some((Phase::Abort, CallMark::Error)),
            _ => None,
        }
    }

    /// Whether the event records the transaction's outcome.
    pub fn is_outcome(self) -> bool {
        matches!(
            self,
            EventKind::Committed | EventKind::Compensated | EventKind::Aborted
        )
    }
}

impl fmt::Display for EventKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for EventKind {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        EventKind::ALL
            .into_iter()
            .find(|kind| kind.as_str() == s)
            .ok_or_else(|| format!("unknown event kind {s:?}"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoints_parse_strictly() {
        let ok = |text: &str, tls: bool, host: &str, port: u16| {
            assert_eq!(
                parse_endpoint(text),
                Ok(ParsedEndpoint {
                    tls,
                    host: host.into(),
                    port,
                    http_base: None,
                }),
                "{text}"
            );
        };
        ok("http://127.0.0.1:9000", false, "127.0.0.1", 9000);
        ok("https://inventory.svc:65535", true, "inventory.svc", 65535);
        ok("http://[::1]:1", false, "[::1]", 1);
        ok("http://localhost", false, "localhost", 80);
        ok("https://example.com", true, "example.com", 443);
        ok("https://[::1]", true, "[::1]", 443);
        let bad = [
            ("", BadEndpoint::Empty),
            ("ftp://host:1", BadEndpoint::Scheme),
            ("127.0.0.1:9000", BadEndpoint::Scheme),
            ("HTTP://host:1", BadEndpoint::Scheme),
            ("http://host:99999", BadEndpoint::Port),
            ("http://host:-1", BadEndpoint::Port),
            ("http://host:0", BadEndpoint::Port),
            ("http://host:+80", BadEndpoint::Port),
            ("http://host:", BadEndpoint::Port),
            ("http://host:80:81", BadEndpoint::Port),
            ("http://host:000080", BadEndpoint::Port),
            ("http://[::1]x", BadEndpoint::Port),
            ("http://user:pw@host:1", BadEndpoint::UserInfo),
            ("http://host:1//", BadEndpoint::Path),
            ("http://host:1/a//b", BadEndpoint::Path),
            ("http://host:1/a/../b", BadEndpoint::Path),
            ("http://host:1/./b", BadEndpoint::Path),
            ("http://host:1/a%2fb", BadEndpoint::Path),
            ("http://host:1/a:b", BadEndpoint::Path),
            ("http://host:1?q=1", BadEndpoint::QueryOrFragment),
            ("http://host:1/#f", BadEndpoint::QueryOrFragment),
            ("http://", BadEndpoint::NoHost),
            ("http://:80", BadEndpoint::NoHost),
            ("http://[::1:80", BadEndpoint::Host),
            ("http://[nothex]:80", BadEndpoint::Host),
            ("http://999.1.1.1:80", BadEndpoint::Host),
            ("http://-a.b:80", BadEndpoint::Host),
            ("http://a..b:80", BadEndpoint::Host),
            ("http://a%20b:80", BadEndpoint::Host),
            ("http://h\0st:80", BadEndpoint::Characters),
            ("http://host:80 ", BadEndpoint::Characters),
            ("http://hôst:80", BadEndpoint::Characters),
        ];
        for (text, want) in bad {
            assert_eq!(parse_endpoint(text), Err(want), "{text:?}");
        }
        let long = format!("http://{}.example:80", "a".repeat(600));
        assert_eq!(parse_endpoint(&long), Err(BadEndpoint::TooLong));
    }

    #[test]
    fn a_path_makes_an_http_participant() {
        let base = |text: &str| parse_endpoint(text).map(|p| p.http_base);
        assert_eq!(base("http://127.0.0.1:9000"), Ok(None));
        assert_eq!(base("http://127.0.0.1:9000/"), Ok(Some(String::new())));
        assert_eq!(base("https://h:1/api"), Ok(Some("/api".into())));
        assert_eq!(base("https://h:1/api/v2/"), Ok(Some("/api/v2".into())));
        assert_eq!(base("http://h/a-b_c.d~e"), Ok(Some("/a-b_c.d~e".into())));
        let parsed = parse_endpoint("https://[::1]:8443/pay").unwrap();
        assert!(parsed.is_http() && parsed.tls);
        assert_eq!((parsed.host.as_str(), parsed.port), ("[::1]", 8443));
    }

    #[test]
    fn states_round_trip_as_text() {
        for kind in EventKind::ALL {
            assert_eq!(kind.as_str().parse::<EventKind>().unwrap(), kind);
        }
        for state in TxState::ALL {
            assert_eq!(state.as_str().parse::<TxState>().unwrap(), state);
        }
        for status in StepStatus::ALL {
            assert_eq!(status.as_str().parse::<StepStatus>().unwrap(), status);
        }
    }
}

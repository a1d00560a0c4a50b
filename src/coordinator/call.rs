//! One participant call: pick the endpoint, send the phase's RPC with a deadline, and classify the
//! result for the engine. The status-code classification lives here and only here.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use tonic::Code;

use super::Lease;
use crate::engine::CallResult;
use crate::model::{Phase, Target, TxId};
use crate::proto::participant_client::ParticipantClient;
use crate::proto::{BranchRequest, Outcome, StepOutput};
use crate::registry::{PickKey, Registry, ResolveError};
use crate::trace::{TraceId, TraceParent, TRACE_LABEL};

/// How a gRPC status from a participant is treated.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StatusClass {
    /// Retried with backoff within the step's budget; the call may have taken effect.
    Transient,
    /// The call was refused; retrying the same call cannot help.
    Permanent,
}

/// The one place that maps participant status codes to retry behaviour (DESIGN §3).
///
/// Codes DESIGN lists as transient, plus those that leave the outcome unknown (`UNKNOWN`,
/// `INTERNAL`, `CANCELLED`, `DATA_LOSS`: a crash or a proxy in between) are retried: with the
/// stable key a repeat is harmless, while giving up would guess. The refusals are permanent.
pub fn classify(code: Code) -> StatusClass {
    match code {
        Code::Unavailable
        | Code::DeadlineExceeded
        | Code::ResourceExhausted
        | Code::Aborted
        | Code::Unknown
        | Code::Internal
        | Code::Cancelled
        | Code::DataLoss => StatusClass::Transient,
        Code::InvalidArgument
        | Code::NotFound
        | Code::Unimplemented
        | Code::PermissionDenied
        | Code::FailedPrecondition
        | Code::AlreadyExists
        | Code::OutOfRange
        | Code::Unauthenticated
        | Code::Ok => StatusClass::Permanent,
    }
}

/// What a participant call needs from its coordinator: the registry that picks the endpoint, and
/// the coordinator's lease, which must be held when the call is sent and when its answer is used.
#[derive(Clone)]
pub struct Caller {
    registry: Arc<Registry>,
    lease: Arc<Lease>,
}

impl Caller {
    pub(crate) fn new(registry: Arc<Registry>, lease: Arc<Lease>) -> Caller {
        Caller { registry, lease }
    }

    pub fn registry(&self) -> &Arc<Registry> {
        &self.registry
    }
}

/// Parks a call this coordinator may no longer make, or whose answer it may no longer act on,
/// for good: the lease is lost, so peers may own the transaction now. [`Lease::check`] has
/// cancelled every driver's token, and the driver drops (aborts) this call when it stops; what
/// the driver would have done with the answer is fenced in the log anyway.
async fn withheld() -> CallResult {
    std::future::pending().await
}

/// Everything a call needs, copied out of the transaction so the call runs on its own.
#[derive(Clone, Debug)]
pub struct CallSpec {
    pub tx_id: TxId,
    pub branch: u32,
    pub branch_name: String,
    pub target: Target,
    pub phase: Phase,
    pub action: String,
    pub payload: Vec<u8>,
    pub attempt: u32,
    pub timeout: Duration,
    pub outputs: Vec<StepOutput>,
    pub labels: BTreeMap<String, String>,
    /// Sent as the call's `traceparent`: the transaction's trace, this call's own span id.
    pub traceparent: TraceParent,
}

/// The trace a transaction's calls belong to: the one its client sent (kept as a label, so it
/// survives a takeover), else the transaction id's own 128 bits.
pub fn trace_id(tx_id: TxId, labels: &BTreeMap<String, String>) -> TraceId {
    labels
        .get(TRACE_LABEL)
        .and_then(|text| TraceId::parse(text))
        .or_else(|| TraceId::from_bytes(*tx_id.0.as_bytes()))
        .unwrap_or_else(TraceId::random)
}

/// The span of one call, a child of the transaction's span when created inside its driver, and
/// the call's `traceparent` (this span's id when spans are exported). `endpoint` is recorded once
/// one is picked.
pub fn span(spec: &mut CallSpec) -> tracing::Span {
    let span = tracing::info_span!(
        "call",
        tx_id = %spec.tx_id,
        branch = spec.branch,
        branch_name = %spec.branch_name,
        phase = %spec.phase,
        action = %spec.action,
        attempt = spec.attempt,
        endpoint = tracing::field::Empty,
        span_id = tracing::field::Empty,
    );
    let span_id = crate::telemetry::span_id(&span);
    spec.traceparent = TraceParent::new(spec.traceparent.trace_id(), span_id);
    span.record("span_id", tracing::field::display(span_id));
    span
}

/// Whether a call's failure says the endpoint could not be reached (as opposed to an answer from
/// it), which is what ejects an endpoint from load balancing.
///
/// `UNAVAILABLE` (tonic's code for refused, reset or unreachable connections, and a server's own
/// "not now") and `DEADLINE_EXCEEDED` (no answer in time) count; any other status is an answer, so
/// the endpoint is up even when the call was refused.
pub fn unreachable(code: Code) -> bool {
    matches!(code, Code::Unavailable | Code::DeadlineExceeded)
}

/// Sends the call and classifies what came back. Never panics on what the network returns.
///
/// Nothing is sent, and no answer returned, unless the coordinator's lease is held at that moment
/// (see [`Lease`]); otherwise the call never completes and its driver is stopped.
pub async fn call(caller: &Caller, spec: CallSpec) -> CallResult {
    let result = send(caller, spec).await;
    // An answer that arrives after the lease was lost (the process was paused meanwhile) must
    // not move the transaction on here: a peer may be driving it by now.
    if !caller.lease.check() {
        return withheld().await;
    }
    result
}

async fn send(caller: &Caller, spec: CallSpec) -> CallResult {
    let tx_id = spec.tx_id.to_string();
    let key = PickKey {
        tx_id: &tx_id,
        labels: &spec.labels,
    };
    // Held until the answer: the call counts as in flight to this endpoint meanwhile.
    let picked = match caller.registry.pick(&spec.target, &key).await {
        Ok(p) => p,
        Err(e @ (ResolveError::BadEndpoint(_) | ResolveError::NoTls(_))) => {
            return CallResult::Permanent(e.to_string())
        }
        // No endpoint now may change when one registers: transient.
        Err(e) => return CallResult::Transient(e.to_string()),
    };
    // Checked after the pick, which may wait for the registry: as close to sending as it gets.
    if !caller.lease.check() {
        return withheld().await;
    }
    let endpoint = picked.endpoint.clone();
    tracing::Span::current().record("endpoint", tracing::field::display(&endpoint));
    let channel = picked.channel.clone();
    let deadline_ms =
        chrono::Utc::now().timestamp_millis().max(0) as u64 + spec.timeout.as_millis() as u64;
    let mut request = tonic::Request::new(BranchRequest {
        tx_id,
        branch_index: spec.branch,
        branch_name: spec.branch_name,
        action: spec.action,
        payload: spec.payload,
        attempt: spec.attempt,
        deadline_unix_ms: deadline_ms,
        outputs: spec.outputs,
        labels: spec.labels.into_iter().collect(),
    });
    request.set_timeout(spec.timeout);
    spec.traceparent.to_metadata(request.metadata_mut());
    let mut client = ParticipantClient::new(channel);
    let sent = async {
        match spec.phase {
            Phase::Execute => client.execute(request).await,
            Phase::Compensate => client.compensate(request).await,
            Phase::Prepare => client.prepare(request).await,
            Phase::Commit => client.commit(request).await,
            Phase::Abort => client.abort(request).await,
        }
    };
    // The gRPC deadline is sent to the server; this guard also covers a stuck connect.
    let answer = match tokio::time::timeout(spec.timeout, sent).await {
        Ok(answer) => answer,
        Err(_) => {
            picked.report(false);
            return CallResult::Transient(format!(
                "{endpoint}: no answer within {} ms",
                spec.timeout.as_millis()
            ));
        }
    };
    picked.report(match &answer {
        Ok(_) => true,
        Err(status) => !unreachable(status.code()),
    });
    match answer {
        Ok(reply) => {
            let reply = reply.into_inner();
            match Outcome::try_from(reply.outcome) {
                Ok(Outcome::Ok) => CallResult::Ok(reply.output),
                Ok(Outcome::Failed) => CallResult::Failed(if reply.message.is_empty() {
                    "participant reported failure".to_string()
                } else {
                    reply.message
                }),
                _ => CallResult::Permanent(format!(
                    "{endpoint}: reply has no outcome (expected OUTCOME_OK or OUTCOME_FAILED)"
                )),
            }
        }
        Err(status) => {
            let text = format!(
                "{endpoint}: {} ({:?})",
                if status.message().is_empty() {
                    "no message"
                } else {
                    status.message()
                },
                status.code()
            );
            match classify(status.code()) {
                StatusClass::Transient => CallResult::Transient(text),
                StatusClass::Permanent => CallResult::Permanent(text),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn design_codes_are_classified_as_written() {
        for code in [
            Code::Unavailable,
            Code::DeadlineExceeded,
            Code::ResourceExhausted,
            Code::Aborted,
        ] {
            assert_eq!(classify(code), StatusClass::Transient, "{code:?}");
        }
        for code in [
            Code::InvalidArgument,
            Code::NotFound,
            Code::Unimplemented,
            Code::PermissionDenied,
            Code::FailedPrecondition,
        ] {
            assert_eq!(classify(code), StatusClass::Permanent, "{code:?}");
        }
    }
}

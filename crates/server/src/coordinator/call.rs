//! One participant call: pick the endpoint, send the phase's RPC (gRPC) or POST (HTTP/JSON,
//! docs/HTTP.md) with a deadline, and classify the result for the engine. The status-code
//! classification of both kinds lives here and only here.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use tonic::Code;

use super::Lease;
use crate::engine::CallResult;
use crate::model::{Phase, Target, TxId};
use crate::proto::participant_client::ParticipantClient;
use crate::proto::{BranchRequest, Outcome, StepOutput};
use crate::registry::{ParticipantChannel, PickKey, Picked, Registry, ResolveError};
use crate::trace::{TraceId, TraceParent, TRACE_LABEL};
use crate::transport::http::{HttpAnswer, HttpCallError, HttpParticipant};

/// How a gRPC status from a participant is treated.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StatusClass {
    /// Retried with backoff within the step's budget; the call may have taken effect.
    Transient,
    /// The call was refused; retrying the same call cannot help.
    Permanent,
}

/// The one place that maps participant status codes to retry behaviour
/// (docs/ARCHITECTURE.md §4.3).
///
/// Codes that section lists as transient, plus those that leave the outcome unknown (`UNKNOWN`,
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

/// The span of one call, and the call's `traceparent` (this span's id when spans are exported).
/// Create it inside the transaction's span, its parent, which carries the transaction's id (a
/// copy here was formatted for every call). `endpoint` is recorded once one is picked.
pub fn span(spec: &mut CallSpec) -> tracing::Span {
    let span = tracing::info_span!(
        "call",
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
/// (see `Lease`); otherwise the call never completes and its driver is stopped.
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
    tracing::Span::current().record("endpoint", tracing::field::display(&picked.endpoint));
    match picked.channel.clone() {
        ParticipantChannel::Grpc(channel) => send_grpc(picked, channel, spec, tx_id).await,
        ParticipantChannel::Http(client) => {
            let (result, retry_after) = send_http(picked, &client, spec, tx_id).await;
            // Waited here, after the endpoint's in-flight count is released, and before the
            // engine schedules the next attempt after its own backoff: so the next attempt comes
            // no sooner than the participant asked.
            if let (CallResult::Transient(_), Some(wait)) = (&result, retry_after) {
                tokio::time::sleep(wait.min(MAX_RETRY_AFTER)).await;
            }
            result
        }
    }
}

fn deadline_unix_ms(timeout: Duration) -> u64 {
    chrono::Utc::now().timestamp_millis().max(0) as u64 + timeout.as_millis() as u64
}

async fn send_grpc(
    picked: Picked,
    channel: crate::transport::GrpcChannel,
    spec: CallSpec,
    tx_id: String,
) -> CallResult {
    let endpoint = picked.endpoint.clone();
    let deadline_ms = deadline_unix_ms(spec.timeout);
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

/// The longest `Retry-After` honoured: the default retry policy's largest backoff, so that a
/// participant cannot park a transaction for long with one header.
pub const MAX_RETRY_AFTER: Duration = Duration::from_secs(10);

/// How an HTTP participant's answer is treated (docs/HTTP.md): the HTTP twin of [`classify`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HttpClass {
    /// 2xx: done; the body is the output.
    Ok,
    /// 409: a business failure (a saga compensates, a prepare votes no).
    Failed,
    /// 429 and 5xx: retried within the step's policy.
    Transient,
    /// Any other status (other 4xx, 1xx, 3xx): retrying the same call cannot help.
    Permanent,
}

/// The one place that maps an HTTP participant's status to retry behaviour.
pub fn classify_http(status: u16) -> HttpClass {
    match status {
        200..=299 => HttpClass::Ok,
        409 => HttpClass::Failed,
        429 | 500..=599 => HttpClass::Transient,
        _ => HttpClass::Permanent,
    }
}

/// Whether an HTTP status says the endpoint itself is not serving, as `UNAVAILABLE` and
/// `DEADLINE_EXCEEDED` do for gRPC: 503 (the server's own "not now"), and 502/504 (a proxy in
/// front could not reach it). Counts towards ejection like a refused connection.
pub fn http_unreachable(status: u16) -> bool {
    matches!(status, 502..=504)
}

/// The `Retry-After` of an answer, in whole seconds (the HTTP-date form is not read).
fn retry_after(answer: &HttpAnswer) -> Option<Duration> {
    let text = answer
        .headers
        .get(::http::header::RETRY_AFTER)?
        .to_str()
        .ok()?;
    text.trim().parse::<u64>().ok().map(Duration::from_secs)
}

/// The JSON request body of an HTTP participant call (docs/HTTP.md).
#[derive(serde::Serialize)]
struct HttpRequestBody<'a> {
    tx_id: &'a str,
    branch_index: u32,
    branch_name: &'a str,
    action: &'a str,
    phase: String,
    attempt: u32,
    deadline_unix_ms: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    payload: Option<&'a serde_json::value::RawValue>,
    #[serde(skip_serializing_if = "Option::is_none")]
    payload_base64: Option<String>,
    outputs: Vec<HttpOutput<'a>>,
    labels: &'a BTreeMap<String, String>,
}

#[derive(serde::Serialize)]
struct HttpOutput<'a> {
    index: u32,
    name: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    output: Option<&'a serde_json::value::RawValue>,
    #[serde(skip_serializing_if = "Option::is_none")]
    output_base64: Option<String>,
}

/// Bytes as they go into the JSON body: verbatim when they are a JSON text, else base64.
fn json_or_base64(bytes: &[u8]) -> (Option<&serde_json::value::RawValue>, Option<String>) {
    use base64::Engine as _;
    match serde_json::from_slice::<&serde_json::value::RawValue>(bytes) {
        Ok(raw) => (Some(raw), None),
        Err(_) => (
            None,
            Some(base64::engine::general_purpose::STANDARD.encode(bytes)),
        ),
    }
}

/// The path called for a phase under the endpoint's base: the step's action (or compensation)
/// for a saga, `{action}/prepare|commit|abort` for a 2PC branch.
fn http_path(phase: Phase, action: &str) -> String {
    match phase {
        Phase::Execute | Phase::Compensate => format!("/{action}"),
        Phase::Prepare => format!("/{action}/prepare"),
        Phase::Commit => format!("/{action}/commit"),
        Phase::Abort => format!("/{action}/abort"),
    }
}

/// Whether `action` can be a path segment as is. Action names are free text in definitions; an
/// HTTP participant's must be one plain segment, so a call can never reach another URL.
fn action_segment_ok(action: &str) -> bool {
    !action.is_empty()
        && action != "."
        && action != ".."
        && action
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~'))
}

/// The message of a 409 answer: `{"message": "..."}` when the body is such JSON, else the text.
fn failure_message(body: &[u8]) -> String {
    #[derive(serde::Deserialize)]
    struct Message {
        message: String,
    }
    let text = match serde_json::from_slice::<Message>(body) {
        Ok(m) => m.message,
        Err(_) => String::from_utf8_lossy(body).trim().to_string(),
    };
    if text.is_empty() {
        "participant reported failure".to_string()
    } else {
        // Stored in the log and shown in errors: bounded like a gRPC status message would be.
        text.chars().take(1024).collect()
    }
}

/// Sends one HTTP/JSON participant call and classifies the answer; also returns the answer's
/// `Retry-After`.
async fn send_http(
    picked: Picked,
    client: &HttpParticipant,
    spec: CallSpec,
    tx_id: String,
) -> (CallResult, Option<Duration>) {
    let endpoint = picked.endpoint.clone();
    let phase = spec.phase.to_string();
    if !action_segment_ok(&spec.action) {
        return (
            CallResult::Permanent(format!(
                "{endpoint}: action {:?} is not a plain url path segment (letters, digits, '-', '.', '_', '~')",
                spec.action
            )),
            None,
        );
    }
    let (payload, payload_base64) = json_or_base64(&spec.payload);
    let outputs = spec
        .outputs
        .iter()
        .map(|o| {
            let (output, output_base64) = json_or_base64(&o.output);
            HttpOutput {
                index: o.index,
                name: &o.name,
                output,
                output_base64,
            }
        })
        .collect();
    let body = HttpRequestBody {
        tx_id: &tx_id,
        branch_index: spec.branch,
        branch_name: &spec.branch_name,
        action: &spec.action,
        phase: phase.clone(),
        attempt: spec.attempt,
        deadline_unix_ms: deadline_unix_ms(spec.timeout),
        payload,
        payload_base64,
        outputs,
        labels: &spec.labels,
    };
    let body = match serde_json::to_vec(&body) {
        Ok(body) => body,
        Err(e) => {
            return (
                CallResult::Permanent(format!("encoding the request: {e}")),
                None,
            )
        }
    };
    let mut headers = ::http::HeaderMap::new();
    let header = |text: String| ::http::HeaderValue::try_from(text).ok();
    headers.insert(
        ::http::header::CONTENT_TYPE,
        ::http::HeaderValue::from_static("application/json"),
    );
    if let Some(v) = header(format!("{tx_id}:{}:{phase}", spec.branch)) {
        headers.insert("idempotency-key", v);
    }
    if let Some(v) = header(spec.traceparent.to_string()) {
        headers.insert("traceparent", v);
    }
    let path = http_path(spec.phase, &spec.action);
    let answer = tokio::time::timeout(spec.timeout, client.post(&path, headers, body)).await;
    let answer = match answer {
        Err(_) => {
            picked.report(false);
            return (
                CallResult::Transient(format!(
                    "{endpoint}: no answer within {} ms",
                    spec.timeout.as_millis()
                )),
                None,
            );
        }
        Ok(Err(e @ HttpCallError::Connection(_))) => {
            picked.report(false);
            return (CallResult::Transient(format!("{endpoint}: {e}")), None);
        }
        // The participant answered, so it may well have applied the call: transient, so that
        // once out of retries the step counts as possibly run and is compensated.
        Ok(Err(e @ HttpCallError::TooLarge)) => {
            picked.report(true);
            return (CallResult::Transient(format!("{endpoint}: {e}")), None);
        }
        Ok(Err(e @ HttpCallError::Request(_))) => {
            return (CallResult::Permanent(format!("{endpoint}: {e}")), None)
        }
        Ok(Ok(answer)) => answer,
    };
    let status = answer.status.as_u16();
    picked.report(!http_unreachable(status));
    let text = || {
        let body = String::from_utf8_lossy(&answer.body);
        let body: String = body.trim().chars().take(512).collect();
        if body.is_empty() {
            format!("{endpoint}{path}: http {status}")
        } else {
            format!("{endpoint}{path}: http {status}: {body}")
        }
    };
    match classify_http(status) {
        HttpClass::Ok => (CallResult::Ok(answer.body.to_vec()), None),
        HttpClass::Failed => (CallResult::Failed(failure_message(&answer.body)), None),
        HttpClass::Transient => (CallResult::Transient(text()), retry_after(&answer)),
        HttpClass::Permanent => (CallResult::Permanent(text()), None),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_are_classified_as_the_architecture_lists_them() {
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

    #[test]
    fn http_statuses_are_classified_as_documented() {
        for status in [200, 201, 204, 299] {
            assert_eq!(classify_http(status), HttpClass::Ok, "{status}");
        }
        assert_eq!(classify_http(409), HttpClass::Failed);
        for status in [429, 500, 502, 503, 504, 599] {
            assert_eq!(classify_http(status), HttpClass::Transient, "{status}");
        }
        for status in [100, 301, 304, 400, 401, 403, 404, 405, 408, 410, 422] {
            assert_eq!(classify_http(status), HttpClass::Permanent, "{status}");
        }
    }

    #[test]
    fn payloads_are_json_when_they_are_json() {
        assert_eq!(
            json_or_base64(br#"{"a": 1}"#).0.map(|r| r.get()),
            Some(r#"{"a": 1}"#)
        );
        assert_eq!(json_or_base64(b"\xff\x00").1.as_deref(), Some("/wA="));
        assert_eq!(json_or_base64(b"").1.as_deref(), Some(""));
        assert_eq!(failure_message(br#"{"message": "no stock"}"#), "no stock");
        assert_eq!(failure_message(b"out of stock\n"), "out of stock");
        assert_eq!(failure_message(b""), "participant reported failure");
        assert!(action_segment_ok("reserve-v2.x"));
        assert!(
            !action_segment_ok("../admin") && !action_segment_ok("a/b") && !action_segment_ok("")
        );
    }
}

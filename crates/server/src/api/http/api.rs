//! The HTTP/JSON client API under `/v1`.
//!
//! Each route reads its JSON body or query into the gRPC request message, checks the bearer
//! token against the gRPC method it stands for (so a route needs exactly the role its method
//! needs), and calls the gRPC service's own handler with the caller's [`Principal`] in the
//! request extensions: validation, limits and namespaces are the gRPC ones. A gRPC status becomes
//! an HTTP status and a JSON body `{code, field, message}`.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::{header, HeaderMap, HeaderValue, Method, StatusCode, Uri};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;
use http_body_util::BodyExt;
use serde_json::{json, Value};
use tokio_stream::{Stream, StreamExt};
use tokio_util::sync::{CancellationToken, WaitForCancellationFutureOwned};
use tonic::{Code, Status};

use super::json::{self, Obj};
use crate::api::auth::{AuthConfig, Principal};
use crate::api::grpc::codec::generated::coordinator_server::Coordinator as _;
use crate::api::{CoordinatorService, Limits};
use crate::coordinator::Coordinator;
use crate::proto;

/// What every route shares.
struct Api {
    svc: CoordinatorService,
    auth: AuthConfig,
    /// The largest body read: the gRPC server's largest message.
    max_body: usize,
    /// Cancelled at shutdown: open event streams end then.
    stop: CancellationToken,
}

/// The largest request body, the same as the gRPC server's largest message.
pub fn max_body(limits: &Limits) -> usize {
    (limits.max_payload_bytes * 4).max(4 << 20)
}

/// The `/v1` routes.
pub fn router(
    co: Arc<Coordinator>,
    limits: Limits,
    auth: AuthConfig,
    stop: CancellationToken,
) -> Router {
    let api = Arc::new(Api {
        max_body: max_body(&limits),
        svc: CoordinatorService::new(co, limits),
        auth,
        stop,
    });
    Router::new()
        .route("/v1/transactions", post(start).get(list))
        .route("/v1/transactions/{id}", get(get_tx))
        .route("/v1/transactions/{id}/events", get(events))
        .route("/v1/transactions/{id}/wait", get(wait))
        .route("/v1/transactions/{id}/watch", get(watch))
        .route("/v1/transactions/{id}/retry", post(retry))
        .route("/v1/transactions/{id}/cancel", post(cancel))
        .route("/v1/purge", post(purge))
        .route(
            "/v1/participants",
            post(register)
                .get(list_participants)
                .delete(deregister_query),
        )
        .route("/v1/participants/heartbeat", post(heartbeat))
        .route("/v1/participants/deregister", post(deregister))
        .route("/v1/coordinators", get(coordinators))
        .route("/v1/openapi.json", get(openapi))
        .fallback(no_route)
        .method_not_allowed_fallback(wrong_method)
        .with_state(api)
}

// ---- errors ----

/// A refused request, as the client reads it.
#[derive(Debug)]
pub struct ApiError {
    status: StatusCode,
    code: &'static str,
    field: Option<String>,
    message: String,
}

impl ApiError {
    /// `400 invalid_argument` about `field`.
    pub fn invalid(field: &str, what: impl std::fmt::Display) -> ApiError {
        ApiError {
            status: StatusCode::BAD_REQUEST,
            code: "invalid_argument",
            field: Some(field.to_string()),
            message: format!("{field}: {what}"),
        }
    }

    fn too_large(len: u64, limit: usize) -> ApiError {
        ApiError {
            status: StatusCode::PAYLOAD_TOO_LARGE,
            code: "resource_exhausted",
            field: Some("body".into()),
            message: format!("body: {len} bytes exceed the limit of {limit}"),
        }
    }

    fn body(&self) -> Value {
        json!({ "code": self.code, "field": self.field, "message": self.message })
    }
}

/// The field a status message names: its text before `": "` when that looks like a field path
/// (`saga.steps[2].name`, `labels["k"]`), not a sentence.
fn field_of(message: &str) -> Option<String> {
    let (head, _) = message.split_once(": ")?;
    let path_like = !head.is_empty()
        && head
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '[' | ']' | '"' | '-'));
    path_like.then(|| head.to_string())
}

impl From<Status> for ApiError {
    fn from(status: Status) -> Self {
        let (http, code) = match status.code() {
            Code::InvalidArgument => (StatusCode::BAD_REQUEST, "invalid_argument"),
            Code::NotFound => (StatusCode::NOT_FOUND, "not_found"),
            Code::AlreadyExists => (StatusCode::CONFLICT, "already_exists"),
            Code::FailedPrecondition => (StatusCode::CONFLICT, "failed_precondition"),
            Code::Aborted => (StatusCode::CONFLICT, "aborted"),
            Code::ResourceExhausted => (StatusCode::TOO_MANY_REQUESTS, "resource_exhausted"),
            Code::Unauthenticated => (StatusCode::UNAUTHORIZED, "unauthenticated"),
            Code::PermissionDenied => (StatusCode::FORBIDDEN, "permission_denied"),
            Code::Unavailable => (StatusCode::SERVICE_UNAVAILABLE, "unavailable"),
            Code::DeadlineExceeded => (StatusCode::GATEWAY_TIMEOUT, "deadline_exceeded"),
            Code::OutOfRange => (StatusCode::BAD_REQUEST, "out_of_range"),
            Code::Unimplemented => (StatusCode::NOT_IMPLEMENTED, "unimplemented"),
            Code::Cancelled => (StatusCode::INTERNAL_SERVER_ERROR, "cancelled"),
            Code::Ok | Code::Unknown => (StatusCode::INTERNAL_SERVER_ERROR, "unknown"),
            Code::Internal => (StatusCode::INTERNAL_SERVER_ERROR, "internal"),
            Code::DataLoss => (StatusCode::INTERNAL_SERVER_ERROR, "data_loss"),
        };
        let field = field_of(status.message());
        // A request over a size or count limit (the message names the field) is too large and
        // stays so: 413, so clients do not retry it as they would a 429 for an overload.
        let http = if code == "resource_exhausted" && field.is_some() {
            StatusCode::PAYLOAD_TOO_LARGE
        } else {
            http
        };
        ApiError {
            status: http,
            code,
            field,
            message: status.message().to_string(),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut response = (self.status, Json(self.body())).into_response();
        if self.status == StatusCode::UNAUTHORIZED {
            response
                .headers_mut()
                .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        }
        response
    }
}

/// A JSON response body (axum's `Json` needs a feature this crate does not enable).
struct Json(Value);

impl IntoResponse for Json {
    fn into_response(self) -> Response {
        (
            [(header::CONTENT_TYPE, "application/json")],
            self.0.to_string(),
        )
            .into_response()
    }
}

type Reply = Result<Response, ApiError>;

fn ok(body: Value) -> Reply {
    Ok(Json(body).into_response())
}

async fn no_route(method: Method, uri: Uri) -> ApiError {
    ApiError {
        status: StatusCode::NOT_FOUND,
        code: "not_found",
        field: None,
        message: format!("no route {method} {}", uri.path()),
    }
}

async fn wrong_method(method: Method, uri: Uri) -> ApiError {
    ApiError {
        status: StatusCode::METHOD_NOT_ALLOWED,
        code: "method_not_allowed",
        field: None,
        message: format!("{} does not answer {method}", uri.path()),
    }
}

// ---- plumbing ----

impl Api {
    /// The caller, after the same token and role check as a call of the gRPC `method`. Done
    /// before the body is read, so a refused caller learns nothing about its request.
    fn caller(&self, method: &str, headers: &HeaderMap) -> Result<Principal, ApiError> {
        Ok(self
            .auth
            .check(&format!("/baton.v1.Coordinator/{method}"), headers)?)
    }

    /// The gRPC request carrying `message`, the caller and the trace context.
    fn request<T>(
        &self,
        principal: Principal,
        headers: &HeaderMap,
        message: T,
    ) -> tonic::Request<T> {
        let mut request = tonic::Request::new(message);
        // The trace context, which `Start` reads from the metadata.
        for name in ["traceparent", "tracestate"] {
            if let Some(value) = headers.get(name) {
                if let Ok(value) = tonic::metadata::MetadataValue::try_from(value.as_bytes()) {
                    request.metadata_mut().insert(name, value);
                }
            }
        }
        request.extensions_mut().insert(principal);
        request
    }

    /// The body as JSON, bounded by the gRPC message limit; an empty body is `{}`.
    async fn body(&self, headers: &HeaderMap, body: Body) -> Result<Value, ApiError> {
        let declared = headers
            .get(header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u64>().ok());
        if let Some(len) = declared.filter(|len| *len > self.max_body as u64) {
            return Err(ApiError::too_large(len, self.max_body));
        }
        let bytes = match http_body_util::Limited::new(body, self.max_body)
            .collect()
            .await
        {
            Ok(collected) => collected.to_bytes(),
            Err(e) if e.is::<http_body_util::LengthLimitError>() => {
                return Err(ApiError::too_large(self.max_body as u64 + 1, self.max_body))
            }
            Err(e) => return Err(ApiError::invalid("body", format!("could not be read: {e}"))),
        };
        if bytes.iter().all(u8::is_ascii_whitespace) {
            return Ok(Value::Object(Default::default()));
        }
        serde_json::from_slice(&bytes)
            .map_err(|e| ApiError::invalid("body", format!("not valid JSON: {e}")))
    }
}

/// Query parameters, decoded; [`Query::finish`] refuses any not read.
struct Query(Vec<(String, String)>);

impl Query {
    fn of(uri: &Uri) -> Result<Query, ApiError> {
        let mut pairs = Vec::new();
        for part in uri
            .query()
            .unwrap_or("")
            .split('&')
            .filter(|p| !p.is_empty())
        {
            let (k, v) = part.split_once('=').unwrap_or((part, ""));
            let k = decode(k).ok_or_else(|| ApiError::invalid("query", "bad percent-encoding"))?;
            let v = decode(v).ok_or_else(|| ApiError::invalid(&k, "bad percent-encoding"))?;
            pairs.push((k, v));
        }
        Ok(Query(pairs))
    }

    /// Every value of `key`, removed.
    fn all(&mut self, key: &str) -> Vec<String> {
        let (taken, rest) = std::mem::take(&mut self.0)
            .into_iter()
            .partition(|(k, _)| k == key);
        self.0 = rest;
        taken.into_iter().map(|(_, v)| v).collect()
    }

    /// The value of `key` if given once; twice is refused.
    fn one(&mut self, key: &str) -> Result<Option<String>, ApiError> {
        let mut values = self.all(key);
        if values.len() > 1 {
            return Err(ApiError::invalid(key, "give it once"));
        }
        Ok(values.pop())
    }

    fn string(&mut self, key: &str) -> Result<String, ApiError> {
        Ok(self.one(key)?.unwrap_or_default())
    }

    fn u64(&mut self, key: &str) -> Result<u64, ApiError> {
        match self.one(key)? {
            None => Ok(0),
            Some(v) => v.parse().map_err(|_| {
                ApiError::invalid(key, format!("{v:?} is not a non-negative integer"))
            }),
        }
    }

    fn u32(&mut self, key: &str) -> Result<u32, ApiError> {
        let n = self.u64(key)?;
        u32::try_from(n)
            .map_err(|_| ApiError::invalid(key, format!("{n} exceeds the maximum of {}", u32::MAX)))
    }

    /// A time as Unix milliseconds or RFC 3339 text; 0 when absent.
    /// A time as Unix milliseconds or RFC 3339, range-checked here so that an error names the
    /// parameter given rather than the gRPC field it fills.
    fn time_ms(&mut self, key: &str) -> Result<i64, ApiError> {
        let Some(v) = self.one(key)? else {
            return Ok(0);
        };
        let ms = match v.parse::<i64>() {
            Ok(ms) => ms,
            Err(_) => chrono::DateTime::parse_from_rfc3339(&v)
                .map(|t| t.timestamp_millis())
                .map_err(|_| {
                    ApiError::invalid(
                        key,
                        format!("{v:?} is neither Unix milliseconds nor RFC 3339"),
                    )
                })?,
        };
        crate::api::validate::time_ms(key, ms)?;
        Ok(ms)
    }

    fn finish(self) -> Result<(), ApiError> {
        match self.0.first() {
            None => Ok(()),
            Some((k, _)) => Err(ApiError::invalid(k, "unknown query parameter")),
        }
    }
}

/// Percent-decoding with `+` as a space, as HTML forms and curl's --data-urlencode send it.
fn decode(text: &str) -> Option<String> {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'+' => out.push(b' '),
            b'%' => {
                let hex = std::str::from_utf8(bytes.get(i + 1..i + 3)?).ok()?;
                out.push(u8::from_str_radix(hex, 16).ok()?);
                i += 2;
            }
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8(out).ok()
}

type Shared = State<Arc<Api>>;

// ---- transactions ----

async fn start(State(api): Shared, headers: HeaderMap, body: Body) -> Reply {
    let who = api.caller("Start", &headers)?;
    let message = json::start_request(api.body(&headers, body).await?)?;
    let request = api.request(who, &headers, message);
    let started = api.svc.start(request).await?.into_inner();
    let status = if started.created {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    let body = json!({
        "tx_id": started.tx_id,
        "created": started.created,
        "transaction": started.transaction.as_ref().map(json::transaction),
    });
    Ok((status, Json(body)).into_response())
}

async fn get_tx(State(api): Shared, headers: HeaderMap, Path(id): Path<String>) -> Reply {
    let who = api.caller("Get", &headers)?;
    let request = api.request(who, &headers, proto::GetRequest { tx_id: id });
    ok(json::transaction(&api.svc.get(request).await?.into_inner()))
}

async fn wait(State(api): Shared, headers: HeaderMap, Path(id): Path<String>, uri: Uri) -> Reply {
    let who = api.caller("Wait", &headers)?;
    let mut q = Query::of(&uri)?;
    let message = proto::WaitRequest {
        tx_id: id,
        timeout_ms: q.u64("timeout_ms")?,
    };
    q.finish()?;
    let request = api.request(who, &headers, message);
    ok(json::transaction(
        &api.svc.wait(request).await?.into_inner(),
    ))
}

async fn list(State(api): Shared, headers: HeaderMap, uri: Uri) -> Reply {
    let who = api.caller("List", &headers)?;
    let mut q = Query::of(&uri)?;
    let mut states = Vec::new();
    for value in q.all("state") {
        for name in value.split(',').filter(|s| !s.is_empty()) {
            states.push(json::state_number(name).ok_or_else(|| {
                ApiError::invalid(
                    "state",
                    format!("{name:?} is not one of {}", json::STATES.join(", ")),
                )
            })?);
        }
    }
    let mut labels = std::collections::HashMap::new();
    for value in q.all("label") {
        let (k, v) = value
            .split_once('=')
            .ok_or_else(|| ApiError::invalid("label", format!("{value:?} is not key=value")))?;
        labels.insert(k.to_string(), v.to_string());
    }
    let page_size = q.u32("page_size")?;
    let limit = q.u32("limit")?;
    if page_size != 0 && limit != 0 {
        return Err(ApiError::invalid(
            "page_size",
            "give page_size or limit, not both",
        ));
    }
    // Checked here too, so that the error names the parameter the caller gave.
    let (name, size) = if page_size != 0 {
        ("page_size", page_size)
    } else {
        ("limit", limit)
    };
    crate::api::validate::check_page_size(name, size)?;
    let message = proto::ListRequest {
        states,
        labels,
        created_after_ms: q.time_ms("created_after")?,
        created_before_ms: q.time_ms("created_before")?,
        limit: size,
        page_token: q.string("page_token")?,
    };
    q.finish()?;
    let request = api.request(who, &headers, message);
    let found = api.svc.list(request).await?.into_inner();
    ok(json!({
        "transactions": found.transactions.iter().map(json::transaction).collect::<Vec<_>>(),
        "next_page_token": (!found.next_page_token.is_empty()).then_some(found.next_page_token),
    }))
}

async fn events(State(api): Shared, headers: HeaderMap, Path(id): Path<String>, uri: Uri) -> Reply {
    let who = api.caller("Events", &headers)?;
    let mut q = Query::of(&uri)?;
    let message = proto::EventsRequest {
        tx_id: id,
        after_seq: q.u64("after_seq")?,
        limit: q.u32("limit")?,
    };
    q.finish()?;
    let request = api.request(who, &headers, message);
    let found = api.svc.events(request).await?.into_inner();
    ok(json!({ "events": found.events.iter().map(json::event).collect::<Vec<_>>() }))
}

async fn retry(
    State(api): Shared,
    headers: HeaderMap,
    Path(id): Path<String>,
    body: Body,
) -> Reply {
    let who = api.caller("Retry", &headers)?;
    json::body_object(api.body(&headers, body).await?, |_| Ok(()))?;
    let request = api.request(who, &headers, proto::RetryRequest { tx_id: id });
    ok(json::transaction(
        &api.svc.retry(request).await?.into_inner(),
    ))
}

async fn cancel(
    State(api): Shared,
    headers: HeaderMap,
    Path(id): Path<String>,
    body: Body,
) -> Reply {
    let who = api.caller("Cancel", &headers)?;
    let reason = json::body_object(api.body(&headers, body).await?, |o| o.string("reason"))?;
    let request = api.request(who, &headers, proto::CancelRequest { tx_id: id, reason });
    ok(json::transaction(
        &api.svc.cancel(request).await?.into_inner(),
    ))
}

async fn purge(State(api): Shared, headers: HeaderMap, body: Body) -> Reply {
    let who = api.caller("Purge", &headers)?;
    let message = json::body_object(api.body(&headers, body).await?, |o| {
        Ok(proto::PurgeRequest {
            older_than_ms: o.u64("older_than_ms")?,
            batch: o.u32("batch")?,
        })
    })?;
    let request = api.request(who, &headers, message);
    ok(json!({ "purged": api.svc.purge(request).await?.into_inner().purged }))
}

// ---- the event stream ----

/// `GET /v1/transactions/{id}/watch`: Server-Sent Events, one per history entry (`id` is its
/// seq, `event` its kind, `data` the event as JSON), from the start (or after `Last-Event-ID` /
/// `after_seq`) until the transaction rests.
async fn watch(State(api): Shared, headers: HeaderMap, Path(id): Path<String>, uri: Uri) -> Reply {
    let who = api.caller("Watch", &headers)?;
    let mut q = Query::of(&uri)?;
    let after_query = q.u64("after_seq")?;
    q.finish()?;
    let after_header = match headers.get("last-event-id") {
        None => 0,
        Some(v) => v
            .to_str()
            .ok()
            .and_then(|v| v.trim().parse::<u64>().ok())
            .ok_or_else(|| ApiError::invalid("last-event-id", "expected an event seq"))?,
    };
    let after = after_query.max(after_header);
    let request = api.request(who, &headers, proto::WatchRequest { tx_id: id });
    // The gRPC stream replays the whole history before the live events, so a resumed stream
    // skips what the client has and misses nothing after it.
    let stream = api.svc.watch(request).await?.into_inner();
    let events = stream
        .filter(move |item| !matches!(item, Ok(e) if e.seq <= after))
        .map(|item| {
            Ok::<_, std::convert::Infallible>(match item {
                Ok(e) => Event::default()
                    .id(e.seq.to_string())
                    .event(sse_name(&e.kind))
                    .data(json::event(&e).to_string()),
                Err(status) => Event::default()
                    .event("error")
                    .data(ApiError::from(status).body().to_string()),
            })
        });
    let events = UntilStopped {
        inner: events,
        stop: Box::pin(api.stop.clone().cancelled_owned()),
    };
    Ok(Sse::new(events)
        .keep_alive(KeepAlive::default())
        .into_response())
}

/// An event kind as an SSE event name: a line break there would end the field early.
fn sse_name(kind: &str) -> String {
    kind.chars().filter(|c| !matches!(c, '\n' | '\r')).collect()
}

/// A stream that ends when the server stops, so an open event stream does not hold up shutdown.
struct UntilStopped<S> {
    inner: S,
    stop: Pin<Box<WaitForCancellationFutureOwned>>,
}

impl<S: Stream + Unpin> Stream for UntilStopped<S> {
    type Item = S::Item;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<S::Item>> {
        if self.stop.as_mut().poll(cx).is_ready() {
            return Poll::Ready(None);
        }
        Pin::new(&mut self.inner).poll_next(cx)
    }
}

// ---- participants and coordinators ----

fn registration(o: &mut Obj) -> Result<(String, String), ApiError> {
    Ok((o.string("service")?, o.string("endpoint")?))
}

async fn register(State(api): Shared, headers: HeaderMap, body: Body) -> Reply {
    let who = api.caller("RegisterParticipant", &headers)?;
    let message = json::body_object(api.body(&headers, body).await?, |o| {
        let (service, endpoint) = registration(o)?;
        Ok(proto::RegisterParticipantRequest {
            service,
            endpoint,
            weight: o.u32("weight")?,
            zone: o.string("zone")?,
            ttl_ms: o.u64("ttl_ms")?,
        })
    })?;
    let request = api.request(who, &headers, message);
    let reply = api.svc.register_participant(request).await?.into_inner();
    ok(json!({ "participant": reply.participant.as_ref().map(json::participant) }))
}

async fn heartbeat(State(api): Shared, headers: HeaderMap, body: Body) -> Reply {
    let who = api.caller("HeartbeatParticipant", &headers)?;
    let message = json::body_object(api.body(&headers, body).await?, |o| {
        let (service, endpoint) = registration(o)?;
        Ok(proto::HeartbeatParticipantRequest {
            service,
            endpoint,
            ttl_ms: o.u64("ttl_ms")?,
        })
    })?;
    let request = api.request(who, &headers, message);
    let reply = api.svc.heartbeat_participant(request).await?.into_inner();
    ok(json!({ "participant": reply.participant.as_ref().map(json::participant) }))
}

async fn deregister_message(
    api: &Api,
    who: Principal,
    headers: &HeaderMap,
    message: proto::DeregisterParticipantRequest,
) -> Reply {
    let request = api.request(who, headers, message);
    let reply = api.svc.deregister_participant(request).await?.into_inner();
    ok(json!({ "removed": reply.removed }))
}

async fn deregister(State(api): Shared, headers: HeaderMap, body: Body) -> Reply {
    let who = api.caller("DeregisterParticipant", &headers)?;
    let (service, endpoint) = json::body_object(api.body(&headers, body).await?, registration)?;
    let message = proto::DeregisterParticipantRequest { service, endpoint };
    deregister_message(&api, who, &headers, message).await
}

/// `DELETE /v1/participants?service=...&endpoint=...`.
async fn deregister_query(State(api): Shared, headers: HeaderMap, uri: Uri) -> Reply {
    let who = api.caller("DeregisterParticipant", &headers)?;
    let mut q = Query::of(&uri)?;
    let message = proto::DeregisterParticipantRequest {
        service: q.string("service")?,
        endpoint: q.string("endpoint")?,
    };
    q.finish()?;
    deregister_message(&api, who, &headers, message).await
}

async fn list_participants(State(api): Shared, headers: HeaderMap, uri: Uri) -> Reply {
    let who = api.caller("ListParticipants", &headers)?;
    let mut q = Query::of(&uri)?;
    let message = proto::ListParticipantsRequest {
        service: q.string("service")?,
    };
    q.finish()?;
    let request = api.request(who, &headers, message);
    let found = api.svc.list_participants(request).await?.into_inner();
    ok(json!({
        "participants": found.participants.iter().map(json::participant).collect::<Vec<_>>(),
    }))
}

async fn coordinators(State(api): Shared, headers: HeaderMap, uri: Uri) -> Reply {
    let who = api.caller("ListCoordinators", &headers)?;
    Query::of(&uri)?.finish()?;
    let request = api.request(who, &headers, proto::ListCoordinatorsRequest {});
    let found = api.svc.list_coordinators(request).await?.into_inner();
    ok(json!({
        "coordinators": found.coordinators.iter().map(json::coordinator).collect::<Vec<_>>(),
    }))
}

/// The OpenAPI document; public, like the health endpoints, so tools can fetch it first.
async fn openapi() -> Response {
    (
        [(header::CONTENT_TYPE, "application/json")],
        super::openapi::DOCUMENT,
    )
        .into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_field_is_named_only_when_the_message_starts_with_a_path() {
        assert_eq!(
            field_of("saga.steps[2].name: must not be empty").as_deref(),
            Some("saga.steps[2].name")
        );
        assert_eq!(
            field_of("labels[\"baton.namespace\"]: no").as_deref(),
            Some("labels[\"baton.namespace\"]")
        );
        assert_eq!(field_of("transaction 0190 not found"), None);
        assert_eq!(
            field_of("baton.v1.Coordinator/List: needs the operator role"),
            None
        );
        assert_eq!(field_of("service, endpoint: limited to 256 bytes"), None);
    }

    #[test]
    fn statuses_map_to_http() {
        let e = ApiError::from(Status::invalid_argument(
            "saga.steps[0].name: must not be empty",
        ));
        assert_eq!(e.status, StatusCode::BAD_REQUEST);
        assert_eq!(e.field.as_deref(), Some("saga.steps[0].name"));
        let e = ApiError::from(Status::resource_exhausted(
            "too many transactions in flight",
        ));
        assert_eq!(e.status, StatusCode::TOO_MANY_REQUESTS);
        let e = ApiError::from(Status::resource_exhausted("labels: 40 labels exceed 32"));
        assert_eq!(e.status, StatusCode::PAYLOAD_TOO_LARGE);
        assert_eq!(
            ApiError::from(Status::failed_precondition("x")).status,
            StatusCode::CONFLICT
        );
        assert_eq!(
            ApiError::from(Status::unauthenticated("x")).status,
            StatusCode::UNAUTHORIZED
        );
    }

    #[test]
    fn a_number_that_is_not_an_integer_is_named_for_what_it_is() {
        let with_stage = |stage: &str| {
            let body = format!(
                r#"{{"saga": {{"steps": [{{"name": "a", "service": "s", "action": "x", "stage": {stage}}}]}}}}"#
            );
            let err = json::start_request(serde_json::from_str(&body).unwrap()).unwrap_err();
            assert_eq!(err.field.as_deref(), Some("saga.steps[0].stage"));
            err.message
        };
        assert!(with_stage("99999999999999999999")
            .ends_with("got a number too large for a 64-bit integer"));
        assert!(with_stage("-99999999999999999999").ends_with("got a negative number"));
        assert!(with_stage("-1").ends_with("got a negative number"));
        assert!(with_stage("1.5").ends_with("got a fractional number"));
        assert!(with_stage("1e3").ends_with("got a number with a decimal point or an exponent"));
        assert!(with_stage("5000000000").ends_with("exceeds the maximum of 4294967295"));
        let fine =
            r#"{"saga": {"steps": [{"name": "a", "service": "s", "action": "x", "stage": 3}]}}"#;
        let request = json::start_request(serde_json::from_str(fine).unwrap()).unwrap();
        assert!(request.definition.is_some());
    }

    #[test]
    fn query_values_are_percent_decoded() {
        assert_eq!(decode("a%3Db+c").as_deref(), Some("a=b c"));
        assert_eq!(decode("%zz"), None);
        assert_eq!(decode("%4"), None);
    }
}

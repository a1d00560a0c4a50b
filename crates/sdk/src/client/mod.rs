//! The client SDK: what an application writes to define transactions in code and follow them.
//!
//! ```no_run
//! use std::time::Duration;
//! use baton_tx::client::{Client, Saga, Step, TxState};
//!
//! # async fn demo() -> Result<(), baton_tx::client::ClientError> {
//! let client = Client::connect("http://127.0.0.1:7600").await?;
//! let saga = Saga::new()
//!     .step(Step::new("reserve", "inventory").compensate("release")
//!         .json(&serde_json::json!({"sku": "A1", "qty": 2}))?)
//!     .step(Step::new("charge", "payments").compensate("refund"))
//!     .step(Step::new("ship", "shipping").pivot())
//!     .idempotency_key("order-42")
//!     .label("order", "42");
//! let tx = client.run(saga).await?;
//! assert_eq!(tx.state, TxState::Committed);
//! for event in client.events(tx.id, 0, 0).await? {
//!     println!("{} {}", event.seq, event.kind_name);
//! }
//! # Ok(())
//! # }
//! ```

mod convert;
mod definition;
mod error;
mod model;
mod saga;
mod two_phase;

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, SystemTime};

use tonic::metadata::{Ascii, MetadataValue};
use tonic::service::interceptor::InterceptedService;
use tonic::transport::Endpoint;
use tonic::{Code, Status};

use self::convert::millis;
pub use self::definition::Definition;
pub use self::error::ClientError;
pub use self::model::{
    Branch, CoordinatorInfo, Event, ListPage, ParticipantInfo, Started, Transaction,
};
pub use self::saga::{Saga, Step};
pub use self::two_phase::{Branch as TwoPhaseBranch, Tcc, TwoPhase};
use crate::proto::coordinator_client::CoordinatorClient;
use crate::proto::{
    CancelRequest, DeregisterParticipantRequest, EventsRequest, GetRequest,
    ListCoordinatorsRequest, ListParticipantsRequest, PurgeRequest, RegisterParticipantRequest,
    RetryRequest, WaitRequest, WatchRequest,
};
pub use crate::trace::TraceParent;
use crate::transport::GrpcChannel;
pub use crate::types::{
    CallMark, EventKind, Phase, StepKind, StepStatus, Target, TxId, TxKind, TxState,
};

/// How long to wait for a TCP connection to a coordinator before trying the next one.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// Slack on top of a server-side wait, so a wait that the server ends on time is never cut short
/// by the client, while a server that never answers does not hang the caller forever.
const WAIT_SLACK: Duration = Duration::from_secs(10);

/// Which transactions [`Client::list`] returns. The default lists the newest 50 of any state.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ListQuery {
    /// Only transactions in one of these states (any when empty).
    pub states: Vec<TxState>,
    /// Only transactions carrying all of these labels.
    pub labels: HashMap<String, String>,
    /// Only transactions created at or after this time.
    pub created_after: Option<SystemTime>,
    /// Only transactions created before this time.
    pub created_before: Option<SystemTime>,
    /// Page size; 0 means the coordinator's default (50).
    pub limit: u32,
    /// Continue from a previous page's [`ListPage::next_page_token`].
    pub page_token: Option<String>,
}

/// A connection to one or more coordinators. Cheap to clone; clones share connections.
///
/// With several addresses, calls that are safe to repeat (reads, and `start` with an
/// idempotency key) move on to the next coordinator when one is unreachable.
#[derive(Debug, Clone)]
pub struct Client {
    addrs: Arc<[String]>,
    channels: Arc<[GrpcChannel]>,
    /// The coordinator that answered last; calls start there.
    current: Arc<AtomicUsize>,
    /// Sent as `authorization` on every call, if set.
    bearer: Bearer,
    /// Sent as `traceparent` with `start` and `run`; see [`Client::with_traceparent`].
    trace: Option<TraceParent>,
}

/// The `authorization: Bearer <token>` metadata a client adds to every call.
#[derive(Clone, Default)]
struct Bearer(Option<MetadataValue<Ascii>>);

impl Bearer {
    fn new(token: &str) -> Result<Bearer, ClientError> {
        if token.is_empty() || token.len() > 1000 || !token.bytes().all(|b| b.is_ascii_graphic()) {
            return Err(ClientError::InvalidToken);
        }
        let mut value: MetadataValue<Ascii> = format!("Bearer {token}")
            .parse()
            .map_err(|_| ClientError::InvalidToken)?;
        value.set_sensitive(true);
        Ok(Bearer(Some(value)))
    }
}

impl tonic::service::Interceptor for Bearer {
    fn call(&mut self, mut request: tonic::Request<()>) -> Result<tonic::Request<()>, Status> {
        if let Some(value) = &self.0 {
            request
                .metadata_mut()
                .insert("authorization", value.clone());
        }
        Ok(request)
    }
}

// By hand, so the token never reaches a debug print.
impl std::fmt::Debug for Bearer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(if self.0.is_some() {
            "Bearer(<redacted>)"
        } else {
            "None"
        })
    }
}

/// The generated client with the bearer token added to every call.
type Api = CoordinatorClient<InterceptedService<GrpcChannel, Bearer>>;

impl Client {
    /// Connect to the coordinator at `addr`, such as `http://127.0.0.1:7600`.
    pub async fn connect(addr: impl Into<String>) -> Result<Self, ClientError> {
        Client::connect_many(&[addr.into()]).await
    }

    /// Connect to the first reachable of several coordinators sharing one log, and keep the
    /// others for failover.
    pub async fn connect_many<S: AsRef<str>>(addrs: &[S]) -> Result<Self, ClientError> {
        Client::connect_with_tls(addrs, None).await
    }

    /// Like [`connect_many`](Client::connect_many), with TLS for `https://` addresses: the
    /// coordinator's certificate must chain to `tls.ca`, and `tls.identity` is presented to a
    /// coordinator that requires client certificates. The files are read once, here.
    pub async fn connect_tls<S: AsRef<str>>(
        addrs: &[S],
        tls: &crate::tls::ClientTls,
    ) -> Result<Self, ClientError> {
        Client::connect_with_tls(addrs, Some(tls)).await
    }

    async fn connect_with_tls<S: AsRef<str>>(
        addrs: &[S],
        tls: Option<&crate::tls::ClientTls>,
    ) -> Result<Self, ClientError> {
        if addrs.is_empty() {
            return Err(ClientError::NoAddress);
        }
        let tls = match tls {
            Some(tls) => Some(tls.load().await?),
            None => None,
        };
        let addrs: Vec<String> = addrs.iter().map(|a| a.as_ref().to_string()).collect();
        // Unreachable coordinators may come back, so every address keeps a lazy channel; the
        // eager connect only picks where to start and reports when none answers at all.
        let mut channels = addrs
            .iter()
            .map(|addr| channel(addr, tls.as_ref()))
            .collect::<Result<Vec<_>, _>>()?;
        let mut last_error = None;
        let mut current = None;
        for (index, channel) in channels.iter_mut().enumerate() {
            let connected = match channel {
                GrpcChannel::H2(h2) => h2.connect().await.map_err(Into::into),
                GrpcChannel::Tonic(lazy) => {
                    match endpoint(&addrs[index], tls.as_ref())?.connect().await {
                        Ok(connected) => {
                            *lazy = connected;
                            Ok(())
                        }
                        Err(e) => Err(e.into()),
                    }
                }
            };
            match connected {
                Ok(()) => {
                    current = Some(index);
                    break;
                }
                Err(source) => last_error = Some((index, source)),
            }
        }
        let Some(current) = current else {
            let (index, source) = last_error.ok_or(ClientError::NoAddress)?;
            return Err(ClientError::Connect {
                addr: addrs[index].clone(),
                source,
            });
        };
        Ok(Client {
            addrs: addrs.into(),
            channels: channels.into(),
            current: Arc::new(AtomicUsize::new(current)),
            bearer: Bearer::default(),
            trace: None,
        })
    }

    /// Present `token` as `authorization: Bearer <token>` on every call, as a coordinator with
    /// auth tokens requires. Clones made afterwards share it.
    pub fn with_token(mut self, token: &str) -> Result<Self, ClientError> {
        self.bearer = Bearer::new(token)?;
        Ok(self)
    }

    /// A client (sharing this one's connections) that sends `traceparent` with every `start`
    /// and `run`: the transactions it starts join that trace, and every participant call they
    /// make carries its trace id. Without it, each transaction starts a trace of its own.
    pub fn with_traceparent(&self, traceparent: TraceParent) -> Self {
        Client {
            trace: Some(traceparent),
            ..self.clone()
        }
    }

    /// The trace context this client sends, if any.
    pub fn traceparent(&self) -> Option<&TraceParent> {
        self.trace.as_ref()
    }

    /// `request` with this client's trace context in its metadata.
    fn traced<T>(&self, request: T) -> tonic::Request<T> {
        let mut request = tonic::Request::new(request);
        if let Some(trace) = &self.trace {
            trace.to_metadata(request.metadata_mut());
        }
        request
    }

    /// The coordinator addresses this client knows, in failover order.
    pub fn addrs(&self) -> &[String] {
        &self.addrs
    }

    /// Start a transaction and return as soon as the coordinator has accepted it durably.
    pub async fn start(&self, definition: impl Into<Definition>) -> Result<Started, ClientError> {
        let request = convert::start_request(definition.into());
        let idempotent = !request.idempotency_key.is_empty();
        let response = self
            .call(idempotent, move |mut c| {
                let request = self.traced(request.clone());
                async move { c.start(request).await }
            })
            .await?;
        convert::started(&response)
    }

    /// Start a transaction and wait until it has ended; returns it in its final state.
    pub async fn run(&self, definition: impl Into<Definition>) -> Result<Transaction, ClientError> {
        let mut request = convert::start_request(definition.into());
        request.wait = true;
        request.wait_timeout_ms = 0;
        let idempotent = !request.idempotency_key.is_empty();
        let response = self
            .call(idempotent, move |mut c| {
                let request = self.traced(request.clone());
                async move { c.start(request).await }
            })
            .await?;
        match response.transaction {
            Some(tx) => convert::transaction(tx),
            // A coordinator that accepted but did not include the transaction: ask for it.
            None => {
                let id = convert::tx_id(&response.tx_id)?;
                self.wait(id, Duration::ZERO).await
            }
        }
    }

    /// The transaction's current state and branches.
    pub async fn get(&self, tx_id: TxId) -> Result<Transaction, ClientError> {
        let request = GetRequest {
            tx_id: tx_id.to_string(),
        };
        let tx = self
            .call(true, move |mut c| {
                let request = request.clone();
                async move { c.get(request).await }
            })
            .await?;
        convert::transaction(tx)
    }

    /// Wait until the transaction has ended, or `timeout` has passed (then it is returned as it
    /// stands). A zero timeout means the coordinator's maximum.
    pub async fn wait(&self, tx_id: TxId, timeout: Duration) -> Result<Transaction, ClientError> {
        let message = WaitRequest {
            tx_id: tx_id.to_string(),
            timeout_ms: millis(timeout),
        };
        let tx = self
            .call(true, move |mut c| {
                let mut request = tonic::Request::new(message.clone());
                if !timeout.is_zero() {
                    request.set_timeout(timeout.saturating_add(WAIT_SLACK));
                }
                async move { c.wait(request).await }
            })
            .await?;
        convert::transaction(tx)
    }

    /// The transaction's events from the start, then live ones as they happen, until it ends.
    pub async fn watch(&self, tx_id: TxId) -> Result<EventStream, ClientError> {
        let request = WatchRequest {
            tx_id: tx_id.to_string(),
        };
        let inner = self
            .call(true, move |mut c| {
                let request = request.clone();
                async move { c.watch(request).await }
            })
            .await?;
        Ok(EventStream { inner })
    }

    /// Transactions matching `query`, newest first, one page at a time.
    pub async fn list(&self, query: ListQuery) -> Result<ListPage, ClientError> {
        let request = convert::list_request(query);
        let page = self
            .call(true, move |mut c| {
                let request = request.clone();
                async move { c.list(request).await }
            })
            .await?;
        convert::list_page(page)
    }

    /// The transaction's history: events with `seq` greater than `after_seq`, at most `limit`
    /// (0 means the coordinator's default).
    pub async fn events(
        &self,
        tx_id: TxId,
        after_seq: u64,
        limit: u32,
    ) -> Result<Vec<Event>, ClientError> {
        let request = EventsRequest {
            tx_id: tx_id.to_string(),
            after_seq,
            limit,
        };
        let response = self
            .call(true, move |mut c| {
                let request = request.clone();
                async move { c.events(request).await }
            })
            .await?;
        response.events.into_iter().map(convert::event).collect()
    }

    /// Cancel a transaction: a running saga compensates, a 2PC before its decision aborts.
    pub async fn cancel(&self, tx_id: TxId, reason: &str) -> Result<Transaction, ClientError> {
        let request = CancelRequest {
            tx_id: tx_id.to_string(),
            reason: reason.to_string(),
        };
        let tx = self
            .call(false, move |mut c| {
                let request = request.clone();
                async move { c.cancel(request).await }
            })
            .await?;
        convert::transaction(tx)
    }

    /// Resume a failed or stuck transaction.
    pub async fn retry(&self, tx_id: TxId) -> Result<Transaction, ClientError> {
        let request = RetryRequest {
            tx_id: tx_id.to_string(),
        };
        let tx = self
            .call(false, move |mut c| {
                let request = request.clone();
                async move { c.retry(request).await }
            })
            .await?;
        convert::transaction(tx)
    }

    /// Register `endpoint` as an instance of the participant service `service`. A non-zero `ttl`
    /// makes the registration expire unless renewed (a zero `weight` counts as 1).
    pub async fn register_participant(
        &self,
        service: &str,
        endpoint: &str,
        weight: u32,
        ttl: Duration,
    ) -> Result<ParticipantInfo, ClientError> {
        let request = RegisterParticipantRequest {
            service: service.to_string(),
            endpoint: endpoint.to_string(),
            weight,
            zone: String::new(),
            ttl_ms: millis(ttl),
        };
        let response = self
            .call(false, move |mut c| {
                let request = request.clone();
                async move { c.register_participant(request).await }
            })
            .await?;
        let participant = response.participant.ok_or_else(|| {
            ClientError::Protocol("the registration's answer names no participant".into())
        })?;
        Ok(convert::participant(participant))
    }

    /// Remove a participant endpoint; returns whether it was registered.
    pub async fn deregister_participant(
        &self,
        service: &str,
        endpoint: &str,
    ) -> Result<bool, ClientError> {
        let request = DeregisterParticipantRequest {
            service: service.to_string(),
            endpoint: endpoint.to_string(),
        };
        let response = self
            .call(false, move |mut c| {
                let request = request.clone();
                async move { c.deregister_participant(request).await }
            })
            .await?;
        Ok(response.removed)
    }

    /// Registered participant endpoints, of one service or (with `None`) of all, with the
    /// answering coordinator's balancing state.
    pub async fn list_participants(
        &self,
        service: Option<&str>,
    ) -> Result<Vec<ParticipantInfo>, ClientError> {
        let request = ListParticipantsRequest {
            service: service.unwrap_or_default().to_string(),
        };
        let response = self
            .call(true, move |mut c| {
                let request = request.clone();
                async move { c.list_participants(request).await }
            })
            .await?;
        Ok(response
            .participants
            .into_iter()
            .map(convert::participant)
            .collect())
    }

    /// The coordinators sharing the log.
    pub async fn list_coordinators(&self) -> Result<Vec<CoordinatorInfo>, ClientError> {
        let response = self
            .call(true, |mut c| async move {
                c.list_coordinators(ListCoordinatorsRequest {}).await
            })
            .await?;
        Ok(response
            .coordinators
            .into_iter()
            .map(convert::coordinator)
            .collect())
    }

    /// Operator: delete finished transactions (with their history) that ended longer ago than
    /// `older_than`, `batch` per database transaction (0: the coordinator's default). Failed and
    /// unfinished ones are never deleted. Returns how many were.
    pub async fn purge(&self, older_than: Duration, batch: u32) -> Result<u64, ClientError> {
        let request = PurgeRequest {
            older_than_ms: millis(older_than),
            batch,
        };
        // Repeating a purge deletes nothing twice, so it may fail over.
        let response = self
            .call(true, move |mut c| async move { c.purge(request).await })
            .await?;
        Ok(response.purged)
    }

    /// Run one RPC, starting at the coordinator that answered last. An `idempotent` call that
    /// finds a coordinator unreachable is repeated on the next one; any other call is not,
    /// because it may have taken effect before the connection broke.
    async fn call<T, F, Fut>(&self, idempotent: bool, rpc: F) -> Result<T, ClientError>
    where
        F: Fn(Api) -> Fut,
        Fut: Future<Output = Result<tonic::Response<T>, Status>>,
    {
        let count = self.channels.len();
        let first = self.current.load(Ordering::Relaxed) % count;
        let tries = if idempotent { count } else { 1 };
        let mut last = None;
        for offset in 0..tries {
            let index = (first + offset) % count;
            let client = CoordinatorClient::with_interceptor(
                self.channels[index].clone(),
                self.bearer.clone(),
            );
            match rpc(client).await {
                Ok(response) => {
                    if offset > 0 {
                        self.current.store(index, Ordering::Relaxed);
                    }
                    return Ok(response.into_inner());
                }
                Err(status) if is_unreachable(&status) => {
                    tracing::debug!(addr = %self.addrs[index], error = %status, "coordinator unreachable");
                    last = Some(status);
                }
                Err(status) => return Err(status.into()),
            }
        }
        Err(last
            .unwrap_or_else(|| Status::unavailable("no coordinator reachable"))
            .into())
    }
}

/// Whether a status means the coordinator could not be reached or the connection broke (so
/// another one may answer), as opposed to an answer from a coordinator.
///
/// A status a coordinator sent carries no source error; one built on this side from a failure
/// below gRPC does (a transport error, or an HTTP/2 stream reset when a coordinator dies in the
/// middle of its answer, which surfaces as `UNKNOWN`).
fn is_unreachable(status: &Status) -> bool {
    status.code() == Code::Unavailable || std::error::Error::source(status).is_some()
}

/// The lazy channel to `addr`: for `http://` the process's choice (src/transport.rs,
/// `BATON_GRPC_CHANNEL`), tonic's channel, which does TLS, for `https://`.
fn channel(
    addr: &str,
    tls: Option<&tonic::transport::ClientTlsConfig>,
) -> Result<GrpcChannel, ClientError> {
    let endpoint = endpoint(addr, tls)?;
    if addr.starts_with("https://") {
        return Ok(GrpcChannel::Tonic(endpoint.connect_lazy()));
    }
    GrpcChannel::plaintext(endpoint.uri(), CONNECT_TIMEOUT).ok_or_else(|| {
        ClientError::InvalidAddress {
            addr: addr.to_string(),
            reason: "expected http://host:port or https://host:port".into(),
        }
    })
}

fn endpoint(
    addr: &str,
    tls: Option<&tonic::transport::ClientTlsConfig>,
) -> Result<Endpoint, ClientError> {
    let invalid = |reason: String| ClientError::InvalidAddress {
        addr: addr.to_string(),
        reason,
    };
    let endpoint = Endpoint::from_shared(addr.to_string())
        .map(|e| {
            crate::transport::with_keepalive(e.connect_timeout(CONNECT_TIMEOUT).tcp_nodelay(true))
        })
        .map_err(|e| invalid(e.to_string()))?;
    if !addr.starts_with("https://") {
        return Ok(endpoint);
    }
    match tls {
        Some(tls) => endpoint
            .tls_config(tls.clone())
            .map_err(|e| invalid(e.to_string())),
        None => Err(invalid(
            "https needs a CA certificate to check the coordinator: use Client::connect_tls".into(),
        )),
    }
}

/// The live events of one transaction, from [`Client::watch`]. Ends when the transaction does.
#[derive(Debug)]
pub struct EventStream {
    inner: tonic::Streaming<crate::proto::TxEvent>,
}

impl EventStream {
    /// The next event, or `None` once the transaction has ended and the stream is done.
    pub async fn next(&mut self) -> Option<Result<Event, ClientError>> {
        match self.inner.message().await {
            Ok(Some(event)) => Some(convert::event(event)),
            Ok(None) => None,
            Err(status) => Some(Err(status.into())),
        }
    }
}

impl tokio_stream::Stream for EventStream {
    type Item = Result<Event, ClientError>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        Pin::new(&mut self.inner)
            .poll_next(cx)
            .map(|item| item.map(|r| r.map_err(ClientError::from).and_then(convert::event)))
    }
}

#[cfg(test)]
mod tests;

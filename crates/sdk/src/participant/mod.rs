//! The participant SDK: what a service writes to take part in Baton transactions.
//!
//! A service names its actions and gives each phase a handler (an async closure); the SDK routes
//! the coordinator's calls to them and turns their results into the protocol's answers.
//!
//! ```no_run
//! use baton_tx::participant::{HandlerError, Participant, Reply, Request};
//!
//! # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
//! let server = Participant::new()
//!     .on_execute("reserve", |req: Request| async move {
//!         if req.payload.is_empty() {
//!             return Err(HandlerError::failed("nothing to reserve"));
//!         }
//!         Ok(Reply::output(b"reserved".to_vec()))
//!     })
//!     .on_compensate("reserve", |_req| async move { Ok(Reply::ok()) })
//!     .serve("127.0.0.1:0")
//!     .await?;
//! println!("participant at {}", server.endpoint());
//! server.shutdown().await;
//! # Ok(())
//! # }
//! ```

#[cfg(any(feature = "postgres", feature = "sqlite"))]
pub mod barrier;
mod error;
mod register;
mod server;

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::de::DeserializeOwned;
use serde::Serialize;
use tokio_util::task::TaskTracker;
use tonic::{Response, Status};

pub use self::error::HandlerError;
pub use self::register::Registration;
pub use self::server::{ServeError, ServerHandle};
use crate::proto::participant_server::ParticipantServer;
use crate::proto::{BranchReply, BranchRequest};
pub use crate::trace::TraceParent;
pub use crate::types::Phase;

/// The output of an earlier step, as [`Request::outputs`] carries it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct StepOutput {
    /// The step's index in the saga, from 0.
    pub index: u32,
    /// The step's name.
    pub name: String,
    /// What the step's participant answered with.
    pub output: Vec<u8>,
}

impl From<crate::proto::StepOutput> for StepOutput {
    fn from(wire: crate::proto::StepOutput) -> Self {
        StepOutput {
            index: wire.index,
            name: wire.name,
            output: wire.output,
        }
    }
}

/// One call from the coordinator, as a handler sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request {
    /// The phase this call is for.
    pub phase: Phase,
    /// The transaction id (a UUID in text form).
    pub tx_id: String,
    /// The branch (saga step or 2PC branch) index, from 0.
    pub branch_index: u32,
    /// The branch's name in the definition.
    pub branch_name: String,
    /// The action (or compensation) being called.
    pub action: String,
    /// The branch's payload; JSON by convention, see [`Request::json`].
    pub payload: Vec<u8>,
    /// 1 on first delivery of this (tx_id, branch, phase), then 2, 3, ... on redelivery.
    pub attempt: u32,
    /// When the coordinator stops waiting for this call, if it said.
    pub deadline: Option<SystemTime>,
    /// Outputs of the steps that finished before this one (for compensations, also its own).
    pub outputs: Vec<StepOutput>,
    /// The transaction's labels.
    pub labels: HashMap<String, String>,
    /// The W3C trace context the coordinator sent (`traceparent` metadata), if it was valid:
    /// the transaction's trace id and the id of the coordinator's span for this call.
    pub trace: Option<TraceParent>,
}

impl Request {
    fn from_wire(
        phase: Phase,
        wire: BranchRequest,
        trace: Option<TraceParent>,
    ) -> Result<Self, Status> {
        if wire.tx_id.is_empty() {
            return Err(Status::invalid_argument("tx_id: must not be empty"));
        }
        if wire.action.is_empty() {
            return Err(Status::invalid_argument("action: must not be empty"));
        }
        let deadline = (wire.deadline_unix_ms > 0)
            .then(|| UNIX_EPOCH.checked_add(Duration::from_millis(wire.deadline_unix_ms)))
            .flatten();
        Ok(Request {
            phase,
            tx_id: wire.tx_id,
            branch_index: wire.branch_index,
            branch_name: wire.branch_name,
            action: wire.action,
            payload: wire.payload,
            attempt: wire.attempt,
            deadline,
            outputs: wire.outputs.into_iter().map(StepOutput::from).collect(),
            labels: wire.labels,
            trace,
        })
    }

    /// The trace this call belongs to, as 32 hex digits: the trace id the transaction's client
    /// sent with `Start`, or the one the coordinator started for it.
    pub fn trace_id(&self) -> Option<String> {
        self.trace.map(|t| t.trace_id().to_string())
    }

    /// The `traceparent` header the call came with; send [`TraceParent::child`] of it on the
    /// calls this handler makes, to keep them in the same trace.
    pub fn traceparent(&self) -> Option<&TraceParent> {
        self.trace.as_ref()
    }

    /// The payload decoded from JSON. A payload that does not decode can never succeed, so the
    /// error is [`HandlerError::Permanent`] and `?` in a handler does the right thing.
    pub fn json<T: DeserializeOwned>(&self) -> Result<T, HandlerError> {
        serde_json::from_slice(&self.payload)
            .map_err(|e| HandlerError::permanent(format!("payload: invalid json: {e}")))
    }

    /// The output of the earlier step called `name`, if it ran and produced one.
    pub fn output_of(&self, name: &str) -> Option<&[u8]> {
        self.outputs
            .iter()
            .find(|o| o.name == name)
            .map(|o| o.output.as_slice())
    }

    /// The time left before the coordinator gives up on this call, if it set a deadline.
    pub fn time_left(&self) -> Option<Duration> {
        self.deadline.map(|d| {
            d.duration_since(SystemTime::now())
                .unwrap_or(Duration::ZERO)
        })
    }
}

/// A successful answer: an optional output (kept by the coordinator and passed to later steps and
/// to compensations) and an optional message for operators.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Reply {
    /// Bytes the coordinator keeps for later steps and compensations.
    pub output: Vec<u8>,
    /// A note shown to operators in the transaction's history.
    pub message: String,
}

impl Reply {
    /// Success with no output.
    pub fn ok() -> Self {
        Reply::default()
    }

    /// Success with an output.
    pub fn output(output: impl Into<Vec<u8>>) -> Self {
        Reply {
            output: output.into(),
            message: String::new(),
        }
    }

    /// Success with `value` encoded as JSON as the output.
    pub fn json<T: Serialize + ?Sized>(value: &T) -> Result<Self, HandlerError> {
        serde_json::to_vec(value)
            .map(Reply::output)
            .map_err(|e| HandlerError::permanent(format!("output: cannot encode json: {e}")))
    }

    /// The same reply with a message for operators.
    pub fn with_message(mut self, message: impl Into<String>) -> Self {
        self.message = message.into();
        self
    }
}

type HandlerFuture = Pin<Box<dyn Future<Output = Result<Reply, HandlerError>> + Send>>;
type Handler = Arc<dyn Fn(Request) -> HandlerFuture + Send + Sync>;

/// A participant's handlers, keyed by phase and action. Build it with the `on_*` methods, then
/// [`serve`](Participant::serve) it or turn it into a tonic service with
/// [`into_service`](Participant::into_service).
#[derive(Clone, Default)]
pub struct Participant {
    handlers: HashMap<(Phase, String), Handler>,
}

impl std::fmt::Debug for Participant {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mut routes: Vec<String> = self
            .handlers
            .keys()
            .map(|(phase, action)| format!("{phase} {action}"))
            .collect();
        routes.sort();
        f.debug_struct("Participant")
            .field("routes", &routes)
            .finish()
    }
}

impl Participant {
    /// A participant with no handlers: every call answers `UNIMPLEMENTED`.
    pub fn new() -> Self {
        Participant::default()
    }

    /// Handle `phase` calls for `action`. Registering the same pair twice keeps the last handler.
    pub fn on<F, Fut>(mut self, phase: Phase, action: impl Into<String>, handler: F) -> Self
    where
        F: Fn(Request) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<Reply, HandlerError>> + Send + 'static,
    {
        let handler: Handler = Arc::new(move |req| Box::pin(handler(req)));
        self.handlers.insert((phase, action.into()), handler);
        self
    }

    /// Handle the saga action `action`.
    pub fn on_execute<F, Fut>(self, action: impl Into<String>, handler: F) -> Self
    where
        F: Fn(Request) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<Reply, HandlerError>> + Send + 'static,
    {
        self.on(Phase::Execute, action, handler)
    }

    /// Handle the compensation `action` (the name given as the step's `compensate`). It may arrive
    /// for a step whose action never ran, and more than once.
    pub fn on_compensate<F, Fut>(self, action: impl Into<String>, handler: F) -> Self
    where
        F: Fn(Request) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<Reply, HandlerError>> + Send + 'static,
    {
        self.on(Phase::Compensate, action, handler)
    }

    /// Handle two-phase commit phase one for `action`: reserve and vote (`Ok` is yes,
    /// [`HandlerError::Failed`] is no).
    pub fn on_prepare<F, Fut>(self, action: impl Into<String>, handler: F) -> Self
    where
        F: Fn(Request) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<Reply, HandlerError>> + Send + 'static,
    {
        self.on(Phase::Prepare, action, handler)
    }

    /// Handle the commit of a prepared `action`. It must eventually succeed; the coordinator
    /// retries it until it does.
    pub fn on_commit<F, Fut>(self, action: impl Into<String>, handler: F) -> Self
    where
        F: Fn(Request) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<Reply, HandlerError>> + Send + 'static,
    {
        self.on(Phase::Commit, action, handler)
    }

    /// Handle the abort of `action`: release whatever prepare reserved, if anything.
    pub fn on_abort<F, Fut>(self, action: impl Into<String>, handler: F) -> Self
    where
        F: Fn(Request) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<Reply, HandlerError>> + Send + 'static,
    {
        self.on(Phase::Abort, action, handler)
    }

    /// The handlers as a gRPC service, for applications that build their own tonic server (to
    /// add TLS, other services or layers): `Server::builder().add_service(participant.into_service())`.
    pub fn into_service(self) -> ParticipantService {
        ParticipantService(ParticipantServer::new(
            self.into_dispatcher(TaskTracker::new()),
        ))
    }

    fn into_dispatcher(self, tracker: TaskTracker) -> Dispatcher {
        Dispatcher {
            handlers: Arc::new(self.handlers),
            tracker,
        }
    }
}

/// A [`Participant`]'s handlers as a gRPC service (`baton.v1.Participant`), from
/// [`Participant::into_service`]: add it to a tonic server, or call it as a tower service.
#[derive(Clone, Debug)]
pub struct ParticipantService(ParticipantServer<Dispatcher>);

impl tonic::server::NamedService for ParticipantService {
    const NAME: &'static str = <ParticipantServer<Dispatcher> as tonic::server::NamedService>::NAME;
}

impl tower_service::Service<http::Request<tonic::body::Body>> for ParticipantService {
    type Response = http::Response<tonic::body::Body>;
    type Error = std::convert::Infallible;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Self::Error>> + Send>>;

    fn poll_ready(
        &mut self,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<(), Self::Error>> {
        tower_service::Service::<http::Request<tonic::body::Body>>::poll_ready(&mut self.0, cx)
    }

    fn call(&mut self, request: http::Request<tonic::body::Body>) -> Self::Future {
        Box::pin(tower_service::Service::call(&mut self.0, request))
    }
}

/// The participant gRPC service: routes each call to the handler for its phase and action.
#[derive(Clone)]
pub(crate) struct Dispatcher {
    handlers: Arc<HashMap<(Phase, String), Handler>>,
    // Handlers run in tracked tasks: a panicking handler becomes an INTERNAL status instead of a
    // dropped connection, and a handler whose caller went away still finishes its local work
    // before shutdown completes.
    tracker: TaskTracker,
}

impl std::fmt::Debug for Dispatcher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Dispatcher")
            .field("handlers", &self.handlers.len())
            .finish()
    }
}

impl Dispatcher {
    async fn dispatch(
        &self,
        phase: Phase,
        request: tonic::Request<BranchRequest>,
    ) -> Result<Response<BranchReply>, Status> {
        let trace = TraceParent::from_metadata(request.metadata());
        let req = Request::from_wire(phase, request.into_inner(), trace)?;
        let Some(handler) = self.handlers.get(&(phase, req.action.clone())) else {
            return Err(Status::unimplemented(format!(
                "no {phase} handler for action {:?}",
                req.action
            )));
        };
        let action = req.action.clone();
        let span = tracing::info_span!(
            "participant_call",
            tx_id = %req.tx_id,
            branch = req.branch_index,
            %phase,
            %action,
            attempt = req.attempt,
            trace_id = tracing::field::Empty,
            parent_span_id = tracing::field::Empty,
        );
        if let Some(trace) = &req.trace {
            span.record("trace_id", tracing::field::display(trace.trace_id()));
            span.record("parent_span_id", tracing::field::display(trace.span_id()));
        }
        span.in_scope(|| tracing::debug!("participant call"));
        let handled = tracing::Instrument::instrument(handler(req), span);
        let result = match self.tracker.spawn(handled).await {
            Ok(result) => result,
            Err(join) => {
                tracing::error!(%phase, %action, error = %join, "participant handler panicked");
                return Err(Status::internal(format!(
                    "{phase} handler for action {action:?} panicked"
                )));
            }
        };
        error::to_wire(result).map(Response::new)
    }
}

#[tonic::async_trait]
impl crate::proto::participant_server::Participant for Dispatcher {
    async fn execute(
        &self,
        request: tonic::Request<BranchRequest>,
    ) -> Result<Response<BranchReply>, Status> {
        self.dispatch(Phase::Execute, request).await
    }

    async fn compensate(
        &self,
        request: tonic::Request<BranchRequest>,
    ) -> Result<Response<BranchReply>, Status> {
        self.dispatch(Phase::Compensate, request).await
    }

    async fn prepare(
        &self,
        request: tonic::Request<BranchRequest>,
    ) -> Result<Response<BranchReply>, Status> {
        self.dispatch(Phase::Prepare, request).await
    }

    async fn commit(
        &self,
        request: tonic::Request<BranchRequest>,
    ) -> Result<Response<BranchReply>, Status> {
        self.dispatch(Phase::Commit, request).await
    }

    async fn abort(
        &self,
        request: tonic::Request<BranchRequest>,
    ) -> Result<Response<BranchReply>, Status> {
        self.dispatch(Phase::Abort, request).await
    }
}

#[cfg(test)]
mod tests;

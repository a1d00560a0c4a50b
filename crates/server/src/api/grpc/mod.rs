//! The coordinator's gRPC service (`baton.v1.Coordinator`).
//!
//! Requests are validated here (see [`validate`] and [`convert`]), then handed to the
//! [`Coordinator`]. Errors become gRPC statuses in one place,
//! [`status_of`], with lowercase messages that name the field or id.

pub mod codec;

use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{broadcast, mpsc};
use tokio_stream::wrappers::ReceiverStream;
use tokio_stream::Stream;
use tonic::{Request, Response, Status};

use super::convert;
use super::validate::{
    self, check_endpoint, check_free_text, check_ms, check_name, check_text, echo, Limits,
};
use crate::api::auth::{self, Principal};
use crate::coordinator::{CoordError, Coordinator, Started};
use crate::model::{Definition, EventKind, TxId, TxRecord, TxState};
use crate::proto;
use crate::store::{ListFilter, NewEvent, NewTx, StoreError};
use codec::generated::coordinator_server;

/// Maps a coordinator error to the status a client sees.
pub fn status_of(e: CoordError) -> Status {
    match e {
        CoordError::NotFound(_) => Status::not_found(e.to_string()),
        CoordError::Refused(text) => Status::failed_precondition(text),
        CoordError::Busy(_) | CoordError::TooManyWaiting(_) => {
            Status::resource_exhausted(e.to_string())
        }
        CoordError::Unavailable(text) => Status::unavailable(text),
        CoordError::Conflict(text) => Status::aborted(text),
        CoordError::Stopping => Status::unavailable(e.to_string()),
        CoordError::Invalid(text) => Status::invalid_argument(text),
    }
}

fn store_status(e: StoreError) -> Status {
    Status::unavailable(e.to_string())
}

fn not_found(id: TxId) -> Status {
    Status::not_found(format!("transaction {id} not found"))
}

fn parse_id(text: &str) -> Result<TxId, Status> {
    if text.is_empty() {
        return Err(Status::invalid_argument("tx_id: must not be empty"));
    }
    text.parse::<TxId>().map_err(|_| {
        Status::invalid_argument(format!(
            "tx_id: {} is not a transaction id (expected a uuid)",
            echo(text)
        ))
    })
}

/// `ms` from now; a year from now if that is not representable. `Instant + Duration` panics on
/// overflow, and the longest wait is operator configuration.
fn instant_after(ms: u64) -> tokio::time::Instant {
    let now = tokio::time::Instant::now();
    now.checked_add(Duration::from_millis(ms))
        .unwrap_or_else(|| now + Duration::from_secs(86_400 * 365))
}

/// The `baton.v1.Coordinator` service.
pub struct CoordinatorService {
    co: Arc<Coordinator>,
    limits: Limits,
}

impl CoordinatorService {
    pub fn new(co: Arc<Coordinator>, limits: Limits) -> Self {
        CoordinatorService { co, limits }
    }

    async fn load(&self, id: TxId) -> Result<TxRecord, Status> {
        self.co
            .store()
            .get(id)
            .await
            .map_err(store_status)?
            .ok_or_else(|| not_found(id))
    }

    /// The transaction if the caller's namespace holds it; one in another namespace is
    /// `NOT_FOUND` exactly like an unknown id, so its existence does not leak.
    async fn load_for(&self, id: TxId, principal: &Principal) -> Result<TxRecord, Status> {
        let tx = self.load(id).await?;
        if !principal.sees(&tx.labels) {
            return Err(not_found(id));
        }
        Ok(tx)
    }

    /// Checks that every service a step names has an endpoint now.
    async fn check_services(&self, def: &Definition) -> Result<(), Status> {
        let (field, targets): (&str, Vec<&crate::model::Target>) = match def {
            Definition::Saga(saga) => {
                ("saga.steps", saga.steps.iter().map(|s| &s.target).collect())
            }
            Definition::TwoPhase(tp) => (
                "two_phase.branches",
                tp.branches.iter().map(|b| &b.target).collect(),
            ),
        };
        for (i, target) in targets.into_iter().enumerate() {
            if let crate::model::Target::Service(name) = target {
                let known = self
                    .co
                    .registry()
                    .knows(name)
                    .await
                    .map_err(|e| Status::unavailable(e.to_string()))?;
                if !known {
                    return Err(Status::invalid_argument(format!(
                        "{field}[{i}].service: unknown participant service {} (register an endpoint for it first, or give an endpoint)",
                        echo(name)
                    )));
                }
            }
        }
        Ok(())
    }

    /// Blocks until the transaction rests or `timeout` passes; returns it as it then is.
    async fn wait_for_rest(&self, id: TxId, timeout: Duration) -> Result<TxRecord, Status> {
        let until = instant_after(timeout.as_millis().try_into().unwrap_or(u64::MAX));
        // Driven here: the driver hands over the record it wrote at rest, no read needed.
        if let Some(mut rested) = self.co.rested(id) {
            let waited = tokio::time::timeout_at(until, async {
                rested.wait_for(Option::is_some).await.map(|tx| tx.clone())
            })
            .await;
            match waited {
                Ok(Ok(Some(tx))) => return Ok(tx),
                Ok(Ok(None)) => {}
                // The driver stopped without an outcome (handed over, shutting down): read below.
                Ok(Err(_)) => {}
                Err(_) => return self.load(id).await,
            }
        }
        let mut pause = REMOTE_POLL_FIRST;
        loop {
            // Subscribe before reading, so no outcome slips between the two.
            let live = self.co.subscribe(id);
            let tx = self.load(id).await?;
            if tx.state.is_resting() || tokio::time::Instant::now() >= until {
                return Ok(tx);
            }
            match live {
                Some(mut rx) => loop {
                    match tokio::time::timeout_at(until, rx.recv()).await {
                        Err(_) => break,
                        Ok(Ok(e)) if convert::is_outcome_event(&e) => break,
                        Ok(Ok(_)) => continue,
                        Ok(Err(_)) => break,
                    }
                },
                // Driven by another coordinator (or not yet claimed): look again shortly.
                None => {
                    let _ = tokio::time::timeout_at(until, tokio::time::sleep(pause)).await;
                    pause = next_pause(pause);
                }
            }
        }
    }

    /// Blocks until the transaction has history past `after_seq` (or `timeout` passes); returns
    /// it as it then is.
    async fn wait_for_progress(
        &self,
        id: TxId,
        after_seq: u64,
        timeout: Duration,
    ) -> Result<TxRecord, Status> {
        let until = instant_after(timeout.as_millis().try_into().unwrap_or(u64::MAX));
        loop {
            // Subscribe before reading, so no write slips between the two.
            let live = self.co.subscribe(id);
            let tx = self.load(id).await?;
            if tx.last_seq > after_seq || tokio::time::Instant::now() >= until {
                return Ok(tx);
            }
            match live {
                Some(mut rx) => {
                    let _ = tokio::time::timeout_at(until, rx.recv()).await;
                }
                None => {
                    let _ = tokio::time::timeout_at(
                        until,
                        tokio::time::sleep(Duration::from_millis(20)),
                    )
                    .await;
                }
            }
        }
    }

    fn wait_timeout(&self, requested_ms: u64) -> Duration {
        let ms = if requested_ms == 0 {
            self.limits.max_wait_ms
        } else {
            requested_ms.min(self.limits.max_wait_ms)
        };
        Duration::from_millis(ms)
    }
}

type WatchStream = Pin<Box<dyn Stream<Item = Result<proto::TxEvent, Status>> + Send>>;

#[tonic::async_trait]
impl coordinator_server::Coordinator for CoordinatorService {
    async fn start(
        &self,
        request: Request<proto::StartRequest>,
    ) -> Result<Response<proto::StartResponse>, Status> {
        let principal = auth::principal(&request)?.clone();
        // An invalid traceparent is ignored (W3C): the transaction then starts its own trace.
        let trace = crate::trace::TraceParent::from_metadata(request.metadata());
        let req = request.into_inner();
        let config = self.co.config();
        let definition = match &req.definition {
            None => {
                return Err(Status::invalid_argument(
                    "definition: give a saga or a two_phase",
                ))
            }
            Some(proto::start_request::Definition::Saga(saga)) => Definition::Saga(convert::saga(
                saga,
                config.default_timeout.as_millis() as u64,
                &config.default_retry,
                &self.limits,
            )?),
            Some(proto::start_request::Definition::TwoPhase(tp)) => {
                Definition::TwoPhase(convert::two_phase(
                    tp,
                    config.default_timeout.as_millis() as u64,
                    &config.default_retry,
                    &self.limits,
                )?)
            }
        };
        let mut labels = validate::labels("labels", &req.labels, &self.limits)?;
        principal.stamp(&mut labels)?;
        if labels.contains_key(crate::trace::TRACE_LABEL) {
            return Err(Status::invalid_argument(format!(
                "labels: key {:?} is reserved for the caller's trace id; send a traceparent header instead",
                crate::trace::TRACE_LABEL
            )));
        }
        if let Some(trace) = trace {
            labels.insert(
                crate::trace::TRACE_LABEL.to_string(),
                trace.trace_id().to_string(),
            );
        }
        let idempotency_key = if req.idempotency_key.is_empty() {
            None
        } else {
            check_text(
                "idempotency_key",
                &req.idempotency_key,
                self.limits.max_name_len,
            )?;
            Some(req.idempotency_key.clone())
        };
        check_ms("timeout_ms", req.timeout_ms, self.limits.max_tx_timeout_ms)?;
        self.check_services(&definition).await?;
        // Taken before anything is written, so that a refusal changes nothing.
        let _waiting = if req.wait {
            Some(self.co.waiting_permit().map_err(status_of)?)
        } else {
            None
        };
        let now = whole_millis(chrono::Utc::now());
        let deadline_at = match req.timeout_ms {
            0 => None,
            ms => Some(
                i64::try_from(ms)
                    .ok()
                    .and_then(chrono::TimeDelta::try_milliseconds)
                    .and_then(|d| now.checked_add_signed(d))
                    .ok_or_else(|| {
                        Status::invalid_argument(format!("timeout_ms: {ms} is out of range"))
                    })?,
            ),
        };
        let steps = definition.branch_names().len();
        let new = NewTx {
            id: TxId::new(),
            definition: definition.clone(),
            state: match definition {
                Definition::Saga(_) => TxState::Running,
                Definition::TwoPhase(_) => TxState::Preparing,
            },
            labels,
            idempotency_key: idempotency_key.clone(),
            owner: config.id.clone(),
            epoch: 1,
            deadline_at,
            created_at: now,
            events: vec![NewEvent {
                seq: 1,
                at: now,
                kind: EventKind::Accepted,
                branch: None,
                detail: match definition {
                    Definition::Saga(_) => format!("saga with {steps} steps"),
                    Definition::TwoPhase(_) => format!("two-phase commit with {steps} branches"),
                },
            }],
        };
        let (id, created) = match self.co.start(new).await.map_err(status_of)? {
            Started::Created(id) => (id, true),
            Started::Existing(id) => {
                let existing = self.load(id).await?;
                if !principal.sees(&existing.labels) {
                    return Err(Status::already_exists(format!(
                        "idempotency_key: {} is already used in another namespace; choose another key",
                        echo(&idempotency_key.unwrap_or_default())
                    )));
                }
                if existing.definition != definition {
                    return Err(Status::already_exists(format!(
                        "idempotency_key: {} already names transaction {id}, which has a different definition",
                        echo(&idempotency_key.unwrap_or_default())
                    )));
                }
                (id, false)
            }
        };
        let transaction = if req.wait {
            let tx = self
                .wait_for_rest(id, self.wait_timeout(req.wait_timeout_ms))
                .await?;
            Some(convert::transaction(&tx))
        } else {
            None
        };
        Ok(Response::new(proto::StartResponse {
            tx_id: id.to_string(),
            created,
            transaction,
        }))
    }

    async fn get(
        &self,
        request: Request<proto::GetRequest>,
    ) -> Result<Response<proto::Transaction>, Status> {
        let principal = auth::principal(&request)?;
        let id = parse_id(&request.get_ref().tx_id)?;
        Ok(Response::new(convert::transaction(
            &self.load_for(id, principal).await?,
        )))
    }

    async fn wait(
        &self,
        request: Request<proto::WaitRequest>,
    ) -> Result<Response<proto::Transaction>, Status> {
        let principal = auth::principal(&request)?.clone();
        let req = request.into_inner();
        let id = parse_id(&req.tx_id)?;
        let _waiting = self.co.waiting_permit().map_err(status_of)?;
        self.load_for(id, &principal).await?;
        let tx = self
            .wait_for_rest(id, self.wait_timeout(req.timeout_ms))
            .await?;
        Ok(Response::new(convert::transaction(&tx)))
    }

    type WatchStream = WatchStream;

    async fn watch(
        &self,
        request: Request<proto::WatchRequest>,
    ) -> Result<Response<Self::WatchStream>, Status> {
        let principal = auth::principal(&request)?;
        let id = parse_id(&request.get_ref().tx_id)?;
        let waiting = self.co.waiting_permit().map_err(status_of)?;
        let live = self.co.subscribe(id);
        // Fail fast on an unknown id (or one outside the caller's namespace), before the stream
        // starts.
        self.load_for(id, principal).await?;
        let (out, rx) = mpsc::channel(64);
        let co = self.co.clone();
        tokio::spawn(async move {
            watch(co, id, live, out).await;
            drop(waiting);
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }

    async fn list(
        &self,
        request: Request<proto::ListRequest>,
    ) -> Result<Response<proto::ListResponse>, Status> {
        let req = request.into_inner();
        let mut states = Vec::new();
        for (i, s) in req.states.iter().enumerate() {
            states.push(convert::state_model(*s).ok_or_else(|| {
                Status::invalid_argument(format!("states[{i}]: unknown state {s}"))
            })?);
        }
        let labels = validate::labels("labels", &req.labels, &self.limits)?;
        validate::check_page_size("limit", req.limit)?;
        let limit = if req.limit == 0 { 50 } else { req.limit };
        let before_id = if req.page_token.is_empty() {
            None
        } else {
            Some(req.page_token.parse::<TxId>().map_err(|_| {
                Status::invalid_argument("page_token: not a token from a previous list response")
            })?)
        };
        let filter = ListFilter {
            states,
            labels,
            created_after: validate::time_ms("created_after_ms", req.created_after_ms)?,
            created_before: validate::time_ms("created_before_ms", req.created_before_ms)?,
            before_id,
            limit,
        };
        let found = self.co.store().list(&filter).await.map_err(store_status)?;
        let next_page_token = if found.len() as u32 == limit {
            found.last().map(|t| t.id.to_string()).unwrap_or_default()
        } else {
            String::new()
        };
        Ok(Response::new(proto::ListResponse {
            transactions: found.iter().map(convert::transaction).collect(),
            next_page_token,
        }))
    }

    async fn events(
        &self,
        request: Request<proto::EventsRequest>,
    ) -> Result<Response<proto::EventsResponse>, Status> {
        let req = request.into_inner();
        let id = parse_id(&req.tx_id)?;
        if req.limit > 10_000 {
            return Err(Status::invalid_argument(format!(
                "limit: {} exceeds the maximum of 10000",
                req.limit
            )));
        }
        let limit = if req.limit == 0 { 1000 } else { req.limit };
        let events = self
            .co
            .store()
            .events(id, req.after_seq, limit)
            .await
            .map_err(store_status)?;
        if events.is_empty() && req.after_seq == 0 {
            self.load(id).await?;
        }
        Ok(Response::new(proto::EventsResponse {
            events: events.iter().map(convert::event).collect(),
        }))
    }

    async fn retry(
        &self,
        request: Request<proto::RetryRequest>,
    ) -> Result<Response<proto::Transaction>, Status> {
        let id = parse_id(&request.get_ref().tx_id)?;
        let before = self.load(id).await?;
        self.co.retry(id).await.map_err(status_of)?;
        // The driver records the retry (and the state it moves to) before it calls anyone:
        // answer with that, not with the failed state the retry left behind.
        let tx = self
            .wait_for_progress(id, before.last_seq, self.wait_timeout(10_000))
            .await?;
        Ok(Response::new(convert::transaction(&tx)))
    }

    async fn cancel(
        &self,
        request: Request<proto::CancelRequest>,
    ) -> Result<Response<proto::Transaction>, Status> {
        let req = request.into_inner();
        let id = parse_id(&req.tx_id)?;
        check_free_text("reason", &req.reason, self.limits.max_name_len)?;
        let reason = if req.reason.is_empty() {
            "requested by a client".to_string()
        } else {
            req.reason
        };
        self.co.cancel(id, reason).await.map_err(status_of)?;
        Ok(Response::new(convert::transaction(&self.load(id).await?)))
    }

    async fn register_participant(
        &self,
        request: Request<proto::RegisterParticipantRequest>,
    ) -> Result<Response<proto::RegisterParticipantResponse>, Status> {
        let req = request.into_inner();
        check_registration(&req.service, &req.endpoint, &self.limits)?;
        check_text("zone", &req.zone, self.limits.max_name_len)?;
        check_ms("ttl_ms", req.ttl_ms, self.limits.max_ttl_ms)?;
        let record = self
            .co
            .store()
            .register_participant(
                &req.service,
                &req.endpoint,
                req.weight.max(1),
                &req.zone,
                req.ttl_ms,
            )
            .await
            .map_err(store_status)?;
        Ok(Response::new(proto::RegisterParticipantResponse {
            participant: Some(convert::participant(&record)),
        }))
    }

    async fn heartbeat_participant(
        &self,
        request: Request<proto::HeartbeatParticipantRequest>,
    ) -> Result<Response<proto::HeartbeatParticipantResponse>, Status> {
        let req = request.into_inner();
        check_registration(&req.service, &req.endpoint, &self.limits)?;
        check_ms("ttl_ms", req.ttl_ms, self.limits.max_ttl_ms)?;
        let record = self
            .co
            .store()
            .heartbeat_participant(&req.service, &req.endpoint, req.ttl_ms)
            .await
            .map_err(store_status)?
            .ok_or_else(|| {
                Status::not_found(format!(
                    "participant {} at {} is not registered (or its registration expired); register again",
                    echo(&req.service),
                    echo(&req.endpoint)
                ))
            })?;
        Ok(Response::new(proto::HeartbeatParticipantResponse {
            participant: Some(convert::participant(&record)),
        }))
    }

    async fn deregister_participant(
        &self,
        request: Request<proto::DeregisterParticipantRequest>,
    ) -> Result<Response<proto::DeregisterParticipantResponse>, Status> {
        let req = request.into_inner();
        // Not the strict endpoint check: a registration made before it must remain removable.
        // Empty names are refused: nothing can be registered under them.
        check_name("service", &req.service, &self.limits)?;
        check_name("endpoint", &req.endpoint, &self.limits)?;
        let removed = self
            .co
            .store()
            .deregister_participant(&req.service, &req.endpoint)
            .await
            .map_err(store_status)?;
        Ok(Response::new(proto::DeregisterParticipantResponse {
            removed,
        }))
    }

    async fn list_participants(
        &self,
        request: Request<proto::ListParticipantsRequest>,
    ) -> Result<Response<proto::ListParticipantsResponse>, Status> {
        let service = request.into_inner().service;
        check_text("service", &service, self.limits.max_name_len)?;
        let mut found = self
            .co
            .store()
            .list_participants((!service.is_empty()).then_some(service.as_str()))
            .await
            .map_err(store_status)?;
        let registry = self.co.registry();
        // Statically configured endpoints take calls too, so they are listed (without expiry)
        // unless a registration of the same endpoint already is.
        let mut statics: Vec<crate::model::ParticipantRecord> = registry
            .static_endpoints()
            .iter()
            .filter(|(name, _)| service.is_empty() || **name == service)
            .flat_map(|(name, urls)| urls.iter().map(move |url| (name, url)))
            .filter(|(name, url)| {
                !found
                    .iter()
                    .any(|p| &p.service == *name && &p.endpoint == *url)
            })
            .map(|(name, url)| crate::model::ParticipantRecord {
                service: name.clone(),
                endpoint: url.clone(),
                weight: 1,
                zone: String::new(),
                expires_at: None,
            })
            .collect();
        if !statics.is_empty() {
            found.append(&mut statics);
            found.sort_by(|a, b| (&a.service, &a.endpoint).cmp(&(&b.service, &b.endpoint)));
        }
        let snapshot = registry.snapshot();
        let participants = found
            .iter()
            .map(|p| {
                let policy = registry.policy(&p.service);
                convert::live_participant(p, &policy, &snapshot.endpoint(&p.endpoint))
            })
            .collect();
        Ok(Response::new(proto::ListParticipantsResponse {
            participants,
        }))
    }

    async fn list_coordinators(
        &self,
        _request: Request<proto::ListCoordinatorsRequest>,
    ) -> Result<Response<proto::ListCoordinatorsResponse>, Status> {
        let found = self
            .co
            .store()
            .list_coordinators(self.co.config().lease.as_millis() as u64)
            .await
            .map_err(store_status)?;
        Ok(Response::new(proto::ListCoordinatorsResponse {
            coordinators: found
                .into_iter()
                .map(|c| proto::CoordinatorInfo {
                    id: c.id,
                    address: c.address,
                    started_at_ms: c.started_at.timestamp_millis(),
                    heartbeat_at_ms: c.heartbeat_at.timestamp_millis(),
                    version: c.version,
                    owned: c.owned,
                })
                .collect(),
        }))
    }

    async fn purge(
        &self,
        request: Request<proto::PurgeRequest>,
    ) -> Result<Response<proto::PurgeResponse>, Status> {
        let (older_than, batch) = check_purge(request.get_ref(), self.co.config().retention_batch)?;
        let purged = self.co.purge(older_than, batch).await.map_err(status_of)?;
        Ok(Response::new(proto::PurgeResponse { purged }))
    }
}

/// The longest age `Purge` accepts: more is a typo, not a retention period.
const MAX_PURGE_AGE: Duration = Duration::from_secs(100 * 366 * 24 * 3600);

/// Checks a `Purge` request; returns the age and the batch size to use (0 means `default_batch`).
fn check_purge(req: &proto::PurgeRequest, default_batch: u32) -> Result<(Duration, u32), Status> {
    if req.older_than_ms == 0 {
        return Err(Status::invalid_argument(
            "older_than_ms: must be greater than 0",
        ));
    }
    if Duration::from_millis(req.older_than_ms) > MAX_PURGE_AGE {
        return Err(Status::invalid_argument(format!(
            "older_than_ms: {} is more than 100 years",
            req.older_than_ms
        )));
    }
    if req.batch > crate::store::MAX_PURGE_BATCH {
        return Err(Status::resource_exhausted(format!(
            "batch: {} exceeds the limit of {}",
            req.batch,
            crate::store::MAX_PURGE_BATCH
        )));
    }
    let batch = if req.batch == 0 {
        default_batch
    } else {
        req.batch
    };
    Ok((Duration::from_millis(req.older_than_ms), batch))
}

fn check_registration(service: &str, endpoint: &str, limits: &Limits) -> Result<(), Status> {
    check_name("service", service, limits)?;
    check_endpoint("endpoint", endpoint, limits)
}

/// Streams the stored history, then live events, until the transaction rests or the client
/// goes away.
async fn watch(
    co: Arc<Coordinator>,
    id: TxId,
    mut live: Option<broadcast::Receiver<crate::model::EventRecord>>,
    out: mpsc::Sender<Result<proto::TxEvent, Status>>,
) {
    let mut last_seq = 0u64;
    let mut pause = REMOTE_POLL_FIRST;
    loop {
        // Catch up from the log.
        loop {
            match co.store().events(id, last_seq, 1000).await {
                Ok(events) => {
                    let n = events.len();
                    for e in events {
                        last_seq = e.seq;
                        if out.send(Ok(convert::event(&e))).await.is_err() {
                            return;
                        }
                    }
                    if n < 1000 {
                        break;
                    }
                }
                Err(e) => {
                    let _ = out.send(Err(store_status(e))).await;
                    return;
                }
            }
        }
        match co.store().get(id).await {
            Ok(Some(tx)) if tx.state.is_resting() && tx.last_seq <= last_seq => return,
            Ok(Some(_)) => {}
            Ok(None) => return,
            Err(e) => {
                let _ = out.send(Err(store_status(e))).await;
                return;
            }
        }
        match live.as_mut() {
            Some(rx) => loop {
                // A client that hung up ends the watch now, not at the next event.
                let received = tokio::select! {
                    _ = out.closed() => return,
                    received = rx.recv() => received,
                };
                match received {
                    Ok(e) if e.seq <= last_seq => continue,
                    Ok(e) if e.seq == last_seq + 1 => {
                        last_seq = e.seq;
                        let outcome = convert::is_outcome_event(&e);
                        if out.send(Ok(convert::event(&e))).await.is_err() {
                            return;
                        }
                        if outcome {
                            return;
                        }
                    }
                    // A gap, a lag or the driver ended: catch up from the log again.
                    Ok(_) | Err(broadcast::error::RecvError::Lagged(_)) => break,
                    Err(broadcast::error::RecvError::Closed) => {
                        live = None;
                        break;
                    }
                }
            },
            None => {
                tokio::select! {
                    _ = out.closed() => return,
                    _ = tokio::time::sleep(pause) => {}
                }
                pause = next_pause(pause);
                live = co.subscribe(id);
            }
        }
    }
}

/// How soon a `Wait` or `Watch` on a transaction driven by another coordinator (or by none yet)
/// reads the log again, at first and at most: half as long again each time, so that many such
/// calls on long transactions do not keep the database busy.
const REMOTE_POLL_FIRST: Duration = Duration::from_millis(200);
const REMOTE_POLL_MAX: Duration = Duration::from_secs(1);

fn next_pause(pause: Duration) -> Duration {
    (pause * 3 / 2).min(REMOTE_POLL_MAX)
}

/// `at` without its sub-millisecond part, as every store keeps it.
fn whole_millis(at: chrono::DateTime<chrono::Utc>) -> chrono::DateTime<chrono::Utc> {
    chrono::DateTime::from_timestamp_millis(at.timestamp_millis()).unwrap_or(at)
}

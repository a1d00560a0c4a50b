//! The coordinator: drives accepted transactions to their outcome.
//!
//! Each unfinished transaction this coordinator owns has one driver task (`driver`) that feeds
//! events to the pure [`engine`](crate::engine), records the result through the shared
//! [`writer::LogWriter`] (group commit), and makes the participant calls ([`call`]). Ownership is
//! fenced by `(owner, epoch)` on every write, so a driver that lost its transaction can never
//! overwrite the new owner's progress.

pub mod call;
mod driver;
pub mod failpoint;
pub mod metrics;
pub mod retention;
pub mod writer;

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::{broadcast, mpsc, oneshot, watch, OwnedSemaphorePermit, Semaphore};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::engine::{Event, Refused};
use crate::model::{BranchRecord, EventRecord, RetryPolicy, TxId, TxRecord, TxState};
use crate::registry::Registry;
use crate::store::{LogWrite, NewTx, Store, StoreError, WriteOutcome};

pub use writer::{LogWriter, WriteError};

/// How a coordinator behaves; every time is configurable so tests run in milliseconds.
#[derive(Clone, Debug)]
pub struct Config {
    /// This coordinator's id in the log (`owner` of the transactions it drives).
    pub id: String,
    /// The gRPC address it serves, shown to operators.
    pub address: String,
    /// Per-call timeout of a step that does not set one.
    pub default_timeout: Duration,
    /// Retry policy of a step that does not set one.
    pub default_retry: RetryPolicy,
    /// Unfinished transactions driven at once; `Start` beyond it is refused.
    pub max_inflight: usize,
    /// Calls waiting on a transaction at once (`Wait`, `Watch`, `Start` with `wait`, over gRPC
    /// and HTTP); one more is refused. Each holds a task and, for a transaction driven
    /// elsewhere, reads the log a few times a second.
    pub max_waiting: usize,
    /// Largest group-commit batch (a batch also takes at most one write for every two
    /// transactions driven, at least 8: `writer`'s module doc).
    pub max_batch: usize,
    /// Batches the log writer commits at once, each on its own connection (`baton serve` uses
    /// one on SQLite, which has one writer anyway).
    pub log_writers: usize,
    /// With more than one log writer, a batch starts while another is committing only once this
    /// many writes wait; fewer join the next batch (docs/NOTES.md).
    pub pipeline_min: usize,
    /// A coordinator whose heartbeat is older than this is dead; its transactions are claimed.
    pub lease: Duration,
    /// How often this coordinator heartbeats and claims unowned or orphaned transactions.
    pub claim_interval: Duration,
    /// Transactions claimed per claim query.
    pub claim_batch: u32,
    /// How long a transaction's progress may wait in memory before it is queued to the log;
    /// progress of a transaction that ends sooner rides in its outcome's write. Zero queues every
    /// decision at once.
    pub progress_flush: Duration,
    /// Finished transactions are deleted this long after they ended; `None` keeps them forever.
    pub retention: Option<Duration>,
    /// How often the retention sweep runs.
    pub retention_sweep_interval: Duration,
    /// Transactions deleted per retention batch (one short database transaction each).
    pub retention_batch: u32,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            id: "baton".into(),
            address: String::new(),
            default_timeout: Duration::from_secs(10),
            default_retry: RetryPolicy::default(),
            max_inflight: 10_000,
            max_waiting: 10_000,
            max_batch: 512,
            log_writers: 2,
            pipeline_min: 32,
            lease: Duration::from_secs(15),
            claim_interval: Duration::from_secs(2),
            claim_batch: 500,
            progress_flush: Duration::from_millis(100),
            retention: Some(retention::DEFAULT_RETENTION),
            retention_sweep_interval: retention::DEFAULT_SWEEP_INTERVAL,
            retention_batch: retention::DEFAULT_BATCH,
        }
    }
}

/// Why a coordinator verb did not happen.
#[derive(Debug, thiserror::Error)]
pub enum CoordError {
    #[error("transaction {0} not found")]
    NotFound(TxId),
    /// The transaction's state does not allow the verb.
    #[error("{0}")]
    Refused(String),
    /// The in-flight limit is reached.
    #[error("too many transactions in flight (limit {0}); retry later")]
    Busy(usize),
    /// The limit of calls waiting on transactions is reached.
    #[error("too many calls waiting on transactions (limit {0}); retry later")]
    TooManyWaiting(usize),
    /// The log could not be written or read.
    #[error("{0}")]
    Unavailable(String),
    /// The transaction changed under the request (another coordinator took it).
    #[error("{0}")]
    Conflict(String),
    /// The coordinator is shutting down.
    #[error("coordinator is shutting down")]
    Stopping,
    /// The database refused to store the request's data (validation at the API should have
    /// caught it); retrying the same request cannot help.
    #[error("{0}")]
    Invalid(String),
}

impl From<StoreError> for CoordError {
    fn from(e: StoreError) -> Self {
        CoordError::Unavailable(e.to_string())
    }
}

impl From<WriteError> for CoordError {
    fn from(e: WriteError) -> Self {
        match e {
            WriteError::Closed => CoordError::Stopping,
            WriteError::Store(text) => CoordError::Unavailable(text),
        }
    }
}

/// A request to a running driver.
pub(crate) enum Command {
    Cancel {
        reason: String,
        reply: oneshot::Sender<Result<(), Refused>>,
    },
}

struct DriverHandle {
    inbox: mpsc::Sender<Command>,
    events: broadcast::Sender<EventRecord>,
    rested: watch::Receiver<Option<TxRecord>>,
}

/// What `start` did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Started {
    Created(TxId),
    /// The idempotency key already named this transaction.
    Existing(TxId),
}

/// This coordinator's hold on its lease, as far as it can tell locally.
///
/// Checked before every participant call and before a call's answer is used, not only by the
/// heartbeat task: a coordinator paused (SIGSTOP, a stalled VM) or starved past its lease wakes
/// its drivers and its heartbeat task together, and the drivers must not call participants for
/// transactions that peers have meanwhile claimed just because the heartbeat has not run yet.
/// A check is two clock reads and three atomic loads.
pub(crate) struct Lease {
    /// What `renewed_at` counts from.
    origin: std::time::Instant,
    /// When the last successful heartbeat was sent, in ns since `origin`. The request's send
    /// time, not its answer's: the database stamped the heartbeat at some point after it, so the
    /// lease it granted runs at least this long from here.
    renewed_at: AtomicU64,
    /// The same instant on the wall clock (ms since the Unix epoch). A suspended host (a paused
    /// VM) stops the monotonic clock but not the wall clock, nor the database's clock that peers
    /// judge the lease by; a wall clock stepped back is caught by the monotonic one.
    renewed_wall_ms: AtomicI64,
    /// How long after a renewal the lease still counts as held: half the lease, so that this
    /// coordinator stops well before peers may claim its transactions.
    valid_for: Duration,
    /// Set once the heartbeat task keeps the lease (`run_background`); before that only `held`
    /// counts.
    kept: AtomicBool,
    /// False from losing the lease until every driver of it has stopped and its transactions
    /// were handed back.
    held: AtomicBool,
    /// What running drivers watch: cancelled when the lease is lost, replaced by a fresh child of
    /// the coordinator's stop token when it is regained.
    driving: Mutex<CancellationToken>,
}

/// A lease timestamp: (ns since [`Lease::origin`], ms since the Unix epoch).
#[derive(Clone, Copy)]
struct Stamp(u64, i64);

impl Lease {
    fn new(valid_for: Duration, driving: CancellationToken) -> Lease {
        let lease = Lease {
            origin: std::time::Instant::now(),
            renewed_at: AtomicU64::new(0),
            renewed_wall_ms: AtomicI64::new(0),
            valid_for,
            kept: AtomicBool::new(false),
            held: AtomicBool::new(true),
            driving: Mutex::new(driving),
        };
        lease.renewed(lease.now());
        lease
    }

    fn now(&self) -> Stamp {
        Stamp(
            self.origin.elapsed().as_nanos().min(u64::MAX as u128) as u64,
            chrono::Utc::now().timestamp_millis(),
        )
    }

    fn renewed(&self, at: Stamp) {
        self.renewed_at.store(at.0, Ordering::Relaxed);
        self.renewed_wall_ms.store(at.1, Ordering::Relaxed);
    }

    /// Whether the lease is held now.
    pub(crate) fn held(&self) -> bool {
        if !self.held.load(Ordering::Acquire) {
            return false;
        }
        !self.kept.load(Ordering::Relaxed) || self.covers(self.now())
    }

    /// Whether the last renewal still covered the instant `at`, by both clocks.
    fn covers(&self, at: Stamp) -> bool {
        let mono = at.0.saturating_sub(self.renewed_at.load(Ordering::Relaxed));
        let wall =
            at.1.saturating_sub(self.renewed_wall_ms.load(Ordering::Relaxed));
        u128::from(mono) < self.valid_for.as_nanos()
            && (wall.max(0) as u128) < self.valid_for.as_millis()
    }

    /// Whether the lease is held now; if not, stops every driver (once) before returning.
    pub(crate) fn check(&self) -> bool {
        self.held() || {
            self.lose();
            false
        }
    }

    /// Stops every driver until the lease is regained.
    fn lose(&self) {
        if self.held.swap(false, Ordering::AcqRel) {
            tracing::error!(
                "the lease is not renewed; stopping every driver until the heartbeat succeeds"
            );
            self.driving().cancel();
        }
    }

    /// The token drivers started now watch.
    fn driving(&self) -> CancellationToken {
        self.driving
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Holds the lease again, renewed at `at`, with `driving` for the drivers started from now.
    fn regain(&self, at: Stamp, driving: CancellationToken) {
        *self.driving.lock().unwrap_or_else(|e| e.into_inner()) = driving;
        self.renewed(at);
        self.held.store(true, Ordering::Release);
    }
}

/// A running coordinator: its log, writer, registry and drivers.
pub struct Coordinator {
    config: Config,
    store: Arc<dyn Store>,
    /// The registry, with the lease every participant call checks. (The driver calls through
    /// this field by its old name.)
    registry: call::Caller,
    writer: LogWriter,
    drivers: Mutex<HashMap<TxId, DriverHandle>>,
    /// The unfinished transactions whose drivers stopped since shutdown began: handed back by
    /// id (at most one entry per driver).
    stopped: Mutex<Vec<TxId>>,
    /// One permit per transaction driven here, and per `Start`, `Retry` or claim between its
    /// write and its driver's start: all of them back means nothing of this coordinator acts.
    inflight: Arc<Semaphore>,
    /// One permit per call waiting on a transaction ([`Config::max_waiting`]).
    waiting: Arc<Semaphore>,
    tracker: TaskTracker,
    stop: CancellationToken,
    lease: Arc<Lease>,
    writer_stop: CancellationToken,
    metrics: Arc<metrics::Metrics>,
}

impl Coordinator {
    /// Creates the coordinator and its log writer. Call [`Coordinator::recover`] and
    /// [`Coordinator::run_background`] to resume work and keep membership.
    pub fn new(config: Config, store: Arc<dyn Store>, registry: Arc<Registry>) -> Arc<Self> {
        let tracker = TaskTracker::new();
        let stop = CancellationToken::new();
        let writer_stop = CancellationToken::new();
        let metrics = Arc::new(metrics::Metrics::default());
        let inflight = Arc::new(Semaphore::new(config.max_inflight));
        let live: writer::Live = {
            let (inflight, max) = (inflight.clone(), config.max_inflight);
            Arc::new(move || driven(&inflight, max))
        };
        let writer = LogWriter::start(
            store.clone(),
            metrics.clone(),
            writer::WriterOptions {
                connections: config.log_writers,
                max_batch: config.max_batch,
                pipeline_min: config.pipeline_min,
                queue_len: config.max_inflight.max(64) * 2,
            },
            Some(live),
            &tracker,
            writer_stop.clone(),
        );
        let lease = Arc::new(Lease::new(config.lease / 2, stop.child_token()));
        Arc::new(Coordinator {
            inflight,
            waiting: Arc::new(Semaphore::new(config.max_waiting)),
            config,
            store,
            registry: call::Caller::new(registry, lease.clone()),
            writer,
            drivers: Mutex::new(HashMap::new()),
            stopped: Mutex::new(Vec::new()),
            tracker,
            stop,
            lease,
            writer_stop,
            metrics,
        })
    }

    pub fn config(&self) -> &Config {
        &self.config
    }

    /// The permit a call holds while it waits on a transaction, or `TooManyWaiting`.
    pub fn waiting_permit(&self) -> Result<OwnedSemaphorePermit, CoordError> {
        self.waiting
            .clone()
            .try_acquire_owned()
            .map_err(|_| CoordError::TooManyWaiting(self.config.max_waiting))
    }

    pub fn store(&self) -> &Arc<dyn Store> {
        &self.store
    }

    pub fn registry(&self) -> &Arc<Registry> {
        self.registry.registry()
    }

    pub fn metrics(&self) -> &metrics::Metrics {
        &self.metrics
    }

    /// Unfinished transactions driven here now.
    pub fn in_flight(&self) -> usize {
        driven(&self.inflight, self.config.max_inflight)
    }

    /// Transactions whose driver runs here now; published with each heartbeat, where
    /// `ListCoordinators` reads it.
    pub fn driving(&self) -> u64 {
        let drivers = self.drivers.lock().unwrap_or_else(|e| e.into_inner());
        drivers.len() as u64
    }

    /// Whether shutdown has begun.
    pub fn is_stopping(&self) -> bool {
        self.stop.is_cancelled()
    }

    /// Whether it takes new work: not shutting down, and its lease is current.
    pub fn is_ready(&self) -> bool {
        !self.is_stopping() && self.lease.held()
    }

    /// Records a new transaction durably (before answering) and starts driving it. With an
    /// idempotency key that already names a transaction, nothing is written or started.
    ///
    /// Cancellation-safe: once the create is queued to the log writer, a task of the
    /// coordinator's own awaits it and starts the driver, so a caller that goes away (deadline,
    /// disconnect: tonic drops this future) cannot leave a transaction in the log that this live
    /// coordinator owns and nobody drives.
    pub async fn start(self: &Arc<Self>, new: NewTx) -> Result<Started, CoordError> {
        let (permit, driving) = self.take_work()?;
        let record = record_of(&new);
        // `submit` queues the write or, dropped before it could, does not (an mpsc send).
        let ack = self.writer.submit(LogWrite::Create(Box::new(new))).await?;
        let (answer, answered) = oneshot::channel();
        let this = self.clone();
        self.tracker.spawn(async move {
            let result = match ack.await {
                Ok(Ok(WriteOutcome::Created)) => {
                    failpoint::hit(failpoint::AFTER_CREATE).await;
                    let id = record.id;
                    this.metrics.started(record.kind);
                    this.spawn_driver(record, Event::Begin, permit, driving);
                    Ok(Started::Created(id))
                }
                Ok(Ok(WriteOutcome::Existing(id))) => Ok(Started::Existing(id)),
                Ok(Ok(WriteOutcome::Refused(reason))) => Err(CoordError::Invalid(format!(
                    "definition: the log cannot record this transaction: {reason}"
                ))),
                Ok(Ok(other)) => Err(CoordError::Unavailable(format!(
                    "unexpected log outcome {other:?} for a new transaction"
                ))),
                Ok(Err(e)) => Err(e.into()),
                Err(_) => Err(CoordError::Stopping),
            };
            let _ = answer.send(result);
        });
        answered.await.unwrap_or(Err(CoordError::Stopping))
    }

    /// The permit for one more transaction driven here and the token its driver is to watch,
    /// or why this coordinator takes no new work now. Both are taken before the log is written:
    /// a lease lost after this cancels the token, so the driver stops at once, and the lease is
    /// regained only once the permit is back (after the write), when the transaction is handed
    /// back with everything else this coordinator held.
    fn take_work(&self) -> Result<(OwnedSemaphorePermit, CancellationToken), CoordError> {
        if self.is_stopping() {
            return Err(CoordError::Stopping);
        }
        let no_lease = || {
            CoordError::Unavailable(
                "coordinator cannot renew its lease (database unreachable); try another coordinator"
                    .into(),
            )
        };
        if !self.is_ready() {
            return Err(no_lease());
        }
        let permit = self
            .inflight
            .clone()
            .try_acquire_owned()
            .map_err(|_| CoordError::Busy(self.config.max_inflight))?;
        let driving = self.lease.driving();
        if driving.is_cancelled() || !self.lease.held() {
            return Err(if self.is_stopping() {
                CoordError::Stopping
            } else {
                no_lease()
            });
        }
        Ok((permit, driving))
    }

    /// Live events of a transaction driven here, or `None` if no driver runs it here.
    pub fn subscribe(&self, id: TxId) -> Option<broadcast::Receiver<EventRecord>> {
        let drivers = self.drivers.lock().unwrap_or_else(|e| e.into_inner());
        drivers.get(&id).map(|d| d.events.subscribe())
    }

    /// The transaction as recorded once it rests (`None` until then), if a driver runs it here.
    /// The sender is dropped without a value if the driver stops first (fenced, shutting down).
    pub fn rested(&self, id: TxId) -> Option<watch::Receiver<Option<TxRecord>>> {
        let drivers = self.drivers.lock().unwrap_or_else(|e| e.into_inner());
        drivers.get(&id).map(|d| d.rested.clone())
    }

    /// Asks the transaction to cancel (a running saga compensates).
    pub async fn cancel(&self, id: TxId, reason: String) -> Result<(), CoordError> {
        let inbox = {
            let drivers = self.drivers.lock().unwrap_or_else(|e| e.into_inner());
            drivers.get(&id).map(|d| d.inbox.clone())
        };
        let Some(inbox) = inbox else {
            let tx = self.store.get(id).await?.ok_or(CoordError::NotFound(id))?;
            if tx.state.is_resting() {
                return Err(CoordError::Refused(resting_refusal(&tx, "cancelled")));
            }
            // Driven elsewhere (or about to be claimed): its owner acts on the recorded request.
            if !self.store.request_cancel(id, &reason).await? {
                let tx = self.store.get(id).await?.ok_or(CoordError::NotFound(id))?;
                return Err(CoordError::Refused(resting_refusal(&tx, "cancelled")));
            }
            return Ok(());
        };
        let (reply, answer) = oneshot::channel();
        inbox
            .send(Command::Cancel { reason, reply })
            .await
            .map_err(|_| CoordError::Conflict(format!("transaction {id} just ended")))?;
        match answer.await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(refused)) => Err(CoordError::Refused(refused.0)),
            Err(_) => Err(CoordError::Conflict(format!(
                "transaction {id} stopped being driven here"
            ))),
        }
    }

    /// Resumes a `failed` transaction: takes it over and lets the engine retry.
    ///
    /// Cancellation-safe like [`Coordinator::start`]: the claim and the driver's start happen in
    /// a task of the coordinator's own, so a claim that commits is always driven.
    pub async fn retry(self: &Arc<Self>, id: TxId) -> Result<(), CoordError> {
        if self.is_stopping() {
            return Err(CoordError::Stopping);
        }
        let tx = self.store.get(id).await?.ok_or(CoordError::NotFound(id))?;
        if tx.state != TxState::Failed {
            return Err(CoordError::Refused(format!(
                "transaction {id} is {}; only a failed transaction can be retried",
                tx.state
            )));
        }
        let (permit, driving) = self.take_work()?;
        let (answer, answered) = oneshot::channel();
        let this = self.clone();
        self.tracker.spawn(async move {
            let result = match this.store.claim_one(id, &this.config.id, tx.epoch).await {
                Ok(Some(claimed)) => {
                    this.spawn_driver(claimed, Event::Retry, permit, driving);
                    Ok(())
                }
                Ok(None) => Err(CoordError::Conflict(format!(
                    "transaction {id} changed meanwhile; look again"
                ))),
                Err(e) => Err(e.into()),
            };
            let _ = answer.send(result);
        });
        answered.await.unwrap_or(Err(CoordError::Stopping))
    }

    /// Resumes unfinished work at start-up: hands back what an earlier run of this coordinator
    /// (same id) held, then claims unowned and orphaned transactions. Returns how many it took.
    pub async fn recover(self: &Arc<Self>) -> Result<usize, CoordError> {
        let sent = self.lease.now();
        self.store
            .heartbeat_coordinator(
                &self.config.id,
                &self.config.address,
                crate::VERSION,
                self.driving(),
            )
            .await?;
        self.lease.renewed(sent);
        let released = self.store.release_owned(&self.config.id).await?;
        if released > 0 {
            tracing::info!(
                released,
                "handed back transactions of this coordinator's last run"
            );
        }
        let mut total = 0;
        loop {
            let n = self.claim_some(Claim::All).await?;
            total += n;
            if n == 0 {
                break;
            }
        }
        Ok(total)
    }

    /// Claims up to one batch of unowned or orphaned transactions, as far as the in-flight limit
    /// allows, and starts driving them.
    async fn claim_some(self: &Arc<Self>, scope: Claim) -> Result<usize, CoordError> {
        let room = self
            .inflight
            .available_permits()
            .min(self.config.claim_batch as usize);
        if room == 0 || !self.is_ready() {
            return Ok(0);
        }
        // Permits and token before the claim, as in `take_work`: a claim that commits while the
        // lease is lost is handed back when it is regained, which waits for these permits.
        let Ok(mut permits) = self.inflight.clone().try_acquire_many_owned(room as u32) else {
            return Ok(0); // taken meanwhile by starts; the next tick claims
        };
        let driving = self.lease.driving();
        if driving.is_cancelled() {
            return Ok(0);
        }
        let lease_ms = self.config.lease.as_millis() as u64;
        let claimed = match scope {
            Claim::All => self.store.claim(&self.config.id, lease_ms, room as u32),
            Claim::Lapsed => self
                .store
                .claim_lapsed(&self.config.id, lease_ms, room as u32),
        }
        .await?;
        let n = claimed.len();
        self.metrics.claimed(n as u64);
        for tx in claimed {
            // The claim returns at most `room` rows, one permit each.
            let Some(permit) = permits.split(1) else {
                tracing::error!(tx_id = %tx.id, "claimed more transactions than asked for");
                break;
            };
            tracing::info!(tx_id = %tx.id, epoch = tx.epoch, "claimed transaction");
            self.spawn_driver(tx, Event::Resume, permit, driving.clone());
        }
        Ok(n)
    }

    /// Keeps this coordinator's heartbeat fresh and claims work that has no live owner, until
    /// shutdown.
    ///
    /// A coordinator that cannot renew its heartbeat for half the lease stops its drivers (and
    /// refuses `Start`) before the lease can run out, so it never drives a transaction that
    /// another coordinator may already have claimed. Every participant call checks the same
    /// (see `Lease`), so a coordinator that was paused stops before its heartbeat task runs.
    /// When the heartbeat succeeds again it waits for its drivers to stop, hands back what it
    /// held (epoch + 1 fences any straggler) and claims work afresh.
    pub fn run_background(self: &Arc<Self>) {
        self.lease.kept.store(true, Ordering::Relaxed);
        // Heartbeats run on their own task, so that a slow claim or a busy database read can
        // never delay the renewal into a lost lease.
        let this = self.clone();
        let stop = self.stop.clone();
        self.tracker.spawn(async move {
            let every = this.config.claim_interval.min(this.config.lease / 4);
            let mut tick = tokio::time::interval(every);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tokio::select! {
                    _ = stop.cancelled() => return,
                    _ = tick.tick() => {}
                }
                let sent = this.lease.now();
                let renewed = tokio::time::timeout(
                    this.config.lease / 4,
                    this.store.heartbeat_coordinator(
                        &this.config.id,
                        &this.config.address,
                        crate::VERSION,
                        this.driving(),
                    ),
                )
                .await;
                match renewed {
                    Ok(Ok(())) => {
                        // Sent after a silence past the limit (a pause, a starved runtime): peers
                        // may have claimed this coordinator's transactions meanwhile. Its drivers
                        // stop before the fresh renewal could let their calls through. (Calls
                        // made while this renewal was on its way checked the previous one.)
                        if !this.lease.covers(sent) {
                            this.lose_lease();
                        }
                        this.lease.renewed(sent);
                        if !this.lease.held.load(Ordering::Acquire) {
                            this.regain_lease(sent).await;
                        }
                    }
                    Ok(Err(e)) => tracing::warn!(error = %e, "heartbeat failed"),
                    Err(_) => tracing::warn!("heartbeat timed out"),
                }
                if !this.lease.held() {
                    this.lose_lease();
                }
            }
        });

        let this = self.clone();
        let stop = self.stop.clone();
        self.tracker.spawn(async move {
            let mut tick = tokio::time::interval(this.config.claim_interval);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            let mut ticks: u32 = 0;
            loop {
                tokio::select! {
                    _ = stop.cancelled() => return,
                    _ = tick.tick() => {}
                }
                if !this.is_ready() {
                    continue;
                }
                this.take_cancel_requests().await;
                // Most ticks claim from nobody and from lapsed coordinators only; one in
                // `FULL_CLAIM_EVERY` also takes transactions whose owner has no row at all (one
                // removed by hand, or forgotten below), at the cost of reading the whole
                // unfinished index.
                ticks = ticks.wrapping_add(1);
                let scope = if ticks.is_multiple_of(FULL_CLAIM_EVERY) {
                    Claim::All
                } else {
                    Claim::Lapsed
                };
                // Keep claiming while batches come back full: a dead peer's backlog is taken
                // at database speed, not one batch per tick.
                loop {
                    match this.claim_some(scope).await {
                        Ok(n) if n >= this.config.claim_batch as usize => continue,
                        Ok(_) => break,
                        Err(e) => {
                            tracing::warn!(error = %e, "claim failed");
                            break;
                        }
                    }
                }
                if matches!(scope, Claim::All) {
                    this.forget_departed().await;
                }
            }
        });

        // Retention runs on a task of its own so a long sweep never delays claims or heartbeats.
        if let Some(age) = self.config.retention {
            self.tracker
                .spawn(retention::sweep(self.clone(), age, self.stop.clone()));
        }
    }

    /// Deletes the rows of coordinators dead for [`DEPARTED_AFTER`] (or ten leases, if longer)
    /// and expired participant registrations ([`crate::store::Membership::forget_departed`]); a failure is
    /// logged and the next full claim tries again.
    async fn forget_departed(&self) {
        let dead_for = DEPARTED_AFTER.max(self.config.lease.saturating_mul(10));
        match self.store.forget_departed(dead_for, FORGET_BATCH).await {
            Ok((0, 0)) => {}
            Ok((coordinators, participants)) => tracing::info!(
                coordinators,
                participants,
                "forgot departed coordinators and expired participant registrations"
            ),
            Err(e) => tracing::warn!(error = %e, "forgetting departed members failed"),
        }
    }

    /// Deletes finished transactions older than `older_than` now, `batch` at a time (the
    /// operator's purge; the background sweep does the same every interval). Failed and
    /// unfinished transactions are never deleted. Returns how many were.
    pub async fn purge(&self, older_than: Duration, batch: u32) -> Result<u64, CoordError> {
        if self.is_stopping() {
            return Err(CoordError::Stopping);
        }
        Ok(retention::purge(
            self.store.as_ref(),
            &self.metrics,
            older_than,
            batch,
            &self.stop,
        )
        .await?)
    }

    /// Acts on cancel requests that other coordinators recorded for transactions driven here.
    async fn take_cancel_requests(&self) {
        let requests = match self.store.cancel_requests(&self.config.id, 100).await {
            Ok(r) => r,
            Err(e) => {
                tracing::warn!(error = %e, "could not read cancel requests");
                return;
            }
        };
        for (id, reason) in requests {
            let inbox = {
                let drivers = self.drivers.lock().unwrap_or_else(|e| e.into_inner());
                drivers.get(&id).map(|d| d.inbox.clone())
            };
            // Not driven here yet (claimed a moment ago): leave it for the next tick.
            let Some(inbox) = inbox else { continue };
            let (reply, answer) = oneshot::channel();
            if inbox.send(Command::Cancel { reason, reply }).await.is_err() {
                continue;
            }
            // A refusal (past the pivot, decided to commit) is final too: the request is done.
            if answer.await.is_ok() {
                if let Err(e) = self.store.clear_cancel_request(id).await {
                    tracing::warn!(error = %e, tx_id = %id, "could not clear a cancel request");
                }
            }
        }
    }

    fn lose_lease(&self) {
        self.lease.lose();
    }

    /// Holds the lease again after losing it, renewed at `sent`: once every permit is back (no
    /// driver of the lost lease still runs, no create or claim sits between its write and its
    /// driver), hands back what this coordinator owned, so claims (ours or a peer's) resume it
    /// with a new epoch. Gives up for now, to try again at the next heartbeat, if the drivers
    /// take longer than a quarter lease to stop.
    async fn regain_lease(&self, sent: Stamp) {
        let every = u32::try_from(self.config.max_inflight).unwrap_or(u32::MAX);
        let all = tokio::time::timeout(
            self.config.lease / 4,
            self.inflight.clone().acquire_many_owned(every),
        )
        .await;
        let Ok(Ok(all)) = all else {
            tracing::warn!("drivers of the lost lease have not all stopped; trying again later");
            return;
        };
        match self.store.release_owned(&self.config.id).await {
            Ok(n) => {
                tracing::info!(handed_back = n, "lease renewed; resuming work");
                self.lease.regain(sent, self.stop.child_token());
            }
            Err(e) => tracing::warn!(error = %e, "could not hand back after regaining the lease"),
        }
        drop(all);
    }

    /// Stops driving: drivers end where they are (their progress is in the log), the writer
    /// commits what is queued, and this coordinator's unfinished transactions are handed back so
    /// that a restart or another coordinator resumes them at once.
    pub async fn shutdown(&self) {
        self.stop.cancel();
        // Drivers first, then the writer they write through.
        let drivers_done = async {
            loop {
                let empty = self
                    .drivers
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .is_empty();
                if empty {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        };
        let _ = tokio::time::timeout(Duration::from_secs(10), drivers_done).await;
        self.writer_stop.cancel();
        self.tracker.close();
        self.tracker.wait().await;
        // What the drivers held first, each by id, so that peers resume it at their next claim;
        // then whatever else this coordinator still owns (a start or claim racing the stop),
        // which reads its whole range of the unfinished index: seconds after millions of
        // transactions since the last vacuum, paid by this process's exit rather than by the
        // transactions it drove.
        let stopped = std::mem::take(&mut *self.stopped.lock().unwrap_or_else(|e| e.into_inner()));
        match self.store.release(&self.config.id, &stopped).await {
            Ok(n) if n > 0 => {
                tracing::info!(handed_back = n, "handed back the transactions it drove")
            }
            Ok(_) => {}
            Err(e) => tracing::warn!(error = %e, "could not hand back the transactions it drove"),
        }
        match self.store.release_owned(&self.config.id).await {
            Ok(n) if n > 0 => {
                tracing::info!(handed_back = n, "handed back unfinished transactions")
            }
            Ok(_) => {}
            Err(e) => {
                // The row stays, so that peers see its lease lapse and claim what it held.
                tracing::warn!(error = %e, "could not hand back transactions; they resume after the lease");
                return;
            }
        }
        if let Err(e) = self.store.remove_coordinator(&self.config.id).await {
            tracing::warn!(error = %e, "could not remove the coordinator row");
        }
    }

    /// Starts the driver of `tx`; it stops when `driving` (the token of the lease under which
    /// the transaction was written or claimed) is cancelled.
    fn spawn_driver(
        self: &Arc<Self>,
        tx: TxRecord,
        first: Event,
        permit: OwnedSemaphorePermit,
        driving: CancellationToken,
    ) {
        let (inbox, commands) = mpsc::channel(16);
        // The channel's slots are allocated up front, for every transaction, watched or not; 256
        // of them cost more than a whole W1 saga's other allocations. A watcher that falls more
        // than this many events behind catches up from the log (`api::watch`).
        let (events, _) = broadcast::channel(LIVE_EVENTS);
        let (rested, rested_rx) = watch::channel(None);
        let id = tx.id;
        {
            let mut drivers = self.drivers.lock().unwrap_or_else(|e| e.into_inner());
            drivers.insert(
                id,
                DriverHandle {
                    inbox,
                    events: events.clone(),
                    rested: rested_rx,
                },
            );
        }
        let this = self.clone();
        self.tracker.spawn(async move {
            // Boxed, like a call (driver.rs, `launch`): the task moves a pointer, not the
            // driver's whole state machine.
            Box::pin(driver::drive(
                &this, tx, first, commands, events, rested, driving,
            ))
            .await;
            let handle = this
                .drivers
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .remove(&id);
            let at_rest = handle.is_some_and(|h| h.rested.borrow().is_some());
            if !at_rest && this.stop.is_cancelled() {
                this.stopped
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .push(id);
            }
            drop(permit);
        });
    }
}

/// Live events a transaction's watchers may fall behind before they re-read the log.
const LIVE_EVENTS: usize = 16;

/// Which transactions a claim looks at (see [`crate::store::TxLog::claim_lapsed`]).
#[derive(Clone, Copy)]
enum Claim {
    /// Unowned ones and those of coordinators whose heartbeat lapsed.
    Lapsed,
    /// Also those whose owner has no coordinator row.
    All,
}

/// One claim tick in this many is a [`Claim::All`]: every minute at the default two-second
/// interval. Start-up claims are always `All`.
const FULL_CLAIM_EVERY: u32 = 30;

/// How long a coordinator's row outlives its last heartbeat. Its transactions are claimed
/// within seconds of its lease lapsing, with or without the row; a coordinator that comes back
/// later writes its row again with its next heartbeat.
const DEPARTED_AFTER: Duration = Duration::from_secs(3600);

/// Rows of each kind [`Coordinator::forget_departed`] deletes at a time.
const FORGET_BATCH: u32 = 1000;

/// The refusal text for a verb on a resting transaction.
pub fn resting_refusal(tx: &TxRecord, verb: &str) -> String {
    if tx.state == TxState::Failed {
        format!(
            "transaction {} has failed and waits for an operator's retry; it cannot be {verb}",
            tx.id
        )
    } else {
        format!(
            "transaction {} has already ended ({}); it cannot be {verb}",
            tx.id, tx.state
        )
    }
}

/// The in-memory record of a transaction just written by `Create`.
fn record_of(new: &NewTx) -> TxRecord {
    let now = new.created_at;
    TxRecord {
        id: new.id,
        kind: new.definition.kind(),
        state: new.state,
        definition: new.definition.clone(),
        labels: new.labels.clone(),
        idempotency_key: new.idempotency_key.clone(),
        owner: Some(new.owner.clone()),
        epoch: new.epoch,
        stage: 0,
        last_error: None,
        cancel_requested: false,
        deadline_at: new.deadline_at,
        created_at: now,
        updated_at: now,
        last_seq: new.events.len() as u64,
        branches: new
            .definition
            .branch_names()
            .into_iter()
            .enumerate()
            .map(|(i, name)| BranchRecord {
                index: i as u32,
                name: name.to_string(),
                ..BranchRecord::default()
            })
            .collect(),
    }
}

/// Transactions driven now: the in-flight permits taken out of `max`.
fn driven(inflight: &Semaphore, max: usize) -> usize {
    max.saturating_sub(inflight.available_permits())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_lease_runs_out_by_either_clock_and_a_failed_check_stops_the_drivers() {
        let first = CancellationToken::new();
        let lease = Lease::new(Duration::from_millis(50), first.clone());
        lease.renewed(Stamp(0, 0));
        assert!(lease.check(), "not judged by time until heartbeats keep it");
        lease.kept.store(true, Ordering::Relaxed);

        let at = Stamp(1_000_000_000, 1_000_000);
        lease.renewed(at);
        assert!(lease.covers(Stamp(at.0 + 49_000_000, at.1 + 49)));
        assert!(!lease.covers(Stamp(at.0 + 50_000_000, at.1)));
        assert!(
            !lease.covers(Stamp(at.0, at.1 + 50)),
            "a suspended host: only the wall clock moved"
        );
        assert!(
            lease.covers(Stamp(at.0 + 1, at.1 - 60_000)),
            "a wall clock stepped back changes nothing"
        );

        // A renewal a second old by the wall clock: the next check stops every driver, once.
        let now = lease.now();
        lease.renewed(Stamp(now.0, now.1 - 1_000));
        assert!(!first.is_cancelled());
        assert!(!lease.check());
        assert!(first.is_cancelled());
        assert!(!lease.held());

        // Even a fresh renewal does not count until the lease is regained.
        lease.renewed(lease.now());
        assert!(!lease.check());
        let second = CancellationToken::new();
        lease.regain(lease.now(), second.clone());
        assert!(lease.check());
        assert!(!second.is_cancelled());
        lease.lose();
        assert!(
            second.is_cancelled(),
            "drivers started after regaining watch the new token"
        );
    }
}

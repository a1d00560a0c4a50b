//! The log writer: one task per coordinator that gathers the log writes of every transaction in
//! flight and commits them together, one database statement and commit per batch (group commit).
//!
//! Writes wait in one bounded queue. When no batch is running, the writer takes what is queued as
//! one batch, so the batch size adapts to the load by itself: one write alone under no load,
//! hundreds under heavy load. A batch takes at most one write for every two transactions the
//! coordinator drives (never fewer than eight, nor more than `max_batch`). Without that limit the
//! transactions fall into step: every write that arrives while a batch commits joins the next one,
//! so they all wait on the same batch, then all call their participants while the database sits
//! idle, then all write again while the coordinator sits idle. Split in two, one half's batch
//! commits while the other half calls its participants. Two-phase commits, with three awaited
//! writes each, fell into step the most (docs/BENCHMARKS.md, "Batches split in two"). With more
//! than one connection, a further batch starts while another is committing only once `pipeline_min`
//! writes wait: it then executes while the one before it waits for its commit to reach the disk.
//! Fewer writes wait for the running batch and join the next one, because a small batch costs a
//! statement and a commit of its own and saves them little waiting. Writes of one transaction apply
//! in the order they were submitted: a write whose transaction still has a write in a committing
//! batch waits for that batch, and so does every later write of that transaction.
//!
//! A batch shares one statement, so one write the database refuses for its data (a NUL byte in
//! text, an index row too large) fails the statement for every write in it. The writer then
//! applies the batch again in halves, halving each part that is refused again, in batch order, so
//! the writes of other transactions are recorded and only the guilty write is answered
//! [`WriteOutcome::Refused`]. A later write of the guilty transaction finds the history it
//! follows missing and is fenced, as after any failed write.

use std::collections::{HashMap, HashSet, VecDeque};
use std::ops::Range;
use std::sync::Arc;

use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use crate::model::TxId;
use crate::store::{is_data_refusal, LogWrite, StoreError, TxLog, WriteOutcome};

/// Why a write was not recorded.
#[derive(Clone, Debug, thiserror::Error)]
pub enum WriteError {
    /// The batch failed for a reason that may pass (the database unreachable, a lost
    /// connection); nothing of it was written (or, if the commit's answer was lost, the caller
    /// must re-read to know). A write refused for its data is answered
    /// [`WriteOutcome::Refused`] instead.
    #[error("log write failed: {0}")]
    Store(String),
    /// The writer has stopped (shutdown).
    #[error("the log writer has stopped")]
    Closed,
}

struct Pending {
    write: LogWrite,
    done: oneshot::Sender<Result<WriteOutcome, WriteError>>,
}

/// The outcome of a submitted write, once its batch is done.
pub type Ack = oneshot::Receiver<Result<WriteOutcome, WriteError>>;

/// How the log writer batches.
#[derive(Clone, Copy, Debug)]
pub struct WriterOptions {
    /// Batches committing at once, each on a connection of its own.
    pub connections: usize,
    /// Largest batch.
    pub max_batch: usize,
    /// Writes that must wait before a batch starts while another is committing.
    pub pipeline_min: usize,
    /// Writes queued before `submit` waits.
    pub queue_len: usize,
}

/// How many transactions the coordinator drives now (each has at most one write waiting).
pub type Live = Arc<dyn Fn() -> usize + Send + Sync>;

/// The smallest limit a batch is split to (see `Batcher::limit`): under it a split would save
/// less waiting than the second statement and commit cost.
const SPLIT_MIN: usize = 8;

/// A handle to submit writes; cheap to clone.
#[derive(Clone)]
pub struct LogWriter {
    queue: mpsc::Sender<Pending>,
}

impl LogWriter {
    /// Starts the writer task on `tracker`, committing up to `options.connections` batches at
    /// once; it stops when `stop` is cancelled and the queue is drained, or when every handle is
    /// dropped. With `live`, a batch takes at most one write for every two transactions it
    /// counts (see the module doc); without, up to `options.max_batch`.
    pub fn start(
        store: Arc<dyn TxLog>,
        metrics: Arc<super::metrics::Metrics>,
        options: WriterOptions,
        live: Option<Live>,
        tracker: &tokio_util::task::TaskTracker,
        stop: CancellationToken,
    ) -> Self {
        let (queue, rx) = mpsc::channel(options.queue_len.max(1));
        let max_batch = options.max_batch.max(1);
        tracker.spawn(
            Batcher {
                store,
                metrics,
                connections: options.connections.max(1),
                max_batch,
                pipeline_min: options.pipeline_min.clamp(1, max_batch),
                live,
                waiting: VecDeque::new(),
                busy: HashSet::new(),
                running: JoinSet::new(),
                batches: HashMap::new(),
            }
            .run(rx, stop),
        );
        LogWriter { queue }
    }

    /// Submits one write and waits until its batch has committed.
    pub async fn write(&self, write: LogWrite) -> Result<WriteOutcome, WriteError> {
        self.submit(write)
            .await?
            .await
            .map_err(|_| WriteError::Closed)?
    }

    /// Queues one write and returns at once with the receiver of its outcome; writes of one
    /// transaction are applied in submission order.
    pub async fn submit(&self, write: LogWrite) -> Result<Ack, WriteError> {
        let (done, answer) = oneshot::channel();
        self.queue
            .send(Pending { write, done })
            .await
            .map_err(|_| WriteError::Closed)?;
        Ok(answer)
    }
}

fn tx_of(write: &LogWrite) -> TxId {
    match write {
        LogWrite::Create(new) => new.id,
        LogWrite::Update(up) => up.id,
    }
}

struct Batcher {
    store: Arc<dyn TxLog>,
    metrics: Arc<super::metrics::Metrics>,
    connections: usize,
    max_batch: usize,
    pipeline_min: usize,
    live: Option<Live>,
    /// Writes taken from the queue and not yet in a batch, oldest first.
    waiting: VecDeque<Pending>,
    /// Transactions with a write in a running batch.
    busy: HashSet<TxId>,
    running: JoinSet<()>,
    /// The transactions of each running batch, by task.
    batches: HashMap<tokio::task::Id, Vec<TxId>>,
}

impl Batcher {
    async fn run(mut self, mut rx: mpsc::Receiver<Pending>, stop: CancellationToken) {
        let mut closed = false;
        let mut stopping = false;
        loop {
            while self.running.len() < self.connections {
                while self.waiting.len() < self.max_batch {
                    match rx.try_recv() {
                        Ok(item) => self.waiting.push_back(item),
                        Err(_) => break,
                    }
                }
                // Too few to be worth a batch of their own: they join the next one.
                if !self.running.is_empty() && self.waiting.len() < self.pipeline_min {
                    break;
                }
                if !self.start_batch() {
                    break;
                }
            }
            if closed && self.running.is_empty() {
                // Nothing runs, so nothing waits on a busy transaction: the queue is drained.
                return;
            }
            let free = self.running.len() < self.connections;
            tokio::select! {
                biased;
                Some(joined) = self.running.join_next_with_id(), if !self.running.is_empty() => {
                    self.finish(joined.map(|(id, ())| id));
                }
                item = rx.recv(), if free && !closed => match item {
                    Some(item) => self.waiting.push_back(item),
                    None => closed = true,
                },
                // Stop taking new writes but commit what is already queued.
                _ = stop.cancelled(), if !stopping => {
                    stopping = true;
                    rx.close();
                }
            }
        }
    }

    /// Starts a batch of the waiting writes that may go now; `false` if none may.
    fn start_batch(&mut self) -> bool {
        let mut writes = Vec::new();
        let mut done = Vec::new();
        let mut txs = Vec::new();
        // Transactions with a write held back: their later writes stay behind it.
        let mut held: HashSet<TxId> = HashSet::new();
        let mut rest = VecDeque::with_capacity(self.waiting.len());
        let limit = self.limit();
        for item in self.waiting.drain(..) {
            let tx = tx_of(&item.write);
            if writes.len() >= limit || self.busy.contains(&tx) || held.contains(&tx) {
                held.insert(tx);
                rest.push_back(item);
                continue;
            }
            txs.push(tx);
            writes.push(item.write);
            done.push(item.done);
        }
        self.waiting = rest;
        if writes.is_empty() {
            return false;
        }
        txs.sort();
        txs.dedup();
        self.busy.extend(txs.iter().copied());
        let store = self.store.clone();
        let metrics = self.metrics.clone();
        // The batch task answers its writes itself, one wake-up sooner than through this task;
        // their transactions stay busy until it has returned, so a write submitted in answer
        // cannot overtake it.
        let task = self.running.spawn(async move {
            let started = std::time::Instant::now();
            let results = commit(store.as_ref(), &writes).await;
            let micros = started.elapsed().as_micros() as u64;
            metrics.batch(done.len(), micros);
            tracing::trace!(batch = done.len(), micros, "log batch committed");
            for (done, result) in done.into_iter().zip(results) {
                let _ = done.send(result);
            }
        });
        self.batches.insert(task.id(), txs);
        true
    }

    /// The most writes the next batch takes: half the transactions driven (at least
    /// [`SPLIT_MIN`]), so that they move as two groups (see the module doc).
    fn limit(&self) -> usize {
        match &self.live {
            Some(live) => live().div_ceil(2).max(SPLIT_MIN).min(self.max_batch),
            None => self.max_batch,
        }
    }

    /// Frees the transactions of a finished batch.
    fn finish(&mut self, joined: Result<tokio::task::Id, tokio::task::JoinError>) {
        let id = match &joined {
            Ok(id) => *id,
            Err(e) => e.id(),
        };
        for tx in self.batches.remove(&id).unwrap_or_default() {
            self.busy.remove(&tx);
        }
        // A batch task that panicked dropped its answers: their callers see the writer closed.
        if joined.is_err() {
            tracing::error!("a log batch task failed");
        }
    }
}

/// Applies a batch and returns each write's outcome. If the database refused the batch for its
/// data, the batch is applied again in parts (see the module doc): every write but the refused
/// ones is recorded, at the cost of about two statements per halving that leads to one.
async fn commit(store: &dyn TxLog, writes: &[LogWrite]) -> Vec<Result<WriteOutcome, WriteError>> {
    let refusal = match store.apply(writes).await {
        Err(e) if is_data_refusal(&e) => e,
        result => return answers(writes.len(), result),
    };
    tracing::warn!(batch = writes.len(), error = %refusal, "log batch refused for its data; applying it in parts");
    let mut results: Vec<Option<Result<WriteOutcome, WriteError>>> = vec![None; writes.len()];
    // Parts to apply, in batch order, each with the error it is known to fail with.
    let mut parts: VecDeque<(Range<usize>, Option<StoreError>)> =
        VecDeque::from([(0..writes.len(), Some(refusal))]);
    while let Some((range, known)) = parts.pop_front() {
        let result = match known {
            Some(e) => Err(e),
            None => store.apply(&writes[range.clone()]).await,
        };
        match result {
            Err(e) if is_data_refusal(&e) && range.len() > 1 => {
                let mid = range.start + range.len() / 2;
                parts.push_front((mid..range.end, None));
                parts.push_front((range.start..mid, None));
            }
            Err(e) if is_data_refusal(&e) => {
                let guilty = tx_of(&writes[range.start]);
                tracing::warn!(tx_id = %guilty, error = %e, "the database refused a log write for its data");
                results[range.start] = Some(Ok(WriteOutcome::Refused(e.to_string())));
            }
            Err(e) => {
                // The database is failing as a whole now: what is left fails as a batch would.
                tracing::warn!(error = %e, "log batch failed while applied in parts");
                let e = WriteError::Store(e.to_string());
                for slot in results.iter_mut().filter(|r| r.is_none()) {
                    *slot = Some(Err(e.clone()));
                }
                break;
            }
            Ok(outcomes) => {
                let part = answers(range.len(), Ok(outcomes));
                for (slot, outcome) in results[range].iter_mut().zip(part) {
                    *slot = Some(outcome);
                }
            }
        }
    }
    results
        .into_iter()
        .map(|r| r.unwrap_or_else(|| Err(WriteError::Store("no outcome".into()))))
        .collect()
}

/// Each of `n` writes' outcome from the result of applying them together.
fn answers(
    n: usize,
    result: Result<Vec<WriteOutcome>, StoreError>,
) -> Vec<Result<WriteOutcome, WriteError>> {
    match result {
        Ok(outcomes) if outcomes.len() == n => outcomes.into_iter().map(Ok).collect(),
        Ok(outcomes) => {
            let e = WriteError::Store(format!(
                "store returned {} outcomes for {n} writes",
                outcomes.len()
            ));
            vec![Err(e); n]
        }
        Err(e) => {
            let e = WriteError::Store(e.to_string());
            tracing::warn!(error = %e, batch = n, "log batch failed");
            vec![Err(e); n]
        }
    }
}

//! The log writer: one task per coordinator that gathers the log writes of every transaction in
//! flight and commits them together, one database transaction per batch (group commit).
//!
//! A write waits in a bounded queue; the writer takes what is queued (up to `max_batch`) as soon
//! as the previous commit is done, so the batch size adapts to the load by itself: one write
//! alone under no load, hundreds under heavy load. Writes of one transaction are applied in the
//! order they were submitted, because there is one queue and one writer.

use std::sync::Arc;

use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;

use crate::store::{LogWrite, StoreError, TxLog, WriteOutcome};

/// Why a write was not recorded.
#[derive(Clone, Debug, thiserror::Error)]
pub enum WriteError {
    /// The batch failed; nothing of it was written (or, if the commit's answer was lost, the
    /// caller must re-read to know).
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

/// A handle to submit writes; cheap to clone.
///
/// There may be several writer tasks, each with its own queue and connection; a transaction's
/// writes always go to the same one (chosen by its id), which keeps them in order while batches
/// of different transactions commit in parallel.
#[derive(Clone)]
pub struct LogWriter {
    queues: Arc<[mpsc::Sender<Pending>]>,
}

impl LogWriter {
    /// Starts `writers` writer tasks on `tracker`; they stop when `stop` is cancelled and their
    /// queues are drained, or when every handle is dropped.
    pub fn start(
        store: Arc<dyn TxLog>,
        metrics: Arc<super::metrics::Metrics>,
        writers: usize,
        max_batch: usize,
        queue_len: usize,
        tracker: &tokio_util::task::TaskTracker,
        stop: CancellationToken,
    ) -> Self {
        let queues: Vec<_> = (0..writers.max(1))
            .map(|_| {
                let (queue, rx) = mpsc::channel(queue_len.max(1));
                tracker.spawn(run(
                    store.clone(),
                    metrics.clone(),
                    rx,
                    max_batch.max(1),
                    stop.clone(),
                ));
                queue
            })
            .collect();
        LogWriter {
            queues: queues.into(),
        }
    }

    /// Submits one write and waits until its batch has committed.
    pub async fn write(&self, write: LogWrite) -> Result<WriteOutcome, WriteError> {
        self.submit(write)
            .await?
            .await
            .map_err(|_| WriteError::Closed)?
    }

    /// Queues one write and returns at once with the receiver of its outcome; writes are applied
    /// in submission order.
    pub async fn submit(&self, write: LogWrite) -> Result<Ack, WriteError> {
        let (done, answer) = oneshot::channel();
        let id = match &write {
            LogWrite::Create(new) => new.id,
            LogWrite::Update(up) => up.id,
        };
        // UUID v7: the low bits are random, so this spreads transactions evenly.
        let queue = &self.queues[(id.0.as_u128() % self.queues.len() as u128) as usize];
        queue
            .send(Pending { write, done })
            .await
            .map_err(|_| WriteError::Closed)?;
        Ok(answer)
    }
}

async fn run(
    store: Arc<dyn TxLog>,
    metrics: Arc<super::metrics::Metrics>,
    mut rx: mpsc::Receiver<Pending>,
    max_batch: usize,
    stop: CancellationToken,
) {
    let mut writes: Vec<LogWrite> = Vec::with_capacity(max_batch);
    let mut batch: Vec<oneshot::Sender<Result<WriteOutcome, WriteError>>> =
        Vec::with_capacity(max_batch);
    loop {
        let first = tokio::select! {
            biased;
            item = rx.recv() => item,
            _ = stop.cancelled() => {
                // Stop taking new writes but commit what is already queued.
                rx.close();
                rx.recv().await
            }
        };
        let Some(first) = first else { return };
        writes.push(first.write);
        batch.push(first.done);
        while batch.len() < max_batch {
            match rx.try_recv() {
                Ok(item) => {
                    writes.push(item.write);
                    batch.push(item.done);
                }
                Err(_) => break,
            }
        }
        let started = std::time::Instant::now();
        let result = store.apply(&writes).await;
        writes.clear();
        metrics.batch(batch.len(), started.elapsed().as_micros() as u64);
        tracing::trace!(
            batch = batch.len(),
            micros = started.elapsed().as_micros() as u64,
            "log batch committed"
        );
        match result {
            Ok(outcomes) if outcomes.len() == batch.len() => {
                for (done, outcome) in batch.drain(..).zip(outcomes) {
                    let _ = done.send(Ok(outcome));
                }
            }
            Ok(outcomes) => {
                let e = WriteError::Store(format!(
                    "store returned {} outcomes for {} writes",
                    outcomes.len(),
                    batch.len()
                ));
                fail_all(&mut batch, e);
            }
            Err(e) => {
                let e = describe(e);
                tracing::warn!(error = %e, batch = batch.len(), "log batch failed");
                fail_all(&mut batch, e);
            }
        }
    }
}

fn describe(e: StoreError) -> WriteError {
    WriteError::Store(e.to_string())
}

fn fail_all(batch: &mut Vec<oneshot::Sender<Result<WriteOutcome, WriteError>>>, e: WriteError) {
    for done in batch.drain(..) {
        let _ = done.send(Err(e.clone()));
    }
}

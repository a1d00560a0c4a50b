//! Retention: finished transactions are deleted, with their branches and events, once they have
//! been finished for the retention period, so the log stays the size of its recent history.
//!
//! A sweep deletes in small batches ([`Retention::purge_finished`]), each its own short database
//! transaction, with a pause between them so the log writers are never starved; it goes on until
//! a batch comes back short. Only final outcomes (committed, compensated, aborted) are deleted:
//! a `failed` transaction waits for an operator and an unfinished one is being driven, so
//! neither is ever touched. Every coordinator sweeps; on PostgreSQL concurrent sweeps skip each
//! other's rows instead of waiting. The same loop serves the operator's on-demand purge.

use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use super::metrics::Metrics;
use super::Coordinator;
use crate::store::{Retention, StoreError};

/// Pause between two batches of one sweep: room for the log writers' commits.
pub const BATCH_PAUSE: Duration = Duration::from_millis(20);

/// Default retention of finished transactions.
pub const DEFAULT_RETENTION: Duration = Duration::from_secs(7 * 24 * 3600);
/// Default time between two sweeps.
pub const DEFAULT_SWEEP_INTERVAL: Duration = Duration::from_secs(60);
/// Default transactions deleted per batch.
pub const DEFAULT_BATCH: u32 = 500;

/// Deletes finished transactions older than `older_than`, `batch` at a time with
/// [`BATCH_PAUSE`] between batches, until a batch comes back short or `stop` is cancelled.
/// Returns how many were deleted (every batch also counts in `metrics`, so an error after some
/// batches loses nothing there).
pub async fn purge(
    store: &dyn Retention,
    metrics: &Metrics,
    older_than: Duration,
    batch: u32,
    stop: &CancellationToken,
) -> Result<u64, StoreError> {
    let batch = batch.max(1);
    let mut total = 0;
    loop {
        let n = store.purge_finished(older_than, batch).await?;
        metrics.purged(n);
        total += n;
        if n < u64::from(batch) {
            return Ok(total);
        }
        tokio::select! {
            _ = stop.cancelled() => return Ok(total),
            _ = tokio::time::sleep(BATCH_PAUSE) => {}
        }
    }
}

/// The background sweep: every `retention_sweep_interval`, purges what is older than
/// `retention`, until `stop`. Errors are logged and the next interval tries again.
pub(super) async fn sweep(co: Arc<Coordinator>, retention: Duration, stop: CancellationToken) {
    let config = co.config();
    let mut tick = tokio::time::interval(config.retention_sweep_interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tick.tick() => {}
        }
        // Without a lease the database is not answering; the next tick tries again.
        if !co.is_ready() {
            continue;
        }
        match purge(
            co.store().as_ref(),
            co.metrics(),
            retention,
            config.retention_batch,
            &stop,
        )
        .await
        {
            Ok(0) => {}
            Ok(purged) => tracing::info!(purged, "retention sweep deleted finished transactions"),
            Err(e) => tracing::warn!(error = %e, "retention sweep failed; retrying next interval"),
        }
    }
}

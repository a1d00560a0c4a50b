//! Client connections bounded: the gRPC and HTTP ports share `--max-client-connections` places,
//! one per open connection. A connection that arrives when every place is taken is closed at
//! once, before anything is read from it, so a flood of connections costs the coordinator a
//! file descriptor for a moment each instead of the descriptors its database connections and
//! participant calls need. Without the bound, connections were limited only by the process's
//! open-file limit, and a coordinator that reached it could no longer open anything else.
//!
//! A place is taken when the connection is accepted (on a TLS port, once its handshake is done:
//! the handshakes in progress are bounded apart, see `baton_tx::tls::TlsIncoming`) and given
//! back when the connection closes.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::gauge::Gauge;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::coordinator::metrics::Metrics;

/// How often a refused connection is logged at most; the counter has them all.
const WARN_EVERY: Duration = Duration::from_secs(10);

/// The places of one coordinator's client connections.
pub(crate) struct Admission {
    places: Arc<Semaphore>,
    max: usize,
    open: Gauge,
    refused: Counter,
    /// When a refusal was last logged, and how many refusals have not been.
    warned: Mutex<(Option<Instant>, u64)>,
}

/// One connection's place, given back when it is dropped with the connection.
pub(crate) struct Place {
    _permit: OwnedSemaphorePermit,
    open: Gauge,
}

impl Drop for Place {
    fn drop(&mut self) {
        self.open.dec();
    }
}

impl Admission {
    /// `max` places (at least one), counted in `metrics`.
    pub(crate) fn new(max: usize, metrics: &Metrics) -> Arc<Self> {
        let max = max.clamp(1, Semaphore::MAX_PERMITS);
        let (open, refused) = metrics.connection_metrics();
        Arc::new(Admission {
            places: Arc::new(Semaphore::new(max)),
            max,
            open,
            refused,
            warned: Mutex::new((None, 0)),
        })
    }

    /// A place for a connection just accepted, or `None` when every place is taken: the caller
    /// then drops (closes) the connection.
    pub(crate) fn admit(&self) -> Option<Place> {
        match self.places.clone().try_acquire_owned() {
            Ok(permit) => {
                self.open.inc();
                Some(Place {
                    _permit: permit,
                    open: self.open.clone(),
                })
            }
            Err(_) => {
                self.refused.inc();
                self.log_refusal();
                None
            }
        }
    }

    fn log_refusal(&self) {
        let mut warned = self.warned.lock().unwrap_or_else(|e| e.into_inner());
        let (last, unlogged) = &mut *warned;
        *unlogged += 1;
        if last.is_some_and(|at| at.elapsed() < WARN_EVERY) {
            return;
        }
        tracing::warn!(
            max_client_connections = self.max,
            refused = *unlogged,
            "client connections closed on arrival: every place is taken \
             (--max-client-connections); baton_client_connections_refused counts them all"
        );
        *last = Some(Instant::now());
        *unlogged = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn places_are_counted_and_given_back() {
        let metrics = Metrics::default();
        let admission = Admission::new(2, &metrics);
        let first = admission.admit().expect("a first place");
        let second = admission.admit().expect("a second place");
        assert!(admission.admit().is_none(), "a third connection is refused");
        let (open, refused) = metrics.connection_metrics();
        assert_eq!((open.get(), refused.get()), (2, 1));
        drop(first);
        assert_eq!(open.get(), 1);
        let third = admission
            .admit()
            .expect("the place given back is taken again");
        drop((second, third));
        assert_eq!((open.get(), refused.get()), (0, 1));
    }
}

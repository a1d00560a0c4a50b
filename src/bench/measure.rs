//! The closed loop's bookkeeping: the warm-up and measured window, per-client latency recording,
//! and the statistics taken from it.

use std::time::Duration;

use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

/// The longest one transaction may take before the client gives up on it and counts an error, so
/// that a stuck coordinator cannot keep the loop from ending.
pub const CALL_TIMEOUT: Duration = Duration::from_secs(30);

/// Keep the text of this many errors per cell, to show what went wrong.
const ERROR_SAMPLES: usize = 3;

/// How long to warm up and how long to measure.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Timing {
    pub warmup: Duration,
    pub duration: Duration,
}

/// The measured window of one cell, fixed once every client is connected.
#[derive(Clone, Copy, Debug)]
pub struct Window {
    /// End of the warm-up: transactions finishing from here on count.
    pub start: Instant,
    /// No client starts a transaction after this, and none finishing later counts.
    pub end: Instant,
}

impl Timing {
    /// The window of a loop whose clients start now.
    pub fn window_from_now(&self) -> Window {
        let start = Instant::now() + self.warmup;
        Window {
            start,
            end: start + self.duration,
        }
    }
}

/// One client's record of its transactions.
#[derive(Debug)]
pub struct Recorder {
    window: Window,
    latencies: Vec<Duration>,
    errors: u64,
    error_samples: Vec<String>,
}

impl Recorder {
    pub fn new(window: Window) -> Self {
        Recorder {
            window,
            latencies: Vec::new(),
            errors: 0,
            error_samples: Vec::new(),
        }
    }

    /// Whether the client should start another transaction.
    pub fn open(&self, cancel: &CancellationToken) -> bool {
        !cancel.is_cancelled() && Instant::now() < self.window.end
    }

    /// Records a transaction started at `started` that has just ended with `outcome`; it counts
    /// only if it ended inside the window.
    pub fn record(&mut self, started: Instant, outcome: Result<(), String>) {
        let ended = Instant::now();
        if ended < self.window.start || ended > self.window.end {
            return;
        }
        match outcome {
            Ok(()) => self.latencies.push(ended - started),
            Err(error) => {
                self.errors += 1;
                if self.error_samples.len() < ERROR_SAMPLES {
                    self.error_samples.push(error);
                }
            }
        }
    }
}

/// Every client's records of one cell, merged.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Sample {
    /// Latencies of the transactions that ended as expected, sorted ascending.
    pub latencies: Vec<Duration>,
    pub errors: u64,
    pub error_samples: Vec<String>,
    /// The measured window's length.
    pub window: Duration,
}

impl Sample {
    /// Merges the clients' records.
    pub fn merge(recorders: impl IntoIterator<Item = Recorder>, window: Duration) -> Self {
        let mut sample = Sample {
            window,
            ..Sample::default()
        };
        for r in recorders {
            sample.latencies.extend(r.latencies);
            sample.errors += r.errors;
            for e in r.error_samples {
                if sample.error_samples.len() < ERROR_SAMPLES {
                    sample.error_samples.push(e);
                }
            }
        }
        sample.latencies.sort_unstable();
        sample
    }

    /// Transactions that ended as expected inside the window.
    pub fn count(&self) -> u64 {
        self.latencies.len() as u64
    }

    /// Good transactions per second of window.
    pub fn throughput(&self) -> f64 {
        let secs = self.window.as_secs_f64();
        if secs > 0.0 {
            self.count() as f64 / secs
        } else {
            0.0
        }
    }

    /// The `q` quantile (0 < q ≤ 1) of the latencies, in milliseconds; 0 with no transactions.
    pub fn percentile_ms(&self, q: f64) -> f64 {
        percentile(&self.latencies, q).map_or(0.0, |d| d.as_secs_f64() * 1e3)
    }

    /// The largest latency in milliseconds; 0 with no transactions.
    pub fn max_ms(&self) -> f64 {
        self.latencies.last().map_or(0.0, |d| d.as_secs_f64() * 1e3)
    }
}

/// The nearest-rank `q` quantile of ascending `sorted`: the smallest value with at least a share
/// `q` of all values at or below it. `None` when empty.
pub fn percentile(sorted: &[Duration], q: f64) -> Option<Duration> {
    if sorted.is_empty() {
        return None;
    }
    let q = q.clamp(0.0, 1.0);
    let rank = (q * sorted.len() as f64).ceil() as usize;
    Some(sorted[rank.clamp(1, sorted.len()) - 1])
}

/// Parses a duration such as `15s`, `500ms` or `1.5s` (a bare number is seconds).
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    let (number, scale) = if let Some(n) = text.strip_suffix("ms") {
        (n, 1e-3)
    } else if let Some(n) = text.strip_suffix('s') {
        (n, 1.0)
    } else {
        (text, 1.0)
    };
    let value: f64 = number
        .trim()
        .parse()
        .map_err(|_| format!("{text:?}: expected a duration such as 15s or 500ms"))?;
    if !value.is_finite() || value < 0.0 {
        return Err(format!(
            "{text:?}: a duration must be a non-negative number"
        ));
    }
    Duration::try_from_secs_f64(value * scale).map_err(|e| format!("{text:?}: {e}"))
}

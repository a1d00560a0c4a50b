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

/// Latencies as a fixed-size log-linear histogram, so that a long run's memory stays flat: exact
/// below 128 µs, then 64 buckets per power of two (each within 1/64 ≈ 1.6% of its values). Each
/// bucket also keeps the largest value it saw, which is what a quantile reports: exact when the
/// quantile's value is the largest in its bucket, else at most 1.6% above it.
#[derive(Clone, Debug, PartialEq)]
pub struct Latencies {
    counts: Vec<u64>,
    largest: Vec<u64>,
    total: u64,
}

/// Values below this many µs get a bucket each.
const EXACT: u64 = 128;
/// Buckets per power of two above [`EXACT`] (a power of two itself).
const SUB: u64 = 64;
/// Powers of two covered above [`EXACT`]: up to 2^47 µs, about four years.
const OCTAVES: u64 = 40;

impl Default for Latencies {
    fn default() -> Self {
        let buckets = (EXACT + OCTAVES * SUB) as usize;
        Latencies {
            counts: vec![0; buckets],
            largest: vec![0; buckets],
            total: 0,
        }
    }
}

impl Latencies {
    fn bucket(micros: u64) -> usize {
        if micros < EXACT {
            return micros as usize;
        }
        let octave = u64::from(63 - micros.leading_zeros()); // floor(log2), at least 7
        let sub = (micros >> (octave - SUB.trailing_zeros() as u64)) & (SUB - 1);
        let index = EXACT + (octave - EXACT.trailing_zeros() as u64) * SUB + sub;
        index.min(EXACT + OCTAVES * SUB - 1) as usize
    }

    pub fn record(&mut self, latency: Duration) {
        let micros = u64::try_from(latency.as_micros()).unwrap_or(u64::MAX);
        let b = Self::bucket(micros);
        self.counts[b] += 1;
        self.largest[b] = self.largest[b].max(micros);
        self.total += 1;
    }

    pub fn merge(&mut self, other: &Latencies) {
        for (b, &n) in other.counts.iter().enumerate() {
            self.counts[b] += n;
            self.largest[b] = self.largest[b].max(other.largest[b]);
        }
        self.total += other.total;
    }

    pub fn count(&self) -> u64 {
        self.total
    }

    /// The nearest-rank `q` quantile: the smallest value with at least a share `q` of all values
    /// at or below it (to the histogram's precision). `None` when empty.
    pub fn quantile(&self, q: f64) -> Option<Duration> {
        if self.total == 0 {
            return None;
        }
        let rank = ((q.clamp(0.0, 1.0) * self.total as f64).ceil() as u64).clamp(1, self.total);
        let mut seen = 0;
        for (b, &n) in self.counts.iter().enumerate() {
            seen += n;
            if seen >= rank {
                return Some(Duration::from_micros(self.largest[b]));
            }
        }
        None
    }

    /// The largest latency recorded.
    pub fn max(&self) -> Option<Duration> {
        self.quantile(1.0)
    }
}

impl FromIterator<Duration> for Latencies {
    fn from_iter<I: IntoIterator<Item = Duration>>(iter: I) -> Self {
        let mut all = Latencies::default();
        for d in iter {
            all.record(d);
        }
        all
    }
}

/// One client's record of its transactions.
#[derive(Debug)]
pub struct Recorder {
    window: Window,
    latencies: Latencies,
    errors: u64,
    error_samples: Vec<String>,
}

impl Recorder {
    pub fn new(window: Window) -> Self {
        Recorder {
            window,
            latencies: Latencies::default(),
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
            Ok(()) => self.latencies.record(ended - started),
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
    /// Latencies of the transactions that ended as expected.
    pub latencies: Latencies,
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
            // The clients share one window: theirs adds nothing to its length.
            sample.add(Sample {
                latencies: r.latencies,
                errors: r.errors,
                error_samples: r.error_samples,
                window: Duration::ZERO,
            });
        }
        sample
    }

    /// Adds another sample (a client's, or a later slice of the same cell): latencies, errors and
    /// the windows' lengths add up.
    pub fn add(&mut self, other: Sample) {
        self.latencies.merge(&other.latencies);
        self.errors += other.errors;
        for e in other.error_samples {
            if self.error_samples.len() < ERROR_SAMPLES {
                self.error_samples.push(e);
            }
        }
        self.window += other.window;
    }

    /// Transactions that ended as expected inside the window.
    pub fn count(&self) -> u64 {
        self.latencies.count()
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
        self.latencies
            .quantile(q)
            .map_or(0.0, |d| d.as_secs_f64() * 1e3)
    }

    /// The largest latency in milliseconds; 0 with no transactions.
    pub fn max_ms(&self) -> f64 {
        self.latencies.max().map_or(0.0, |d| d.as_secs_f64() * 1e3)
    }
}

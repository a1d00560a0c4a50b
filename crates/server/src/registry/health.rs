//! Passive health checking: an endpoint whose calls fail at the transport level several times in
//! a row is ejected (passed over by the balancer) for a while, longer each time, and tried again
//! after. Pure code over instants the caller passes in, so tests need no sleeping.

use std::time::{Duration, Instant};

/// When an endpoint is ejected and for how long.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct HealthConfig {
    /// Consecutive transport failures that eject an endpoint; 0 disables ejection.
    pub eject_after: u32,
    /// Length of the first ejection; each ejection that follows without a success in between
    /// lasts twice the one before.
    pub base_ejection: Duration,
    /// Longest ejection.
    pub max_ejection: Duration,
}

impl Default for HealthConfig {
    fn default() -> Self {
        HealthConfig {
            eject_after: 3,
            base_ejection: Duration::from_secs(1),
            max_ejection: Duration::from_secs(30),
        }
    }
}

/// One endpoint's health.
#[derive(Clone, Debug, Default)]
pub struct Health {
    /// Transport failures since the last success (or since the last ejection ended).
    failures: u32,
    /// Ejections since the last success; sets the next ejection's length.
    ejections: u32,
    ejected_until: Option<Instant>,
}

impl Health {
    /// Whether the balancer should pass this endpoint over at `now`.
    pub fn is_ejected(&self, now: Instant) -> bool {
        self.ejected_until.is_some_and(|until| now < until)
    }

    /// When the ejection in force at `now` ends; `None` when the endpoint is not ejected.
    pub fn ejected_until(&self, now: Instant) -> Option<Instant> {
        self.ejected_until.filter(|until| now < *until)
    }

    /// A call reached the endpoint and it answered (whatever the answer): it is healthy again.
    pub fn succeeded(&mut self) {
        *self = Health::default();
    }

    /// A call failed at the transport level at `now`. Returns the ejection it caused, if any.
    ///
    /// After an ejection ends the endpoint is on probation: one more failure (before any
    /// success) ejects it again, for twice as long, so a dead endpoint costs one failed call per
    /// ejection period rather than `eject_after`. Failures of calls sent before the ejection that
    /// arrive during it are ignored: they say nothing new.
    pub fn failed(&mut self, now: Instant, config: &HealthConfig) -> Option<Duration> {
        if config.eject_after == 0 || self.is_ejected(now) {
            return None;
        }
        self.failures += 1;
        let needed = if self.ejections > 0 {
            1
        } else {
            config.eject_after
        };
        if self.failures < needed {
            return None;
        }
        let factor = 1u32.checked_shl(self.ejections.min(31)).unwrap_or(u32::MAX);
        let length = config
            .base_ejection
            .saturating_mul(factor)
            .min(config.max_ejection);
        self.ejections = self.ejections.saturating_add(1);
        self.failures = 0;
        self.ejected_until = Some(now + length);
        Some(length)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config() -> HealthConfig {
        HealthConfig {
            eject_after: 3,
            base_ejection: Duration::from_millis(100),
            max_ejection: Duration::from_millis(350),
        }
    }

    #[test]
    fn three_failures_eject_with_doubling_capped_length() {
        let c = config();
        let t0 = Instant::now();
        let mut h = Health::default();
        assert_eq!(h.failed(t0, &c), None);
        assert_eq!(h.failed(t0, &c), None);
        assert!(!h.is_ejected(t0));
        assert_eq!(h.failed(t0, &c), Some(Duration::from_millis(100)));
        assert!(h.is_ejected(t0 + Duration::from_millis(99)));
        // Late failures of calls already in flight do not extend the ejection.
        assert_eq!(h.failed(t0 + Duration::from_millis(50), &c), None);
        let t1 = t0 + Duration::from_millis(100);
        assert!(!h.is_ejected(t1), "tried again after the ejection");
        // On probation: one failure ejects again, twice as long, up to the cap.
        assert_eq!(h.failed(t1, &c), Some(Duration::from_millis(200)));
        let t2 = t1 + Duration::from_millis(200);
        assert!(h.is_ejected(t2 - Duration::from_millis(1)));
        assert_eq!(h.failed(t2, &c), Some(Duration::from_millis(350)));
        let t3 = t2 + Duration::from_millis(350);
        assert_eq!(h.failed(t3, &c), Some(Duration::from_millis(350)));
    }

    #[test]
    fn success_resets() {
        let c = config();
        let t0 = Instant::now();
        let mut h = Health::default();
        h.failed(t0, &c);
        h.failed(t0, &c);
        h.succeeded();
        assert_eq!(
            h.failed(t0, &c),
            None,
            "the count starts over after a success"
        );
        h.failed(t0, &c);
        assert!(h.failed(t0, &c).is_some());
        let later = t0 + Duration::from_millis(100);
        h.succeeded();
        assert!(!h.is_ejected(later));
        // A success also forgets past ejections: the next one is short again and needs three.
        assert_eq!(h.failed(later, &c), None);
        h.failed(later, &c);
        assert_eq!(h.failed(later, &c), Some(Duration::from_millis(100)));
    }

    #[test]
    fn zero_disables_ejection() {
        let c = HealthConfig {
            eject_after: 0,
            ..config()
        };
        let mut h = Health::default();
        let now = Instant::now();
        for _ in 0..100 {
            assert_eq!(h.failed(now, &c), None);
        }
        assert!(!h.is_ejected(now));
    }
}

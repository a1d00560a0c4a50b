//! Load-balancing policies: which of a service's endpoints the next call goes to.
//!
//! Pure code: a [`Balancer`] sees the endpoint list, each endpoint's in-flight count and whether
//! it is ejected, and returns an index. The registry owns the network, the clock and the health
//! bookkeeping; everything here is deterministic given its inputs (except `random`), so it is
//! where the property tests live.

use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;

use rand::Rng;

/// How a service's calls are spread over its endpoints (`--policy service=NAME`).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub enum Policy {
    /// Each endpoint in turn.
    #[default]
    RoundRobin,
    /// Smooth weighted round robin (the nginx algorithm) over the registered weights: shares
    /// follow the weights and a heavy endpoint's turns are spread out rather than bunched.
    Weighted,
    /// A uniformly random endpoint.
    Random,
    /// The endpoint with the fewest calls in flight from this coordinator; ties go round robin.
    LeastOutstanding,
    /// A hash ring with virtual nodes over a key, so that every call with the same key lands on
    /// the same endpoint while the endpoint set is unchanged, and a change moves few keys.
    ConsistentHash {
        /// Hash this transaction label's value; `None` (or a transaction without the label)
        /// hashes the transaction id, which keeps all branches of a transaction together.
        label: Option<String>,
    },
}

/// A policy name that is not one of the known ones.
#[derive(Debug, thiserror::Error)]
#[error("unknown load-balancing policy {0:?} (expected round_robin, weighted, random, least_outstanding, consistent_hash or consistent_hash:label=NAME)")]
pub struct UnknownPolicy(pub String);

impl FromStr for Policy {
    type Err = UnknownPolicy;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let policy = match text.trim() {
            "round_robin" => Policy::RoundRobin,
            "weighted" => Policy::Weighted,
            "random" => Policy::Random,
            "least_outstanding" => Policy::LeastOutstanding,
            "consistent_hash" => Policy::ConsistentHash { label: None },
            other => match other
                .strip_prefix("consistent_hash:label=")
                .filter(|l| !l.is_empty())
            {
                Some(label) => Policy::ConsistentHash {
                    label: Some(label.to_string()),
                },
                None => return Err(UnknownPolicy(text.to_string())),
            },
        };
        Ok(policy)
    }
}

impl fmt::Display for Policy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Policy::RoundRobin => f.write_str("round_robin"),
            Policy::Weighted => f.write_str("weighted"),
            Policy::Random => f.write_str("random"),
            Policy::LeastOutstanding => f.write_str("least_outstanding"),
            Policy::ConsistentHash { label: None } => f.write_str("consistent_hash"),
            Policy::ConsistentHash { label: Some(l) } => write!(f, "consistent_hash:label={l}"),
        }
    }
}

/// What a policy may use to route one call.
#[derive(Clone, Copy, Debug)]
pub struct PickKey<'a> {
    /// The transaction the call belongs to, as text (its canonical UUID form).
    pub tx_id: &'a str,
    /// The transaction's labels.
    pub labels: &'a BTreeMap<String, String>,
}

/// One endpoint as a policy sees it at the moment of a pick.
#[derive(Clone, Copy, Debug)]
pub struct Candidate<'a> {
    /// The endpoint URL; the hash ring places it by this.
    pub url: &'a str,
    /// Registered weight (at least 1 is assumed; 0 counts as 1).
    pub weight: u32,
    /// Calls to this endpoint in flight now.
    pub in_flight: usize,
    /// False while the endpoint is ejected for failing.
    pub healthy: bool,
}

/// Virtual nodes per unit of weight on the hash ring: enough that each endpoint's share is
/// within a few percent of fair, few enough that rebuilding the ring on a change is cheap.
pub const VNODES: u32 = 128;
/// Weights above this are clamped on the ring, which bounds its size.
const MAX_RING_WEIGHT: u32 = 16;

/// A policy with its state for one service's endpoint list.
#[derive(Debug)]
pub struct Balancer {
    policy: Policy,
    /// Round-robin position; also breaks ties for least outstanding.
    next: usize,
    /// Smooth weighted round robin's current weights, by endpoint URL.
    current: BTreeMap<String, i64>,
    /// The ring, with the endpoints and weights it was built from.
    ring: Option<(Vec<(String, u32)>, Ring)>,
}

impl Balancer {
    /// A balancer with fresh state.
    pub fn new(policy: Policy) -> Self {
        Balancer {
            policy,
            next: 0,
            current: BTreeMap::new(),
            ring: None,
        }
    }

    /// The policy it applies.
    pub fn policy(&self) -> &Policy {
        &self.policy
    }

    /// The index into `candidates` of the endpoint the next call goes to, or `None` when there
    /// are no candidates. Ejected endpoints are passed over unless every endpoint is ejected:
    /// then all are eligible again, because a call that may fail beats refusing every call.
    pub fn pick(&mut self, candidates: &[Candidate<'_>], key: &PickKey<'_>) -> Option<usize> {
        if candidates.is_empty() {
            return None;
        }
        let all_down = candidates.iter().all(|c| !c.healthy);
        let eligible = |c: &Candidate<'_>| all_down || c.healthy;
        match &self.policy {
            Policy::RoundRobin => {
                let up: Vec<usize> = (0..candidates.len())
                    .filter(|&i| eligible(&candidates[i]))
                    .collect();
                let i = up[self.next % up.len()];
                self.next = self.next.wrapping_add(1);
                Some(i)
            }
            Policy::Weighted => Some(self.smooth_weighted(candidates, &eligible)),
            Policy::Random => {
                let up: Vec<usize> = (0..candidates.len())
                    .filter(|&i| eligible(&candidates[i]))
                    .collect();
                Some(up[rand::thread_rng().gen_range(0..up.len())])
            }
            Policy::LeastOutstanding => {
                let n = candidates.len();
                let start = self.next % n;
                self.next = self.next.wrapping_add(1);
                // Scanning from a rotating start gives ties to each endpoint in turn.
                (0..n)
                    .map(|k| (start + k) % n)
                    .filter(|&i| eligible(&candidates[i]))
                    .min_by_key(|&i| candidates[i].in_flight)
            }
            Policy::ConsistentHash { label } => {
                let text = label
                    .as_ref()
                    .and_then(|l| key.labels.get(l))
                    .map(String::as_str)
                    .unwrap_or(key.tx_id);
                let hash = stable_hash(text.as_bytes());
                let rebuild = match &self.ring {
                    Some((built, _)) => !built
                        .iter()
                        .map(|(u, w)| (u.as_str(), *w))
                        .eq(candidates.iter().map(|c| (c.url, c.weight))),
                    None => true,
                };
                if rebuild {
                    let ring = Ring::new(candidates.iter().map(|c| (c.url, c.weight)));
                    let built = candidates
                        .iter()
                        .map(|c| (c.url.to_string(), c.weight))
                        .collect();
                    self.ring = Some((built, ring));
                }
                let (_, ring) = self.ring.as_ref()?;
                ring.lookup(hash, |i| eligible(&candidates[i]))
            }
        }
    }

    /// nginx's smooth weighted round robin: every eligible endpoint gains its weight, the
    /// largest current weight wins and pays back the total. Over any window of `total` picks
    /// each endpoint gets exactly its weight, interleaved.
    fn smooth_weighted(
        &mut self,
        candidates: &[Candidate<'_>],
        eligible: &dyn Fn(&Candidate<'_>) -> bool,
    ) -> usize {
        // Endpoints that left the list take their state with them.
        self.current
            .retain(|url, _| candidates.iter().any(|c| c.url == url));
        let mut total = 0i64;
        let mut best: Option<(usize, i64)> = None;
        for (i, c) in candidates.iter().enumerate() {
            if !eligible(c) {
                continue;
            }
            let weight = i64::from(c.weight.max(1));
            total += weight;
            let current = self.current.entry(c.url.to_string()).or_insert(0);
            *current += weight;
            if best.is_none_or(|(_, b)| *current > b) {
                best = Some((i, *current));
            }
        }
        // `eligible` admits at least one candidate, so `best` is set.
        let (i, _) = best.unwrap_or((0, 0));
        if let Some(current) = self.current.get_mut(candidates[i].url) {
            *current -= total;
        }
        i
    }
}

/// A consistent-hash ring: `VNODES` points per unit of weight, each owned by one endpoint.
#[derive(Debug)]
pub struct Ring {
    /// (point, endpoint index), sorted by point.
    points: Vec<(u64, usize)>,
}

impl Ring {
    /// A ring over `endpoints` (URL and weight); indexes in lookups are positions in it.
    pub fn new<'a>(endpoints: impl IntoIterator<Item = (&'a str, u32)>) -> Self {
        let mut points = Vec::new();
        for (index, (url, weight)) in endpoints.into_iter().enumerate() {
            let nodes = VNODES * weight.clamp(1, MAX_RING_WEIGHT);
            for v in 0..nodes {
                // Points depend only on the URL, so an endpoint keeps its arcs when others come
                // and go: that is what keeps the number of moved keys small.
                points.push((stable_hash(format!("{url}#{v}").as_bytes()), index));
            }
        }
        points.sort_unstable();
        Ring { points }
    }

    /// The first eligible endpoint at or after `hash` going round the ring. Skipping ejected
    /// endpoints this way sends their keys to their ring successors and leaves all other keys
    /// where they were.
    pub fn lookup(&self, hash: u64, eligible: impl Fn(usize) -> bool) -> Option<usize> {
        let start = self.points.partition_point(|&(p, _)| p < hash);
        let n = self.points.len();
        (0..n)
            .map(|k| self.points[(start + k) % n].1)
            .find(|&i| eligible(i))
    }
}

/// FNV-1a (64-bit) followed by the murmur3 finaliser. Stable across processes, builds and
/// platforms (unlike `DefaultHasher`), so two coordinators place a key on the same endpoint; the
/// finaliser spreads FNV's similar outputs for similar inputs (`url#1`, `url#2`) over the ring.
pub fn stable_hash(bytes: &[u8]) -> u64 {
    const OFFSET: u64 = 0xcbf2_9ce4_8422_2325;
    const PRIME: u64 = 0x0000_0100_0000_01b3;
    let mut h = OFFSET;
    for &b in bytes {
        h ^= u64::from(b);
        h = h.wrapping_mul(PRIME);
    }
    h ^= h >> 33;
    h = h.wrapping_mul(0xff51_afd7_ed55_8ccd);
    h ^= h >> 33;
    h = h.wrapping_mul(0xc4ce_b9fe_1a85_ec53);
    h ^ (h >> 33)
}

#[cfg(test)]
mod tests;

use std::collections::{BTreeMap, HashMap};

use proptest::prelude::*;

use super::*;

fn urls(n: usize) -> Vec<String> {
    (0..n)
        .map(|i| format!("http://127.0.0.1:{}", 9000 + i))
        .collect()
}

fn up<'a>(urls: &'a [String], weights: &[u32]) -> Vec<Candidate<'a>> {
    urls.iter()
        .zip(weights)
        .map(|(url, &weight)| Candidate {
            url,
            weight,
            in_flight: 0,
            healthy: true,
        })
        .collect()
}

fn key<'a>(tx: &'a str, labels: &'a BTreeMap<String, String>) -> PickKey<'a> {
    PickKey { tx_id: tx, labels }
}

#[test]
fn policies_parse_and_print() {
    for text in [
        "round_robin",
        "weighted",
        "random",
        "least_outstanding",
        "consistent_hash",
        "consistent_hash:label=customer",
    ] {
        let policy: Policy = text.parse().unwrap();
        assert_eq!(policy.to_string(), text);
    }
    assert!("roundrobin".parse::<Policy>().is_err());
    assert!("consistent_hash:label=".parse::<Policy>().is_err());
    assert_eq!(Policy::default(), Policy::RoundRobin);
}

#[test]
fn smooth_weighted_matches_nginx_sequence() {
    let u = vec!["a".to_string(), "b".to_string(), "c".to_string()];
    let c = up(&u, &[5, 1, 1]);
    let labels = BTreeMap::new();
    let mut b = Balancer::new(Policy::Weighted);
    let seq: String = (0..14)
        .map(|_| u[b.pick(&c, &key("t", &labels)).unwrap()].clone())
        .collect();
    assert_eq!(seq, "aabacaaaabacaa");
}

#[test]
fn least_outstanding_prefers_idle_and_rotates_ties() {
    let u = urls(3);
    let labels = BTreeMap::new();
    let mut c = up(&u, &[1, 1, 1]);
    c[0].in_flight = 4;
    c[1].in_flight = 0;
    c[2].in_flight = 2;
    let mut b = Balancer::new(Policy::LeastOutstanding);
    for _ in 0..10 {
        assert_eq!(b.pick(&c, &key("t", &labels)), Some(1));
    }
    // All idle: each in turn.
    let c = up(&u, &[1, 1, 1]);
    let picks: Vec<usize> = (0..6)
        .map(|_| b.pick(&c, &key("t", &labels)).unwrap())
        .collect();
    let mut counts = [0; 3];
    for p in picks {
        counts[p] += 1;
    }
    assert_eq!(counts, [2, 2, 2]);
}

#[test]
fn ejected_endpoints_are_skipped_unless_all_are() {
    let u = urls(3);
    let labels = BTreeMap::new();
    for policy in [
        Policy::RoundRobin,
        Policy::Weighted,
        Policy::Random,
        Policy::LeastOutstanding,
        Policy::ConsistentHash { label: None },
    ] {
        let mut b = Balancer::new(policy.clone());
        let mut c = up(&u, &[1, 1, 1]);
        c[1].healthy = false;
        for i in 0..100 {
            let tx = format!("tx-{i}");
            let got = b.pick(&c, &key(&tx, &labels)).unwrap();
            assert_ne!(got, 1, "{policy}: picked an ejected endpoint");
        }
        for c in c.iter_mut() {
            c.healthy = false;
        }
        let seen: std::collections::HashSet<usize> = (0..100)
            .map(|i| b.pick(&c, &key(&format!("tx-{i}"), &labels)).unwrap())
            .collect();
        assert!(!seen.is_empty(), "{policy}: all ejected must still pick");
        if !matches!(policy, Policy::ConsistentHash { .. }) {
            // Spread over all of them, not stuck on one.
            assert!(seen.len() > 1, "{policy}: {seen:?}");
        }
    }
    assert_eq!(
        Balancer::new(Policy::RoundRobin).pick(&[], &key("t", &labels)),
        None
    );
}

#[test]
fn consistent_hash_keeps_a_transaction_together_and_spreads_them() {
    let u = urls(4);
    let c = up(&u, &[1, 1, 1, 1]);
    let labels = BTreeMap::new();
    let mut b = Balancer::new(Policy::ConsistentHash { label: None });
    let mut counts = [0usize; 4];
    for i in 0..4000 {
        let tx = format!("0190a1b2-0000-7000-8000-{i:012}");
        let first = b.pick(&c, &key(&tx, &labels)).unwrap();
        for _ in 0..3 {
            assert_eq!(b.pick(&c, &key(&tx, &labels)), Some(first));
        }
        counts[first] += 1;
    }
    for n in counts {
        assert!((600..=1400).contains(&n), "uneven ring: {counts:?}");
    }
}

#[test]
fn consistent_hash_uses_the_label_when_present() {
    let u = urls(5);
    let c = up(&u, &[1; 5]);
    let mut b = Balancer::new(Policy::ConsistentHash {
        label: Some("customer".into()),
    });
    let mut labels = BTreeMap::new();
    labels.insert("customer".to_string(), "c-42".to_string());
    let first = b.pick(&c, &key("tx-0", &labels)).unwrap();
    for i in 1..50 {
        assert_eq!(b.pick(&c, &key(&format!("tx-{i}"), &labels)), Some(first));
    }
    // Without the label, the transaction id decides.
    let none = BTreeMap::new();
    let by_tx = b.pick(&c, &key("tx-7", &none)).unwrap();
    let mut plain = Balancer::new(Policy::ConsistentHash { label: None });
    assert_eq!(plain.pick(&c, &key("tx-7", &none)), Some(by_tx));
}

#[test]
fn stable_hash_is_fnv1a_then_a_fixed_finaliser() {
    // Placement must not change between builds or processes, so pin the value.
    assert_eq!(stable_hash(b"a"), PINNED_A);
    assert_ne!(stable_hash(b"http://x#1"), stable_hash(b"http://x#2"));
}

/// FNV-1a("a") = 0xaf63dc4c8601ec8c, then the murmur3 finaliser.
const PINNED_A: u64 = {
    let mut h: u64 = 0xaf63_dc4c_8601_ec8c;
    h ^= h >> 33;
    h = h.wrapping_mul(0xff51_afd7_ed55_8ccd);
    h ^= h >> 33;
    h = h.wrapping_mul(0xc4ce_b9fe_1a85_ec53);
    h ^ (h >> 33)
};

/// Where each of `keys` lands on a ring over `urls`.
fn placement(urls: &[String], keys: &[String]) -> Vec<String> {
    let ring = Ring::new(urls.iter().map(|u| (u.as_str(), 1)));
    keys.iter()
        .map(|k| urls[ring.lookup(stable_hash(k.as_bytes()), |_| true).unwrap()].clone())
        .collect()
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    #[test]
    fn round_robin_is_exact(n in 1usize..12, rounds in 1usize..6) {
        let u = urls(n);
        let c = up(&u, &vec![1; n]);
        let labels = BTreeMap::new();
        let mut b = Balancer::new(Policy::RoundRobin);
        for r in 0..rounds {
            for i in 0..n {
                prop_assert_eq!(b.pick(&c, &key("t", &labels)), Some(i), "round {}", r);
            }
        }
    }

    #[test]
    fn smooth_weighted_follows_weights_and_is_smooth(
        weights in proptest::collection::vec(1u32..10, 1..8),
        windows in 1usize..4,
    ) {
        let n = weights.len();
        let u = urls(n);
        let c = up(&u, &weights);
        let labels = BTreeMap::new();
        let mut b = Balancer::new(Policy::Weighted);
        let total: u32 = weights.iter().sum();
        let mut seq = Vec::new();
        for _ in 0..windows {
            let mut counts = vec![0u32; n];
            for _ in 0..total {
                let i = b.pick(&c, &key("t", &labels)).unwrap();
                counts[i] += 1;
                seq.push(i);
            }
            // Exactly the weights over every window of `total` picks.
            prop_assert_eq!(&counts, &weights);
        }
        // Smooth: after every prefix of k picks, no endpoint is ahead of its ideal share
        // k * w / total by a whole pick, nor behind it by n - 1 picks. (The nginx algorithm keeps
        // each current weight in (-total, (n - 1) * total]; for 5,1,1 the order is a,a,b,a,c,a,a,
        // never a,a,a,a,a,b,c.)
        let mut counts = vec![0i64; n];
        let (total, last) = (i64::from(total), n as i64 - 1);
        for (k, &i) in seq.iter().enumerate() {
            counts[i] += 1;
            let k = k as i64 + 1;
            for (j, &w) in weights.iter().enumerate() {
                let behind = k * i64::from(w) - counts[j] * total;
                prop_assert!(
                    behind > -total && behind <= last * total,
                    "endpoint {} off its share by {}/{} after {} picks: {:?}", j, behind, total, k, seq
                );
            }
        }
    }

    #[test]
    fn same_key_same_endpoint(n in 1usize..10, keys in proptest::collection::vec("[a-z0-9-]{1,36}", 1..50)) {
        let u = urls(n);
        let first = placement(&u, &keys);
        // A ring built again (another process, another coordinator) places keys the same way.
        prop_assert_eq!(first, placement(&u, &keys));
    }

    #[test]
    fn random_stays_among_healthy(n in 2usize..8, down in 0usize..8) {
        let u = urls(n);
        let mut c = up(&u, &vec![1; n]);
        let down = down % n;
        c[down].healthy = false;
        let labels = BTreeMap::new();
        let mut b = Balancer::new(Policy::Random);
        for _ in 0..50 {
            let i = b.pick(&c, &key("t", &labels)).unwrap();
            prop_assert!(i < n && i != down);
        }
    }
}

#[test]
fn consistent_hash_moves_about_one_nth_of_keys() {
    let keys: Vec<String> = (0..10_000).map(|i| format!("tx-{i}")).collect();
    for n in [3usize, 5, 8] {
        let before_urls = urls(n);
        let before = placement(&before_urls, &keys);

        // Add one: only about 1/(n+1) of the keys move, and all of them to the new endpoint.
        let grown = urls(n + 1);
        let after = placement(&grown, &keys);
        let moved: Vec<usize> = (0..keys.len()).filter(|&k| before[k] != after[k]).collect();
        let expected = keys.len() / (n + 1);
        assert!(
            moved.len() > expected / 2 && moved.len() < expected * 3 / 2,
            "n={n}: adding moved {} keys, expected about {expected}",
            moved.len()
        );
        assert!(moved.iter().all(|&k| after[k] == grown[n]));

        // Remove one: exactly its keys move, about 1/n of them, spread over the others.
        let gone = &before_urls[n / 2];
        let shrunk: Vec<String> = before_urls.iter().filter(|u| *u != gone).cloned().collect();
        let after = placement(&shrunk, &keys);
        let moved = (0..keys.len()).filter(|&k| before[k] != after[k]).count();
        let owned = before.iter().filter(|u| *u == gone).count();
        assert_eq!(moved, owned, "n={n}: keys of other endpoints moved");
        let expected = keys.len() / n;
        assert!(
            moved > expected / 2 && moved < expected * 3 / 2,
            "n={n}: removing moved {moved}, expected about {expected}"
        );
        let mut receivers: HashMap<&String, usize> = HashMap::new();
        for k in 0..keys.len() {
            if before[k] != after[k] {
                *receivers.entry(&after[k]).or_default() += 1;
            }
        }
        assert!(
            receivers.len() > 1 || n == 2,
            "n={n}: all moved keys went to one endpoint"
        );
    }
}

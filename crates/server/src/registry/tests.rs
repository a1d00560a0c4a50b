//! The registry over a real (in-memory SQLite) store: refresh, ejection and in-flight counting
//! as seen through `pick`. Durations are tens of milliseconds so nothing sleeps for long.

use std::collections::BTreeMap;

use super::*;
use crate::store::{self, StoreOptions};

async fn registry(config: RegistryConfig) -> Registry {
    let log = store::open("sqlite::memory:", &StoreOptions::default())
        .await
        .unwrap();
    log.migrate().await.unwrap();
    Registry::new(log, config)
}

fn fixed(n: usize) -> (Vec<String>, RegistryConfig) {
    let urls: Vec<String> = (0..n)
        .map(|i| format!("http://127.0.0.1:{}", 19000 + i))
        .collect();
    let mut config = RegistryConfig {
        health: HealthConfig {
            eject_after: 3,
            base_ejection: Duration::from_millis(60),
            max_ejection: Duration::from_millis(500),
        },
        ..RegistryConfig::default()
    };
    config.static_endpoints.insert("svc".into(), urls.clone());
    (urls, config)
}

fn svc() -> Target {
    Target::Service("svc".into())
}

async fn pick_url(r: &Registry) -> String {
    let labels = BTreeMap::new();
    let key = PickKey {
        tx_id: "tx",
        labels: &labels,
    };
    r.pick(&svc(), &key).await.unwrap().endpoint.clone()
}

#[tokio::test]
async fn round_robin_over_static_endpoints_and_direct_targets() {
    let (urls, config) = fixed(3);
    let r = registry(config).await;
    for _ in 0..3 {
        for url in &urls {
            assert_eq!(&pick_url(&r).await, url);
        }
    }
    let labels = BTreeMap::new();
    let key = PickKey {
        tx_id: "tx",
        labels: &labels,
    };
    let direct = r
        .pick(&Target::Endpoint("http://127.0.0.1:1".into()), &key)
        .await
        .unwrap();
    assert_eq!(direct.endpoint, "http://127.0.0.1:1");
    assert!(matches!(
        r.pick(&Target::Service("nobody".into()), &key).await,
        Err(ResolveError::NoEndpoint(_))
    ));
    assert!(r.knows("svc").await.unwrap());
    assert!(!r.knows("nobody").await.unwrap());
}

#[tokio::test]
async fn failing_endpoint_is_ejected_then_tried_again() {
    let (urls, config) = fixed(3);
    let r = registry(config).await;
    let labels = BTreeMap::new();
    let key = PickKey {
        tx_id: "tx",
        labels: &labels,
    };
    // Three transport failures in a row on the first endpoint.
    for _ in 0..3 {
        let p = loop {
            let p = r.pick(&svc(), &key).await.unwrap();
            if p.endpoint == urls[0] {
                break p;
            }
        };
        p.report(false);
    }
    let ejected_at = Instant::now();
    let mut seen = Vec::new();
    while ejected_at.elapsed() < Duration::from_millis(40) {
        seen.push(pick_url(&r).await);
    }
    assert!(!seen.contains(&urls[0]), "ejected endpoint still picked");
    assert!(seen.contains(&urls[1]) && seen.contains(&urls[2]));

    tokio::time::sleep(Duration::from_millis(70)).await;
    let back: Vec<String> = futures_picks(&r, 3).await;
    assert!(
        back.contains(&urls[0]),
        "not tried again after the ejection: {back:?}"
    );

    // On probation one failure ejects it again (for longer); a success clears everything.
    let p = pick_until(&r, &urls[0]).await;
    p.report(false);
    let seen = futures_picks(&r, 6).await;
    assert!(!seen.contains(&urls[0]));
    tokio::time::sleep(Duration::from_millis(130)).await;
    let p = pick_until(&r, &urls[0]).await;
    p.report(true);
    let p = pick_until(&r, &urls[0]).await;
    p.report(false);
    let seen = futures_picks(&r, 6).await;
    assert!(
        seen.contains(&urls[0]),
        "one failure after a success must not eject"
    );
}

async fn futures_picks(r: &Registry, n: usize) -> Vec<String> {
    let mut out = Vec::new();
    for _ in 0..n {
        out.push(pick_url(r).await);
    }
    out
}

async fn pick_until(r: &Registry, url: &str) -> Picked {
    let labels = BTreeMap::new();
    let key = PickKey {
        tx_id: "tx",
        labels: &labels,
    };
    for _ in 0..100 {
        let p = r.pick(&svc(), &key).await.unwrap();
        if p.endpoint == url {
            return p;
        }
    }
    panic!("{url} never picked");
}

#[tokio::test]
async fn all_ejected_still_picks() {
    let (urls, config) = fixed(2);
    let r = registry(config).await;
    for url in &urls {
        for _ in 0..3 {
            pick_until(&r, url).await.report(false);
        }
    }
    let seen = futures_picks(&r, 4).await;
    assert!(
        seen.contains(&urls[0]) && seen.contains(&urls[1]),
        "{seen:?}"
    );
}

#[tokio::test]
async fn least_outstanding_counts_calls_in_flight() {
    let (urls, mut config) = fixed(3);
    config
        .policies
        .insert("svc".into(), Policy::LeastOutstanding);
    let r = registry(config).await;
    let a = pick_until(&r, &urls[0]).await;
    let b = pick_until(&r, &urls[1]).await;
    for _ in 0..5 {
        assert_eq!(pick_url(&r).await, urls[2]);
    }
    drop(a);
    let held = pick_until(&r, &urls[2]).await;
    for _ in 0..5 {
        assert_eq!(pick_url(&r).await, urls[0], "the idle one");
    }
    drop((b, held));
    let conns = lock(&r.conns);
    assert!(conns
        .values()
        .all(|c| c.in_flight.load(Ordering::Relaxed) == 0));
}

#[tokio::test]
async fn registrations_come_and_go_within_the_refresh() {
    let config = RegistryConfig {
        refresh: Duration::from_millis(30),
        ..RegistryConfig::default()
    };
    let r = registry(config).await;
    let a = "http://127.0.0.1:19101";
    let b = "http://127.0.0.1:19102";
    r.store
        .register_participant("svc", a, 1, "", 0)
        .await
        .unwrap();
    assert_eq!(futures_picks(&r, 3).await, vec![a, a, a]);
    r.store
        .register_participant("svc", b, 1, "", 0)
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(40)).await;
    let seen = futures_picks(&r, 4).await;
    assert!(
        seen.contains(&b.to_string()),
        "new endpoint gets no traffic: {seen:?}"
    );
    assert!(lock(&r.conns).contains_key(b));

    r.store.deregister_participant("svc", a).await.unwrap();
    tokio::time::sleep(Duration::from_millis(40)).await;
    assert_eq!(futures_picks(&r, 4).await, vec![b, b, b, b]);
    assert!(
        !lock(&r.conns).contains_key(a),
        "a removed endpoint keeps its channel"
    );

    // An expired registration disappears the same way.
    r.store
        .register_participant("svc", a, 1, "", 100)
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(35)).await;
    assert!(futures_picks(&r, 4).await.contains(&a.to_string()));
    tokio::time::sleep(Duration::from_millis(110)).await;
    assert_eq!(futures_picks(&r, 4).await, vec![b, b, b, b]);
}

#[tokio::test]
async fn weighted_uses_registered_weights() {
    let config = RegistryConfig {
        policies: [("svc".to_string(), Policy::Weighted)].into(),
        ..RegistryConfig::default()
    };
    let r = registry(config).await;
    let a = "http://127.0.0.1:19201";
    let b = "http://127.0.0.1:19202";
    r.store
        .register_participant("svc", a, 3, "", 0)
        .await
        .unwrap();
    r.store
        .register_participant("svc", b, 1, "", 0)
        .await
        .unwrap();
    let seen = futures_picks(&r, 8).await;
    assert_eq!(seen.iter().filter(|u| *u == a).count(), 6, "{seen:?}");
}

#[tokio::test]
async fn https_endpoints_need_a_participant_ca() {
    let r = registry(RegistryConfig::default()).await;
    let labels = BTreeMap::new();
    let key = PickKey {
        tx_id: "tx",
        labels: &labels,
    };
    let target = Target::Endpoint("https://127.0.0.1:19443".into());
    match r.pick(&target, &key).await {
        Err(ResolveError::NoTls(url)) => assert_eq!(url, "https://127.0.0.1:19443"),
        other => panic!("expected NoTls, got {other:?}"),
    }
    let plain = Target::Endpoint("http://127.0.0.1:19443".into());
    assert!(r.pick(&plain, &key).await.is_ok());
}

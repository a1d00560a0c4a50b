//! HTTP/JSON participants end to end (docs/HTTP.md, "Participants over HTTP"): a real `baton
//! serve` process calls HTTP/1.1 servers made here from raw tokio sockets (so a test can drop a
//! connection mid-call), plain and over TLS, next to the gRPC test participant.
//!
//! The server's behaviour is picked by the action (the last path segment before a 2PC phase):
//! `ok`/`undo`/`pay` answer 200 with `{"done":"<action>"}`; `fail` answers 409; `bad` 400;
//! `busy` 503 with `Retry-After: 1` on attempt 1; `throttled` 429 and `crash` 500 on attempt 1;
//! `drop` applies attempt 1 and closes the connection without answering; `slow` sleeps 3 s on
//! attempt 1; `no` answers 409 to prepare.

mod support;

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use baton_tx_proto as proto;
use baton_tx_proto::{start_request::Definition, StartRequest, TxState};
use serde_json::Value;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio_rustls::rustls;

use support::db::{fresh_database, TestDb};
use support::participant::participant;
use support::process::{self, saga, state, step, wait, Coordinator};

async fn coordinator(db: &TestDb, extra: &[&str]) -> Coordinator {
    let args: Vec<&str> = ["--max-connections", "4"]
        .iter()
        .chain(extra)
        .copied()
        .collect();
    process::coordinator(&db.url, "c1", &args, &[]).await
}

/// One request as the HTTP participant received it.
#[derive(Clone, Debug)]
struct Delivery {
    path: String,
    headers: HashMap<String, String>,
    body: Value,
    at: Instant,
}

impl Delivery {
    fn attempt(&self) -> u64 {
        self.body["attempt"].as_u64().expect("attempt is a number")
    }
}

#[derive(Default)]
struct Ledger {
    deliveries: Mutex<Vec<Delivery>>,
    /// Idempotency keys whose effect was applied, and how often each was delivered.
    applied: Mutex<HashMap<String, u32>>,
}

impl Ledger {
    fn for_tx(&self, tx: &str) -> Vec<Delivery> {
        let all = self.deliveries.lock().unwrap();
        all.iter()
            .filter(|d| d.body["tx_id"] == tx)
            .cloned()
            .collect()
    }

    fn paths(&self, tx: &str) -> Vec<String> {
        self.for_tx(tx).into_iter().map(|d| d.path).collect()
    }
}

/// A request head and body read from `stream`; `None` when the peer closed the connection.
async fn read_request<S: AsyncRead + Unpin>(
    stream: &mut S,
    buf: &mut Vec<u8>,
) -> Option<(String, HashMap<String, String>, Vec<u8>)> {
    let head_end = loop {
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break i;
        }
        let mut chunk = [0u8; 4096];
        let n = stream.read(&mut chunk).await.ok()?;
        if n == 0 {
            return None;
        }
        buf.extend_from_slice(&chunk[..n]);
    };
    let head = String::from_utf8_lossy(&buf[..head_end]).to_string();
    let mut lines = head.split("\r\n");
    let path = lines.next()?.split_whitespace().nth(1)?.to_string();
    let headers: HashMap<String, String> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_string()))
        .collect();
    let len: usize = headers
        .get("content-length")
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    buf.drain(..head_end + 4);
    while buf.len() < len {
        let mut chunk = [0u8; 4096];
        let n = stream.read(&mut chunk).await.ok()?;
        if n == 0 {
            return None;
        }
        buf.extend_from_slice(&chunk[..n]);
    }
    let body = buf.drain(..len).collect();
    Some((path, headers, body))
}

/// What the script answers: status, extra headers, body; `None` closes the connection instead.
async fn answer(
    ledger: &Ledger,
    d: &Delivery,
) -> Option<(u16, Vec<(&'static str, String)>, String)> {
    let key = d
        .headers
        .get("idempotency-key")
        .cloned()
        .unwrap_or_default();
    let segments: Vec<&str> = d.path.rsplit('/').collect();
    let (action, phase) = match segments[0] {
        "prepare" | "commit" | "abort" => (segments[1], segments[0]),
        action => (action, "saga"),
    };
    let attempt = d.attempt();
    let ok = |ledger: &Ledger| {
        *ledger
            .applied
            .lock()
            .unwrap()
            .entry(key.clone())
            .or_default() += 1;
        Some((200, vec![], format!(r#"{{"done":"{action}"}}"#)))
    };
    match (action, phase, attempt) {
        ("fail", _, _) | ("no", "prepare", _) => {
            Some((409, vec![], r#"{"message":"out of stock"}"#.into()))
        }
        ("bad", _, _) => Some((400, vec![], "unknown sku".into())),
        ("moved", _, _) => Some((302, vec![("location", "/elsewhere".into())], String::new())),
        ("huge", _, _) => Some((200, vec![], "x".repeat(5 << 20))),
        ("text", _, _) => Some((200, vec![], "plain \u{1} bytes".into())),
        ("busy", _, 1) => Some((503, vec![("retry-after", "1".into())], "later".into())),
        ("throttled", _, 1) => Some((429, vec![], "slow down".into())),
        ("crash", _, 1) => Some((500, vec![], "boom".into())),
        ("drop", _, _) => {
            // Applied once per key however often it is delivered: the participant's side of
            // the idempotency contract. The first delivery's answer is lost.
            if ledger.applied.lock().unwrap().contains_key(&key) {
                Some((200, vec![], r#"{"done":"drop"}"#.into()))
            } else {
                ok(ledger);
                None
            }
        }
        ("slow", _, 1) => {
            tokio::time::sleep(Duration::from_secs(3)).await;
            ok(ledger)
        }
        _ => ok(ledger),
    }
}

async fn serve_connection<S: AsyncRead + AsyncWrite + Unpin>(mut stream: S, ledger: Arc<Ledger>) {
    let mut buf = Vec::new();
    while let Some((path, headers, body)) = read_request(&mut stream, &mut buf).await {
        let body: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
        let d = Delivery {
            path,
            headers,
            body,
            at: Instant::now(),
        };
        ledger.deliveries.lock().unwrap().push(d.clone());
        let Some((status, extra, body)) = answer(&ledger, &d).await else {
            return;
        };
        let mut response = format!(
            "HTTP/1.1 {status} X\r\ncontent-length: {}\r\ncontent-type: application/json\r\n",
            body.len()
        );
        for (k, v) in extra {
            response.push_str(&format!("{k}: {v}\r\n"));
        }
        response.push_str("\r\n");
        response.push_str(&body);
        if stream.write_all(response.as_bytes()).await.is_err() {
            return;
        }
    }
}

/// Serves the scripted HTTP participant on a loopback port, over TLS when `tls` is given;
/// returns `scheme://127.0.0.1:port` and the ledger.
async fn http_participant(tls: Option<Arc<rustls::ServerConfig>>) -> (String, Arc<Ledger>) {
    let ledger = Arc::new(Ledger::default());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let scheme = if tls.is_some() { "https" } else { "http" };
    let served = ledger.clone();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let ledger = served.clone();
            let tls = tls.clone();
            tokio::spawn(async move {
                match tls {
                    None => serve_connection(stream, ledger).await,
                    Some(config) => {
                        let acceptor = tokio_rustls::TlsAcceptor::from(config);
                        if let Ok(stream) = acceptor.accept(stream).await {
                            serve_connection(stream, ledger).await
                        }
                    }
                }
            });
        }
    });
    (format!("{scheme}://{addr}"), ledger)
}

/// Starts `req` with wait and returns the transaction at rest.
async fn run(co: &mut Coordinator, req: StartRequest) -> proto::Transaction {
    let started = co.client.start(req).await.expect("start").into_inner();
    wait(&mut co.client, &started.tx_id).await
}

fn one_step(endpoint: &str, action: &str, compensate: &str) -> StartRequest {
    saga(vec![step("s", endpoint, action, compensate)])
}

#[tokio::test]
async fn requests_carry_the_documented_body_and_headers() {
    let db = fresh_database().await;
    let (p, ledger) = http_participant(None).await;
    let mut co = coordinator(&db, &[]).await;
    let base = format!("{p}/api/v1");
    let mut first = step("reserve", &base, "ok", "undo");
    first.payload = br#"{"sku": "A-1", "qty": 2}"#.to_vec();
    let mut second = step("charge", &base, "fail", "undo");
    second.payload = vec![0xff, 0x00];
    let mut req = saga(vec![first, second]);
    req.labels.insert("team".into(), "blue".into());
    let tx = run(&mut co, req).await;
    assert_eq!(state(&tx), TxState::Compensated, "{tx:?}");
    assert!(
        tx.branches[1].last_error.contains("out of stock"),
        "the 409 body's message is the failure: {:?}",
        tx.branches[1]
    );
    assert_eq!(
        tx.branches[0].output, br#"{"done":"ok"}"#,
        "2xx body is the output"
    );

    let got = ledger.for_tx(&tx.tx_id);
    let paths: Vec<&str> = got.iter().map(|d| d.path.as_str()).collect();
    assert_eq!(paths, ["/api/v1/ok", "/api/v1/fail", "/api/v1/undo"]);
    let (reserve, charge, undo) = (&got[0], &got[1], &got[2]);
    assert_eq!(
        reserve.body["payload"],
        serde_json::json!({"sku": "A-1", "qty": 2})
    );
    assert!(reserve.body.get("payload_base64").is_none());
    assert_eq!(reserve.body["phase"], "execute");
    assert_eq!(reserve.body["branch_index"], 0);
    assert_eq!(reserve.body["branch_name"], "reserve");
    assert_eq!(reserve.body["attempt"], 1);
    assert_eq!(reserve.body["labels"]["team"], "blue");
    assert!(reserve.body["deadline_unix_ms"].as_u64().unwrap() > 1_600_000_000_000);
    assert_eq!(
        charge.body["payload_base64"], "/wA=",
        "non-JSON bytes go as base64"
    );
    assert_eq!(charge.body["outputs"][0]["name"], "reserve");
    assert_eq!(charge.body["outputs"][0]["output"]["done"], "ok");
    assert_eq!(undo.body["phase"], "compensate");
    for d in &got {
        let phase = d.body["phase"].as_str().unwrap();
        let key = format!("{}:{}:{phase}", tx.tx_id, d.body["branch_index"]);
        assert_eq!(d.headers.get("idempotency-key"), Some(&key));
        assert_eq!(d.headers["content-type"], "application/json");
        let traceparent = &d.headers["traceparent"];
        assert!(
            traceparent.starts_with("00-") && traceparent.len() == 55,
            "{traceparent}"
        );
    }
}

#[tokio::test]
async fn statuses_map_to_ok_failed_transient_and_permanent() {
    let db = fresh_database().await;
    let (p, ledger) = http_participant(None).await;
    let mut co = coordinator(&db, &[]).await;
    let base = format!("{p}/");

    // 429 and 500 are retried, and the retry succeeds.
    for action in ["throttled", "crash"] {
        let tx = run(&mut co, one_step(&base, action, "undo")).await;
        assert_eq!(state(&tx), TxState::Committed, "{action}: {tx:?}");
        assert_eq!(tx.branches[0].attempts, 2, "{action}");
        let paths = ledger.paths(&tx.tx_id);
        assert_eq!(paths, [format!("/{action}"), format!("/{action}")]);
    }

    // Another 4xx is permanent: not retried, and the saga is undone.
    let tx = run(&mut co, one_step(&base, "bad", "undo")).await;
    assert_eq!(state(&tx), TxState::Compensated, "{tx:?}");
    assert_eq!(tx.branches[0].attempts, 1);
    assert!(
        tx.branches[0].last_error.contains("http 400"),
        "{:?}",
        tx.branches[0]
    );
    assert_eq!(ledger.paths(&tx.tx_id)[0], "/bad");

    // Redirects are not followed: permanent too.
    let tx = run(&mut co, one_step(&base, "moved", "undo")).await;
    assert_eq!(state(&tx), TxState::Compensated, "{tx:?}");
    assert_eq!(tx.branches[0].attempts, 1);
    assert!(
        tx.branches[0].last_error.contains("http 302"),
        "{:?}",
        tx.branches[0]
    );

    // A reply body over the 4 MiB limit is not buffered without bound; the call may have been
    // applied, so once out of retries the step is compensated.
    let mut s = step("s", &base, "huge", "undo");
    s.retry = Some(proto::RetryPolicy {
        max_attempts: 2,
        ..Default::default()
    });
    let tx = run(&mut co, saga(vec![s])).await;
    assert_eq!(state(&tx), TxState::Compensated, "{tx:?}");
    assert!(
        tx.branches[0].last_error.contains("exceeds"),
        "{:?}",
        tx.branches[0]
    );
    assert_eq!(ledger.paths(&tx.tx_id), ["/huge", "/huge", "/undo"]);

    // Any 2xx body is the output, byte for byte, JSON or not.
    let tx = run(&mut co, one_step(&base, "text", "undo")).await;
    assert_eq!(state(&tx), TxState::Committed, "{tx:?}");
    assert_eq!(tx.branches[0].output, "plain \u{1} bytes".as_bytes());

    // 409 is a business failure: not retried either, and compensated.
    let tx = run(&mut co, one_step(&base, "fail", "undo")).await;
    assert_eq!(state(&tx), TxState::Compensated, "{tx:?}");
    assert_eq!(
        ledger.paths(&tx.tx_id),
        ["/fail"],
        "a failed step is not undone"
    );

    // An action that is not one path segment is refused before anything is sent.
    let tx = run(&mut co, one_step(&base, "../admin", "undo")).await;
    assert_eq!(state(&tx), TxState::Compensated, "{tx:?}");
    assert!(ledger.for_tx(&tx.tx_id).iter().all(|d| d.path == "/undo"));
}

#[tokio::test]
async fn retry_after_is_honoured_before_the_next_attempt() {
    let db = fresh_database().await;
    let (p, ledger) = http_participant(None).await;
    // Backoff of at most 200 ms (FAST): only the header can make the gap a second.
    let mut co = coordinator(&db, &[]).await;
    let tx = run(&mut co, one_step(&format!("{p}/"), "busy", "undo")).await;
    assert_eq!(state(&tx), TxState::Committed, "{tx:?}");
    let got = ledger.for_tx(&tx.tx_id);
    assert_eq!(got.len(), 2);
    let gap = got[1].at - got[0].at;
    assert!(gap >= Duration::from_millis(950), "retried after {gap:?}");
}

#[tokio::test]
async fn a_dropped_answer_is_redelivered_with_the_same_key() {
    let db = fresh_database().await;
    let (p, ledger) = http_participant(None).await;
    let mut co = coordinator(&db, &[]).await;
    let tx = run(&mut co, one_step(&format!("{p}/x"), "drop", "undo")).await;
    assert_eq!(state(&tx), TxState::Committed, "{tx:?}");
    let got = ledger.for_tx(&tx.tx_id);
    assert_eq!(got.len(), 2, "{got:?}");
    let key = format!("{}:0:execute", tx.tx_id);
    assert_eq!(got[0].headers["idempotency-key"], key);
    assert_eq!(got[1].headers["idempotency-key"], key);
    assert_eq!((got[0].attempt(), got[1].attempt()), (1, 2));
    assert_eq!(ledger.applied.lock().unwrap()[&key], 1, "applied once");
}

#[tokio::test]
async fn a_slow_endpoint_times_out_and_is_retried() {
    let db = fresh_database().await;
    let (p, ledger) = http_participant(None).await;
    let mut co = coordinator(&db, &[]).await;
    let mut s = step("s", &format!("{p}/"), "slow", "undo");
    s.timeout_ms = 300;
    let started = Instant::now();
    let tx = run(&mut co, saga(vec![s])).await;
    assert_eq!(state(&tx), TxState::Committed, "{tx:?}");
    assert_eq!(tx.branches[0].attempts, 2);
    assert!(
        started.elapsed() < Duration::from_millis(2900),
        "did not wait for the slow answer: {:?}",
        started.elapsed()
    );
    let got = ledger.for_tx(&tx.tx_id);
    assert_eq!(got.len(), 2);
    assert!(got[1].at - got[0].at >= Duration::from_millis(300));
}

#[tokio::test]
async fn two_phase_branches_use_prepare_commit_and_abort_paths() {
    let db = fresh_database().await;
    let (p, ledger) = http_participant(None).await;
    let mut co = coordinator(&db, &[]).await;
    let branch = |name: &str, action: &str| proto::TwoPhaseBranch {
        name: name.into(),
        endpoint: format!("{p}/bank"),
        action: action.into(),
        ..Default::default()
    };
    let two_phase = |branches| StartRequest {
        definition: Some(Definition::TwoPhase(proto::TwoPhase {
            branches,
            prepare_timeout_ms: 0,
        })),
        ..Default::default()
    };
    let tx = run(
        &mut co,
        two_phase(vec![branch("a", "pay"), branch("b", "ok")]),
    )
    .await;
    assert_eq!(state(&tx), TxState::Committed, "{tx:?}");
    let mut paths = ledger.paths(&tx.tx_id);
    paths.sort();
    assert_eq!(
        paths,
        [
            "/bank/ok/commit",
            "/bank/ok/prepare",
            "/bank/pay/commit",
            "/bank/pay/prepare"
        ]
    );

    // A 409 to prepare is a no vote: every branch is aborted.
    let tx = run(
        &mut co,
        two_phase(vec![branch("a", "pay"), branch("b", "no")]),
    )
    .await;
    assert_eq!(state(&tx), TxState::Aborted, "{tx:?}");
    let paths = ledger.paths(&tx.tx_id);
    assert!(paths.contains(&"/bank/pay/abort".to_string()), "{paths:?}");
    assert!(!paths.iter().any(|p| p.ends_with("/commit")), "{paths:?}");
}

#[tokio::test]
async fn a_mixed_saga_of_grpc_and_http_participants_compensates() {
    let db = fresh_database().await;
    let (grpc, grpc_ledger) = participant().await;
    let (http, http_ledger) = http_participant(None).await;
    let mut co = coordinator(&db, &[]).await;
    // The HTTP participant is reached through a registered service, the gRPC one directly.
    co.client
        .register_participant(proto::RegisterParticipantRequest {
            service: "payments".into(),
            endpoint: format!("{http}/payments"),
            weight: 1,
            ..Default::default()
        })
        .await
        .expect("register the http instance");
    let mut charge = step("charge", "", "ok", "undo");
    charge.service = "payments".into();
    let mut ship = step("ship", "", "fail", "undo");
    ship.service = "payments".into();
    let req = saga(vec![step("reserve", &grpc, "ok", "undo"), charge, ship]);
    let tx = run(&mut co, req).await;
    assert_eq!(state(&tx), TxState::Compensated, "{tx:?}");
    assert_eq!(
        http_ledger.paths(&tx.tx_id),
        ["/payments/ok", "/payments/fail", "/payments/undo"]
    );
    assert_eq!(grpc_ledger.times_applied(&tx.tx_id, 0, "compensate"), 1);
    assert_eq!(
        grpc_ledger.applied_order(&tx.tx_id),
        [(0, "execute"), (0, "compensate")]
    );
}

/// A CA, a server certificate for 127.0.0.1 signed by it, and the CA's PEM written to a file.
fn tls_files(dir: &std::path::Path) -> (Arc<rustls::ServerConfig>, PathBuf) {
    use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, IsCa, KeyPair};
    let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let issuer = CertifiedIssuer::self_signed(params, KeyPair::generate().unwrap()).unwrap();
    let key = KeyPair::generate().unwrap();
    let cert = CertificateParams::new(vec!["127.0.0.1".to_string()])
        .unwrap()
        .signed_by(&key, &*issuer)
        .unwrap();
    let ca = dir.join("ca.pem");
    std::fs::write(&ca, issuer.pem()).unwrap();
    let key = rustls::pki_types::PrivateKeyDer::try_from(key.serialize_der()).unwrap();
    let config = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_no_client_auth()
    .with_single_cert(vec![cert.der().clone()], key)
    .unwrap();
    (Arc::new(config), ca)
}

#[tokio::test]
async fn https_participants_are_called_over_tls_with_the_participant_ca() {
    let db = fresh_database().await;
    let dir = tempfile::tempdir().unwrap();
    let (server, ca) = tls_files(dir.path());
    let (p, ledger) = http_participant(Some(server)).await;
    assert!(p.starts_with("https://"));
    let ca = ca.to_str().unwrap();
    let mut co = coordinator(&db, &["--participant-ca", ca]).await;
    let tx = run(&mut co, one_step(&format!("{p}/secure"), "ok", "undo")).await;
    assert_eq!(state(&tx), TxState::Committed, "{tx:?}");
    assert_eq!(ledger.paths(&tx.tx_id), ["/secure/ok"]);
}

#[tokio::test]
async fn a_dead_http_instance_is_ejected_like_a_grpc_one() {
    let db = fresh_database().await;
    let (live, ledger) = http_participant(None).await;
    // A loopback port nothing listens on any more: connections are refused.
    let dead = {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        format!("http://{}", listener.local_addr().unwrap())
    };
    let mut co = coordinator(&db, &[]).await;
    for endpoint in [format!("{live}/inv"), format!("{dead}/inv")] {
        co.client
            .register_participant(proto::RegisterParticipantRequest {
                service: "inv".into(),
                endpoint,
                weight: 1,
                ..Default::default()
            })
            .await
            .expect("register");
    }
    // Round robin alone would send about every other first attempt to the dead instance; once
    // ejected (after 3 refused calls, for 1 s doubling) it gets almost none.
    let runs = 30;
    let mut failed_attempts = 0;
    for _ in 0..runs {
        let mut s = step("s", "", "ok", "undo");
        s.service = "inv".into();
        let tx = run(&mut co, saga(vec![s])).await;
        assert_eq!(state(&tx), TxState::Committed, "{tx:?}");
        assert_eq!(ledger.paths(&tx.tx_id), ["/inv/ok"]);
        failed_attempts += tx.branches[0].attempts - 1;
    }
    assert!(
        failed_attempts <= 8,
        "{failed_attempts} attempts of {runs} went to the dead instance"
    );
}

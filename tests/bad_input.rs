//! Malformed and hostile requests against a real `baton serve` process on its own PostgreSQL
//! database, over real gRPC: each is refused with the status `proto/` promises (INVALID_ARGUMENT
//! for bad input, RESOURCE_EXHAUSTED for limits) and a short message that names the field, and
//! nothing the database would refuse gets past the API. A property test throws arbitrary
//! `Start`s at the coordinator while valid ones run beside them.

mod support;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use baton_tx_proto as proto;
use baton_tx_proto::coordinator_client::CoordinatorClient;
use baton_tx_proto::{start_request::Definition, StartRequest, TxState};
use bytes::{Buf, BufMut};
use proptest::prelude::*;
use proptest::test_runner::{Config, TestCaseError, TestRunner};
use tonic::codec::{Codec, DecodeBuf, Decoder, EncodeBuf, Encoder};
use tonic::transport::Channel;
use tonic::{Code, Status};

use support::db::{fresh_database, TestDb};
use support::participant::participant;
use support::process::{self, saga, state, step, wait, Coordinator};

/// The shared PostgreSQL has few connections to spare.
const SMALL_POOL: &[&str] = &["--max-connections", "4", "--log-writers", "1"];

async fn coordinator(db: &TestDb, extra: &[&str]) -> Coordinator {
    let args: Vec<&str> = SMALL_POOL.iter().chain(extra).copied().collect();
    process::coordinator(&db.url, "c1", &args, &[]).await
}

/// Asserts that `result` was refused with `code` and a message starting with `prefix`.
#[track_caller]
fn refused<T: std::fmt::Debug>(result: Result<T, Status>, code: Code, prefix: &str) -> Status {
    let status = match result {
        Ok(answer) => panic!("expected {code:?} {prefix:?}, got {answer:?}"),
        Err(status) => status,
    };
    assert_eq!(status.code(), code, "{prefix}: {status:?}");
    assert!(
        status.message().starts_with(prefix),
        "{:?} does not start with {prefix:?}",
        status.message()
    );
    status
}

async fn start(
    c: &mut CoordinatorClient<Channel>,
    req: StartRequest,
) -> Result<proto::StartResponse, Status> {
    c.start(req).await.map(tonic::Response::into_inner)
}

fn one_step(s: proto::SagaStep) -> StartRequest {
    saga(vec![s])
}

fn two_phase(branch: proto::TwoPhaseBranch) -> StartRequest {
    StartRequest {
        definition: Some(Definition::TwoPhase(proto::TwoPhase {
            branches: vec![branch],
            prepare_timeout_ms: 0,
        })),
        ..Default::default()
    }
}

fn branch(name: &str, endpoint: &str, action: &str) -> proto::TwoPhaseBranch {
    proto::TwoPhaseBranch {
        name: name.into(),
        endpoint: endpoint.into(),
        action: action.into(),
        ..Default::default()
    }
}

async fn list_all(c: &mut CoordinatorClient<Channel>) -> Vec<proto::Transaction> {
    c.list(proto::ListRequest::default())
        .await
        .expect("list")
        .into_inner()
        .transactions
}

async fn register(
    c: &mut CoordinatorClient<Channel>,
    service: &str,
    endpoint: &str,
    zone: &str,
    ttl_ms: u64,
) -> Result<proto::RegisterParticipantResponse, Status> {
    c.register_participant(proto::RegisterParticipantRequest {
        service: service.into(),
        endpoint: endpoint.into(),
        weight: 1,
        zone: zone.into(),
        ttl_ms,
    })
    .await
    .map(tonic::Response::into_inner)
}

// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn control_characters_are_refused_in_every_field_before_the_database() {
    let db = fresh_database().await;
    let (p, _ledger) = participant().await;
    let mut co = coordinator(&db, &[]).await;
    let c = &mut co.client;
    register(c, "svc", &p, "", 0).await.expect("register svc");
    let good = || step("reserve", &p, "ok", "undo");

    let starts: Vec<(StartRequest, String)> = vec![
        (
            one_step(step("re\0serve", &p, "ok", "undo")),
            "saga.steps[0].name: must not contain control characters (U+0000 at byte 2)".into(),
        ),
        (
            one_step(step("reserve", &p, "o\0k", "undo")),
            "saga.steps[0].action: must not contain control characters".into(),
        ),
        (
            one_step(step("reserve", &p, "ok", "un\0do")),
            "saga.steps[0].compensate: must not contain control characters".into(),
        ),
        (
            one_step(proto::SagaStep {
                service: "s\0vc".into(),
                endpoint: String::new(),
                ..good()
            }),
            "saga.steps[0].service: must not contain control characters".into(),
        ),
        (
            one_step(proto::SagaStep {
                endpoint: format!("{p}\0"),
                ..good()
            }),
            "saga.steps[0].endpoint: must not contain".into(),
        ),
        (
            one_step(step("line\nbreak", &p, "ok", "undo")),
            "saga.steps[0].name: must not contain control characters (U+000A".into(),
        ),
        (
            StartRequest {
                labels: [("k\0".to_string(), "v".to_string())].into(),
                ..one_step(good())
            },
            format!("labels[{:?}]: must not contain control characters", "k\0"),
        ),
        (
            StartRequest {
                labels: [("k".to_string(), "v\0".to_string())].into(),
                ..one_step(good())
            },
            "labels[\"k\"]: must not contain control characters".into(),
        ),
        (
            StartRequest {
                idempotency_key: "order\0-42".into(),
                ..one_step(good())
            },
            "idempotency_key: must not contain control characters".into(),
        ),
        (
            two_phase(branch("de\0bit", &p, "yes")),
            "two_phase.branches[0].name: must not contain control characters".into(),
        ),
        (
            two_phase(branch("debit", &p, "y\u{1b}es")),
            "two_phase.branches[0].action: must not contain control characters".into(),
        ),
        (
            two_phase(proto::TwoPhaseBranch {
                service: "s\0vc".into(),
                endpoint: String::new(),
                ..branch("debit", &p, "yes")
            }),
            "two_phase.branches[0].service: must not contain control characters".into(),
        ),
    ];
    for (req, want) in starts {
        refused(start(c, req).await, Code::InvalidArgument, &want);
    }
    // Nothing was stored: before the check, the NUL step name made a transaction that PostgreSQL
    // then refused to update, stuck for ever.
    assert_eq!(list_all(c).await.len(), 0);

    refused(
        c.list(proto::ListRequest {
            labels: [("k".to_string(), "\0".to_string())].into(),
            ..Default::default()
        })
        .await,
        Code::InvalidArgument,
        "labels[\"k\"]: must not contain control characters",
    );

    // A transaction to aim the id-taking verbs at.
    let mut req = one_step(good());
    req.wait = true;
    req.wait_timeout_ms = 30_000;
    let tx = start(c, req)
        .await
        .expect("a clean start")
        .transaction
        .unwrap();
    assert_eq!(state(&tx), TxState::Committed, "{tx:?}");
    refused(
        c.cancel(proto::CancelRequest {
            tx_id: tx.tx_id.clone(),
            reason: "because\0".into(),
        })
        .await,
        Code::InvalidArgument,
        "reason: must not contain control characters",
    );
    refused(
        c.get(proto::GetRequest {
            tx_id: format!("{}\0", tx.tx_id),
        })
        .await,
        Code::InvalidArgument,
        "tx_id: ",
    );

    // The registry's fields.
    refused(
        register(c, "s\0vc", &p, "", 0).await,
        Code::InvalidArgument,
        "service: must not contain control characters",
    );
    refused(
        register(c, "svc", &p, "zone\0a", 0).await,
        Code::InvalidArgument,
        "zone: must not contain control characters",
    );
    refused(
        register(c, "svc", &format!("{p}\0"), "", 0).await,
        Code::InvalidArgument,
        "endpoint: must not contain",
    );
    refused(
        c.heartbeat_participant(proto::HeartbeatParticipantRequest {
            service: "s\0vc".into(),
            endpoint: p.clone(),
            ttl_ms: 1000,
        })
        .await,
        Code::InvalidArgument,
        "service: must not contain control characters",
    );
    refused(
        c.deregister_participant(proto::DeregisterParticipantRequest {
            service: "svc".into(),
            endpoint: format!("{p}\0"),
        })
        .await,
        Code::InvalidArgument,
        "endpoint: must not contain control characters",
    );
    refused(
        c.deregister_participant(proto::DeregisterParticipantRequest {
            service: " ".into(),
            endpoint: p.clone(),
        })
        .await,
        Code::InvalidArgument,
        "service: must not be empty",
    );
    refused(
        c.deregister_participant(proto::DeregisterParticipantRequest {
            service: "svc".into(),
            endpoint: String::new(),
        })
        .await,
        Code::InvalidArgument,
        "endpoint: must not be empty",
    );
    refused(
        c.list_participants(proto::ListParticipantsRequest {
            service: "s\0vc".into(),
        })
        .await,
        Code::InvalidArgument,
        "service: must not contain control characters",
    );
    let listed = c
        .list_participants(proto::ListParticipantsRequest::default())
        .await
        .expect("list participants")
        .into_inner()
        .participants;
    assert_eq!(listed.len(), 1, "{listed:?}");
}

#[tokio::test]
async fn huge_numbers_are_refused_or_capped_never_overflowed() {
    let db = fresh_database().await;
    let (p, _ledger) = participant().await;
    let mut co = coordinator(&db, &[]).await;
    let c = &mut co.client;
    let good = || one_step(step("reserve", &p, "ok", "undo"));

    // The overall timeout: 10^16 ms used to panic the handler (the client saw CANCELLED).
    for timeout_ms in [10u64.pow(16), u64::MAX, 30 * 24 * 3_600_000 + 1] {
        refused(
            start(
                c,
                StartRequest {
                    timeout_ms,
                    ..good()
                },
            )
            .await,
            Code::InvalidArgument,
            &format!("timeout_ms: {timeout_ms} exceeds the limit of 2592000000"),
        );
    }
    let mut longest = StartRequest {
        timeout_ms: 30 * 24 * 3_600_000,
        wait: true,
        // Capped at the server's maximum.
        wait_timeout_ms: u64::MAX,
        ..good()
    };
    let tx = start(c, longest.clone())
        .await
        .expect("a 30-day timeout")
        .transaction
        .unwrap();
    assert_eq!(state(&tx), TxState::Committed, "{tx:?}");
    assert!(tx.deadline_at_ms > tx.created_at_ms + 29 * 24 * 3_600_000);

    // Backoffs: a retry due in 500 million years is a typo.
    let mut s = step("reserve", &p, "ok", "undo");
    s.retry = Some(proto::RetryPolicy {
        max_attempts: 3,
        initial_backoff_ms: 10,
        max_backoff_ms: u64::MAX,
    });
    refused(
        start(c, one_step(s)).await,
        Code::InvalidArgument,
        "saga.steps[0].retry.max_backoff_ms: 18446744073709551615 exceeds the limit of 3600000",
    );

    // Wait and Events take anything and cap it.
    let got = c
        .wait(proto::WaitRequest {
            tx_id: tx.tx_id.clone(),
            timeout_ms: u64::MAX,
        })
        .await
        .expect("wait with a huge timeout")
        .into_inner();
    assert_eq!(state(&got), TxState::Committed);
    let events = c
        .events(proto::EventsRequest {
            tx_id: tx.tx_id.clone(),
            after_seq: u64::MAX,
            limit: 0,
        })
        .await
        .expect("events after the last")
        .into_inner()
        .events;
    assert!(events.is_empty(), "{events:?}");

    // List times: chrono holds the year 255,000, PostgreSQL does not (it answered UNAVAILABLE).
    for (after, before, field) in [
        (8_000_000_000_000_000, 0, "created_after_ms"),
        (0, -8_000_000_000_000_000, "created_before_ms"),
        (i64::MAX, 0, "created_after_ms"),
        (0, i64::MIN, "created_before_ms"),
    ] {
        refused(
            c.list(proto::ListRequest {
                created_after_ms: after,
                created_before_ms: before,
                ..Default::default()
            })
            .await,
            Code::InvalidArgument,
            &format!("{field}: "),
        );
    }
    let found = c
        .list(proto::ListRequest {
            created_after_ms: 1,
            created_before_ms: 253_402_300_799_999,
            ..Default::default()
        })
        .await
        .expect("list within years 1 to 9999")
        .into_inner()
        .transactions;
    assert_eq!(found.len(), 1);

    // Registration ttl: u64::MAX gave a raw "interval out of range".
    refused(
        register(c, "svc", &p, "", u64::MAX).await,
        Code::InvalidArgument,
        "ttl_ms: 18446744073709551615 exceeds the limit of 86400000",
    );
    let registered = register(c, "svc", &p, "", 86_400_000)
        .await
        .expect("a day's ttl")
        .participant
        .unwrap();
    assert!(registered.expires_at_ms > 0);
    refused(
        c.heartbeat_participant(proto::HeartbeatParticipantRequest {
            service: "svc".into(),
            endpoint: p.clone(),
            ttl_ms: u64::MAX,
        })
        .await,
        Code::InvalidArgument,
        "ttl_ms: 18446744073709551615 exceeds",
    );
    refused(
        c.purge(proto::PurgeRequest {
            older_than_ms: u64::MAX,
            batch: 0,
        })
        .await,
        Code::InvalidArgument,
        "older_than_ms: ",
    );

    // The coordinator is unharmed.
    longest.idempotency_key = "again".into();
    let tx = start(c, longest).await.unwrap().transaction.unwrap();
    assert_eq!(state(&tx), TxState::Committed, "{tx:?}");
}

#[tokio::test]
async fn endpoints_are_parsed_strictly_for_steps_and_registrations() {
    let db = fresh_database().await;
    let (p, _ledger) = participant().await;
    let mut co = coordinator(&db, &[]).await;
    let c = &mut co.client;
    let port = p.rsplit(':').next().unwrap().to_string();
    let bad = [
        (
            "http://127.0.0.1:99999".to_string(),
            "port must be a number from 1 to 65535",
        ),
        (
            "http://127.0.0.1:-1".into(),
            "port must be a number from 1 to 65535",
        ),
        (
            "http://127.0.0.1:0".into(),
            "port must be a number from 1 to 65535",
        ),
        (
            format!("http://user:pw@127.0.0.1:{port}"),
            "must not contain user information",
        ),
        (format!("{p}/some/../path"), "path may only hold segments"),
        (format!("{p}?x=1"), "must not have a query or a fragment"),
        (
            format!("grpc://127.0.0.1:{port}"),
            "must start with http:// or https://",
        ),
        ("http://".into(), "has no host"),
    ];
    for (endpoint, why) in &bad {
        let s = proto::SagaStep {
            endpoint: endpoint.clone(),
            ..step("reserve", &p, "ok", "undo")
        };
        refused(
            start(c, one_step(s)).await,
            Code::InvalidArgument,
            &format!("saga.steps[0].endpoint: {why}"),
        );
        refused(
            start(c, two_phase(branch("debit", endpoint, "yes"))).await,
            Code::InvalidArgument,
            &format!("two_phase.branches[0].endpoint: {why}"),
        );
        refused(
            register(c, "svc", endpoint, "", 0).await,
            Code::InvalidArgument,
            &format!("endpoint: {why}"),
        );
    }
    // Nothing was accepted, so nothing is called on port 80 or anywhere else.
    assert_eq!(list_all(c).await.len(), 0);

    // A path (even a trailing slash) is fine too, but names an HTTP/JSON participant
    // (docs/HTTP.md); the gRPC participant's own address is used here.
    register(c, "svc", &format!("{p}/"), "", 0)
        .await
        .expect("register with a trailing slash");
    c.deregister_participant(proto::DeregisterParticipantRequest {
        service: "svc".into(),
        endpoint: format!("{p}/"),
    })
    .await
    .expect("deregister the http form");
    register(c, "svc", &p, "", 0)
        .await
        .expect("register the participant's address");
    let mut req = one_step(proto::SagaStep {
        service: "svc".into(),
        endpoint: String::new(),
        ..step("reserve", &p, "ok", "undo")
    });
    req.wait = true;
    req.wait_timeout_ms = 30_000;
    let tx = start(c, req).await.unwrap().transaction.unwrap();
    assert_eq!(state(&tx), TxState::Committed, "{tx:?}");
}

/// Sends and receives message bytes as they are, to put any bytes on the wire.
#[derive(Clone, Copy, Default)]
struct RawCodec;

impl Codec for RawCodec {
    type Encode = Vec<u8>;
    type Decode = Vec<u8>;
    type Encoder = RawCodec;
    type Decoder = RawCodec;
    fn encoder(&mut self) -> Self::Encoder {
        RawCodec
    }
    fn decoder(&mut self) -> Self::Decoder {
        RawCodec
    }
}

impl Encoder for RawCodec {
    type Item = Vec<u8>;
    type Error = Status;
    fn encode(&mut self, item: Vec<u8>, buf: &mut EncodeBuf<'_>) -> Result<(), Status> {
        buf.put_slice(&item);
        Ok(())
    }
}

impl Decoder for RawCodec {
    type Item = Vec<u8>;
    type Error = Status;
    fn decode(&mut self, buf: &mut DecodeBuf<'_>) -> Result<Option<Vec<u8>>, Status> {
        Ok(Some(buf.copy_to_bytes(buf.remaining()).to_vec()))
    }
}

async fn raw_call(endpoint: &str, method: &'static str, body: Vec<u8>) -> Result<Vec<u8>, Status> {
    let channel = Channel::from_shared(endpoint.to_string())
        .unwrap()
        .connect()
        .await
        .expect("connect");
    let mut grpc = tonic::client::Grpc::new(channel);
    grpc.ready().await.expect("ready");
    let path = http::uri::PathAndQuery::from_static(method);
    grpc.unary(tonic::Request::new(body), path, RawCodec)
        .await
        .map(tonic::Response::into_inner)
}

#[tokio::test]
async fn undecodable_and_oversized_requests_get_the_promised_codes() {
    let db = fresh_database().await;
    let (p, _ledger) = participant().await;
    let mut co = coordinator(&db, &[]).await;
    let start_path = "/baton.v1.Coordinator/Start";

    // The raw path itself works: an empty message is a valid ListCoordinators request.
    raw_call(
        &co.endpoint,
        "/baton.v1.Coordinator/ListCoordinators",
        vec![],
    )
    .await
    .expect("an empty request decodes");

    let garbage: [(&str, Vec<u8>); 4] = [
        // idempotency_key (field 3) that is not UTF-8.
        ("not utf-8", vec![0x1a, 0x02, 0xff, 0xfe]),
        // saga (field 1) announcing 5 bytes and carrying 1.
        ("truncated", vec![0x0a, 0x05, 0x01]),
        // field 1 with wire type 7, which does not exist.
        ("bad wire type", vec![0x0f]),
        // a varint that never ends.
        (
            "endless varint",
            vec![
                0x28, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff,
            ],
        ),
    ];
    for (what, bytes) in garbage {
        let status = refused(
            raw_call(&co.endpoint, start_path, bytes).await,
            Code::InvalidArgument,
            "request: ",
        );
        assert!(status.message().len() < 300, "{what}: {}", status.message());
    }
    refused(
        raw_call(
            &co.endpoint,
            "/baton.v1.Coordinator/Get",
            vec![0x0a, 0x01, 0xc0],
        )
        .await,
        Code::InvalidArgument,
        "request: ",
    );

    // Over the 4 MiB message limit: raw bytes, and a typed request whose steps are each within
    // the payload limit but not all together.
    refused(
        raw_call(&co.endpoint, start_path, vec![0; 5 << 20]).await,
        Code::ResourceExhausted,
        "request: the message exceeds the limit of 4194304 bytes",
    );
    let steps = (0..5)
        .map(|i| proto::SagaStep {
            payload: vec![7; 1 << 20],
            ..step(&format!("s{i}"), &p, "ok", "undo")
        })
        .collect();
    refused(
        start(&mut co.client, saga(steps)).await,
        Code::ResourceExhausted,
        "request: the message exceeds the limit",
    );
    assert_eq!(list_all(&mut co.client).await.len(), 0);
}

#[tokio::test]
async fn echoed_client_text_is_cut_short() {
    let db = fresh_database().await;
    let (p, _ledger) = participant().await;
    let mut co = coordinator(&db, &[]).await;
    let c = &mut co.client;
    let huge = "7".repeat(100_000);
    for result in [
        c.get(proto::GetRequest {
            tx_id: huge.clone(),
        })
        .await
        .map(|_| ()),
        c.wait(proto::WaitRequest {
            tx_id: huge.clone(),
            timeout_ms: 1,
        })
        .await
        .map(|_| ()),
        c.cancel(proto::CancelRequest {
            tx_id: huge.clone(),
            reason: String::new(),
        })
        .await
        .map(|_| ()),
    ] {
        // Echoed whole, the id overflowed the response headers and the client saw a transport
        // error instead of this status.
        let status = refused(
            result,
            Code::InvalidArgument,
            &format!("tx_id: \"{}\"… is not a transaction id", "7".repeat(64)),
        );
        assert!(status.message().len() < 200, "{}", status.message());
    }
    // An unknown service name of the longest allowed length is echoed short too.
    let long = "s".repeat(256);
    let status = refused(
        start(
            c,
            one_step(proto::SagaStep {
                service: long,
                endpoint: String::new(),
                ..step("reserve", &p, "ok", "undo")
            }),
        )
        .await,
        Code::InvalidArgument,
        "saga.steps[0].service: unknown participant service",
    );
    assert!(status.message().len() < 250, "{}", status.message());
}

#[tokio::test]
async fn retry_answers_with_the_state_the_retry_moved_to() {
    let db = fresh_database().await;
    let (p, ledger) = participant().await;
    let mut co = coordinator(&db, &["--default-max-attempts", "3"]).await;
    ledger.broken.store(true, Ordering::SeqCst);
    let mut req = saga(vec![
        step("charge", &p, "ok", "undo_broken"),
        step("ship", &p, "fail", "undo"),
    ]);
    req.wait = true;
    req.wait_timeout_ms = 30_000;
    let tx = start(&mut co.client, req)
        .await
        .unwrap()
        .transaction
        .unwrap();
    assert_eq!(state(&tx), TxState::Failed, "{tx:?}");

    ledger.broken.store(false, Ordering::SeqCst);
    let answered = co
        .client
        .retry(proto::RetryRequest {
            tx_id: tx.tx_id.clone(),
        })
        .await
        .expect("retry")
        .into_inner();
    // It used to answer FAILED: the state read before the retry had been recorded.
    assert!(
        matches!(
            state(&answered),
            TxState::Compensating | TxState::Compensated
        ),
        "{answered:?}"
    );
    let tx = wait(&mut co.client, &tx.tx_id).await;
    assert_eq!(state(&tx), TxState::Compensated, "{tx:?}");
}

#[tokio::test]
async fn calls_waiting_on_transactions_are_bounded_and_a_hung_up_watch_frees_its_place() {
    let db = fresh_database().await;
    let (p, ledger) = participant().await;
    ledger.gate_closed.store(true, Ordering::SeqCst);
    let mut co = coordinator(&db, &["--max-waiting", "2"]).await;
    // Held at its call, which times out only after a minute: no event after the call's.
    let mut hold = step("hold", &p, "gated", "undo");
    hold.timeout_ms = 60_000;
    let held = start(&mut co.client, one_step(hold))
        .await
        .expect("start")
        .tx_id;
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    loop {
        let events = co
            .client
            .events(proto::EventsRequest {
                tx_id: held.clone(),
                ..Default::default()
            })
            .await
            .expect("events")
            .into_inner()
            .events;
        if events.iter().any(|e| e.kind.ends_with("sent")) {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the call was never recorded: {events:?}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    let watch_req = || proto::WatchRequest {
        tx_id: held.clone(),
    };
    // Two watches take both places.
    let first = co.client.watch(watch_req()).await.expect("first watch");
    let mut second = co
        .client
        .watch(watch_req())
        .await
        .expect("second watch")
        .into_inner();

    // A third waiting call of any kind is refused; a Start that would wait writes nothing.
    let full = "too many calls waiting on transactions (limit 2)";
    refused(
        co.client.watch(watch_req()).await,
        Code::ResourceExhausted,
        full,
    );
    refused(
        co.client
            .wait(proto::WaitRequest {
                tx_id: held.clone(),
                timeout_ms: 50,
            })
            .await,
        Code::ResourceExhausted,
        full,
    );
    let before = list_all(&mut co.client).await.len();
    let mut waiting_start = one_step(step("s", &p, "ok", "undo"));
    waiting_start.wait = true;
    refused(
        start(&mut co.client, waiting_start.clone()).await,
        Code::ResourceExhausted,
        full,
    );
    assert_eq!(
        list_all(&mut co.client).await.len(),
        before,
        "a refused Start wrote"
    );
    // Calls that do not wait still run.
    co.client
        .get(proto::GetRequest {
            tx_id: held.clone(),
        })
        .await
        .expect("get");

    // The first watcher hangs up while nothing happens to the transaction: its place comes
    // back without waiting for the transaction's next event.
    drop(first);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    loop {
        match co
            .client
            .wait(proto::WaitRequest {
                tx_id: held.clone(),
                timeout_ms: 50,
            })
            .await
        {
            Ok(tx) => {
                assert_eq!(state(&tx.into_inner()), TxState::Running);
                break;
            }
            Err(status) if status.code() == Code::ResourceExhausted => {
                assert!(
                    std::time::Instant::now() < deadline,
                    "the hung-up watch still holds its place: {status:?}"
                );
                tokio::time::sleep(std::time::Duration::from_millis(20)).await;
            }
            Err(status) => panic!("wait: {status:?}"),
        }
    }

    // The watch that stayed sees the outcome; then a waiting Start runs.
    ledger.gate_closed.store(false, Ordering::SeqCst);
    let mut last = None;
    while let Some(event) = second.message().await.expect("watch stream") {
        last = Some(event.kind);
    }
    assert_eq!(
        last.as_deref(),
        Some("committed"),
        "the watch ended without its outcome"
    );
    drop(second);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    let tx = loop {
        match start(&mut co.client, waiting_start.clone()).await {
            Ok(answer) => break answer.transaction.expect("the outcome"),
            Err(status) if status.code() == Code::ResourceExhausted => {
                assert!(std::time::Instant::now() < deadline, "{status:?}");
                tokio::time::sleep(std::time::Duration::from_millis(20)).await;
            }
            Err(status) => panic!("start: {status:?}"),
        }
    };
    assert_eq!(state(&tx), TxState::Committed, "{tx:?}");
}

// ---- property: arbitrary Starts beside valid ones ----------------------------------------------

/// Text a client might send: empty, plain, arbitrary Unicode, control characters, too long.
fn text() -> BoxedStrategy<String> {
    prop_oneof![
        Just(String::new()),
        "[a-z]{1,6}",
        any::<String>(),
        "[a-z]{0,3}[\\x00-\\x1f\\x7f\\u{80}-\\u{9f}][a-z]{0,3}",
        "[\\u{202e}\\u{fffd}\\u{1f600}é ]{1,4}",
        (257usize..400).prop_map(|n| "x".repeat(n)),
    ]
    .boxed()
}

/// Mostly `good`, sometimes `bad`: a request with one or two bad fields is refused, and one
/// without is accepted, so both answers are exercised.
fn mostly<T: std::fmt::Debug + 'static>(
    good: impl Strategy<Value = T> + 'static,
    bad: impl Strategy<Value = T> + 'static,
) -> BoxedStrategy<T> {
    prop_oneof![20 => good, 1 => bad].boxed()
}

/// A name: mostly plain, sometimes arbitrary.
fn name() -> BoxedStrategy<String> {
    mostly("[a-z]{1,6}", text())
}

/// Milliseconds: mostly the default or small; sometimes past every limit or the extremes.
fn millis() -> BoxedStrategy<u64> {
    mostly(
        prop_oneof![Just(0u64), 1u64..300],
        prop_oneof![Just(10u64.pow(16)), Just(u64::MAX), any::<u64>()],
    )
}

fn retry_policy() -> impl Strategy<Value = Option<proto::RetryPolicy>> {
    let policy = (
        mostly(prop_oneof![Just(0u32), 1u32..4], Just(u32::MAX)),
        millis(),
        millis(),
    )
        .prop_map(
            |(max_attempts, initial_backoff_ms, max_backoff_ms)| proto::RetryPolicy {
                max_attempts,
                initial_backoff_ms,
                max_backoff_ms,
            },
        );
    prop_oneof![2 => Just(None), 1 => policy.prop_map(Some)]
}

/// (service, endpoint): the registered service, the participant, bad ports, arbitrary text.
fn target(p: &str) -> BoxedStrategy<(String, String)> {
    let port = p.rsplit(':').next().unwrap().to_string();
    mostly(
        prop_oneof![
            Just(("svc".to_string(), String::new())),
            Just((String::new(), p.to_string())),
        ],
        prop_oneof![
            prop_oneof![Just("99999"), Just("-1"), Just("0"), Just("65536")]
                .prop_map(|bad| (String::new(), format!("http://127.0.0.1:{bad}"))),
            Just((String::new(), format!("http://127.0.0.1:{port}/x?y#z"))),
            (text(), text()),
        ],
    )
}

fn saga_step(p: &str) -> impl Strategy<Value = proto::SagaStep> {
    (
        name(),
        target(p),
        mostly(
            prop_oneof![3 => Just("ok".to_string()), 1 => Just("fail".to_string())],
            text(),
        ),
        mostly(
            prop_oneof![Just(String::new()), Just("undo".to_string())],
            text(),
        ),
        mostly(
            proptest::collection::vec(any::<u8>(), 0..16),
            Just(vec![0u8; (1 << 20) + 1]),
        ),
        mostly(0i32..2, prop_oneof![0i32..4, any::<i32>()]),
        mostly(0u32..3, Just(u32::MAX)),
        millis(),
        retry_policy(),
    )
        .prop_map(
            |(
                name,
                (service, endpoint),
                action,
                compensate,
                payload,
                kind,
                stage,
                timeout_ms,
                retry,
            )| {
                let mut s = proto::SagaStep {
                    name,
                    service,
                    endpoint,
                    action,
                    compensate,
                    payload,
                    kind,
                    stage,
                    timeout_ms,
                    retry,
                };
                // A retriable step is retried until it succeeds: give it one that does, so that
                // an accepted saga reaches an outcome within the test.
                if kind == proto::StepKind::Retriable as i32 {
                    s.action = "ok".into();
                    s.timeout_ms = 0;
                }
                s
            },
        )
}

fn two_phase_branch(p: &str) -> impl Strategy<Value = proto::TwoPhaseBranch> {
    (
        name(),
        target(p),
        // Phase two never gives up, so an accepted branch's action must be one the participant
        // knows (it refuses unknown ones for ever); the others are refused at the API.
        mostly(
            prop_oneof![3 => Just("yes".to_string()), 1 => Just("no".to_string())],
            prop_oneof![
                Just(String::new()),
                "[a-z]{0,3}[\\x00-\\x1f][a-z]{0,3}",
                Just("y".repeat(300)),
            ],
        ),
        proptest::collection::vec(any::<u8>(), 0..16),
        // The same for a call timeout too short to ever be answered in.
        mostly(prop_oneof![Just(0u64), 300u64..1000], Just(u64::MAX)),
        retry_policy(),
    )
        .prop_map(
            |(name, (service, endpoint), action, payload, timeout_ms, retry)| {
                proto::TwoPhaseBranch {
                    name,
                    service,
                    endpoint,
                    action,
                    payload,
                    timeout_ms,
                    retry,
                }
            },
        )
}

fn start_request(p: &str) -> impl Strategy<Value = StartRequest> {
    let definition = prop_oneof![
        8 => proptest::collection::vec(saga_step(p), 1..4)
            .prop_map(|steps| Some(Definition::Saga(proto::Saga { steps }))),
        4 => (
            proptest::collection::vec(two_phase_branch(p), 1..3),
            mostly(prop_oneof![Just(0u64), 300u64..1000], Just(u64::MAX)),
        )
            .prop_map(|(branches, prepare_timeout_ms)| {
                Some(Definition::TwoPhase(proto::TwoPhase {
                    branches,
                    prepare_timeout_ms,
                }))
            }),
        1 => Just(None),
        1 => Just(Some(Definition::Saga(proto::Saga { steps: vec![] }))),
    ];
    (
        definition,
        prop_oneof![2 => Just(String::new()), 1 => "[a-c]{1,2}", 1 => text()],
        proptest::collection::hash_map(name(), mostly("[a-z0-9]{0,4}", text()), 0..3),
        millis(),
        any::<bool>(),
        millis(),
    )
        .prop_map(
            |(definition, idempotency_key, labels, timeout_ms, wait, wait_timeout_ms)| {
                StartRequest {
                    definition,
                    idempotency_key,
                    labels,
                    timeout_ms,
                    wait,
                    wait_timeout_ms,
                }
            },
        )
}

/// The field paths a refusal of `Start` may begin with.
const FIELDS: &[&str] = &[
    "definition",
    "saga.",
    "two_phase.",
    "labels",
    "idempotency_key",
    "timeout_ms",
    "request",
];

/// How the arbitrary Starts went, to show that both kinds of answer were exercised.
#[derive(Default)]
struct Tally {
    refused: u32,
    accepted: u32,
}

/// One arbitrary `Start`: refused naming a field, or accepted and brought to rest.
async fn check_one(
    c: &mut CoordinatorClient<Channel>,
    req: StartRequest,
    tally: &Mutex<Tally>,
) -> Result<(), TestCaseError> {
    match c.start(req).await {
        Err(status) => {
            tally.lock().unwrap().refused += 1;
            prop_assert!(
                matches!(
                    status.code(),
                    Code::InvalidArgument | Code::ResourceExhausted | Code::AlreadyExists
                ),
                "refused with {status:?}"
            );
            prop_assert!(
                FIELDS.iter().any(|f| status.message().starts_with(f)),
                "the message names no field: {status:?}"
            );
            prop_assert!(status.message().len() < 400, "{status:?}");
        }
        Ok(answer) => {
            tally.lock().unwrap().accepted += 1;
            let answer = answer.into_inner();
            let tx = match answer.transaction {
                Some(tx) if is_resting(&tx) => tx,
                _ => c
                    .wait(proto::WaitRequest {
                        tx_id: answer.tx_id.clone(),
                        timeout_ms: 30_000,
                    })
                    .await
                    .map_err(|e| TestCaseError::fail(format!("wait: {e:?}")))?
                    .into_inner(),
            };
            prop_assert!(is_resting(&tx), "accepted but not brought to rest: {tx:?}");
        }
    }
    Ok(())
}

fn is_resting(tx: &proto::Transaction) -> bool {
    matches!(
        state(tx),
        TxState::Committed | TxState::Compensated | TxState::Aborted | TxState::Failed
    )
}

#[test]
fn arbitrary_starts_are_refused_by_field_or_run_while_valid_ones_all_succeed() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let db = rt.block_on(fresh_database());
    // The arbitrary Starts get a participant of their own: their 1 ms call timeouts can get an
    // endpoint ejected for a while, which must not slow the valid ones down.
    let (p, _ledger) = rt.block_on(participant());
    let (p_valid, _valid_ledger) = rt.block_on(participant());
    let mut co = rt.block_on(coordinator(&db, &[]));
    rt.block_on(register(&mut co.client, "svc", &p, "", 0))
        .expect("register svc");

    // Valid Starts beside the arbitrary ones, bounded in count; every one must commit.
    let stop = Arc::new(AtomicBool::new(false));
    let problems = Arc::new(Mutex::new(Vec::<String>::new()));
    let beside = {
        let (mut c, p, stop, problems) = (
            co.client.clone(),
            p_valid.clone(),
            stop.clone(),
            problems.clone(),
        );
        rt.spawn(async move {
            let mut done = 0u32;
            while !stop.load(Ordering::SeqCst) && done < 500 {
                let mut req = saga(vec![
                    step("reserve", &p, "ok", "undo"),
                    step("charge", &p, "ok", "undo"),
                ]);
                req.wait = true;
                req.wait_timeout_ms = 30_000;
                req.labels = [("valid".to_string(), done.to_string())].into();
                match c.start(req).await {
                    Ok(r) => match r.into_inner().transaction {
                        Some(tx) if state(&tx) == TxState::Committed => {}
                        other => problems.lock().unwrap().push(format!("{other:?}")),
                    },
                    Err(e) => problems.lock().unwrap().push(format!("{e:?}")),
                }
                done += 1;
            }
            done
        })
    };

    let mut runner = TestRunner::new(Config {
        cases: 64,
        max_shrink_iters: 32,
        failure_persistence: None,
        ..Config::default()
    });
    let tally = Mutex::new(Tally::default());
    let result = runner.run(&start_request(&p), |req| {
        let mut c = co.client.clone();
        rt.block_on(check_one(&mut c, req, &tally))
    });
    stop.store(true, Ordering::SeqCst);
    let valid = rt.block_on(beside).unwrap();
    if let Err(e) = result {
        panic!("{e}");
    }
    let problems = problems.lock().unwrap();
    assert!(problems.is_empty(), "valid starts failed: {problems:?}");
    assert!(valid > 0, "no valid start ran beside the arbitrary ones");
    let tally = tally.lock().unwrap();
    eprintln!(
        "arbitrary starts: {} refused, {} accepted; {valid} valid ones beside",
        tally.refused, tally.accepted
    );
    assert!(
        tally.refused > 0 && tally.accepted > 0,
        "both answers exercised"
    );
    rt.block_on(async move { drop(co) });
}

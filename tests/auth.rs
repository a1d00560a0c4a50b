//! Bearer-token auth end to end: a real `baton serve` process with a token per role, every
//! Coordinator RPC called with the right role, no token, a wrong token and another role's token;
//! refused calls change nothing; client namespaces; `baton serve` refusing to start without an
//! auth choice; `baton auth hash-token`, the CLI's `--token` and the SDKs' token options.

mod support;

use std::collections::{BTreeSet, HashMap};
use std::process::Stdio;
use std::sync::atomic::Ordering;

use baton_server::api::auth::{TokenHash, NAMESPACE_LABEL};
use baton_tx::client::Client;
use baton_tx::participant::{Participant, Registration, Reply};
use baton_tx_proto as proto;
use baton_tx_proto::coordinator_client::CoordinatorClient;
use baton_tx_proto::{Saga, SagaStep, StartRequest, TxState};
use tokio::io::AsyncWriteExt;
use tonic::transport::Channel;
use tonic::{Code, Status};

use support::db::{fresh_database, TestDb};
use support::participant::participant;
use support::process::{self, state, until, Coordinator};

const SHOP: &str = "shop-token-0123456789";
const BANK: &str = "bank-token-0123456789";
const OPS: &str = "ops-token-0123456789";
const SVC: &str = "svc-token-0123456789";
const WRONG: &str = "not-a-configured-token";

/// Every RPC of `baton.v1.Coordinator`, with the token that holds its role and tokens that do
/// not.
const METHODS: &[(&str, &str, &[&str])] = &[
    ("Start", SHOP, &[OPS, SVC]),
    ("Get", SHOP, &[OPS, SVC]),
    ("Wait", SHOP, &[OPS, SVC]),
    ("Watch", SHOP, &[OPS, SVC]),
    ("List", OPS, &[SHOP, SVC]),
    ("Events", OPS, &[SHOP, SVC]),
    ("Retry", OPS, &[SHOP, SVC]),
    ("Cancel", OPS, &[SHOP, SVC]),
    ("ListParticipants", OPS, &[SHOP, SVC]),
    ("ListCoordinators", OPS, &[SHOP, SVC]),
    ("Purge", OPS, &[SHOP, SVC]),
    ("RegisterParticipant", SVC, &[SHOP, OPS]),
    ("HeartbeatParticipant", SVC, &[SHOP, OPS]),
    ("DeregisterParticipant", SVC, &[SHOP, OPS]),
];

/// A coordinator with four tokens: `shop` and `bank` clients in their own namespaces, `ops`
/// operator and `svc` participant. The shop token's hash comes from `baton auth hash-token`.
async fn secured(db: &TestDb) -> Coordinator {
    let shop_hash = hash_token_cli(SHOP).await;
    let tokens = [
        format!("shop:client:shop={shop_hash}"),
        format!("bank:client:bank={}", TokenHash::of(BANK)),
        format!("ops:operator={}", TokenHash::of(OPS)),
        format!("svc:participant={}", TokenHash::of(SVC)),
    ];
    let mut extra = Vec::new();
    for t in &tokens {
        extra.push("--auth-token");
        extra.push(t.as_str());
    }
    process::coordinator(&db.url, "auth-1", &extra, &[]).await
}

/// `echo TOKEN | baton auth hash-token`.
async fn hash_token_cli(token: &str) -> String {
    let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_baton"))
        .args(["auth", "hash-token"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("run baton auth hash-token");
    let mut stdin = child.stdin.take().unwrap();
    stdin
        .write_all(format!("{token}\n").as_bytes())
        .await
        .unwrap();
    drop(stdin);
    let out = child.wait_with_output().await.unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let hash = String::from_utf8(out.stdout).unwrap().trim().to_string();
    assert_eq!(hash, TokenHash::of(token).to_string());
    hash
}

fn req<T>(message: T, token: Option<&str>) -> tonic::Request<T> {
    let mut request = tonic::Request::new(message);
    if let Some(token) = token {
        request
            .metadata_mut()
            .insert("authorization", format!("Bearer {token}").parse().unwrap());
    }
    request
}

fn saga(endpoint: &str, action: &str, compensate: &str) -> StartRequest {
    StartRequest {
        definition: Some(proto::start_request::Definition::Saga(Saga {
            steps: vec![SagaStep {
                name: "only".into(),
                endpoint: endpoint.into(),
                action: action.into(),
                compensate: compensate.into(),
                ..Default::default()
            }],
        })),
        ..Default::default()
    }
}

/// Calls `method` with `token`, on the transaction `tx_id`; `Ok` when the server answered
/// anything but an error status.
async fn call(
    c: &mut CoordinatorClient<Channel>,
    method: &str,
    token: Option<&str>,
    tx_id: &str,
    endpoint: &str,
) -> Result<(), Status> {
    let tx_id = tx_id.to_string();
    let probe = "http://127.0.0.1:9".to_string();
    match method {
        "Start" => c
            .start(req(saga(endpoint, "ok", ""), token))
            .await
            .map(drop),
        "Get" => c
            .get(req(proto::GetRequest { tx_id }, token))
            .await
            .map(drop),
        "Wait" => {
            let message = proto::WaitRequest {
                tx_id,
                timeout_ms: 1000,
            };
            c.wait(req(message, token)).await.map(drop)
        }
        "Watch" => c
            .watch(req(proto::WatchRequest { tx_id }, token))
            .await
            .map(drop),
        "List" => c
            .list(req(proto::ListRequest::default(), token))
            .await
            .map(drop),
        "Events" => {
            let message = proto::EventsRequest {
                tx_id,
                ..Default::default()
            };
            c.events(req(message, token)).await.map(drop)
        }
        "Retry" => c
            .retry(req(proto::RetryRequest { tx_id }, token))
            .await
            .map(drop),
        "Cancel" => {
            let message = proto::CancelRequest {
                tx_id,
                reason: "probe".into(),
            };
            c.cancel(req(message, token)).await.map(drop)
        }
        "ListParticipants" => c
            .list_participants(req(proto::ListParticipantsRequest::default(), token))
            .await
            .map(drop),
        "ListCoordinators" => c
            .list_coordinators(req(proto::ListCoordinatorsRequest {}, token))
            .await
            .map(drop),
        "Purge" => {
            // A purge of what finished 50 years ago deletes nothing the test relies on.
            let message = proto::PurgeRequest {
                older_than_ms: 50 * 365 * 24 * 3600 * 1000,
                batch: 1,
            };
            c.purge(req(message, token)).await.map(drop)
        }
        "RegisterParticipant" => {
            let message = proto::RegisterParticipantRequest {
                service: "probe".into(),
                endpoint: probe,
                weight: 1,
                zone: String::new(),
                ttl_ms: 60_000,
            };
            c.register_participant(req(message, token)).await.map(drop)
        }
        "HeartbeatParticipant" => {
            let message = proto::HeartbeatParticipantRequest {
                service: "probe".into(),
                endpoint: probe,
                ttl_ms: 60_000,
            };
            c.heartbeat_participant(req(message, token)).await.map(drop)
        }
        "DeregisterParticipant" => {
            let message = proto::DeregisterParticipantRequest {
                service: "probe".into(),
                endpoint: probe,
            };
            c.deregister_participant(req(message, token))
                .await
                .map(drop)
        }
        other => panic!("no probe for {other}"),
    }
}

/// Every transaction, as an operator lists them: (id, state, number of events).
async fn snapshot(c: &mut CoordinatorClient<Channel>) -> Vec<(String, i32, u64)> {
    let list = c
        .list(req(proto::ListRequest::default(), Some(OPS)))
        .await
        .unwrap()
        .into_inner();
    let mut out = Vec::new();
    for tx in list.transactions {
        let events = c
            .events(req(
                proto::EventsRequest {
                    tx_id: tx.tx_id.clone(),
                    ..Default::default()
                },
                Some(OPS),
            ))
            .await
            .unwrap()
            .into_inner()
            .events;
        out.push((tx.tx_id, tx.state, events.len() as u64));
    }
    out
}

async fn start_as(
    c: &mut CoordinatorClient<Channel>,
    token: &str,
    request: StartRequest,
) -> String {
    c.start(req(request, Some(token)))
        .await
        .unwrap()
        .into_inner()
        .tx_id
}

async fn wait_as(c: &mut CoordinatorClient<Channel>, token: &str, id: &str) -> proto::Transaction {
    let message = proto::WaitRequest {
        tx_id: id.into(),
        timeout_ms: 30_000,
    };
    c.wait(req(message, Some(token)))
        .await
        .unwrap()
        .into_inner()
}

#[tokio::test]
async fn every_rpc_is_checked_for_its_role() {
    // The table above covers exactly the RPCs the proto declares.
    let proto_rpcs: BTreeSet<&str> = include_str!("../proto/baton/v1/coordinator.proto")
        .lines()
        .filter_map(|l| l.trim().strip_prefix("rpc "))
        .filter_map(|l| l.split('(').next())
        .map(str::trim)
        .collect();
    let tested: BTreeSet<&str> = METHODS.iter().map(|(m, _, _)| *m).collect();
    assert_eq!(proto_rpcs, tested);

    let db = fresh_database().await;
    let co = secured(&db).await;
    let mut c = co.client.clone();
    let (endpoint, _ledger) = participant().await;
    let tx = start_as(&mut c, SHOP, saga(&endpoint, "ok", "")).await;
    assert_eq!(state(&wait_as(&mut c, SHOP, &tx).await), TxState::Committed);

    for (method, allowed, others) in METHODS {
        if let Err(status) = call(&mut c, method, Some(allowed), &tx, &endpoint).await {
            assert!(
                !matches!(
                    status.code(),
                    Code::Unauthenticated | Code::PermissionDenied
                ),
                "{method} with its role: {status:?}"
            );
        }
        for token in [None, Some(WRONG)] {
            let status = call(&mut c, method, token, &tx, &endpoint)
                .await
                .unwrap_err();
            assert_eq!(
                status.code(),
                Code::Unauthenticated,
                "{method} {token:?}: {status:?}"
            );
            assert!(status.message().starts_with("authorization:"), "{status:?}");
        }
        for token in *others {
            let status = call(&mut c, method, Some(token), &tx, &endpoint)
                .await
                .unwrap_err();
            assert_eq!(
                status.code(),
                Code::PermissionDenied,
                "{method} {token}: {status:?}"
            );
            assert!(status.message().contains(method), "{status:?}");
            assert!(
                !status.message().contains(token),
                "the token leaked: {status:?}"
            );
        }
    }

    // A method the table does not know is refused, not passed through.
    let mut grpc = tonic::client::Grpc::new(
        Channel::from_shared(co.endpoint.clone())
            .unwrap()
            .connect()
            .await
            .unwrap(),
    );
    for (token, code) in [
        (None, Code::Unauthenticated),
        (Some(OPS), Code::PermissionDenied),
    ] {
        grpc.ready().await.unwrap();
        let status = grpc
            .unary::<_, proto::Transaction, _>(
                req(proto::GetRequest { tx_id: tx.clone() }, token),
                "/baton.v1.Coordinator/Unknown".parse().unwrap(),
                tonic_prost::ProstCodec::default(),
            )
            .await
            .unwrap_err();
        assert_eq!(status.code(), code, "{status:?}");
    }
}

#[tokio::test]
async fn refused_calls_change_nothing() {
    let db = fresh_database().await;
    let co = secured(&db).await;
    let mut c = co.client.clone();
    let (endpoint, ledger) = participant().await;

    // A saga held in flight by the participant, and one whose compensation keeps failing.
    ledger.gate_closed.store(true, Ordering::SeqCst);
    let mut gated = saga(&endpoint, "gated", "undo");
    // The gated call must stay in flight while the refused calls below run: with the default
    // test timeout (2 s) a busy machine would see it time out and retry, which changes the log.
    if let Some(proto::start_request::Definition::Saga(saga)) = &mut gated.definition {
        saga.steps[0].timeout_ms = 300_000;
    }
    let running = start_as(&mut c, SHOP, gated).await;
    ledger.broken.store(true, Ordering::SeqCst);
    let two_steps = StartRequest {
        definition: Some(proto::start_request::Definition::Saga(Saga {
            steps: vec![
                SagaStep {
                    name: "first".into(),
                    endpoint: endpoint.clone(),
                    action: "ok".into(),
                    compensate: "undo_broken".into(),
                    ..Default::default()
                },
                SagaStep {
                    name: "second".into(),
                    endpoint: endpoint.clone(),
                    action: "fail".into(),
                    stage: 1,
                    ..Default::default()
                },
            ],
        })),
        ..Default::default()
    };
    let failed = start_as(&mut c, SHOP, two_steps).await;
    assert_eq!(
        state(&wait_as(&mut c, SHOP, &failed).await),
        TxState::Failed
    );
    until("the gated step to be in flight", || {
        ledger.in_flight_at_gate() == 1
    })
    .await;

    // The driver holds the gated step's `sent` event for up to --progress-flush-ms before it
    // reaches the log; take the snapshot once it is there, so only a refused call could move it.
    let mut before = snapshot(&mut c).await;
    for _ in 0..500 {
        if before
            .iter()
            .any(|(id, _, events)| *id == running && *events >= 2)
        {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        before = snapshot(&mut c).await;
    }
    assert_eq!(before.len(), 2);
    assert!(
        before
            .iter()
            .any(|(id, _, events)| *id == running && *events >= 2),
        "the gated step's send never reached the log: {before:?}"
    );
    for token in [None, Some(WRONG), Some(OPS), Some(SVC)] {
        let err = c
            .start(req(saga(&endpoint, "ok", ""), token))
            .await
            .unwrap_err();
        assert!(matches!(
            err.code(),
            Code::Unauthenticated | Code::PermissionDenied
        ));
    }
    for token in [None, Some(WRONG), Some(SHOP), Some(SVC)] {
        for id in [&running, &failed] {
            let cancel = proto::CancelRequest {
                tx_id: id.to_string(),
                reason: String::new(),
            };
            let err = c.cancel(req(cancel, token)).await.unwrap_err();
            assert!(matches!(
                err.code(),
                Code::Unauthenticated | Code::PermissionDenied
            ));
            let retry = proto::RetryRequest {
                tx_id: id.to_string(),
            };
            let err = c.retry(req(retry, token)).await.unwrap_err();
            assert!(matches!(
                err.code(),
                Code::Unauthenticated | Code::PermissionDenied
            ));
        }
    }
    assert_eq!(
        snapshot(&mut c).await,
        before,
        "a refused call changed something"
    );

    // The same calls with the operator's token do take effect (so the snapshot can tell).
    ledger.broken.store(false, Ordering::SeqCst);
    c.retry(req(
        proto::RetryRequest {
            tx_id: failed.clone(),
        },
        Some(OPS),
    ))
    .await
    .unwrap();
    // Retry answers once the retry is recorded; the state leaves `failed` just after.
    let mut now = TxState::Failed;
    for _ in 0..500 {
        now = state(&wait_as(&mut c, SHOP, &failed).await);
        if now != TxState::Failed {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    assert_eq!(now, TxState::Compensated);
    c.cancel(req(
        proto::CancelRequest {
            tx_id: running.clone(),
            reason: "operator".into(),
        },
        Some(OPS),
    ))
    .await
    .unwrap();
    ledger.gate_closed.store(false, Ordering::SeqCst);
    assert_eq!(
        state(&wait_as(&mut c, SHOP, &running).await),
        TxState::Compensated
    );
}

#[tokio::test]
async fn client_tokens_see_only_their_namespace() {
    let db = fresh_database().await;
    let co = secured(&db).await;
    let mut c = co.client.clone();
    let (endpoint, _ledger) = participant().await;

    let mut shop_saga = saga(&endpoint, "ok", "");
    shop_saga.idempotency_key = "order-1".into();
    let shop_tx = start_as(&mut c, SHOP, shop_saga.clone()).await;
    let bank_tx = start_as(&mut c, BANK, saga(&endpoint, "ok", "")).await;
    let shop_view = wait_as(&mut c, SHOP, &shop_tx).await;
    assert_eq!(
        shop_view.labels.get(NAMESPACE_LABEL).map(String::as_str),
        Some("shop")
    );
    assert_eq!(
        state(&wait_as(&mut c, BANK, &bank_tx).await),
        TxState::Committed
    );

    // Another namespace's transaction answers exactly like an unknown one.
    let unknown = baton_server::model::TxId::new().to_string();
    for (token, theirs) in [(SHOP, &bank_tx), (BANK, &shop_tx)] {
        let known = c
            .get(req(
                proto::GetRequest {
                    tx_id: theirs.to_string(),
                },
                Some(token),
            ))
            .await
            .unwrap_err();
        assert_eq!(known.code(), Code::NotFound, "{known:?}");
        assert_eq!(known.message(), format!("transaction {theirs} not found"));
        let absent = c
            .get(req(
                proto::GetRequest {
                    tx_id: unknown.clone(),
                },
                Some(token),
            ))
            .await
            .unwrap_err();
        assert_eq!(absent.message(), format!("transaction {unknown} not found"));
        let wait = proto::WaitRequest {
            tx_id: theirs.to_string(),
            timeout_ms: 1000,
        };
        assert_eq!(
            c.wait(req(wait, Some(token))).await.unwrap_err().code(),
            Code::NotFound
        );
        let watch = proto::WatchRequest {
            tx_id: theirs.to_string(),
        };
        assert_eq!(
            c.watch(req(watch, Some(token))).await.unwrap_err().code(),
            Code::NotFound
        );
    }

    // A client cannot place a transaction in another namespace.
    let mut spoof = saga(&endpoint, "ok", "");
    spoof.labels = HashMap::from([(NAMESPACE_LABEL.to_string(), "bank".to_string())]);
    let before = snapshot(&mut c).await;
    let err = c.start(req(spoof, Some(SHOP))).await.unwrap_err();
    assert_eq!(err.code(), Code::PermissionDenied);
    assert!(
        err.message().starts_with("labels[\"baton.namespace\"]"),
        "{err:?}"
    );
    // Nor reach one through another namespace's idempotency key.
    let err = c
        .start(req(shop_saga.clone(), Some(BANK)))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::AlreadyExists);
    assert!(!err.message().contains(&shop_tx), "{err:?}");
    assert_eq!(snapshot(&mut c).await, before);
    // Its own key still answers with its own transaction.
    let again = c
        .start(req(shop_saga, Some(SHOP)))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        (again.tx_id.as_str(), again.created),
        (shop_tx.as_str(), false)
    );

    // The operator sees every namespace, and can filter by one.
    let mut list = proto::ListRequest::default();
    list.labels.insert(NAMESPACE_LABEL.into(), "bank".into());
    let found = c.list(req(list, Some(OPS))).await.unwrap().into_inner();
    let ids: Vec<&str> = found
        .transactions
        .iter()
        .map(|t| t.tx_id.as_str())
        .collect();
    assert_eq!(ids, [bank_tx.as_str()]);
}

#[tokio::test]
async fn sdks_and_cli_send_their_tokens() {
    let db = fresh_database().await;
    let co = secured(&db).await;
    let (endpoint, _ledger) = participant().await;

    // Participant SDK: registration needs the participant role.
    let server = Participant::new()
        .on_execute("ok", |_req| async move { Ok(Reply::ok()) })
        .serve("127.0.0.1:0")
        .await
        .unwrap();
    let refused = server
        .register(Registration::new(co.endpoint.clone(), "svc-a"))
        .await
        .unwrap_err();
    assert!(refused.to_string().contains("authorization"), "{refused}");
    server
        .register(Registration::new(co.endpoint.clone(), "svc-a").token(SVC))
        .await
        .unwrap();

    // Client SDK.
    let sdk_saga = || {
        baton_tx::client::Saga::new()
            .step(baton_tx::client::Step::to_endpoint("only", &endpoint).action("ok"))
    };
    let anonymous = Client::connect(co.endpoint.clone()).await.unwrap();
    let err = anonymous.start(sdk_saga()).await.unwrap_err();
    assert_eq!(err.code(), Code::Unauthenticated);
    let shop = anonymous.clone().with_token(SHOP).unwrap();
    let tx = shop.run(sdk_saga()).await.unwrap();
    assert_eq!(tx.state, baton_tx::client::TxState::Committed);
    let tx_id = tx.id.to_string();
    assert!(format!("{shop:?}").contains("redacted") && !format!("{shop:?}").contains(SHOP));
    assert_eq!(
        anonymous.with_token("has space").unwrap_err().code(),
        Code::InvalidArgument
    );
    let ops = Client::connect(co.endpoint.clone())
        .await
        .unwrap()
        .with_token(OPS)
        .unwrap();
    let services: Vec<String> = ops
        .list_participants(None)
        .await
        .unwrap()
        .into_iter()
        .map(|p| p.service)
        .collect();
    assert_eq!(services, ["svc-a"]);

    // CLI: --token, BATON_TOKEN, and a clear refusal without one.
    let cli = |args: &[&str], env: Option<&str>| {
        let mut command = std::process::Command::new(env!("CARGO_BIN_EXE_baton"));
        command
            .args(args)
            .args(["--addr", &co.endpoint, "--json"])
            .env_remove("BATON_TOKEN");
        if let Some(token) = env {
            command.env("BATON_TOKEN", token);
        }
        command.output().unwrap()
    };
    let out = cli(&["tx", "show", &tx_id, "--token", OPS], None);
    assert!(
        !out.status.success(),
        "show also needs the client role (Get)"
    );
    let out = cli(&["tx", "events", &tx_id, "--token", OPS], None);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = cli(&["tx", "list"], Some(OPS));
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains(&tx_id));
    // Several times: the coordinator may refuse the call before the CLI has sent its body, and
    // the refusal must still be what the CLI reports (not the failed send).
    for _ in 0..5 {
        let out = cli(&["tx", "list"], None);
        assert!(!out.status.success());
        assert!(
            String::from_utf8_lossy(&out.stderr).contains("UNAUTHENTICATED"),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    server.shutdown().await;
}

#[tokio::test]
async fn serve_refuses_to_start_without_an_auth_choice() {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}", dir.path().join("baton.db").display());
    let serve = |extra: &[&str]| {
        let mut command = std::process::Command::new(env!("CARGO_BIN_EXE_baton"));
        command
            .args([
                "serve",
                "--database-url",
                &url,
                "--listen",
                "127.0.0.1:0",
                "--http-listen",
                "off",
            ])
            .args(extra)
            .env_remove("BATON_NO_AUTH")
            .env_remove("BATON_AUTH_TOKENS")
            .env_remove("BATON_AUTH_TOKENS_FILE")
            .env_remove("BATON_CONFIG")
            .stdin(Stdio::null());
        command.output().unwrap()
    };
    let out = serve(&[]);
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    for needed in [
        "no authentication configured",
        "--auth-token",
        "--auth-tokens-file",
        "baton auth hash-token",
        "--no-auth",
    ] {
        assert!(stderr.contains(needed), "{needed}: {stderr}");
    }
    assert!(out.stdout.is_empty(), "it must not have started");

    // A plain token where the hash belongs is refused without being printed.
    let out = serve(&["--auth-token", "app:client=hunter2-secret"]);
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("sha256:") && !stderr.contains("hunter2"),
        "{stderr}"
    );
    assert!(!dir.path().join("baton.db").exists(), "nothing was opened");
}

#[tokio::test]
async fn hash_token_generates_a_token_and_its_hash() {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_baton"))
        .args(["auth", "hash-token", "--generate"])
        .output()
        .unwrap();
    assert!(out.status.success());
    let text = String::from_utf8(out.stdout).unwrap();
    let field = |name: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix(name))
            .map(|v| v.trim().to_string())
            .unwrap_or_else(|| panic!("no {name} in {text}"))
    };
    let token = field("token:");
    assert_eq!(token.len(), 64);
    assert_eq!(field("hash:"), TokenHash::of(&token).to_string());
}

//! The HTTP/JSON client API on the coordinator's HTTP port, end to end: a real `baton serve`
//! process, real participants, plain HTTP/1 over loopback with a small client written here.

mod support;

use std::sync::atomic::Ordering;
use std::time::Duration;

use baton_server::api::auth::TokenHash;
use serde_json::{json, Value};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;

use support::db::fresh_database;
use support::participant::participant;
use support::process::{self, http_response};

/// One HTTP/1.0 exchange (the server closes the connection after the response, so no chunked
/// decoding is needed): the status and the body parsed as JSON (`Null` when it is not JSON).
async fn call(
    addr: &str,
    method: &str,
    path: &str,
    token: Option<&str>,
    body: Option<&str>,
) -> (u16, Value) {
    let (status, text) = call_text(addr, method, path, token, body).await;
    (status, serde_json::from_str(&text).unwrap_or(Value::Null))
}

async fn call_text(
    addr: &str,
    method: &str,
    path: &str,
    token: Option<&str>,
    body: Option<&str>,
) -> (u16, String) {
    let mut head = format!("{method} {path} HTTP/1.0\r\nHost: {addr}\r\n");
    if let Some(token) = token {
        head.push_str(&format!("Authorization: Bearer {token}\r\n"));
    }
    let body = body.unwrap_or("");
    if !body.is_empty() || method == "POST" {
        head.push_str(&format!(
            "Content-Type: application/json\r\nContent-Length: {}\r\n",
            body.len()
        ));
    }
    head.push_str("\r\n");
    let mut stream = TcpStream::connect(addr).await.expect("connect");
    stream.write_all(head.as_bytes()).await.expect("send head");
    stream.write_all(body.as_bytes()).await.expect("send body");
    let mut bytes = Vec::new();
    tokio::time::timeout(Duration::from_secs(60), stream.read_to_end(&mut bytes))
        .await
        .expect("an answer within 60 s")
        .expect("read the answer");
    http_response(&String::from_utf8_lossy(&bytes))
}

fn post(addr: &str, path: &str, body: Value) -> impl std::future::Future<Output = (u16, Value)> {
    let (addr, path, body) = (addr.to_string(), path.to_string(), body.to_string());
    async move { call(&addr, "POST", &path, None, Some(&body)).await }
}

async fn get(addr: &str, path: &str) -> (u16, Value) {
    call(addr, "GET", path, None, None).await
}

/// A saga step for the JSON API.
fn step(name: &str, endpoint: &str, action: &str, compensate: &str, stage: u32) -> Value {
    json!({"name": name, "endpoint": endpoint, "action": action, "compensate": compensate,
           "stage": stage})
}

/// One Server-Sent Event as read.
#[derive(Debug, Clone, PartialEq)]
struct Sse {
    id: u64,
    event: String,
    data: Value,
}

/// Reads a watch stream to its end: its status and events.
async fn watch(addr: &str, id: &str, last_event_id: Option<u64>) -> (u16, Vec<Sse>) {
    let mut head = format!("GET /v1/transactions/{id}/watch HTTP/1.0\r\nHost: {addr}\r\n");
    if let Some(last) = last_event_id {
        head.push_str(&format!("Last-Event-ID: {last}\r\n"));
    }
    head.push_str("\r\n");
    let mut stream = TcpStream::connect(addr).await.expect("connect");
    stream.write_all(head.as_bytes()).await.expect("send");
    let mut lines = BufReader::new(stream).lines();
    let read = async {
        let status_line = lines.next_line().await.unwrap().unwrap_or_default();
        let status: u16 = status_line
            .split_whitespace()
            .nth(1)
            .and_then(|s| s.parse().ok())
            .unwrap_or(0);
        while let Some(line) = lines.next_line().await.unwrap() {
            if line.is_empty() {
                break;
            }
        }
        let mut events = Vec::new();
        let (mut id, mut event, mut data) = (None, None, String::new());
        while let Some(line) = lines.next_line().await.unwrap() {
            if line.is_empty() {
                if let (Some(id), Some(event)) = (id.take(), event.take()) {
                    events.push(Sse {
                        id,
                        event,
                        data: serde_json::from_str(&data).expect("event data is JSON"),
                    });
                }
                data.clear();
            } else if let Some(v) = line.strip_prefix("id: ") {
                id = v.parse().ok();
            } else if let Some(v) = line.strip_prefix("event: ") {
                event = Some(v.to_string());
            } else if let Some(v) = line.strip_prefix("data: ") {
                data.push_str(v);
            }
        }
        (status, events)
    };
    tokio::time::timeout(Duration::from_secs(60), read)
        .await
        .expect("the stream ends within 60 s")
}

#[tokio::test]
async fn sagas_two_phase_and_reads_over_http() {
    let db = fresh_database().await;
    let (p, ledger) = participant().await;
    let co = process::coordinator(&db.url, "http-1", &[], &[]).await;
    let h = co.http.as_str();

    // A saga that commits, with a JSON payload the participant receives as JSON text.
    let (status, body) = post(
        h,
        "/v1/transactions",
        json!({
            "saga": {"steps": [
                {"name": "reserve", "endpoint": p, "action": "ok", "compensate": "undo",
                 "payload": {"sleep_ms": 1}, "kind": "compensatable"},
                step("charge", &p, "ok", "undo", 1),
            ]},
            "labels": {"shop": "north"},
            "idempotency_key": "order-1",
            "wait": true,
        }),
    )
    .await;
    assert_eq!(status, 201, "{body}");
    assert_eq!(body["created"], true);
    let committed = body["tx_id"].as_str().unwrap().to_string();
    let tx = &body["transaction"];
    assert_eq!(tx["state"], "committed", "{tx}");
    assert_eq!(tx["kind"], "saga");
    assert_eq!(tx["labels"]["shop"], "north");
    assert_eq!(tx["branches"][0]["kind"], "compensatable");
    assert_eq!(tx["branches"][1]["output"], Value::Null, "not JSON text");
    assert!(tx["created_at"].as_str().unwrap().ends_with('Z'), "{tx}");
    assert_eq!(ledger.times_applied(&committed, 1, "execute"), 1);

    // The same idempotency key answers the same transaction, with 200.
    let (status, again) = post(
        h,
        "/v1/transactions",
        json!({"saga": {"steps": [
                {"name": "reserve", "endpoint": p, "action": "ok", "compensate": "undo",
                 "payload": {"sleep_ms": 1}, "kind": "compensatable"},
                step("charge", &p, "ok", "undo", 1)]},
               "labels": {"shop": "north"}, "idempotency_key": "order-1"}),
    )
    .await;
    assert_eq!(
        (status, &again["tx_id"], &again["created"]),
        (200, &json!(committed), &json!(false))
    );

    // A saga whose second step fails compensates the first.
    let (status, body) = post(
        h,
        "/v1/transactions",
        json!({"saga": {"steps": [step("reserve", &p, "ok", "undo", 0),
                                   step("charge", &p, "fail", "undo", 1)]},
               "labels": {"shop": "south"}, "wait": true}),
    )
    .await;
    assert_eq!(status, 201, "{body}");
    assert_eq!(body["transaction"]["state"], "compensated", "{body}");
    let compensated = body["tx_id"].as_str().unwrap().to_string();
    assert_eq!(ledger.times_applied(&compensated, 0, "compensate"), 1);

    // A two-phase commit; its payload in base64.
    let (status, body) = post(
        h,
        "/v1/transactions",
        json!({"two_phase": {"branches": [
                   {"name": "a", "endpoint": p, "action": "yes", "payload_base64": "e30="},
                   {"name": "b", "endpoint": p, "action": "yes"}]},
               "labels": {"shop": "north"}, "wait": true, "wait_timeout_ms": 30000}),
    )
    .await;
    assert_eq!(status, 201, "{body}");
    assert_eq!(body["transaction"]["kind"], "two_phase");
    assert_eq!(body["transaction"]["state"], "committed", "{body}");
    let two_phase = body["tx_id"].as_str().unwrap().to_string();
    assert_eq!(ledger.times_applied(&two_phase, 1, "commit"), 1);

    // Get, wait and events.
    let (status, tx) = get(h, &format!("/v1/transactions/{compensated}")).await;
    assert_eq!((status, &tx["state"]), (200, &json!("compensated")), "{tx}");
    let (status, tx) = get(
        h,
        &format!("/v1/transactions/{two_phase}/wait?timeout_ms=1000"),
    )
    .await;
    assert_eq!((status, &tx["state"]), (200, &json!("committed")), "{tx}");
    let (status, events) = get(h, &format!("/v1/transactions/{committed}/events")).await;
    assert_eq!(status, 200, "{events}");
    let events = events["events"].as_array().unwrap();
    assert_eq!(events[0]["kind"], "accepted");
    assert_eq!(events[0]["branch"], Value::Null);
    assert_eq!(events.last().unwrap()["kind"], "committed");
    let seqs: Vec<u64> = events.iter().map(|e| e["seq"].as_u64().unwrap()).collect();
    assert_eq!(seqs, (1..=seqs.len() as u64).collect::<Vec<_>>());
    let (_, later) = get(
        h,
        &format!("/v1/transactions/{committed}/events?after_seq=2&limit=1"),
    )
    .await;
    assert_eq!(later["events"][0]["seq"], 3, "{later}");
    assert_eq!(later["events"].as_array().unwrap().len(), 1);

    // List: filters by state and label, pages newest first.
    let (status, page) = get(h, "/v1/transactions?state=committed&label=shop%3Dnorth").await;
    assert_eq!(status, 200, "{page}");
    let ids: Vec<&str> = page["transactions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["tx_id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, [two_phase.as_str(), committed.as_str()]);
    assert_eq!(page["next_page_token"], Value::Null);
    let (_, page) = get(
        h,
        "/v1/transactions?state=committed,compensated&page_size=2",
    )
    .await;
    assert_eq!(page["transactions"].as_array().unwrap().len(), 2, "{page}");
    let token = page["next_page_token"]
        .as_str()
        .expect("a next page")
        .to_string();
    let (_, rest) = get(
        h,
        &format!("/v1/transactions?page_size=2&page_token={token}"),
    )
    .await;
    assert_eq!(rest["transactions"][0]["tx_id"], json!(committed), "{rest}");
    let (_, none) = get(h, "/v1/transactions?created_after=2999-01-01T00:00:00Z").await;
    assert_eq!(none["transactions"], json!([]), "{none}");

    // Participants and coordinators.
    let (status, reg) = post(
        h,
        "/v1/participants",
        json!({"service": "inventory", "endpoint": p, "zone": "a", "ttl_ms": 60000}),
    )
    .await;
    assert_eq!(status, 200, "{reg}");
    assert_eq!(reg["participant"]["zone"], "a");
    let (status, hb) = post(
        h,
        "/v1/participants/heartbeat",
        json!({"service": "inventory", "endpoint": p, "ttl_ms": 60000}),
    )
    .await;
    assert_eq!(status, 200, "{hb}");
    let (_, list) = get(h, "/v1/participants?service=inventory").await;
    assert_eq!(list["participants"][0]["endpoint"], json!(p), "{list}");
    // A saga through the registered service.
    let (status, body) = post(
        h,
        "/v1/transactions",
        json!({"saga": {"steps": [{"name": "s", "service": "inventory", "action": "ok"}]},
               "wait": true}),
    )
    .await;
    assert_eq!(
        (status, &body["transaction"]["state"]),
        (201, &json!("committed")),
        "{body}"
    );
    let (status, gone) = call(
        h,
        "DELETE",
        &format!("/v1/participants?service=inventory&endpoint={p}"),
        None,
        None,
    )
    .await;
    assert_eq!((status, &gone["removed"]), (200, &json!(true)), "{gone}");
    let (_, gone) = post(
        h,
        "/v1/participants/deregister",
        json!({"service": "inventory", "endpoint": p}),
    )
    .await;
    assert_eq!(gone["removed"], false, "{gone}");
    let (status, cos) = get(h, "/v1/coordinators").await;
    assert_eq!(
        (status, &cos["coordinators"][0]["id"]),
        (200, &json!("http-1")),
        "{cos}"
    );

    // Purge: nothing ended an hour ago.
    let (status, purged) = post(h, "/v1/purge", json!({"older_than_ms": 3_600_000})).await;
    assert_eq!((status, &purged["purged"]), (200, &json!(0)), "{purged}");
}

#[tokio::test]
async fn cancel_retry_and_the_event_stream() {
    let db = fresh_database().await;
    let (p, ledger) = participant().await;
    let co = process::coordinator(&db.url, "http-2", &["--default-max-attempts", "3"], &[]).await;
    let h = co.http.as_str();

    // Cancel: a saga held at its first step compensates.
    ledger.gate_closed.store(true, Ordering::SeqCst);
    let (status, body) = post(
        h,
        "/v1/transactions",
        json!({"saga": {"steps": [step("hold", &p, "gated", "undo", 0),
                                   step("next", &p, "ok", "undo", 1)]}}),
    )
    .await;
    assert_eq!(status, 201, "{body}");
    let held = body["tx_id"].as_str().unwrap().to_string();
    process::until("the held step to be called", || {
        ledger.in_flight_at_gate() > 0
    })
    .await;
    let (status, tx) = post(
        h,
        &format!("/v1/transactions/{held}/cancel"),
        json!({"reason": "changed my mind"}),
    )
    .await;
    assert_eq!(
        (status, &tx["state"]),
        (200, &json!("compensating")),
        "{tx}"
    );
    ledger.gate_closed.store(false, Ordering::SeqCst);
    let (_, tx) = get(h, &format!("/v1/transactions/{held}/wait")).await;
    assert_eq!(tx["state"], "compensated", "{tx}");
    // Cancelling it again is a conflict with its state.
    let (status, err) = post(h, &format!("/v1/transactions/{held}/cancel"), json!({})).await;
    assert_eq!(
        (status, &err["code"]),
        (409, &json!("failed_precondition")),
        "{err}"
    );

    // Retry: a compensation that fails until the participant is fixed.
    ledger.broken.store(true, Ordering::SeqCst);
    let (_, body) = post(
        h,
        "/v1/transactions",
        json!({"saga": {"steps": [step("charge", &p, "ok", "undo_broken", 0),
                                   step("ship", &p, "fail", "undo", 1)]}, "wait": true}),
    )
    .await;
    assert_eq!(body["transaction"]["state"], "failed", "{body}");
    let failed = body["tx_id"].as_str().unwrap().to_string();
    ledger.broken.store(false, Ordering::SeqCst);
    let (status, tx) = post(h, &format!("/v1/transactions/{failed}/retry"), json!({})).await;
    assert_eq!(status, 200, "{tx}");
    let (_, tx) = get(h, &format!("/v1/transactions/{failed}/wait")).await;
    assert_eq!(tx["state"], "compensated", "{tx}");

    // The event stream: a saga with steps that take a moment, watched while it runs, ends after
    // its outcome with every event in order, none missing.
    let slow = |name: &str, stage: u32| {
        json!({"name": name, "endpoint": p, "action": "ok", "compensate": "undo",
               "stage": stage, "payload": {"sleep_ms": 150}})
    };
    let (_, body) = post(
        h,
        "/v1/transactions",
        json!({"saga": {"steps": [slow("a", 0), slow("b", 1), slow("c", 2)]}}),
    )
    .await;
    let id = body["tx_id"].as_str().unwrap().to_string();
    let (status, events) = watch(h, &id, None).await;
    assert_eq!(status, 200);
    let seqs: Vec<u64> = events.iter().map(|e| e.id).collect();
    assert_eq!(
        seqs,
        (1..=seqs.len() as u64).collect::<Vec<_>>(),
        "{events:?}"
    );
    assert_eq!(events[0].event, "accepted");
    let last = events.last().unwrap();
    assert_eq!(last.event, "committed", "{events:?}");
    for e in &events {
        assert_eq!(e.data["seq"], e.id);
        assert_eq!(e.data["kind"], json!(e.event));
        assert_eq!(e.data["tx_id"], json!(id));
    }
    // The stream is the history: the same events as the events route.
    let (_, history) = get(h, &format!("/v1/transactions/{id}/events")).await;
    let history: Vec<Value> = history["events"].as_array().unwrap().clone();
    assert_eq!(
        events.iter().map(|e| e.data.clone()).collect::<Vec<_>>(),
        history
    );
    // Resuming after event 3 gives exactly the events after it.
    let (_, resumed) = watch(h, &id, Some(3)).await;
    assert_eq!(resumed, events[3..].to_vec());
    // An unknown transaction is a 404 before any stream starts.
    let (status, _) = call(
        h,
        "GET",
        "/v1/transactions/0190a0a0-0000-7000-8000-000000000000/watch",
        None,
        None,
    )
    .await;
    assert_eq!(status, 404);
}

#[tokio::test]
async fn http_routes_need_the_grpc_methods_roles() {
    const SHOP: &str = "shop-token-0123456789";
    const OPS: &str = "ops-token-0123456789";
    const SVC: &str = "svc-token-0123456789";
    let db = fresh_database().await;
    let (p, _ledger) = participant().await;
    let tokens = [
        format!("shop:client:shop={}", TokenHash::of(SHOP)),
        format!("ops:operator={}", TokenHash::of(OPS)),
        format!("svc:participant={}", TokenHash::of(SVC)),
    ];
    let mut extra = Vec::new();
    for t in &tokens {
        extra.push("--auth-token");
        extra.push(t.as_str());
    }
    let co = process::coordinator(&db.url, "http-3", &extra, &[]).await;
    let h = co.http.as_str();
    let saga =
        json!({"saga": {"steps": [step("s", &p, "ok", "undo", 0)]}, "wait": true}).to_string();

    // No token: 401, and nothing started.
    let (status, err) = call(h, "POST", "/v1/transactions", None, Some(&saga)).await;
    assert_eq!(
        (status, &err["code"]),
        (401, &json!("unauthenticated")),
        "{err}"
    );
    assert_eq!(err["field"], "authorization");
    let (status, _) = call(h, "GET", "/v1/transactions", Some("not-a-token"), None).await;
    assert_eq!(status, 401);
    // A client token starts (in its namespace) and reads its transaction...
    let (status, body) = call(h, "POST", "/v1/transactions", Some(SHOP), Some(&saga)).await;
    assert_eq!(status, 201, "{body}");
    assert_eq!(
        body["transaction"]["labels"]["baton.namespace"], "shop",
        "{body}"
    );
    let id = body["tx_id"].as_str().unwrap();
    let (status, _) = call(
        h,
        "GET",
        &format!("/v1/transactions/{id}"),
        Some(SHOP),
        None,
    )
    .await;
    assert_eq!(status, 200);
    // ... but may not list (operator) or register (participant): 403 naming the role.
    let (status, err) = call(h, "GET", "/v1/transactions", Some(SHOP), None).await;
    assert_eq!(
        (status, &err["code"]),
        (403, &json!("permission_denied")),
        "{err}"
    );
    assert!(
        err["message"].as_str().unwrap().contains("operator"),
        "{err}"
    );
    let register = json!({"service": "x", "endpoint": p}).to_string();
    let (status, _) = call(h, "POST", "/v1/participants", Some(SHOP), Some(&register)).await;
    assert_eq!(status, 403);
    // A refused caller's body is not even read: a bad body still answers 403.
    let (status, _) = call(h, "POST", "/v1/participants", Some(SHOP), Some("{oops")).await;
    assert_eq!(status, 403);
    // The operator lists; the participant registers but may not start.
    let (status, page) = call(h, "GET", "/v1/transactions", Some(OPS), None).await;
    assert_eq!(
        (status, page["transactions"].as_array().map(Vec::len)),
        (200, Some(1))
    );
    let (status, _) = call(h, "POST", "/v1/participants", Some(SVC), Some(&register)).await;
    assert_eq!(status, 200);
    let (status, _) = call(h, "POST", "/v1/transactions", Some(SVC), Some(&saga)).await;
    assert_eq!(status, 403);
    // The OpenAPI document needs no token.
    let (status, doc) = call(h, "GET", "/v1/openapi.json", None, None).await;
    assert_eq!((status, doc["openapi"].is_string()), (200, true));
}

#[tokio::test]
async fn bad_requests_are_refused_naming_the_field_and_openapi_routes_all_answer() {
    let db = fresh_database().await;
    let (p, _ledger) = participant().await;
    let co = process::coordinator(&db.url, "http-4", &[], &[]).await;
    let h = co.http.as_str();
    let start = |body: &str| {
        let body = body.to_string();
        let h = h.to_string();
        async move { call(&h, "POST", "/v1/transactions", None, Some(&body)).await }
    };

    // Bad JSON: 400 about the body, naming the position.
    let (status, err) = start(r#"{"saga": {"steps": [}"#).await;
    assert_eq!(
        (status, &err["code"], &err["field"]),
        (400, &json!("invalid_argument"), &json!("body")),
        "{err}"
    );
    assert!(
        err["message"].as_str().unwrap().contains("line 1 column"),
        "{err}"
    );
    // An unknown field, however deep, is refused by its path.
    let mut step0 = step("s", &p, "ok", "undo", 0);
    step0["compensation"] = json!("undo");
    let (status, err) = start(&json!({"saga": {"steps": [step0]}}).to_string()).await;
    assert_eq!(
        (status, &err["field"]),
        (400, &json!("saga.steps[0].compensation")),
        "{err}"
    );
    let (status, err) = start(r#"{"sagas": {}}"#).await;
    assert_eq!((status, &err["field"]), (400, &json!("sagas")), "{err}");
    // A wrong type names the field.
    let (status, err) =
        start(&json!({"saga": {"steps": []}, "timeout_ms": "soon"}).to_string()).await;
    assert_eq!(
        (status, &err["field"]),
        (400, &json!("timeout_ms")),
        "{err}"
    );
    let mut step0 = step("s", &p, "ok", "undo", 0);
    step0["kind"] = json!("sometimes");
    let (status, err) = start(&json!({"saga": {"steps": [step0]}}).to_string()).await;
    assert_eq!(
        (status, &err["field"]),
        (400, &json!("saga.steps[0].kind")),
        "{err}"
    );
    // The gRPC validation, with its field: a step without a name, a control character.
    let (status, err) =
        start(&json!({"saga": {"steps": [step("", &p, "ok", "undo", 0)]}}).to_string()).await;
    assert_eq!(
        (status, &err["field"]),
        (400, &json!("saga.steps[0].name")),
        "{err}"
    );
    let (status, err) = start(&json!({}).to_string()).await;
    assert_eq!(
        (status, &err["field"]),
        (400, &json!("definition")),
        "{err}"
    );
    // Unknown query parameters and states are refused too.
    let (status, err) = get_json(h, "/v1/transactions?states=committed").await;
    assert_eq!((status, &err["field"]), (400, &json!("states")), "{err}");
    let (status, err) = get_json(h, "/v1/transactions?state=done").await;
    assert_eq!((status, &err["field"]), (400, &json!("state")), "{err}");
    // A page too large names the parameter given, under either name.
    for name in ["page_size", "limit"] {
        let (status, err) = get_json(h, &format!("/v1/transactions?{name}=1001")).await;
        assert_eq!((status, &err["field"]), (400, &json!(name)), "{err}");
    }
    let (status, _) = get_json(h, "/v1/transactions?page_size=1000").await;
    assert_eq!(status, 200, "the largest page is allowed");
    // A time out of range names the parameter given, not the gRPC field it fills.
    let (status, err) = get_json(h, "/v1/transactions?created_after=99999999999999999").await;
    assert_eq!(
        (status, &err["field"]),
        (400, &json!("created_after")),
        "{err}"
    );
    // Deregistering nothing is refused, not answered `removed: false`.
    let (status, err) = call(
        h,
        "DELETE",
        "/v1/participants?service=&endpoint=x",
        None,
        None,
    )
    .await;
    assert_eq!((status, &err["field"]), (400, &json!("service")), "{err}");
    // An id that is not one; one that is unknown.
    let (status, err) = get_json(h, "/v1/transactions/nope").await;
    assert_eq!(status, 400, "{err}");
    let (status, err) = get_json(h, "/v1/transactions/0190a0a0-0000-7000-8000-000000000000").await;
    assert_eq!((status, &err["code"]), (404, &json!("not_found")), "{err}");

    // A body over the gRPC message limit (4 MiB here) is refused before it is read.
    let mut stream = TcpStream::connect(h).await.unwrap();
    stream
        .write_all(
            format!(
                "POST /v1/transactions HTTP/1.0\r\nHost: {h}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n",
                5 << 20
            )
            .as_bytes(),
        )
        .await
        .unwrap();
    let mut bytes = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(30), stream.read_to_end(&mut bytes)).await;
    let (status, text) = http_response(&String::from_utf8_lossy(&bytes));
    let err: Value = serde_json::from_str(&text).unwrap_or(Value::Null);
    assert_eq!((status, &err["field"]), (413, &json!("body")), "{text}");
    // One that says nothing of its length but runs over is refused too (sent chunked).
    let (status, err) = chunked_post(h, "/v1/transactions", (4 << 20) + 1).await;
    assert_eq!((status, &err["field"]), (413, &json!("body")), "{err}");

    // The OpenAPI document parses, and every operation it lists is served.
    let (_, body) = start(
        &json!({"saga": {"steps": [step("s", &p, "ok", "undo", 0)]}, "wait": true}).to_string(),
    )
    .await;
    let id = body["tx_id"].as_str().expect("a started saga").to_string();
    let (status, doc) = get_json(h, "/v1/openapi.json").await;
    assert_eq!(status, 200);
    assert!(doc["openapi"].as_str().unwrap().starts_with("3."), "{doc}");
    let paths = doc["paths"].as_object().unwrap();
    let mut checked = 0;
    for (path, ops) in paths {
        for method in ops.as_object().unwrap().keys() {
            let method = method.to_uppercase();
            let target = path.replace("{id}", &id);
            let body = (method == "POST").then_some("{}");
            let (status, text) = call_text(h, &method, &target, None, body).await;
            assert!(
                status != 404 && status != 405 && status != 0,
                "{method} {path} is documented but answered {status}: {text}"
            );
            checked += 1;
        }
    }
    assert!(checked >= 16, "only {checked} operations documented");
}

async fn get_json(addr: &str, path: &str) -> (u16, Value) {
    get(addr, path).await
}

/// POSTs `len` bytes of a JSON string in chunked encoding (no Content-Length), stopping early if
/// the server answers; returns the answer.
async fn chunked_post(addr: &str, path: &str, len: usize) -> (u16, Value) {
    let mut stream = TcpStream::connect(addr).await.unwrap();
    stream
        .write_all(
            format!(
                "POST {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\nTransfer-Encoding: chunked\r\n\r\n"
            )
            .as_bytes(),
        )
        .await
        .unwrap();
    let chunk = vec![b'a'; 64 << 10];
    let mut sent = 0;
    while sent < len {
        let n = chunk.len().min(len - sent);
        let frame = [format!("{n:x}\r\n").as_bytes(), &chunk[..n], b"\r\n"].concat();
        if stream.write_all(&frame).await.is_err() {
            break;
        }
        sent += n;
    }
    let _ = stream.write_all(b"0\r\n\r\n").await;
    let mut bytes = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(30), stream.read_to_end(&mut bytes)).await;
    let text = String::from_utf8_lossy(&bytes);
    let (status, body) = http_response(&text);
    (status, serde_json::from_str(&body).unwrap_or(Value::Null))
}

#[tokio::test]
async fn connections_that_send_nothing_are_closed_and_long_answers_are_not() {
    let db = fresh_database().await;
    let (p, ledger) = participant().await;
    let mut co = process::coordinator(&db.url, "http-5", &["--header-timeout", "300ms"], &[]).await;
    let h = co.http.clone();
    let grpc = co.endpoint.trim_start_matches("http://").to_string();

    // Silent or stalled connections are closed on both ports.
    for (addr, sent) in [
        (&grpc, ""),
        (&grpc, "PRI * HTTP/2.0\r\n"),
        (&h, ""),
        (&h, "GET /healthz HTTP/1.1\r\nHost: x\r\n"),
    ] {
        assert!(
            closed_within(hold(addr, sent).await, Duration::from_secs(10)).await,
            "{addr} kept open a connection that sent {sent:?}"
        );
    }

    // A saga held at its call, watched over both ports for several header timeouts: answers
    // that take long are not cut.
    ledger.gate_closed.store(true, Ordering::SeqCst);
    let mut hold = step("hold", &p, "gated", "undo", 0);
    hold["timeout_ms"] = json!(60_000);
    let (status, body) = post(&h, "/v1/transactions", json!({"saga": {"steps": [hold]}})).await;
    assert_eq!(status, 201, "{body}");
    let id = body["tx_id"].as_str().unwrap().to_string();
    let sse = tokio::spawn({
        let (h, id) = (h.clone(), id.clone());
        async move { watch(&h, &id, None).await }
    });
    let mut events = co
        .client
        .watch(baton_tx_proto::WatchRequest { tx_id: id.clone() })
        .await
        .expect("watch")
        .into_inner();
    process::until("the held step to be called", || {
        ledger.in_flight_at_gate() > 0
    })
    .await;
    // Time itself is what is tested here: both streams stay open past five header timeouts.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    ledger.gate_closed.store(false, Ordering::SeqCst);
    let mut last = None;
    while let Some(event) = events.message().await.expect("the gRPC watch") {
        last = Some(event.kind);
    }
    assert_eq!(last.as_deref(), Some("committed"));
    let (status, events) = sse.await.expect("the event stream");
    assert_eq!(status, 200);
    assert_eq!(
        events.last().map(|e| e.event.as_str()),
        Some("committed"),
        "{events:?}"
    );
}

/// Opens a raw connection to `addr` and sends `sent`; the connection is held open by the caller.
async fn hold(addr: &str, sent: &str) -> TcpStream {
    let mut stream = TcpStream::connect(addr).await.expect("connect");
    stream.write_all(sent.as_bytes()).await.expect("send");
    stream
}

/// Whether the server closes `stream` within `limit` (a reset counts as closed).
async fn closed_within(mut stream: TcpStream, limit: Duration) -> bool {
    let mut rest = Vec::new();
    tokio::time::timeout(limit, stream.read_to_end(&mut rest))
        .await
        .is_ok()
}

const PREFACE: &str = "PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

#[tokio::test]
async fn client_connections_beyond_the_limit_are_closed_and_their_places_come_back() {
    let db = fresh_database().await;
    // Three places on the two ports together; the helper's own gRPC client holds one.
    let mut co =
        process::coordinator(&db.url, "http-6", &["--max-client-connections", "3"], &[]).await;
    let h = co.http.clone();
    let grpc = co.endpoint.trim_start_matches("http://").to_string();
    // Each held connection is answered first, so that it is known to hold its place: the two
    // ports accept apart, and a probe must not overtake a held connection on the other port.
    let mut grpc_held = hold(&grpc, PREFACE).await;
    let mut settings = [0u8; 9];
    grpc_held
        .read_exact(&mut settings)
        .await
        .expect("the gRPC port answers the preface with its settings");
    let mut http_held = hold(&h, &format!("GET /healthz HTTP/1.1\r\nHost: {h}\r\n\r\n")).await;
    let mut answer = Vec::new();
    while !answer.ends_with(b"ok\n") {
        let mut chunk = [0u8; 256];
        let n = http_held.read(&mut chunk).await.expect("read /healthz");
        assert!(
            n > 0,
            "the HTTP port closed a kept-alive connection: {answer:?}"
        );
        answer.extend_from_slice(&chunk[..n]);
    }
    let held = [grpc_held, http_held];

    // Every place is taken: one more connection, on either port, is closed on arrival (an idle
    // one would otherwise be kept for the 30 s header timeout).
    assert!(
        closed_within(hold(&h, "").await, Duration::from_secs(5)).await,
        "the HTTP port kept a fourth connection"
    );
    assert!(
        closed_within(hold(&grpc, PREFACE).await, Duration::from_secs(5)).await,
        "the gRPC port kept a fourth connection"
    );
    // The connection that holds a place still serves.
    let listed = co
        .client
        .list(baton_tx_proto::ListRequest {
            limit: 1,
            ..Default::default()
        })
        .await;
    assert!(listed.is_ok(), "{listed:?}");

    // Closed connections give their places back.
    drop(held);
    let mut metrics = String::new();
    for _ in 0..500 {
        let mut stream = TcpStream::connect(h.as_str()).await.expect("connect");
        let _ = stream
            .write_all(format!("GET /metrics HTTP/1.0\r\nHost: {h}\r\n\r\n").as_bytes())
            .await;
        let mut text = String::new();
        let _ = stream.read_to_string(&mut text).await;
        if http_response(&text).0 == 200 {
            metrics = text;
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let refused = metrics
        .lines()
        .find_map(|l| l.strip_prefix("baton_client_connections_refused_total "))
        .expect("the refused connections are counted");
    assert!(refused.trim().parse::<u64>().unwrap() >= 2, "{refused}");
    let mut fresh =
        baton_tx_proto::coordinator_client::CoordinatorClient::connect(co.endpoint.clone())
            .await
            .expect("a new gRPC connection once places are free");
    fresh
        .list(baton_tx_proto::ListRequest {
            limit: 1,
            ..Default::default()
        })
        .await
        .expect("served on the new connection");
    co.kill9().await;
}

/// CPU time (user and system, in clock ticks) the process `pid` has used.
fn cpu_ticks(pid: u32) -> u64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).expect("read /proc stat");
    // Fields after the command name, which is in parentheses and may hold spaces.
    let after = &stat[stat.rfind(')').expect("a command name") + 2..];
    let fields: Vec<&str> = after.split_whitespace().collect();
    // utime and stime are the 14th and 15th fields of the line, 12th and 13th after the name.
    fields[11].parse::<u64>().unwrap() + fields[12].parse::<u64>().unwrap()
}

#[tokio::test]
async fn a_coordinator_out_of_file_descriptors_waits_to_accept_and_recovers() {
    let db = fresh_database().await;
    // Room for about 100 connections but a connection limit well above it, so that accepting
    // fails for want of descriptors rather than the limit closing them.
    let mut co = process::coordinator_with_open_files(
        &db.url,
        "http-7",
        &["--max-client-connections", "1000"],
        160,
    )
    .await;
    let pid = co.child.id().expect("a running coordinator");
    let grpc = co.endpoint.trim_start_matches("http://").to_string();
    // The kernel completes connections into the listen backlog that the coordinator cannot
    // accept; they wait there.
    let mut held = Vec::new();
    for _ in 0..200 {
        held.push(hold(&grpc, PREFACE).await);
    }
    // While out of descriptors the coordinator pauses between accepts. A coordinator that asks
    // again at once spins: it used a whole core (about 120 ticks a second measured on an idle
    // machine).
    let before = cpu_ticks(pid);
    let started = std::time::Instant::now();
    tokio::time::sleep(Duration::from_secs(2)).await;
    let used = cpu_ticks(pid) - before;
    let per_second = used as f64 / started.elapsed().as_secs_f64();
    assert!(
        per_second < 20.0,
        "the coordinator used {used} clock ticks of CPU in {:?} with no descriptor free",
        started.elapsed()
    );

    // Descriptors free again: it accepts and serves.
    drop(held);
    let mut served = false;
    for _ in 0..100 {
        let fresh = tokio::time::timeout(
            Duration::from_secs(2),
            baton_tx_proto::coordinator_client::CoordinatorClient::connect(co.endpoint.clone()),
        )
        .await;
        if let Ok(Ok(mut fresh)) = fresh {
            if fresh
                .list(baton_tx_proto::ListRequest {
                    limit: 1,
                    ..Default::default()
                })
                .await
                .is_ok()
            {
                served = true;
                break;
            }
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(
        served,
        "the coordinator did not serve again once descriptors were free"
    );
    co.kill9().await;
}

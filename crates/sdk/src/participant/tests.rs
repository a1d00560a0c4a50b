//! Round trips through a real participant server on a loopback port.

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tonic::Code;

use super::*;
use crate::proto::participant_client::ParticipantClient;
use crate::proto::Outcome;

fn call(action: &str, payload: &[u8]) -> BranchRequest {
    BranchRequest {
        tx_id: "0190b1a2-0000-7000-8000-000000000001".into(),
        branch_index: 1,
        branch_name: "reserve".into(),
        action: action.into(),
        payload: payload.to_vec(),
        attempt: 1,
        deadline_unix_ms: 0,
        outputs: vec![crate::proto::StepOutput {
            index: 0,
            name: "quote".into(),
            output: b"42".to_vec(),
        }],
        labels: [("order".to_string(), "7".to_string())].into(),
    }
}

fn shop() -> Participant {
    Participant::new()
        .on_execute("reserve", |req: Request| async move {
            #[derive(serde::Deserialize)]
            struct Item {
                qty: u32,
            }
            let item: Item = req.json()?;
            if item.qty > 10 {
                return Err(HandlerError::failed("out of stock"));
            }
            let quote = String::from_utf8_lossy(req.output_of("quote").unwrap_or_default());
            Ok(Reply::output(format!(
                "{} {} x{} quote={} order={}",
                req.tx_id, req.branch_name, item.qty, quote, req.labels["order"]
            )))
        })
        .on_execute("flaky", |_req| async move {
            Err(HandlerError::transient("database busy"))
        })
        .on_execute("broken", |_req| async move {
            Err(HandlerError::permanent("no such account"))
        })
        .on_compensate("reserve", |req| async move {
            Ok(Reply::ok().with_message(format!("released {}", req.branch_index)))
        })
        .on_prepare("hold", |_req| async move { Ok(Reply::ok()) })
}

async fn connect(server: &ServerHandle) -> ParticipantClient<tonic::transport::Channel> {
    ParticipantClient::connect(server.endpoint())
        .await
        .expect("connect to the participant")
}

#[tokio::test]
async fn execute_routes_to_the_action_and_passes_the_request() {
    let server = shop().serve("127.0.0.1:0").await.unwrap();
    assert!(server.endpoint().starts_with("http://127.0.0.1:"));
    let mut client = connect(&server).await;

    let reply = client
        .execute(call("reserve", br#"{"qty":2}"#))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(reply.outcome(), Outcome::Ok);
    assert_eq!(
        String::from_utf8(reply.output).unwrap(),
        "0190b1a2-0000-7000-8000-000000000001 reserve x2 quote=42 order=7"
    );

    let reply = client
        .compensate(call("reserve", b""))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(reply.outcome(), Outcome::Ok);
    assert_eq!(reply.message, "released 1");
    server.shutdown().await;
}

#[tokio::test]
async fn business_failure_is_a_failed_outcome() {
    let server = shop().serve("127.0.0.1:0").await.unwrap();
    let mut client = connect(&server).await;
    let reply = client
        .execute(call("reserve", br#"{"qty":99}"#))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(reply.outcome(), Outcome::Failed);
    assert_eq!(reply.message, "out of stock");
    server.shutdown().await;
}

#[tokio::test]
async fn transient_and_permanent_errors_are_statuses() {
    let server = shop().serve("127.0.0.1:0").await.unwrap();
    let mut client = connect(&server).await;

    let status = client.execute(call("flaky", b"")).await.unwrap_err();
    assert_eq!(status.code(), Code::Unavailable);
    assert_eq!(status.message(), "database busy");

    let status = client.execute(call("broken", b"")).await.unwrap_err();
    assert_eq!(status.code(), Code::FailedPrecondition);

    // A payload that does not decode can never succeed: permanent, named after the field.
    let status = client
        .execute(call("reserve", b"not json"))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::FailedPrecondition);
    assert!(
        status.message().starts_with("payload: invalid json"),
        "{}",
        status.message()
    );
    server.shutdown().await;
}

#[tokio::test]
async fn missing_handlers_are_unimplemented() {
    let server = shop().serve("127.0.0.1:0").await.unwrap();
    let mut client = connect(&server).await;

    let status = client.execute(call("teleport", b"")).await.unwrap_err();
    assert_eq!(status.code(), Code::Unimplemented);
    assert_eq!(
        status.message(),
        "no execute handler for action \"teleport\""
    );

    // "flaky" has an action but no compensation.
    let status = client.compensate(call("flaky", b"")).await.unwrap_err();
    assert_eq!(status.code(), Code::Unimplemented);
    assert_eq!(
        status.message(),
        "no compensate handler for action \"flaky\""
    );

    // Routing is per phase: "hold" is a prepare handler only.
    assert!(client.prepare(call("hold", b"")).await.is_ok());
    let status = client.commit(call("hold", b"")).await.unwrap_err();
    assert_eq!(status.code(), Code::Unimplemented);
    server.shutdown().await;
}

#[tokio::test]
async fn empty_fields_are_invalid_arguments() {
    let server = shop().serve("127.0.0.1:0").await.unwrap();
    let mut client = connect(&server).await;

    let mut req = call("reserve", b"{}");
    req.tx_id.clear();
    let status = client.execute(req).await.unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument);
    assert!(status.message().starts_with("tx_id:"));

    let status = client.execute(call("", b"{}")).await.unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument);
    assert!(status.message().starts_with("action:"));
    server.shutdown().await;
}

#[tokio::test]
async fn a_panicking_handler_is_an_internal_error() {
    let server = Participant::new()
        .on_execute("boom", |_req| async move {
            if true {
                panic!("handler bug");
            }
            Ok(Reply::ok())
        })
        .serve("127.0.0.1:0")
        .await
        .unwrap();
    let mut client = connect(&server).await;
    let status = client.execute(call("boom", b"")).await.unwrap_err();
    assert_eq!(status.code(), Code::Internal);
    // The server keeps serving after a handler panicked.
    let status = client.execute(call("other", b"")).await.unwrap_err();
    assert_eq!(status.code(), Code::Unimplemented);
    server.shutdown().await;
}

#[tokio::test]
async fn shutdown_waits_for_calls_in_flight_and_stops_listening() {
    let started = Arc::new(tokio::sync::Notify::new());
    let finished = Arc::new(AtomicU32::new(0));
    let (s, f) = (started.clone(), finished.clone());
    let server = Participant::new()
        .on_execute("slow", move |_req| {
            let (s, f) = (s.clone(), f.clone());
            async move {
                s.notify_one();
                tokio::time::sleep(Duration::from_millis(200)).await;
                f.fetch_add(1, Ordering::SeqCst);
                Ok(Reply::ok())
            }
        })
        .serve("127.0.0.1:0")
        .await
        .unwrap();
    let endpoint = server.endpoint();
    let mut client = connect(&server).await;
    let call = tokio::spawn(async move { client.execute(call("slow", b"")).await });
    started.notified().await;
    server.shutdown().await;
    assert_eq!(
        finished.load(Ordering::SeqCst),
        1,
        "shutdown returned before the handler finished"
    );
    let reply = call.await.unwrap().unwrap().into_inner();
    assert_eq!(reply.outcome(), Outcome::Ok);
    assert!(
        ParticipantClient::connect(endpoint).await.is_err(),
        "still listening after shutdown"
    );
}

#[tokio::test]
async fn serves_on_a_listener_the_caller_bound() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let server = shop().serve_with_listener(listener).unwrap();
    assert_eq!(server.local_addr(), addr);
    let mut client = connect(&server).await;
    assert!(client.prepare(call("hold", b"")).await.is_ok());
    server.shutdown().await;
}

#[test]
fn request_helpers() {
    let mut req =
        Request::from_wire(Phase::Execute, call("reserve", br#"{"qty":3}"#), None).unwrap();
    assert_eq!(req.deadline, None);
    assert_eq!(req.time_left(), None);
    let value: serde_json::Value = req.json().unwrap();
    assert_eq!(value["qty"], 3);
    assert_eq!(req.output_of("quote"), Some(&b"42"[..]));
    assert_eq!(req.output_of("nope"), None);
    assert_eq!(
        req.outputs,
        [StepOutput {
            index: 0,
            name: "quote".into(),
            output: b"42".to_vec()
        }]
    );
    req.deadline = Some(std::time::SystemTime::now() - Duration::from_secs(1));
    assert_eq!(req.time_left(), Some(Duration::ZERO));

    let mut wire = call("reserve", b"");
    wire.deadline_unix_ms = 1_700_000_000_000;
    let req = Request::from_wire(Phase::Commit, wire, None).unwrap();
    assert_eq!(
        req.deadline,
        Some(std::time::UNIX_EPOCH + Duration::from_millis(1_700_000_000_000))
    );
    assert_eq!(Reply::json(&[1, 2]).unwrap().output, b"[1,2]");
}

//! The client against a small in-process coordinator on a loopback port.

use std::sync::Mutex;

use tokio_util::sync::CancellationToken;
use tonic::{Request, Response};

use super::*;
use crate::proto::coordinator_server::{Coordinator, CoordinatorServer};
use crate::proto::{
    self, CancelRequest, DeregisterParticipantRequest, DeregisterParticipantResponse,
    EventsRequest, EventsResponse, GetRequest, HeartbeatParticipantRequest,
    HeartbeatParticipantResponse, ListCoordinatorsRequest, ListCoordinatorsResponse,
    ListParticipantsRequest, ListParticipantsResponse, ListRequest, ListResponse,
    RegisterParticipantRequest, RegisterParticipantResponse, RetryRequest, StartRequest,
    StartResponse, TxEvent, WaitRequest, WatchRequest,
};

/// The one transaction the fake coordinator knows.
const T1: &str = "01890a5d-ac96-774b-bcce-b302099a8057";

fn t1() -> TxId {
    T1.parse().unwrap()
}

/// Answers Start, Get, Events and Watch from memory; everything else is unimplemented.
#[derive(Default)]
struct FakeCoordinator {
    started: Mutex<Vec<StartRequest>>,
}

fn tx(id: &str) -> proto::Transaction {
    proto::Transaction {
        tx_id: id.to_string(),
        kind: proto::TxKind::Saga as i32,
        state: proto::TxState::Committed as i32,
        ..proto::Transaction::default()
    }
}

fn event(seq: u64) -> TxEvent {
    TxEvent {
        tx_id: T1.into(),
        seq,
        at_ms: 1_000 + seq as i64,
        kind: if seq == 2 {
            "from_the_future"
        } else {
            "execute_ok"
        }
        .into(),
        branch: 0,
        detail: String::new(),
    }
}

#[tonic::async_trait]
impl Coordinator for FakeCoordinator {
    async fn start(&self, r: Request<StartRequest>) -> Result<Response<StartResponse>, Status> {
        let r = r.into_inner();
        let mut started = self
            .started
            .lock()
            .map_err(|_| Status::internal("poisoned"))?;
        let created = r.idempotency_key.is_empty()
            || !started
                .iter()
                .any(|s| s.idempotency_key == r.idempotency_key);
        let wait = r.wait;
        started.push(r);
        Ok(Response::new(StartResponse {
            tx_id: T1.into(),
            created,
            transaction: wait.then(|| tx(T1)),
        }))
    }
    async fn get(&self, r: Request<GetRequest>) -> Result<Response<proto::Transaction>, Status> {
        match r.into_inner().tx_id.as_str() {
            T1 => Ok(Response::new(tx(T1))),
            "00000000-0000-0000-0000-000000000000" => Ok(Response::new(tx("not-a-uuid"))),
            other => Err(Status::not_found(format!("tx_id: no transaction {other}"))),
        }
    }
    async fn wait(&self, _: Request<WaitRequest>) -> Result<Response<proto::Transaction>, Status> {
        Ok(Response::new(tx(T1)))
    }
    type WatchStream = tokio_stream::Iter<std::vec::IntoIter<Result<TxEvent, Status>>>;
    async fn watch(&self, _: Request<WatchRequest>) -> Result<Response<Self::WatchStream>, Status> {
        Ok(Response::new(tokio_stream::iter(vec![
            Ok(event(1)),
            Ok(event(2)),
        ])))
    }
    async fn list(&self, _: Request<ListRequest>) -> Result<Response<ListResponse>, Status> {
        Err(Status::unimplemented("list"))
    }
    async fn events(&self, r: Request<EventsRequest>) -> Result<Response<EventsResponse>, Status> {
        let after = r.into_inner().after_seq;
        let events = (1..=3).filter(|s| *s > after).map(event).collect();
        Ok(Response::new(EventsResponse { events }))
    }
    async fn retry(
        &self,
        _: Request<RetryRequest>,
    ) -> Result<Response<proto::Transaction>, Status> {
        Err(Status::failed_precondition(
            "tx_id: t1 is committed, nothing to retry",
        ))
    }
    async fn cancel(
        &self,
        _: Request<CancelRequest>,
    ) -> Result<Response<proto::Transaction>, Status> {
        Err(Status::unimplemented("cancel"))
    }
    async fn register_participant(
        &self,
        _: Request<RegisterParticipantRequest>,
    ) -> Result<Response<RegisterParticipantResponse>, Status> {
        Err(Status::unimplemented("register"))
    }
    async fn heartbeat_participant(
        &self,
        _: Request<HeartbeatParticipantRequest>,
    ) -> Result<Response<HeartbeatParticipantResponse>, Status> {
        Err(Status::unimplemented("heartbeat"))
    }
    async fn deregister_participant(
        &self,
        _: Request<DeregisterParticipantRequest>,
    ) -> Result<Response<DeregisterParticipantResponse>, Status> {
        Err(Status::unimplemented("deregister"))
    }
    async fn list_participants(
        &self,
        _: Request<ListParticipantsRequest>,
    ) -> Result<Response<ListParticipantsResponse>, Status> {
        Err(Status::unimplemented("list participants"))
    }
    async fn list_coordinators(
        &self,
        _: Request<ListCoordinatorsRequest>,
    ) -> Result<Response<ListCoordinatorsResponse>, Status> {
        Err(Status::unimplemented("list coordinators"))
    }
    async fn purge(
        &self,
        _: Request<crate::proto::PurgeRequest>,
    ) -> Result<Response<crate::proto::PurgeResponse>, Status> {
        Err(Status::unimplemented("purge"))
    }
}

/// A fake coordinator on a loopback port; the token stops it.
async fn spawn_fake() -> (String, CancellationToken, tokio::task::JoinHandle<()>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = format!("http://{}", listener.local_addr().unwrap());
    let stop = CancellationToken::new();
    let signal = stop.clone().cancelled_owned();
    let task = tokio::spawn(async move {
        tonic::transport::Server::builder()
            .add_service(CoordinatorServer::new(FakeCoordinator::default()))
            .serve_with_incoming_shutdown(
                tonic::transport::server::TcpIncoming::from(listener),
                signal,
            )
            .await
            .unwrap();
    });
    (addr, stop, task)
}

/// An address where nothing listens.
async fn dead_addr() -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    format!("http://{}", listener.local_addr().unwrap())
}

#[tokio::test]
async fn start_run_get_and_events_round_trip() {
    let (addr, stop, task) = spawn_fake().await;
    let client = Client::connect(addr).await.unwrap();
    let saga = Saga::new().step(Step::new("a", "svc")).idempotency_key("k");
    let started = client.start(saga.clone()).await.unwrap();
    assert_eq!(
        started,
        Started {
            tx_id: t1(),
            created: true
        }
    );
    assert!(!client.start(saga.clone()).await.unwrap().created);
    assert_eq!(client.run(saga).await.unwrap().state, TxState::Committed);
    assert_eq!(client.get(t1()).await.unwrap().id, t1());
    assert_eq!(
        client.wait(t1(), Duration::from_secs(1)).await.unwrap().id,
        t1()
    );

    let events = client.events(t1(), 1, 0).await.unwrap();
    let seqs: Vec<u64> = events.iter().map(|e| e.seq).collect();
    assert_eq!(seqs, [2, 3]);
    // A kind from a newer coordinator is kept by name, not dropped.
    assert_eq!(events[0].kind, None);
    assert_eq!(events[0].kind_name, "from_the_future");
    assert_eq!(events[1].kind, Some(EventKind::ExecuteOk));

    let mut stream = client.watch(t1()).await.unwrap();
    assert_eq!(stream.next().await.unwrap().unwrap().seq, 1);
    assert_eq!(stream.next().await.unwrap().unwrap().seq, 2);
    assert!(stream.next().await.is_none());

    // An answer this SDK cannot read is an error naming what was wrong.
    let err = client.get(TxId(uuid::Uuid::nil())).await.unwrap_err();
    assert!(matches!(err, ClientError::Protocol(_)), "{err:?}");
    assert_eq!(err.code(), Code::Internal);
    assert!(err.to_string().contains("not-a-uuid"), "{err}");
    stop.cancel();
    task.await.unwrap();
}

#[tokio::test]
async fn coordinator_errors_keep_code_and_message() {
    let (addr, stop, task) = spawn_fake().await;
    let client = Client::connect(addr).await.unwrap();
    let nope = TxId::new();
    let err = client.get(nope).await.unwrap_err();
    assert_eq!(err.code(), Code::NotFound);
    assert_eq!(err.message(), format!("tx_id: no transaction {nope}"));
    let err = client.retry(t1()).await.unwrap_err();
    assert_eq!(
        err.to_string(),
        "tx_id: t1 is committed, nothing to retry (FAILED_PRECONDITION)"
    );
    stop.cancel();
    task.await.unwrap();
}

#[tokio::test]
async fn connect_many_skips_unreachable_coordinators() {
    let (live, stop, task) = spawn_fake().await;
    let dead = dead_addr().await;
    let client = Client::connect_many(&[dead.clone(), live.clone()])
        .await
        .unwrap();
    assert_eq!(client.addrs(), [dead.clone(), live]);
    assert_eq!(client.get(t1()).await.unwrap().id, t1());

    // Once the live one goes too, every call reports it as unavailable.
    stop.cancel();
    task.await.unwrap();
    let err = client.get(t1()).await.unwrap_err();
    assert_eq!(err.code(), Code::Unavailable);

    let err = Client::connect(dead).await.unwrap_err();
    assert!(matches!(err, ClientError::Connect { .. }), "{err:?}");
    assert_eq!(err.code(), Code::Unavailable);
    let empty: [&str; 0] = [];
    assert!(matches!(
        Client::connect_many(&empty).await,
        Err(ClientError::NoAddress)
    ));
    assert!(matches!(
        Client::connect("not a url").await,
        Err(ClientError::InvalidAddress { .. })
    ));
}

#[tokio::test]
async fn idempotent_calls_fail_over_to_the_next_coordinator() {
    let (first, stop_first, first_task) = spawn_fake().await;
    let (second, stop_second, second_task) = spawn_fake().await;
    let client = Client::connect_many(&[first, second]).await.unwrap();
    stop_first.cancel();
    first_task.await.unwrap();

    // A read moves on to the second coordinator ...
    assert_eq!(client.get(t1()).await.unwrap().id, t1());
    // ... and later calls start there, even ones that may not fail over.
    let started = client
        .start(Saga::new().step(Step::new("a", "svc")))
        .await
        .unwrap();
    assert!(started.created);
    stop_second.cancel();
    second_task.await.unwrap();
}

#[test]
fn broken_connections_fail_over_but_answers_do_not() {
    // Built here from a failure below gRPC: carries the cause.
    let broken = Status::from_error(Box::new(std::io::Error::new(
        std::io::ErrorKind::ConnectionReset,
        "connection reset mid-answer",
    )));
    assert_eq!(broken.code(), Code::Unknown);
    assert!(super::is_unreachable(&broken));
    assert!(super::is_unreachable(&Status::unavailable("down")));
    // Sent by a coordinator: an answer, not a reason to ask another one.
    assert!(!super::is_unreachable(&Status::unknown("handler failed")));
    assert!(!super::is_unreachable(&Status::not_found(
        "transaction x not found"
    )));
}

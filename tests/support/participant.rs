//! A scriptable participant for end-to-end tests: it keeps a ledger of every delivery and applies
//! each (transaction, branch, phase) key at most once, like a participant behind a barrier.
//!
//! The action name picks the behaviour (the same for every phase of a 2PC branch):
//! `ok`/`undo`/`yes` apply; `fail`/`no` answer OUTCOME_FAILED; `flaky` answers UNAVAILABLE for
//! the first `fail_first` attempts (payload JSON); `hang` sleeps 5 s on attempt 1; `reject`
//! answers INVALID_ARGUMENT; `undo_broken` answers UNAVAILABLE while [`Ledger::broken`] is set.
//! `gated` waits while [`Ledger::gate_closed`] is set. A payload `sleep_ms` delays Execute and Prepare. While [`Ledger::phase_two_down`] is set,
//! Commit and Abort answer UNAVAILABLE.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use baton_tx_proto::participant_server::{Participant, ParticipantServer};
use baton_tx_proto::{BranchReply, BranchRequest, Outcome};
use tokio_stream::wrappers::TcpListenerStream;
use tonic::{Request, Response, Status};

/// One call as the participant received it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Delivery {
    pub tx: String,
    pub branch: u32,
    pub phase: &'static str,
    pub action: String,
    pub attempt: u32,
}

/// What the participant was asked and what it applied.
#[derive(Default)]
pub struct Ledger {
    deliveries: Mutex<Vec<Delivery>>,
    /// (tx, branch, phase) -> deliveries, so that checking a long run's ledger stays linear.
    delivered: Mutex<HashMap<(String, u32, &'static str), usize>>,
    /// (tx, branch, phase) -> times its effect was applied (at most once by construction; the
    /// tests check the coordinator's side: that every needed key arrived, and no extra one).
    applied: Mutex<HashMap<(String, u32, &'static str), u32>>,
    order: Mutex<Vec<(String, u32, &'static str)>>,
    /// While set, the `undo_broken` compensation fails transiently.
    pub broken: AtomicBool,
    /// While set, Commit and Abort fail transiently (a participant down during phase two).
    pub phase_two_down: AtomicBool,
    /// While set, the `gated` action waits (calls pile up in flight).
    pub gate_closed: AtomicBool,
}

impl Ledger {
    /// Every delivery of `tx`, in arrival order.
    pub fn deliveries(&self, tx: &str) -> Vec<Delivery> {
        let all = self.deliveries.lock().unwrap();
        all.iter().filter(|d| d.tx == tx).cloned().collect()
    }

    /// How many times `(branch, phase)` of `tx` was delivered.
    pub fn delivered(&self, tx: &str, branch: u32, phase: &'static str) -> usize {
        let counts = self.delivered.lock().unwrap();
        counts
            .get(&(tx.to_string(), branch, phase))
            .copied()
            .unwrap_or(0)
    }

    /// Applied effects of `tx`, in order, as (branch, phase).
    pub fn applied_order(&self, tx: &str) -> Vec<(u32, &'static str)> {
        let order = self.order.lock().unwrap();
        order
            .iter()
            .filter(|(t, _, _)| t == tx)
            .map(|(_, b, p)| (*b, *p))
            .collect()
    }

    /// Deliveries of the `gated` action so far (each one waited at the gate if it was closed).
    pub fn in_flight_at_gate(&self) -> usize {
        let all = self.deliveries.lock().unwrap();
        all.iter().filter(|d| d.action == "gated").count()
    }

    pub fn times_applied(&self, tx: &str, branch: u32, phase: &'static str) -> u32 {
        let applied = self.applied.lock().unwrap();
        applied
            .get(&(tx.to_string(), branch, phase))
            .copied()
            .unwrap_or(0)
    }

    fn apply(&self, req: &BranchRequest, phase: &'static str) {
        let key = (req.tx_id.clone(), req.branch_index, phase);
        let mut applied = self.applied.lock().unwrap();
        let first = !applied.contains_key(&key);
        *applied.entry(key.clone()).or_insert(0) += u32::from(first);
        if first {
            self.order.lock().unwrap().push(key);
        }
    }
}

struct Scripted {
    ledger: Arc<Ledger>,
}

fn param(payload: &[u8], key: &str) -> u64 {
    serde_json::from_slice::<serde_json::Value>(payload)
        .ok()
        .and_then(|v| v.get(key).and_then(|n| n.as_u64()))
        .unwrap_or(0)
}

impl Scripted {
    async fn handle(&self, req: BranchRequest, phase: &'static str) -> Result<BranchReply, Status> {
        *self
            .ledger
            .delivered
            .lock()
            .unwrap()
            .entry((req.tx_id.clone(), req.branch_index, phase))
            .or_insert(0) += 1;
        self.ledger.deliveries.lock().unwrap().push(Delivery {
            tx: req.tx_id.clone(),
            branch: req.branch_index,
            phase,
            action: req.action.clone(),
            attempt: req.attempt,
        });
        let forward = matches!(phase, "execute" | "prepare");
        let delay = param(&req.payload, "sleep_ms");
        if forward && delay > 0 {
            tokio::time::sleep(Duration::from_millis(delay)).await;
        }
        if !forward && phase != "compensate" && self.ledger.phase_two_down.load(Ordering::SeqCst) {
            return Err(Status::unavailable("participant is restarting"));
        }
        let failed = |message: &str| BranchReply {
            outcome: Outcome::Failed as i32,
            output: Vec::new(),
            message: message.into(),
        };
        match req.action.as_str() {
            "ok" | "undo" | "yes" => {}
            "gated" => {
                while self.ledger.gate_closed.load(Ordering::SeqCst) {
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
            }
            "fail" => return Ok(failed("insufficient funds")),
            "no" if phase == "prepare" => return Ok(failed("insufficient funds")),
            "no" => {}
            "flaky" => {
                if u64::from(req.attempt) <= param(&req.payload, "fail_first") {
                    return Err(Status::unavailable("warming up"));
                }
            }
            "hang" => {
                if req.attempt == 1 {
                    tokio::time::sleep(Duration::from_secs(5)).await;
                }
            }
            "reject" => return Err(Status::invalid_argument("account: no such account")),
            "undo_broken" => {
                if self.ledger.broken.load(Ordering::SeqCst) {
                    return Err(Status::unavailable("refund service is down"));
                }
            }
            other => return Err(Status::unimplemented(format!("unknown action {other}"))),
        }
        self.ledger.apply(&req, phase);
        Ok(BranchReply {
            outcome: Outcome::Ok as i32,
            output: format!("{phase}:{}", req.branch_name).into_bytes(),
            message: String::new(),
        })
    }
}

#[tonic::async_trait]
impl Participant for Scripted {
    async fn execute(&self, r: Request<BranchRequest>) -> Result<Response<BranchReply>, Status> {
        self.handle(r.into_inner(), "execute")
            .await
            .map(Response::new)
    }
    async fn compensate(&self, r: Request<BranchRequest>) -> Result<Response<BranchReply>, Status> {
        self.handle(r.into_inner(), "compensate")
            .await
            .map(Response::new)
    }
    async fn prepare(&self, r: Request<BranchRequest>) -> Result<Response<BranchReply>, Status> {
        self.handle(r.into_inner(), "prepare")
            .await
            .map(Response::new)
    }
    async fn commit(&self, r: Request<BranchRequest>) -> Result<Response<BranchReply>, Status> {
        self.handle(r.into_inner(), "commit")
            .await
            .map(Response::new)
    }
    async fn abort(&self, r: Request<BranchRequest>) -> Result<Response<BranchReply>, Status> {
        self.handle(r.into_inner(), "abort")
            .await
            .map(Response::new)
    }
}

/// Serves a scripted participant on a free loopback port; returns its endpoint and ledger.
pub async fn participant() -> (String, Arc<Ledger>) {
    let ledger = Arc::new(Ledger::default());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind a loopback port");
    let endpoint = format!("http://{}", listener.local_addr().expect("local address"));
    let service = ParticipantServer::new(Scripted {
        ledger: ledger.clone(),
    });
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(service)
            .serve_with_incoming(TcpListenerStream::new(listener)),
    );
    (endpoint, ledger)
}

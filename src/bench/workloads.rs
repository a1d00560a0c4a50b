//! The reference workloads, the participant services they call, and one Baton cell's closed loop.
//!
//! W1 and W2 are a 3-step saga `reserve → charge → ship`; W3 is a two-phase commit with the
//! branches `debit` and `credit`. Steps and branches name the participant's endpoint directly (no
//! registry lookup), and the participant answers at once: W1's steps all succeed; in W2 `ship` is
//! declined (a business failure), so `charge` and `reserve` are compensated; in W3 both branches
//! vote yes and commit.

use std::fmt;
use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, ChildStdin, Command};
use tokio::task::JoinSet;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::gauges::{Gauges, Readings};
use super::measure::{Recorder, Sample, Timing, CALL_TIMEOUT};
use super::{BenchError, Participants, Protocol};
use baton_tx::client::{Client, Definition, Saga, Step, TwoPhase, TwoPhaseBranch, TxState};
use baton_tx::participant::{HandlerError, Participant, Reply, ServerHandle};

/// How long a participant process may take to print its endpoint.
const PARTICIPANT_START_TIMEOUT: Duration = Duration::from_secs(10);

/// A reference workload (docs/ARCHITECTURE.md §13).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Workload {
    /// A 3-step saga whose participants succeed at once.
    W1,
    /// The same saga with step 3 declined, so steps 2 and 1 compensate.
    W2,
    /// A two-phase commit with two branches whose participants vote yes and commit at once.
    W3,
}

impl Workload {
    /// The workloads `--workload all` runs.
    pub const ALL: [Workload; 3] = [Workload::W1, Workload::W2, Workload::W3];

    /// The state every transaction of this workload must end in; anything else is an error.
    pub fn expected(self) -> TxState {
        match self {
            Workload::W1 | Workload::W3 => TxState::Committed,
            Workload::W2 => TxState::Compensated,
        }
    }

    /// The transaction one client starts, again and again, against the participant at
    /// `endpoint`. The first step or branch carries the baseline's payload size.
    pub fn request(self, endpoint: &str) -> Definition {
        let last = match self {
            Workload::W1 => "ship",
            Workload::W2 => "ship_declined",
            Workload::W3 => return two_phase(endpoint),
        };
        Saga::new()
            .step(
                Step::to_endpoint("reserve", endpoint)
                    .compensate("release")
                    .payload(vec![b'r'; super::baseline::PAYLOAD_BYTES]),
            )
            .step(Step::to_endpoint("charge", endpoint).compensate("refund"))
            .step(Step::to_endpoint("ship", endpoint).action(last))
            .into()
    }
}

impl fmt::Display for Workload {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Workload::W1 => "w1",
            Workload::W2 => "w2",
            Workload::W3 => "w3",
        })
    }
}

/// W3's two-phase commit: `debit` and `credit` on the participant at `endpoint`.
fn two_phase(endpoint: &str) -> Definition {
    TwoPhase::new()
        .branch(
            TwoPhaseBranch::to_endpoint("debit", endpoint)
                .payload(vec![b'd'; super::baseline::PAYLOAD_BYTES]),
        )
        .branch(TwoPhaseBranch::to_endpoint("credit", endpoint))
        .into()
}

/// The participant service every workload calls: each action answers at once. W3's branches
/// vote yes on Prepare and acknowledge Commit and Abort (Abort is never expected, but a
/// coordinator recovering an unfinished 2PC may send it, and it must be answered).
pub fn participant() -> Participant {
    let ok = |_| async { Ok(Reply::ok()) };
    let mut participant = Participant::new()
        .on_execute("reserve", ok)
        .on_compensate("release", ok)
        .on_execute("charge", ok)
        .on_compensate("refund", ok)
        .on_execute("ship", ok)
        .on_execute("ship_declined", |_| async {
            Err(HandlerError::failed("declined by the bench workload"))
        });
    for branch in ["debit", "credit"] {
        participant = participant
            .on_prepare(branch, ok)
            .on_commit(branch, ok)
            .on_abort(branch, ok);
    }
    participant
}

/// The bench participant as an HTTP/JSON participant (docs/HTTP.md): the same actions under
/// the base path `/bench`, answering at once; `ship_declined` answers 409.
pub struct HttpServer {
    endpoint: String,
    stop: CancellationToken,
    task: tokio::task::JoinHandle<()>,
}

impl HttpServer {
    /// Serves on `listen` until [`HttpServer::shutdown`].
    pub async fn serve(listen: std::net::SocketAddr) -> std::io::Result<HttpServer> {
        use axum::http::StatusCode;
        let listener = tokio::net::TcpListener::bind(listen).await?;
        let addr = listener.local_addr()?;
        // Every saga action and 2PC phase answers 200 with an empty JSON object, but W2's
        // declined step; the body is not read beyond what axum must.
        let app = axum::Router::new().route(
            "/bench/{*rest}",
            axum::routing::post(
                |axum::extract::Path(rest): axum::extract::Path<String>| async move {
                    if rest == "ship_declined" {
                        (
                            StatusCode::CONFLICT,
                            r#"{"message":"declined by the bench workload"}"#,
                        )
                    } else {
                        (StatusCode::OK, "{}")
                    }
                },
            ),
        );
        let stop = CancellationToken::new();
        let stopped = stop.clone();
        let task = tokio::spawn(async move {
            let serve =
                axum::serve(listener, app).with_graceful_shutdown(stopped.cancelled_owned());
            if let Err(e) = serve.await {
                tracing::warn!(error = %e, "bench http participant stopped");
            }
        });
        Ok(HttpServer {
            endpoint: format!("http://{addr}/bench"),
            stop,
            task,
        })
    }

    /// The endpoint URL (with its base path) steps name.
    pub fn endpoint(&self) -> String {
        self.endpoint.clone()
    }

    /// Stops serving and waits for the server task.
    pub async fn shutdown(self) {
        self.stop.cancel();
        let _ = self.task.await;
    }
}

/// The running participant service, in a child process or in this one.
pub struct ParticipantHost {
    endpoint: String,
    host: Host,
}

enum Host {
    /// The child, and its stdin: it serves until stdin closes or it is killed.
    Process {
        child: Child,
        _stdin: ChildStdin,
    },
    InProcess(ServerHandle),
    InProcessHttp(HttpServer),
}

impl ParticipantHost {
    /// Starts the participant service where `how` says.
    pub async fn start(
        how: &Participants,
        protocol: Protocol,
    ) -> Result<ParticipantHost, BenchError> {
        match how {
            Participants::InProcess if protocol == Protocol::Http => {
                let server = HttpServer::serve(([127, 0, 0, 1], 0).into())
                    .await
                    .map_err(|e| BenchError::Participants(e.to_string()))?;
                Ok(ParticipantHost {
                    endpoint: server.endpoint(),
                    host: Host::InProcessHttp(server),
                })
            }
            Participants::InProcess => {
                let server = participant()
                    .serve("127.0.0.1:0")
                    .await
                    .map_err(|e| BenchError::Participants(e.to_string()))?;
                Ok(ParticipantHost {
                    endpoint: server.endpoint(),
                    host: Host::InProcess(server),
                })
            }
            Participants::Process { exe } => spawn_process(exe, protocol).await,
        }
    }

    /// The URL steps call.
    pub fn endpoint(&self) -> &str {
        &self.endpoint
    }

    /// The child's pid, when the participant runs in one.
    pub fn pid(&self) -> Option<u32> {
        match &self.host {
            Host::Process { child, .. } => child.id(),
            Host::InProcess(_) | Host::InProcessHttp(_) => None,
        }
    }

    /// A short description for the report.
    pub fn describe(&self) -> String {
        let http = if self.endpoint.trim_start_matches("http://").contains('/') {
            " (http)"
        } else {
            ""
        };
        match &self.host {
            Host::Process { .. } => format!("separate process{http}"),
            Host::InProcess(_) | Host::InProcessHttp(_) => format!("in process{http}"),
        }
    }

    /// Stops the service: kills the child by its pid (and reaps it), or shuts the server down.
    pub async fn stop(self) {
        match self.host {
            Host::Process { mut child, .. } => {
                if let Err(e) = child.kill().await {
                    tracing::warn!(error = %e, "could not stop the participant process");
                }
            }
            Host::InProcess(server) => server.shutdown().await,
            Host::InProcessHttp(server) => server.shutdown().await,
        }
    }
}

/// Runs `exe bench-participant` and reads the endpoint it prints.
async fn spawn_process(exe: &Path, protocol: Protocol) -> Result<ParticipantHost, BenchError> {
    let mut child = Command::new(exe)
        .args(["bench-participant", "--listen", "127.0.0.1:0"])
        .args(if protocol == Protocol::Http {
            &["--http"][..]
        } else {
            &[]
        })
        .env("BATON_LOG", "warn")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .kill_on_drop(true)
        .spawn()
        .map_err(|e| BenchError::Participants(format!("run {}: {e}", exe.display())))?;
    let (Some(stdin), Some(stdout)) = (child.stdin.take(), child.stdout.take()) else {
        return Err(BenchError::Participants("no pipes to the child".into()));
    };
    let mut lines = BufReader::new(stdout).lines();
    let line = tokio::time::timeout(PARTICIPANT_START_TIMEOUT, lines.next_line()).await;
    let endpoint = match line {
        Ok(Ok(Some(line))) => line.trim().to_string(),
        Ok(Ok(None)) => return Err(BenchError::Participants("it exited at once".into())),
        Ok(Err(e)) => return Err(BenchError::Participants(e.to_string())),
        Err(_) => {
            return Err(BenchError::Participants(format!(
                "no endpoint within {PARTICIPANT_START_TIMEOUT:?}"
            )))
        }
    };
    if !endpoint.starts_with("http://127.0.0.1:") {
        return Err(BenchError::Participants(format!(
            "unexpected endpoint {endpoint:?}"
        )));
    }
    Ok(ParticipantHost {
        endpoint,
        host: Host::Process {
            child,
            _stdin: stdin,
        },
    })
}

/// What one Baton cell measured.
#[derive(Clone, Debug, Default)]
pub struct BatonSample {
    pub sample: Sample,
    /// CPU, machine and WAL readings over the window.
    pub readings: Readings,
}

/// One closed-loop cell of `workload` with `clients` clients against the coordinator at
/// `coordinator`.
pub async fn run(
    workload: Workload,
    coordinator: &str,
    participants: &ParticipantHost,
    clients: usize,
    timing: Timing,
    gauges: &Gauges,
    cancel: &CancellationToken,
) -> Result<BatonSample, BenchError> {
    // One connection per client, as separate application instances would have.
    let mut connected = Vec::with_capacity(clients);
    for _ in 0..clients {
        connected.push(
            Client::connect(coordinator)
                .await
                .map_err(|e| BenchError::Client(e.to_string()))?,
        );
    }
    let request = workload.request(participants.endpoint());
    let expected = workload.expected();
    let window = timing.window_from_now();
    let mut loops: JoinSet<Recorder> = JoinSet::new();
    for client in connected {
        let (request, cancel) = (request.clone(), cancel.clone());
        loops.spawn(async move {
            let mut recorder = Recorder::new(window);
            while recorder.open(&cancel) {
                let started = Instant::now();
                let outcome = one(&client, request.clone(), expected).await;
                recorder.record(started, outcome);
            }
            recorder
        });
    }
    let (recorders, readings) = tokio::join!(
        loops.join_all(),
        gauges.during(window, participants.pid(), cancel)
    );
    Ok(BatonSample {
        sample: Sample::merge(recorders, timing.duration),
        readings,
    })
}

/// One transaction: start it, wait for its outcome, check it is the expected one.
async fn one(client: &Client, request: Definition, expected: TxState) -> Result<(), String> {
    match tokio::time::timeout(CALL_TIMEOUT, client.run(request)).await {
        Ok(Ok(tx)) if tx.state == expected => Ok(()),
        Ok(Ok(tx)) => Err(format!(
            "transaction {} ended {:?}, expected {expected:?}: {}",
            tx.id,
            tx.state,
            tx.last_error.unwrap_or_default()
        )),
        Ok(Err(e)) => Err(e.to_string()),
        Err(_) => Err(format!("no outcome within {CALL_TIMEOUT:?}")),
    }
}

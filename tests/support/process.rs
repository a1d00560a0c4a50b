//! A real `baton serve` child process for end-to-end tests.

use std::process::Stdio;
use std::time::Duration;

use baton_tx_proto::coordinator_client::CoordinatorClient;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};
use tonic::transport::Channel;

/// Short retry, claim and lease times so tests run in seconds, and a small connection pool: the
/// suite shares one PostgreSQL server, which may have few connections to spare (README).
pub const FAST: &[&str] = &[
    "--max-connections",
    "6",
    "--default-initial-backoff-ms",
    "20",
    "--default-max-backoff-ms",
    "200",
    "--default-timeout-ms",
    "2000",
    "--claim-interval-ms",
    "200",
    "--lease-ms",
    "3000",
];

/// A running coordinator process and a client connected to it.
pub struct Coordinator {
    pub child: Child,
    pub endpoint: String,
    /// `127.0.0.1:port` of the health and metrics server.
    pub http: String,
    pub client: CoordinatorClient<Channel>,
}

/// Starts `baton serve` on a free loopback port (unless `extra` has `--listen`) against `database_url`, with [`FAST`] settings
/// unless `extra` sets the same flag, plus `env` variables; waits until it listens. Auth is off
/// (`--no-auth`) unless `extra` or `env` configures it.
pub async fn coordinator(
    database_url: &str,
    id: &str,
    extra: &[&str],
    env: &[(&str, &str)],
) -> Coordinator {
    start(
        Command::new(env!("CARGO_BIN_EXE_baton")),
        database_url,
        id,
        extra,
        env,
    )
    .await
}

/// [`coordinator`], run under an open-file limit of `open_files` (soft and hard, set by the
/// shell's `ulimit -n` before it becomes `baton serve`).
pub async fn coordinator_with_open_files(
    database_url: &str,
    id: &str,
    extra: &[&str],
    open_files: u32,
) -> Coordinator {
    let mut command = Command::new("sh");
    command.args([
        "-c",
        &format!("ulimit -n {open_files} && exec \"$0\" \"$@\""),
        env!("CARGO_BIN_EXE_baton"),
    ]);
    start(command, database_url, id, extra, &[]).await
}

async fn start(
    mut command: Command,
    database_url: &str,
    id: &str,
    extra: &[&str],
    env: &[(&str, &str)],
) -> Coordinator {
    command
        .args(["serve", "--database-url", database_url, "--id", id])
        .args(
            // `extra` overrides a default of the same flag.
            ["--listen", "127.0.0.1:0", "--http-listen", "127.0.0.1:0"]
                .iter()
                .chain(FAST)
                .collect::<Vec<_>>()
                .chunks(2)
                .filter(|pair| !extra.contains(pair[0]))
                .flatten(),
        )
        .args(extra)
        .env("BATON_LOG", "warn")
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .kill_on_drop(true);
    let auth_flags = ["--no-auth", "--auth-token", "--auth-tokens-file"];
    let auth_vars = [
        "BATON_NO_AUTH",
        "BATON_AUTH_TOKENS",
        "BATON_AUTH_TOKENS_FILE",
    ];
    if !extra.iter().any(|a| auth_flags.contains(a))
        && !env.iter().any(|(k, _)| auth_vars.contains(k))
    {
        command.arg("--no-auth");
    }
    for (k, v) in env {
        command.env(k, v);
    }
    let mut child = command.spawn().expect("spawn baton serve");
    let stdout = child.stdout.take().expect("piped stdout");
    let mut lines = BufReader::new(stdout).lines();
    let line = tokio::time::timeout(Duration::from_secs(60), lines.next_line())
        .await
        .expect("baton serve did not start within 60 s")
        .expect("read baton serve's stdout")
        .expect("baton serve exited before listening");
    let endpoint = line
        .split_whitespace()
        .last()
        .expect("the listening line names the address")
        .to_string();
    let http = lines
        .next_line()
        .await
        .expect("read baton serve's stdout")
        .and_then(|l| l.split_whitespace().last().map(str::to_string))
        .expect("baton serve names its http address")
        .trim_start_matches("http://")
        .to_string();
    // Keep draining stdout so the child never blocks on a full pipe.
    tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
    let client = CoordinatorClient::connect(endpoint.clone())
        .await
        .expect("connect to baton serve");
    Coordinator {
        child,
        endpoint,
        http,
        client,
    }
}

impl Coordinator {
    /// SIGKILL, and reap the process.
    pub async fn kill9(&mut self) {
        self.child.start_kill().expect("send SIGKILL");
        self.child.wait().await.expect("reap baton serve");
    }
}

/// Waits (up to 30 s, on the server) until the transaction rests; returns it.
pub async fn wait(c: &mut CoordinatorClient<Channel>, id: &str) -> baton_tx_proto::Transaction {
    c.wait(baton_tx_proto::WaitRequest {
        tx_id: id.into(),
        timeout_ms: 30_000,
    })
    .await
    .expect("wait")
    .into_inner()
}

/// The transaction's state as the enum.
pub fn state(tx: &baton_tx_proto::Transaction) -> baton_tx_proto::TxState {
    baton_tx_proto::TxState::try_from(tx.state).expect("a known state")
}

/// `GET path` on `addr` over plain HTTP/1.0; returns the status code and the body.
pub async fn http_get(addr: &str, path: &str) -> (u16, String) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(addr).await.expect("connect");
    stream
        .write_all(format!("GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n").as_bytes())
        .await
        .expect("send");
    let mut text = String::new();
    stream.read_to_string(&mut text).await.expect("read");
    http_response(&text)
}

/// The status code and body of an HTTP/1 response (status 0 when there is none).
pub fn http_response(text: &str) -> (u16, String) {
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((text, ""));
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|code| code.parse().ok())
        .unwrap_or(0);
    (status, body.to_string())
}

/// Polls `pred` every 10 ms for up to 10 s.
pub async fn until(what: &str, mut pred: impl FnMut() -> bool) {
    for _ in 0..1000 {
        if pred() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("timed out waiting for {what}");
}

/// A saga step calling `endpoint` directly (stage 0; [`saga`] spreads steps over stages).
pub fn step(
    name: &str,
    endpoint: &str,
    action: &str,
    compensate: &str,
) -> baton_tx_proto::SagaStep {
    baton_tx_proto::SagaStep {
        name: name.into(),
        endpoint: endpoint.into(),
        action: action.into(),
        compensate: compensate.into(),
        ..Default::default()
    }
}

/// A `Start` of a saga with `steps` in consecutive stages.
pub fn saga(steps: Vec<baton_tx_proto::SagaStep>) -> baton_tx_proto::StartRequest {
    let steps = steps
        .into_iter()
        .enumerate()
        .map(|(i, s)| baton_tx_proto::SagaStep {
            stage: i as u32,
            ..s
        })
        .collect();
    baton_tx_proto::StartRequest {
        definition: Some(baton_tx_proto::start_request::Definition::Saga(
            baton_tx_proto::Saga { steps },
        )),
        ..Default::default()
    }
}

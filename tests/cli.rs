//! The `baton` operator commands as a shell runs them: the built binary against a real
//! `baton serve` (on an SQLite log in a temporary directory, sparing PostgreSQL connections), with
//! its stdout on a pipe.

mod support;

use std::process::{Output, Stdio};

use support::participant::participant;
use support::process::{self, saga, state, step, wait, Coordinator};

/// `baton <args> --addr <endpoint>` with stdout on a pipe whose reader has gone away before the
/// command writes anything (the read end is closed as soon as the process starts, long before it
/// has connected and fetched what it prints), as `baton tx list | head -0` would.
async fn run_into_closed_pipe(endpoint: &str, args: &[&str]) -> Output {
    let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_baton"))
        .args(args)
        .args(["--addr", endpoint])
        .env("BATON_LOG", "warn")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn baton");
    drop(child.stdout.take());
    child.wait_with_output().await.expect("wait for baton")
}

async fn coordinator_with_transactions(dir: &tempfile::TempDir) -> (Coordinator, Vec<String>) {
    let url = format!("sqlite://{}", dir.path().join("baton.db").display());
    let mut co = process::coordinator(&url, "c1", &[], &[]).await;
    let (p, _ledger) = participant().await;
    let mut ids = Vec::new();
    for _ in 0..3 {
        let started = co
            .client
            .start(saga(vec![
                step("a", &p, "ok", "undo"),
                step("b", &p, "ok", "undo"),
            ]))
            .await
            .expect("start a saga")
            .into_inner();
        let tx = wait(&mut co.client, &started.tx_id).await;
        assert_eq!(state(&tx), baton_tx_proto::TxState::Committed, "{tx:?}");
        ids.push(started.tx_id);
    }
    (co, ids)
}

#[tokio::test]
async fn output_into_a_closed_pipe_ends_quietly() {
    let dir = tempfile::tempdir().expect("a temporary directory");
    let (co, ids) = coordinator_with_transactions(&dir).await;
    let id = ids[0].as_str();
    let commands: [&[&str]; 8] = [
        &["tx", "list", "--json"],
        &["tx", "list"],
        &["tx", "show", id],
        &["tx", "show", id, "--json"],
        &["tx", "events", id],
        &["tx", "events", id, "--json"],
        &["coordinators"],
        &["participants", "list"],
    ];
    for args in commands {
        let out = run_into_closed_pipe(&co.endpoint, args).await;
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!stderr.contains("panicked"), "baton {args:?}: {stderr}");
        assert!(
            out.status.success(),
            "baton {args:?}: {:?} {stderr}",
            out.status
        );
        assert!(
            stderr.is_empty(),
            "baton {args:?} wrote to stderr: {stderr}"
        );
    }
}

#[tokio::test]
async fn an_unreachable_coordinator_is_reported_plainly() {
    // A loopback port nothing listens on: bound, then released.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free loopback port")
        .port();
    let addr = format!("http://127.0.0.1:{port}");
    for args in [&["tx", "list"][..], &["tx", "show", "x"], &["coordinators"]] {
        let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_baton"))
            .args(args)
            .args(["--addr", &addr])
            .env("BATON_LOG", "warn")
            .stdin(Stdio::null())
            .output()
            .await
            .expect("run baton");
        assert!(!out.status.success());
        assert_eq!(
            String::from_utf8_lossy(&out.stderr),
            format!("error: cannot reach the coordinator at {addr}: connection refused\n"),
            "baton {args:?}"
        );
    }
}

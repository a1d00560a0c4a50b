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

/// What `baton <args> --json --addr <endpoint>` prints, parsed; the command must succeed.
async fn baton_json(endpoint: &str, args: &[&str]) -> serde_json::Value {
    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_baton"))
        .args(args)
        .args(["--json", "--addr", endpoint])
        .env("BATON_LOG", "warn")
        .stdin(Stdio::null())
        .output()
        .await
        .expect("run baton");
    assert!(out.status.success(), "baton {args:?}: {out:?}");
    serde_json::from_slice(&out.stdout).expect("JSON")
}

/// `baton coordinators --json`'s owned count of coordinator `c1`.
async fn owned_by_c1(endpoint: &str) -> u64 {
    let listed = baton_json(endpoint, &["coordinators"]).await;
    let c1 = &listed["coordinators"][0];
    assert_eq!(c1["id"], "c1", "{listed}");
    c1["owned"].as_u64().expect("a count")
}

/// The owned counts of `c1` read until one is `want` (up to 100 reads, 50 ms apart): the count
/// is published with the heartbeat (every 200 ms here), so it is waited for.
async fn owned_by_c1_becomes(endpoint: &str, want: u64) -> Vec<u64> {
    let mut seen = Vec::new();
    for _ in 0..100 {
        seen.push(owned_by_c1(endpoint).await);
        if seen.last() == Some(&want) {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    seen
}

#[tokio::test]
async fn the_coordinators_command_counts_what_a_coordinator_drives() {
    use std::sync::atomic::Ordering;
    let dir = tempfile::tempdir().expect("a temporary directory");
    let url = format!("sqlite://{}", dir.path().join("baton.db").display());
    let mut co = process::coordinator(&url, "c1", &[], &[]).await;
    let (p, ledger) = participant().await;
    ledger.gate_closed.store(true, Ordering::SeqCst);
    let mut ids = Vec::new();
    for _ in 0..2 {
        let started = co
            .client
            .start(saga(vec![
                step("a", &p, "ok", "undo"),
                step("held", &p, "gated", "undo"),
            ]))
            .await
            .expect("start a saga")
            .into_inner();
        ids.push(started.tx_id);
    }
    let seen = owned_by_c1_becomes(&co.endpoint, 2).await;
    assert_eq!(
        seen.last(),
        Some(&2),
        "two sagas held at the gate: {seen:?}"
    );

    ledger.gate_closed.store(false, Ordering::SeqCst);
    for id in &ids {
        let tx = wait(&mut co.client, id).await;
        assert_eq!(state(&tx), baton_tx_proto::TxState::Committed, "{tx:?}");
    }
    let seen = owned_by_c1_becomes(&co.endpoint, 0).await;
    assert_eq!(seen.last(), Some(&0), "both sagas ended: {seen:?}");
}

/// `--worker-threads 1` runs every task on the main thread (a current-thread runtime): sagas
/// started at once, every fourth compensating, all reach their outcome, the SQLite log's own threads wake
/// it, and the operator commands answer from it.
#[tokio::test]
async fn serve_on_one_thread_drives_concurrent_sagas() {
    let dir = tempfile::tempdir().expect("a temporary directory");
    let url = format!("sqlite://{}", dir.path().join("baton.db").display());
    let co = process::coordinator(&url, "c1", &[], &[("BATON_WORKER_THREADS", "1")]).await;
    let (p, _ledger) = participant().await;
    let mut started = Vec::new();
    for i in 0..12 {
        let last = if i % 4 == 3 { "fail" } else { "ok" };
        let mut client = co.client.clone();
        let definition = saga(vec![
            step("a", &p, "ok", "undo"),
            step("b", &p, last, "undo"),
        ]);
        started.push(tokio::spawn(async move {
            let id = client
                .start(definition)
                .await
                .expect("start a saga")
                .into_inner()
                .tx_id;
            (last, state(&wait(&mut client, &id).await))
        }));
    }
    for task in started {
        let (last, ended) = task.await.expect("saga task");
        let want = match last {
            "fail" => baton_tx_proto::TxState::Compensated,
            _ => baton_tx_proto::TxState::Committed,
        };
        assert_eq!(ended, want, "a saga whose last step answers {last}");
    }
    let listed = baton_json(&co.endpoint, &["tx", "list"]).await;
    let listed = listed["transactions"].as_array().expect("a list").len();
    assert_eq!(listed, 12, "every saga listed");
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

/// `baton serve` with these flags and variables (and no `BATON_*` settings of the test's own
/// environment), its stdout piped.
fn serve_command(args: &[&str], env: &[(&str, &str)]) -> tokio::process::Command {
    let mut command = tokio::process::Command::new(env!("CARGO_BIN_EXE_baton"));
    command.arg("serve").args(args);
    for (key, _) in std::env::vars().filter(|(k, _)| k.starts_with("BATON_")) {
        command.env_remove(key);
    }
    command
        .env("BATON_LOG", "warn")
        .envs(env.iter().copied())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    command
}

#[tokio::test]
async fn serve_takes_flags_over_environment_over_the_config_file() {
    use tokio::io::{AsyncBufReadExt, BufReader};

    let dir = tempfile::tempdir().expect("a temporary directory");
    let config = dir.path().join("baton.toml");
    let db = dir.path().join("baton.db");
    std::fs::write(
        &config,
        format!(
            "database_url = \"sqlite://{}\"\nid = \"layered\"\nno_auth = true\n\
             listen = \"127.0.0.1:1\"\nhttp_listen = \"off\"\n\
             lease = \"3s\"\nclaim_interval_ms = 200\n",
            db.display()
        ),
    )
    .unwrap();
    let config = config.to_str().unwrap();
    // The file turns HTTP off and the environment on again; the environment's listen address is
    // not one, and the flag's wins over it (clap does not even read it).
    let mut child = serve_command(
        &["--config", config, "--listen", "127.0.0.1:0"],
        &[
            ("BATON_LISTEN", "not-an-address"),
            ("BATON_HTTP_LISTEN", "127.0.0.1:0"),
        ],
    )
    .spawn()
    .expect("spawn baton serve");
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let mut next = async || {
        tokio::time::timeout(std::time::Duration::from_secs(60), lines.next_line())
            .await
            .expect("baton serve said nothing within 60 s")
            .expect("read stdout")
    };
    let Some(listening) = next().await else {
        let out = child.wait_with_output().await.unwrap();
        panic!(
            "baton serve exited: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    let grpc = listening.rsplit_once(':').expect("an address").1;
    assert!(
        listening.starts_with("baton coordinator listening on http://127.0.0.1:") && grpc != "1",
        "{listening}"
    );
    let health = next().await.expect("a second line");
    let http = health
        .strip_prefix("health and metrics on http://")
        .unwrap_or_else(|| panic!("{health}"));
    let (status, body) = process::http_get(http, "/healthz").await;
    assert_eq!((status, body.as_str()), (200, "ok\n"));
    // no_auth from the file.
    let open = next().await.expect("a third line");
    assert!(open.starts_with("authentication disabled"), "{open}");
    child.kill().await.unwrap();
}

#[tokio::test]
async fn serve_names_a_bad_setting_and_where_it_came_from() {
    let dir = tempfile::tempdir().expect("a temporary directory");
    let config = dir.path().join("baton.toml");
    let config_arg = config.to_str().unwrap().to_string();
    let fails = async |file: &str, args: &[&str], env: &[(&str, &str)]| {
        std::fs::write(&config, file).unwrap();
        let mut all = vec!["--config", config_arg.as_str(), "--no-auth"];
        all.extend_from_slice(args);
        let out = tokio::time::timeout(
            std::time::Duration::from_secs(60),
            serve_command(&all, env).output(),
        )
        .await
        .expect("baton serve should have refused to start")
        .unwrap();
        assert!(!out.status.success());
        String::from_utf8_lossy(&out.stderr).into_owned()
    };
    let err = fails("leese = \"15s\"\n", &[], &[]).await;
    assert!(
        err.contains(&format!("config file {config_arg} is not valid"))
            && err.contains("unknown field `leese`"),
        "{err}"
    );
    let err = fails("lease = \"soon\"\n", &[], &[]).await;
    assert!(err.contains("lease") && err.contains("\"soon\""), "{err}");
    let err = fails("", &[], &[("BATON_LEASE_MS", "soon")]).await;
    assert!(err.starts_with("error: BATON_LEASE_MS: "), "{err}");
    let err = fails("", &["--lease", "soon"], &[]).await;
    assert!(err.contains("--lease <DURATION>"), "{err}");
    let err = fails("", &[], &[("BATON_DRAIN_TIMEOUT", "10 parsecs")]).await;
    assert!(err.contains("--drain-timeout <DURATION>"), "{err}");
    let err = fails("progress_flush = \"11s\"\n", &[], &[]).await;
    assert!(
        err.contains("progress_flush: 11s is more than the limit of 10s"),
        "{err}"
    );
}

#[tokio::test]
async fn serve_help_writes_durations_one_way() {
    let out = serve_command(&["--help"], &[]).output().await.unwrap();
    assert!(out.status.success());
    let help = String::from_utf8_lossy(&out.stdout);
    for text in [
        "--lease <DURATION>",
        "--drain-timeout <DURATION>",
        "[default: 15s]",
        "Durations are written 10s, 500ms, 2m",
    ] {
        assert!(help.contains(text), "{text:?} missing from:\n{help}");
    }
    // The old spellings are hidden aliases (named once, in the closing note), and no flag's help
    // speaks of milliseconds any more.
    assert!(help.contains("(--lease-ms, BATON_LEASE_MS, lease_ms) still work"));
    for line in help.lines().map(str::trim_start) {
        let old_flag = line.starts_with("--") && line.contains("-ms");
        assert!(!old_flag, "{line}");
        assert!(!line.contains("in ms"), "{line}");
    }
}

#[tokio::test]
async fn serve_drains_on_a_sigterm_sent_as_soon_as_it_listens() {
    use tokio::io::{AsyncBufReadExt, BufReader};

    let dir = tempfile::tempdir().expect("a temporary directory");
    let url = format!("sqlite://{}", dir.path().join("baton.db").display());
    let mut child = serve_command(
        &[
            "--database-url",
            &url,
            "--no-auth",
            "--listen",
            "127.0.0.1:0",
            "--http-listen",
            "off",
        ],
        &[],
    )
    .spawn()
    .expect("spawn baton serve");
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let listening = tokio::time::timeout(std::time::Duration::from_secs(60), lines.next_line())
        .await
        .expect("baton serve said nothing within 60 s")
        .expect("read stdout")
        .expect("baton serve exited before listening");
    assert!(listening.starts_with("baton coordinator listening on"));
    // At once: the signal handlers must already be in place when it says it listens.
    let pid = child.id().expect("a running child").to_string();
    let sent = std::process::Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .unwrap();
    assert!(sent.success());
    tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
    let exit = tokio::time::timeout(std::time::Duration::from_secs(30), child.wait())
        .await
        .expect("a SIGTERMed coordinator exits within the drain time")
        .unwrap();
    assert!(exit.success(), "not a clean exit: {exit:?}");
}

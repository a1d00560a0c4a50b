//! TLS and mutual TLS end to end: certificates made here with rcgen, a coordinator on its own
//! PostgreSQL database serving gRPC and HTTPS on loopback, the client SDK, the participant SDK
//! and the `baton` binary, all over real sockets.

mod support;

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::Arc;
use std::time::Duration;

use baton_cli::cli::serve::ServeArgs;
use baton_server::api::{self, ServeConfig, Serving};
use baton_tx::client::{Client, ListQuery, Saga, Step, TxState};
use baton_tx::participant::{Participant, Registration, Reply, Request};
use baton_tx::tls::{ClientTls, ServerTls};
use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, IsCa, KeyPair};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio_rustls::rustls;

use support::db::{fresh_database, TestDb};

/// A certificate authority made for one test.
struct Ca {
    issuer: CertifiedIssuer<'static, KeyPair>,
}

impl Ca {
    fn new(name: &str) -> Ca {
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, name);
        let issuer = CertifiedIssuer::self_signed(params, KeyPair::generate().unwrap()).unwrap();
        Ca { issuer }
    }

    /// A certificate for loopback (`127.0.0.1` and `localhost`), signed by this CA: (cert, key).
    fn leaf(&self) -> (String, String) {
        let params =
            CertificateParams::new(vec!["127.0.0.1".to_string(), "localhost".to_string()]).unwrap();
        let key = KeyPair::generate().unwrap();
        let cert = params.signed_by(&key, &*self.issuer).unwrap();
        (cert.pem(), key.serialize_pem())
    }

    fn pem(&self) -> String {
        self.issuer.pem()
    }
}

/// PEM files in a temporary directory.
struct Files {
    dir: tempfile::TempDir,
}

impl Files {
    fn new() -> Files {
        Files {
            dir: tempfile::tempdir().unwrap(),
        }
    }

    fn write(&self, name: &str, contents: &str) -> PathBuf {
        let path = self.dir.path().join(name);
        // Write then rename, as certificate tools do, so a reader never sees half a file.
        let tmp = self.dir.path().join(format!(".{name}.tmp"));
        std::fs::write(&tmp, contents).unwrap();
        std::fs::rename(&tmp, &path).unwrap();
        path
    }

    /// Writes `ca`'s certificate and a leaf it signed as `<name>-ca.pem`, `<name>.pem` and
    /// `<name>-key.pem`; returns (ca, cert, key) paths.
    fn issue(&self, name: &str, ca: &Ca) -> (PathBuf, PathBuf, PathBuf) {
        let (cert, key) = ca.leaf();
        (
            self.write(&format!("{name}-ca.pem"), &ca.pem()),
            self.write(&format!("{name}.pem"), &cert),
            self.write(&format!("{name}-key.pem"), &key),
        )
    }
}

/// A coordinator on `db` with the TLS settings of these `baton serve` flags.
async fn coordinator(db: &TestDb, flags: ServeArgs) -> Serving {
    let config: ServeConfig = ServeArgs {
        listen: Some("127.0.0.1:0".parse().unwrap()),
        http_listen: Some("127.0.0.1:0".into()),
        database_url: Some(db.url.clone()),
        id: Some("tls".into()),
        default_initial_backoff: Some(Duration::from_millis(20).into()),
        default_max_backoff: Some(Duration::from_millis(100).into()),
        default_max_attempts: Some(2),
        default_timeout: Some(Duration::from_secs(2).into()),
        no_auth: Some(true),
        ..flags
    }
    .to_config()
    .unwrap();
    api::serve(config).await.unwrap()
}

fn server_flags(cert: &Path, key: &Path) -> ServeArgs {
    ServeArgs {
        tls_cert: Some(cert.into()),
        tls_key: Some(key.into()),
        tls_reload: Some(Duration::from_millis(50).into()),
        ..ServeArgs::default()
    }
}

/// Connects and makes one call; the error text if either fails. With TLS 1.3 a server that
/// refuses the client's certificate says so after the client's side of the handshake, so the
/// refusal may come with the first call rather than with the connect.
async fn reachable(addr: &str, tls: &ClientTls) -> Result<(), String> {
    let client = Client::connect_tls(&[addr], tls)
        .await
        .map_err(|e| format!("{e:?}"))?;
    client
        .list(ListQuery::default())
        .await
        .map(|_| ())
        .map_err(|e| format!("{e:?}"))
}

/// `GET path` over HTTPS/1.0 trusting `ca`; the status code and body.
async fn https_get(addr: std::net::SocketAddr, ca: &Path, path: &str) -> (u16, String) {
    let mut roots = rustls::RootCertStore::empty();
    let pem = std::fs::read(ca).unwrap();
    for cert in rustls::pki_types::pem::PemObject::pem_slice_iter(&pem) {
        roots.add(cert.unwrap()).unwrap();
    }
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(roots)
    .with_no_client_auth();
    let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
    let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let name = rustls::pki_types::ServerName::try_from("127.0.0.1").unwrap();
    let mut stream = connector.connect(name, tcp).await.expect("tls handshake");
    stream
        .write_all(format!("GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n").as_bytes())
        .await
        .unwrap();
    let mut text = String::new();
    // The server may close without close_notify; what arrived before is what counts.
    let _ = stream.read_to_string(&mut text).await;
    support::process::http_response(&text)
}

// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn tls_handshake_succeeds_with_the_right_ca_only() {
    let db = fresh_database().await;
    let files = Files::new();
    let (ca, cert, key) = files.issue("server", &Ca::new("server ca"));
    let (other_ca, _, _) = files.issue("other", &Ca::new("other ca"));
    let co = coordinator(&db, server_flags(&cert, &key)).await;
    let addr = co.endpoint();
    assert!(addr.starts_with("https://"), "{addr}");

    reachable(&addr, &ClientTls::new(&ca))
        .await
        .expect("the right CA connects");
    let err = reachable(&addr, &ClientTls::new(&other_ca))
        .await
        .expect_err("a CA that did not sign the server's certificate must not connect");
    assert!(err.contains("Connect"), "{err}");

    // Plain text to the TLS port gets nowhere, and an https address without a CA is refused.
    let plain = format!("http://{}", co.addr);
    let client = Client::connect(plain).await;
    let refused = match client {
        Err(_) => true,
        Ok(c) => c.list(ListQuery::default()).await.is_err(),
    };
    assert!(refused, "plain text reached the TLS port");
    let err = Client::connect(addr.clone()).await.unwrap_err();
    assert!(err.to_string().contains("CA certificate"), "{err}");
    co.shutdown().await;
}

#[tokio::test]
async fn mutual_tls_takes_only_client_certificates_from_the_configured_ca() {
    let db = fresh_database().await;
    let files = Files::new();
    let (ca, cert, key) = files.issue("server", &Ca::new("server ca"));
    let clients = Ca::new("client ca");
    let (client_ca, client_cert, client_key) = files.issue("client", &clients);
    let (_, stranger_cert, stranger_key) = files.issue("stranger", &Ca::new("stranger ca"));
    let co = coordinator(
        &db,
        ServeArgs {
            tls_client_ca: Some(client_ca),
            ..server_flags(&cert, &key)
        },
    )
    .await;
    let addr = co.endpoint();

    reachable(
        &addr,
        &ClientTls::new(&ca).identity(&client_cert, &client_key),
    )
    .await
    .expect("a client certificate from the client CA is accepted");
    reachable(&addr, &ClientTls::new(&ca))
        .await
        .expect_err("no client certificate must be refused");
    reachable(
        &addr,
        &ClientTls::new(&ca).identity(&stranger_cert, &stranger_key),
    )
    .await
    .expect_err("a client certificate from another CA must be refused");

    // The HTTP port serves health checks without a client certificate.
    let (status, body) = https_get(co.http_addr.unwrap(), &ca, "/healthz").await;
    assert_eq!((status, body.as_str()), (200, "ok\n"));
    co.shutdown().await;
}

#[tokio::test]
async fn health_and_metrics_are_served_over_https() {
    let db = fresh_database().await;
    let files = Files::new();
    let (ca, cert, key) = files.issue("server", &Ca::new("server ca"));
    let co = coordinator(&db, server_flags(&cert, &key)).await;
    let http = co.http_addr.unwrap();
    assert_eq!(https_get(http, &ca, "/healthz").await, (200, "ok\n".into()));
    let (status, metrics) = https_get(http, &ca, "/metrics").await;
    assert_eq!(status, 200);
    assert!(metrics.contains("# TYPE"), "{metrics}");
    // Plain HTTP to the HTTPS port gets no answer.
    let (status, _) = support::process::http_get(&http.to_string(), "/healthz").await;
    assert_eq!(status, 0, "plain http must not be answered");
    co.shutdown().await;
}

#[tokio::test]
async fn new_connections_use_a_replaced_certificate_and_a_bad_one_is_ignored() {
    let db = fresh_database().await;
    let files = Files::new();
    let (old_ca, cert, key) = files.issue("server", &Ca::new("old ca"));
    let co = coordinator(&db, server_flags(&cert, &key)).await;
    let addr = co.endpoint();
    reachable(&addr, &ClientTls::new(&old_ca)).await.unwrap();

    // Rotate: a certificate from a new CA replaces the files.
    let new = Ca::new("new ca");
    let new_ca = files.write("new-ca.pem", &new.pem());
    let (new_cert, new_key) = new.leaf();
    files.write("server-key.pem", &new_key);
    files.write("server.pem", &new_cert);
    let started = std::time::Instant::now();
    while reachable(&addr, &ClientTls::new(&new_ca)).await.is_err() {
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "the new certificate was not used within 5 s (reload every 50 ms)"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    reachable(&addr, &ClientTls::new(&old_ca))
        .await
        .expect_err("the old certificate is gone");

    // A broken file is logged and the working certificate kept.
    files.write("server.pem", "-----BEGIN CERTIFICATE-----\nbroken\n");
    tokio::time::sleep(Duration::from_millis(300)).await;
    reachable(&addr, &ClientTls::new(&new_ca))
        .await
        .expect("the last good certificate is kept");
    co.shutdown().await;
}

#[tokio::test]
async fn a_saga_runs_against_participants_over_mutual_tls() {
    let db = fresh_database().await;
    let files = Files::new();
    let servers = Ca::new("server ca");
    let clients = Ca::new("client ca");
    // The coordinator's serving certificate, and the client certificate it presents to
    // participants; participants serve with a certificate from the same server CA.
    let (server_ca, cert, key) = files.issue("coordinator", &servers);
    let (client_ca, coordinator_cert, coordinator_key) = files.issue("as-client", &clients);
    let (_, participant_cert, participant_key) = files.issue("participant", &servers);
    let (_, app_cert, app_key) = files.issue("app", &clients);
    let co = coordinator(
        &db,
        ServeArgs {
            tls_client_ca: Some(client_ca.clone()),
            participant_ca: Some(server_ca.clone()),
            participant_cert: Some(coordinator_cert.clone()),
            participant_key: Some(coordinator_key.clone()),
            ..server_flags(&cert, &key)
        },
    )
    .await;

    // A participant serving mutual TLS, registered with the coordinator over mutual TLS.
    let participant = Participant::new()
        .on_execute("reserve", |_req: Request| async move {
            Ok(Reply::output(b"reserved".to_vec()))
        })
        .on_compensate("reserve", |_req| async move { Ok(Reply::ok()) })
        .serve_tls(
            "127.0.0.1:0",
            &ServerTls::new(&participant_cert, &participant_key).client_ca(&client_ca),
        )
        .await
        .unwrap();
    assert!(participant.endpoint().starts_with("https://"));
    participant
        .register(
            Registration::new(co.endpoint(), "inventory")
                .tls(ClientTls::new(&server_ca).identity(&app_cert, &app_key)),
        )
        .await
        .unwrap();

    let app = Client::connect_tls(
        &[co.endpoint()],
        &ClientTls::new(&server_ca).identity(&app_cert, &app_key),
    )
    .await
    .unwrap();
    let tx = app
        .run(
            Saga::new().step(
                Step::new("reserve", "inventory")
                    .action("reserve")
                    .compensate("reserve"),
            ),
        )
        .await
        .unwrap();
    assert_eq!(tx.state, TxState::Committed, "{tx:?}");
    assert_eq!(tx.branches[0].output, b"reserved");

    // A participant whose certificate the coordinator's participant CA did not sign is never
    // called: the step fails in transport and the saga does not commit.
    let strangers = Ca::new("stranger ca");
    let (_, stranger_cert, stranger_key) = files.issue("stranger", &strangers);
    let stranger = Participant::new()
        .on_execute("reserve", |_req: Request| async move { Ok(Reply::ok()) })
        .serve_tls(
            "127.0.0.1:0",
            &ServerTls::new(&stranger_cert, &stranger_key),
        )
        .await
        .unwrap();
    let to_stranger = || {
        Saga::new().step(
            Step::to_endpoint("reserve", stranger.endpoint())
                .action("reserve")
                .compensate("reserve")
                .retry(2, Duration::from_millis(10), Duration::from_millis(20)),
        )
    };
    let tx = app.run(to_stranger()).await.unwrap();
    assert_ne!(tx.state, TxState::Committed, "{tx:?}");
    assert!(
        [&tx.branches[0].last_error, &tx.last_error]
            .into_iter()
            .flatten()
            .any(|e| e.to_lowercase().contains("certificate")),
        "{tx:?}"
    );

    // Trusting the stranger's CA too (the coordinator re-reads --participant-ca) lets the
    // next calls through without a restart.
    files.write(
        "coordinator-ca.pem",
        &format!("{}{}", servers.pem(), strangers.pem()),
    );
    let started = std::time::Instant::now();
    loop {
        let tx = app.run(to_stranger()).await.unwrap();
        if tx.state == TxState::Committed {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "the new participant CA was not used within 5 s: {tx:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    stranger.shutdown().await;
    participant.shutdown().await;
    co.shutdown().await;
}

#[tokio::test]
async fn baton_serve_and_the_cli_take_the_tls_flags() {
    let db = fresh_database().await;
    let files = Files::new();
    let (ca, cert, key) = files.issue("server", &Ca::new("server ca"));
    let (client_ca, client_cert, client_key) = files.issue("client", &Ca::new("client ca"));
    let baton = env!("CARGO_BIN_EXE_baton");

    // Bad settings stop start-up with the flag and the file named.
    let missing = files.dir.path().join("missing.pem");
    for (args, expected) in [
        (
            vec!["--tls-cert", cert.to_str().unwrap()],
            "--tls-cert needs --tls-key".to_string(),
        ),
        (
            vec![
                "--tls-cert",
                missing.to_str().unwrap(),
                "--tls-key",
                key.to_str().unwrap(),
            ],
            format!(
                "--tls-cert: certificate file {}: cannot read",
                missing.display()
            ),
        ),
        (
            vec![
                "--tls-cert",
                cert.to_str().unwrap(),
                "--tls-key",
                cert.to_str().unwrap(),
            ],
            format!(
                "--tls-key: private key file {}: no PEM private key found",
                cert.display()
            ),
        ),
    ] {
        let out = tokio::process::Command::new(baton)
            .args([
                "serve",
                "--database-url",
                &db.url,
                "--listen",
                "127.0.0.1:0",
                "--no-auth",
            ])
            .args(["--http-listen", "off"])
            .args(&args)
            .env("BATON_LOG", "warn")
            .output()
            .await
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{args:?} started");
        assert!(stderr.contains(&expected), "{args:?}: {stderr}");
    }

    let mut child = tokio::process::Command::new(baton)
        .args([
            "serve",
            "--no-auth",
            "--database-url",
            &db.url,
            "--id",
            "tls-cli",
        ])
        .args(["--listen", "127.0.0.1:0", "--http-listen", "127.0.0.1:0"])
        .env("BATON_TLS_CERT", &cert)
        .env("BATON_TLS_KEY", &key)
        .env("BATON_TLS_CLIENT_CA", &client_ca)
        .env("BATON_LOG", "warn")
        .stdout(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let line = tokio::time::timeout(Duration::from_secs(60), lines.next_line())
        .await
        .expect("baton serve did not start within 60 s")
        .unwrap()
        .expect("baton serve exited before listening");
    let addr = line.split_whitespace().last().unwrap().to_string();
    assert!(addr.starts_with("https://127.0.0.1:"), "{line}");
    let http = lines.next_line().await.unwrap().unwrap();
    assert!(http.contains("https://127.0.0.1:"), "{http}");

    let cli = |extra: &[&str]| {
        let mut command = std::process::Command::new(baton);
        command
            .args(["coordinators", "--json", "--addr", &addr])
            .args(extra)
            .env_remove("BATON_CA_CERT");
        command
    };
    let out = cli(&[
        "--ca-cert",
        ca.to_str().unwrap(),
        "--client-cert",
        client_cert.to_str().unwrap(),
        "--client-key",
        client_key.to_str().unwrap(),
    ])
    .output()
    .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("tls-cli"));

    let out = cli(&["--ca-cert", ca.to_str().unwrap()]).output().unwrap();
    assert!(
        !out.status.success(),
        "no client certificate must be refused"
    );
    let out = cli(&[]).output().unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("--ca-cert"));

    child.start_kill().unwrap();
    child.wait().await.unwrap();
}

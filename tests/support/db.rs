//! Test databases: every test gets a PostgreSQL database of its own, created here and dropped
//! when its [`TestDb`] goes out of scope.
//!
//! The server is `DATABASE_URL` when set, else the local one at 127.0.0.1:5432. When the local one
//! does not answer and the PostgreSQL binaries are installed, a throwaway cluster is started once
//! per test process; it stops and is deleted when the process exits.
//!
//! Tests that open many connections at once (several coordinator processes under load) take
//! [`private_database`] instead: a database on a throwaway cluster of this test process's own,
//! so they neither fail when the shared server has few free connections nor starve the tests
//! that use it.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Mutex;
use std::time::Duration;

use sqlx::{Connection, Executor, PgConnection};
use tokio::sync::OnceCell;

const DEFAULT_SERVER: &str = "postgres://postgres@127.0.0.1:5432/postgres";
const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);

/// The server URL all tests of this process use, decided once.
static SERVER: OnceCell<String> = OnceCell::const_new();
/// The private cluster's URL (see [`private_database`]), decided once.
static PRIVATE: OnceCell<String> = OnceCell::const_new();
/// The throwaway clusters' supervisors. Never dropped: their stdin closes when the process
/// exits, which tells each to stop its cluster and delete its directory.
static CLUSTERS: Mutex<Vec<Child>> = Mutex::new(Vec::new());

/// A database that exists for one test.
pub struct TestDb {
    /// Connection URL of the database.
    pub url: String,
    name: String,
    server: String,
}

/// Creates an empty database named `baton_test_<uuid>` and returns it.
pub async fn fresh_database() -> TestDb {
    let server = SERVER.get_or_init(find_server).await.clone();
    database_on(server).await
}

/// Creates an empty database on a throwaway cluster that only this test process uses (started
/// on first use, with room for 300 connections), for tests that open many connections at once.
/// Needs the PostgreSQL server binaries (initdb, pg_ctl), which `.ci/run` installs.
pub async fn private_database() -> TestDb {
    let server = PRIVATE
        .get_or_init(|| async {
            let url = tokio::task::spawn_blocking(start_cluster)
                .await
                .expect("cluster start task")
                .unwrap_or_else(|why| {
                    panic!(
                        "this test needs a throwaway PostgreSQL cluster of its own and none \
                         could be started ({why}); install PostgreSQL (initdb and pg_ctl under \
                         /usr/lib/postgresql/*/bin)"
                    )
                });
            connect(&url)
                .await
                .unwrap_or_else(|e| panic!("throwaway cluster at {url} does not answer: {e}"));
            url
        })
        .await
        .clone();
    database_on(server).await
}

async fn database_on(server: String) -> TestDb {
    let name = format!("baton_test_{}", uuid::Uuid::now_v7().simple());
    let mut conn = connect(&server)
        .await
        .unwrap_or_else(|e| panic!("cannot connect to {server}: {e}"));
    conn.execute(format!("CREATE DATABASE \"{name}\"").as_str())
        .await
        .unwrap_or_else(|e| panic!("cannot create database {name}: {e}"));
    let _ = conn.close().await;
    TestDb {
        url: with_database(&server, &name),
        name,
        server,
    }
}

/// An SQLite store URL for a file in `dir` (a temporary directory the test owns).
pub fn sqlite_url(dir: &Path) -> String {
    format!("sqlite://{}", dir.join("baton.db").display())
}

impl Drop for TestDb {
    fn drop(&mut self) {
        // Drop is synchronous and may run inside a runtime, so the async drop gets a runtime of
        // its own on a fresh thread.
        let server = self.server.clone();
        let name = self.name.clone();
        let dropped = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .map_err(|e| e.to_string())?;
            runtime.block_on(async {
                let mut conn = connect(&server).await.map_err(|e| e.to_string())?;
                conn.execute(format!("DROP DATABASE IF EXISTS \"{name}\" WITH (FORCE)").as_str())
                    .await
                    .map_err(|e| e.to_string())?;
                let _ = conn.close().await;
                Ok::<(), String>(())
            })
        })
        .join();
        if let Ok(Err(e)) = dropped {
            eprintln!("warning: could not drop test database {}: {e}", self.name);
        }
    }
}

async fn connect(url: &str) -> Result<PgConnection, String> {
    match tokio::time::timeout(CONNECT_TIMEOUT, PgConnection::connect(url)).await {
        Ok(Ok(conn)) => Ok(conn),
        Ok(Err(e)) => Err(e.to_string()),
        Err(_) => Err(format!("no answer within {CONNECT_TIMEOUT:?}")),
    }
}

async fn find_server() -> String {
    if let Ok(url) = std::env::var("DATABASE_URL") {
        return url;
    }
    match connect(DEFAULT_SERVER).await {
        Ok(conn) => {
            let _ = conn.close().await;
            DEFAULT_SERVER.to_string()
        }
        Err(e) => {
            let url = start_cluster().unwrap_or_else(|why| {
                panic!(
                    "no PostgreSQL for the tests: {DEFAULT_SERVER} does not answer ({e}) and no \
                     throwaway cluster could be started ({why}); install PostgreSQL (its initdb \
                     and pg_ctl under /usr/lib/postgresql/*/bin), start a server on \
                     127.0.0.1:5432 with trust auth for user postgres, or set DATABASE_URL"
                )
            });
            // The supervisor says ready once pg_ctl has waited for the server to accept
            // connections; this is a last check.
            connect(&url)
                .await
                .unwrap_or_else(|e| panic!("throwaway cluster at {url} does not answer: {e}"));
            url
        }
    }
}

/// Starts a cluster in a temporary directory on a free port, supervised by a shell that stops it
/// and removes the directory when our end of its stdin closes (that is, when this process exits,
/// however it exits).
fn start_cluster() -> Result<String, String> {
    let bin = pg_bin_dir().ok_or("initdb and pg_ctl not found under /usr/lib/postgresql")?;
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map_err(|e| format!("no free port: {e}"))?
        .port();
    let dir = tempfile::Builder::new()
        .prefix("baton-pg-")
        .tempdir()
        .map_err(|e| format!("no temp dir: {e}"))?
        .keep();
    let script = r#"
        set -e
        dir=$1; port=$2; PATH=$3:$PATH
        initdb -D "$dir/data" -A trust -U postgres --no-sync >"$dir/initdb.log" 2>&1
        pg_ctl -D "$dir/data" -l "$dir/server.log" -w \
            -o "-p $port -k $dir -c listen_addresses=127.0.0.1 -c fsync=off -c max_connections=300" \
            start >/dev/null
        echo ready
        read _ || true
        pg_ctl -D "$dir/data" -m immediate stop >/dev/null 2>&1 || true
        rm -rf "$dir"
    "#;
    let mut command = if is_root() {
        // initdb refuses to run as root; the cluster belongs to the postgres user instead.
        Command::new("chown")
            .args(["postgres:"])
            .arg(&dir)
            .status()
            .map_err(|e| format!("chown: {e}"))?;
        let mut c = Command::new("runuser");
        c.args(["-u", "postgres", "--", "sh", "-c", script, "sh"]);
        c
    } else {
        let mut c = Command::new("sh");
        c.args(["-c", script, "sh"]);
        c
    };
    let mut child = command
        .arg(&dir)
        .arg(port.to_string())
        .arg(&bin)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .map_err(|e| format!("cannot start the cluster supervisor: {e}"))?;
    let mut line = String::new();
    if let Some(out) = child.stdout.take() {
        let _ = BufReader::new(out).read_line(&mut line);
    }
    if line.trim() != "ready" {
        let _ = child.wait();
        return Err(format!(
            "the cluster in {} did not start (see its initdb.log and server.log)",
            dir.display()
        ));
    }
    if let Ok(mut clusters) = CLUSTERS.lock() {
        clusters.push(child);
    }
    Ok(format!("postgres://postgres@127.0.0.1:{port}/postgres"))
}

pub fn pg_bin_dir() -> Option<PathBuf> {
    let mut dirs: Vec<PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
        .ok()?
        .filter_map(|e| e.ok().map(|e| e.path().join("bin")))
        .filter(|bin| bin.join("initdb").exists() && bin.join("pg_ctl").exists())
        .collect();
    // The newest major version sorts last (as long as they have the same number of digits).
    dirs.sort();
    dirs.pop()
}

pub fn is_root() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("Uid:"))
                .and_then(|l| l.split_whitespace().nth(1).map(|uid| uid == "0"))
        })
        .unwrap_or(false)
}

/// `server` with its database (the URL path) replaced by `name`, keeping any query parameters.
fn with_database(server: &str, name: &str) -> String {
    let (base, query) = match server.split_once('?') {
        Some((base, query)) => (base, Some(query)),
        None => (server, None),
    };
    let authority_start = base.find("://").map_or(0, |i| i + 3);
    let path_start = base[authority_start..]
        .find('/')
        .map_or(base.len(), |i| authority_start + i);
    let mut url = format!("{}/{name}", &base[..path_start]);
    if let Some(query) = query {
        url.push('?');
        url.push_str(query);
    }
    url
}

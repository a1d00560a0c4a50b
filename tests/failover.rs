//! The log survives a PostgreSQL primary failover: a pg_auto_failover formation on loopback (a
//! monitor and two data nodes with synchronous replication, in a throwaway directory), two
//! `baton serve` processes on its multi-host URL, clients starting sagas, and the primary's node
//! crashed again and again (SIGKILL to its postmaster, the postmaster's children and its
//! `pg_autoctl`). The monitor, tuned to act within seconds, promotes the standby; the test
//! asserts that it did, then starts the old node's `pg_autoctl run` again and it rejoins as the
//! new standby; the coordinators follow the primary.
//!
//! Checked at the end: every transaction whose Start was acknowledged exists and reaches its
//! outcome (RPO 0), no step applied twice and none compensated that should not be, and no epoch
//! written by two owners. Prints the RTO of each failover (kill to the first Start acknowledged
//! after it). The failovers are bounded to 60 s plus 30 s each.
//!
//! Takes minutes and needs `pg_autoctl` (Debian package `postgresql-15-auto-failover`), so it is
//! ignored by default; `.ci/run` runs it once. `BATON_FAILOVER_ROUNDS` sets the number of
//! failovers (default 10).

mod support;

use std::collections::HashSet;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use baton_tx::client::Client;
use sqlx::Connection;

use support::chaos::{check_event_writers, check_saga, order_saga};
use support::participant::participant;
use support::process::coordinator;

fn rounds() -> usize {
    std::env::var("BATON_FAILOVER_ROUNDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(10)
}

/// A free loopback port (free when asked; the formation binds it moments later).
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port()
}

/// A pg_auto_failover formation of this test's own: everything lives under `dir`, and every
/// process belongs to one of `groups`, the process groups of the `pg_autoctl run`s this test
/// started. Dropping it (also on panic) kills those groups and deletes `dir`.
struct Formation {
    dir: PathBuf,
    monitor_port: u16,
    /// (port, data directory) of the two data nodes.
    nodes: Vec<(u16, PathBuf)>,
    groups: Vec<u32>,
    /// Per data node, the process group [`Formation::kill_node`] killed and the pids it held,
    /// until [`Formation::restart`] has seen them gone.
    killed: Vec<Option<(u32, Vec<u32>)>>,
}

impl Formation {
    /// `pg_autoctl ARGS` as the postgres user (PostgreSQL refuses root), with its configuration
    /// and state under `dir`, not the postgres user's home.
    fn autoctl(&self, args: &[&str]) -> Command {
        let xdg = [
            ("XDG_CONFIG_HOME", self.dir.join("config")),
            ("XDG_DATA_HOME", self.dir.join("share")),
            ("XDG_RUNTIME_DIR", self.dir.join("run")),
        ];
        let mut c = if support::db::is_root() {
            let mut c = Command::new("runuser");
            c.args(["-u", "postgres", "--", "env"]);
            for (k, v) in &xdg {
                c.arg(format!("{k}={}", v.display()));
            }
            c.arg("pg_autoctl");
            c
        } else {
            let mut c = Command::new("pg_autoctl");
            c.envs(xdg.iter().map(|(k, v)| (k, v)));
            c
        };
        c.args(args);
        c
    }

    /// Starts `pg_autoctl ARGS` (a `create ... --run` or a `run`) in a process group of its
    /// own, appending to `dir/NAME.log`; returns the group's id.
    fn spawn(&self, name: &str, args: &[&str]) -> u32 {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.join(format!("{name}.log")))
            .expect("log file");
        let child = self
            .autoctl(args)
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log file"))
            .stderr(log)
            .process_group(0)
            .spawn()
            .expect("run pg_autoctl (apt-get install postgresql-15-auto-failover)");
        // The child is reaped by killing its group on drop; its exit status is not needed.
        let group = child.id();
        std::mem::forget(child);
        group
    }

    async fn start() -> Formation {
        let pg_ctl = support::db::pg_bin_dir()
            .expect("this test needs the PostgreSQL server binaries")
            .join("pg_ctl");
        let pg_ctl = pg_ctl.to_str().expect("a UTF-8 path").to_string();
        let dir = std::env::temp_dir().join(format!("baton-failover-{}", uuid::Uuid::now_v7()));
        std::fs::create_dir_all(&dir).expect("formation dir");
        if support::db::is_root() {
            let ok = Command::new("chown")
                .arg("postgres:")
                .arg(&dir)
                .status()
                .expect("chown");
            assert!(ok.success(), "chown the formation dir to postgres");
        }
        let mut f = Formation {
            monitor_port: free_port(),
            nodes: Vec::new(),
            groups: Vec::new(),
            killed: vec![None, None],
            dir,
        };
        let common = |pgdata: &Path, port: u16| -> Vec<String> {
            [
                "--pgdata",
                pgdata.to_str().expect("a UTF-8 path"),
                "--pgport",
                &port.to_string(),
                "--hostname",
                "127.0.0.1",
                "--auth",
                "trust",
                "--no-ssl",
                "--pgctl",
                &pg_ctl,
                "--run",
            ]
            .iter()
            .map(|s| s.to_string())
            .collect()
        };
        let monitor = common(&f.dir.join("monitor"), f.monitor_port);
        let mut args = vec!["create", "monitor"];
        args.extend(monitor.iter().map(String::as_str));
        let group = f.spawn("monitor", &args);
        f.groups.push(group);
        f.wait_for("the monitor", Duration::from_secs(90), |f| async move {
            f.monitor_state().await.is_ok()
        })
        .await;
        f.tune_monitor().await;
        // One node at a time: the first becomes the primary, the second its standby.
        for i in 0..2 {
            let port = free_port();
            let pgdata = f.dir.join(format!("node{}", i + 1));
            let monitor_url = format!(
                "postgres://autoctl_node@127.0.0.1:{}/pg_auto_failover?sslmode=disable",
                f.monitor_port
            );
            let node = common(&pgdata, port);
            let mut args = vec!["create", "postgres", "--monitor", &monitor_url];
            args.extend(node.iter().map(String::as_str));
            let group = f.spawn(&format!("node{}", i + 1), &args);
            f.groups.push(group);
            f.nodes.push((port, pgdata));
            let want = if i == 0 { "single" } else { "secondary" };
            f.wait_for(
                &format!("node {} to reach {want}", i + 1),
                Duration::from_secs(120),
                |f| async move {
                    f.monitor_state().await.is_ok_and(|s| {
                        s.iter()
                            .any(|(p, cur, goal, _)| *p == port && cur == want && goal == want)
                    })
                },
            )
            .await;
            if i == 0 {
                f.unpaced_checkpoints().await;
            }
        }
        f.wait_healthy().await;
        f
    }

    /// Makes the first node run a requested checkpoint at full speed
    /// (`checkpoint_completion_target` 0), in `postgresql.auto.conf`, which the standby's base
    /// backup copies. A killed primary
    /// that `pg_rewind` cannot rejoin is cloned again with `pg_basebackup`, which waits for a
    /// checkpoint on the new primary: paced over 90 % of `checkpoint_timeout`, that took more
    /// than two minutes on a loaded 2-CPU machine.
    async fn unpaced_checkpoints(&self) {
        let mut conn = sqlx::PgConnection::connect(&self.node_url(0, "postgres"))
            .await
            .expect("connect to the first node");
        for statement in [
            "ALTER SYSTEM SET checkpoint_completion_target = 0",
            "SELECT pg_reload_conf()",
        ] {
            sqlx::Executor::execute(&mut conn, statement)
                .await
                .expect("set checkpoint pacing on the first node");
        }
        let _ = conn.close().await;
    }

    /// (port, reported state, assigned state, health: 1 good, 0 bad, -1 unknown) of every data
    /// node, from the monitor.
    async fn monitor_state(&self) -> Result<Vec<(u16, String, String, i32)>, sqlx::Error> {
        let url = format!(
            "postgres://autoctl_node@127.0.0.1:{}/pg_auto_failover",
            self.monitor_port
        );
        let mut conn = sqlx::PgConnection::connect(&url).await?;
        let rows: Vec<(i32, String, String, i32)> = sqlx::query_as(
            "SELECT nodeport, current_group_state::text, assigned_group_state::text, health \
             FROM pgautofailover.current_state('default')",
        )
        .fetch_all(&mut conn)
        .await?;
        let _ = conn.close().await;
        Ok(rows
            .into_iter()
            .map(|(p, c, g, h)| (u16::try_from(p).unwrap_or(0), c, g, h))
            .collect())
    }

    /// The URL of database `name` on node `i` alone.
    fn node_url(&self, i: usize, name: &str) -> String {
        format!("postgres://postgres@127.0.0.1:{}/{name}", self.nodes[i].0)
    }

    /// The multi-host URL of database `name`, as an application would be given it.
    fn url(&self, name: &str) -> String {
        let hosts: Vec<String> = self
            .nodes
            .iter()
            .map(|(p, _)| format!("127.0.0.1:{p}"))
            .collect();
        format!(
            "postgres://postgres@{}/{name}?target_session_attrs=read-write",
            hosts.join(",")
        )
    }

    /// Which node is the primary, asked of the nodes themselves.
    async fn primary(&self) -> Option<usize> {
        for i in 0..self.nodes.len() {
            let Ok(mut conn) = sqlx::PgConnection::connect(&self.node_url(i, "postgres")).await
            else {
                continue;
            };
            let standby: Result<bool, _> = sqlx::query_scalar("SELECT pg_is_in_recovery()")
                .fetch_one(&mut conn)
                .await;
            let _ = conn.close().await;
            if standby.is_ok_and(|s| !s) {
                return Some(i);
            }
        }
        None
    }

    /// Waits until the monitor reports one primary and one secondary, settled, and the primary
    /// streams to the standby synchronously (`sync_state` quorum or sync): only then is an
    /// acknowledged commit on both nodes, so only then may the primary be killed.
    async fn wait_healthy(&self) {
        self.wait_for(
            "a primary with a synchronous standby",
            Duration::from_secs(120),
            |f| async move {
                let Ok(state) = f.monitor_state().await else {
                    return false;
                };
                // Both nodes checked healthy by the monitor too: without a healthy standby it
                // restarts a dead primary in place instead of failing over.
                let settled = |want: &str| {
                    state
                        .iter()
                        .filter(|(_, cur, goal, health)| {
                            cur == want && goal == want && *health == 1
                        })
                        .count()
                        == 1
                };
                if !(settled("primary") && settled("secondary")) {
                    return false;
                }
                let Some(p) = f.primary().await else {
                    return false;
                };
                let Ok(mut conn) = sqlx::PgConnection::connect(&f.node_url(p, "postgres")).await
                else {
                    return false;
                };
                let sync: Result<i64, _> = sqlx::query_scalar(
                    "SELECT count(*) FROM pg_stat_replication \
                     WHERE state = 'streaming' AND sync_state IN ('sync', 'quorum')",
                )
                .fetch_one(&mut conn)
                .await;
                let _ = conn.close().await;
                sync.is_ok_and(|n| n >= 1)
            },
        )
        .await;
    }

    /// Polls `check` every 200 ms until it holds; panics with the formation's logs after
    /// `limit`.
    async fn wait_for<'a, F, Fut>(&'a self, what: &str, limit: Duration, check: F)
    where
        F: Fn(&'a Formation) -> Fut,
        Fut: std::future::Future<Output = bool>,
    {
        let start = Instant::now();
        while start.elapsed() < limit {
            if check(self).await {
                return;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        panic!("timed out waiting for {what}\n{}", self.logs());
    }

    /// The end of each pg_autoctl log, for a failure message.
    fn logs(&self) -> String {
        let mut out = String::new();
        for name in ["monitor", "node1", "node2"] {
            let text =
                std::fs::read_to_string(self.dir.join(format!("{name}.log"))).unwrap_or_default();
            let tail: Vec<&str> = text.lines().rev().take(15).collect();
            out.push_str(&format!("--- {name}.log (last lines)\n"));
            for line in tail.into_iter().rev() {
                out.push_str(line);
                out.push('\n');
            }
        }
        out
    }

    /// Makes the monitor act on a dead primary within seconds rather than its production
    /// defaults (20 s before a silent node counts as unhealthy, 5 s between health checks, 30 s
    /// waiting for the old primary to demote itself), so ten failovers fit in minutes. Set on
    /// the monitor's PostgreSQL before any data node registers.
    async fn tune_monitor(&self) {
        let url = format!(
            "postgres://postgres@127.0.0.1:{}/postgres",
            self.monitor_port
        );
        let mut conn = sqlx::PgConnection::connect(&url)
            .await
            .expect("connect to the monitor as postgres");
        let settings = [
            ("health_check_period", "1000"),
            ("health_check_timeout", "1000"),
            ("health_check_max_retries", "1"),
            ("health_check_retry_delay", "200"),
            ("node_considered_unhealthy_timeout", "2000"),
            ("primary_demote_timeout", "2000"),
            ("startup_grace_period", "1000"),
        ];
        for (name, value) in settings {
            sqlx::Executor::execute(
                &mut conn,
                format!("ALTER SYSTEM SET pgautofailover.{name} = {value}").as_str(),
            )
            .await
            .expect("ALTER SYSTEM on the monitor");
        }
        sqlx::Executor::execute(&mut conn, "SELECT pg_reload_conf()")
            .await
            .expect("reload the monitor");
        // The reload is asynchronous: wait until a new session sees every value.
        let start = Instant::now();
        loop {
            let mut check = sqlx::PgConnection::connect(&url).await.expect("monitor");
            let mut applied = true;
            for (name, value) in settings {
                let now: String =
                    sqlx::query_scalar("SELECT setting FROM pg_settings WHERE name = $1")
                        .bind(format!("pgautofailover.{name}"))
                        .fetch_one(&mut check)
                        .await
                        .expect("pg_settings on the monitor");
                applied &= now == value;
            }
            let _ = check.close().await;
            if applied {
                break;
            }
            assert!(
                start.elapsed() < Duration::from_secs(30),
                "the monitor did not take its settings"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let _ = conn.close().await;
    }

    /// Crashes node `i` as a machine failure would: SIGKILL, all at once, to the process group
    /// of its `pg_autoctl` (keeper, postgres controller, postmaster) and to every child of its
    /// postmaster (backends, walsenders: each is a process group of its own, PostgreSQL's
    /// children call setsid). Killing the postmaster alone is not a failover: the controller
    /// restarts it within a second or two, before the monitor decides, and the same node is the
    /// primary again after crash recovery. Killing it without its children is not a crash:
    /// they outlive it for a moment and still commit. Returns the postmaster's pid;
    /// [`Formation::restart`] brings the node back.
    fn kill_node(&mut self, i: usize) -> u32 {
        let pid = postmaster_pid(&self.nodes[i].1).expect("the node's postmaster.pid");
        let group = self.groups[i + 1];
        // The group kill must take the postmaster with it: one outside the group would restart
        // its children and keep serving as the primary.
        assert_eq!(
            stat_field(pid, 2),
            Some(group),
            "node{}'s postmaster {pid} is in its pg_autoctl's process group",
            i + 1
        );
        // Stopped, the postmaster starts no new child between the listing and the kill.
        let ok = Command::new("kill")
            .args(["-STOP", &pid.to_string()])
            .status()
            .expect("kill");
        assert!(ok.success(), "SIGSTOP postmaster {pid}");
        // What the group holds (pg_autoctl's supervisor and services, the postmaster), for the
        // restart to wait on.
        let members = group_members(group);
        // The children first: killed while the postmaster still stands (stopped), none of them
        // sees it die and answers one more query on its way out.
        let mut targets: Vec<String> = children(pid).iter().map(u32::to_string).collect();
        targets.push(format!("-{group}"));
        let ok = Command::new("kill")
            .args(["-KILL", "--"])
            .args(&targets)
            .status()
            .expect("kill");
        // A child may have exited by itself since the listing; the group must have been killed.
        assert!(
            ok.success() || stat_field(pid, 2).is_none(),
            "SIGKILL process group {group}"
        );
        // The group is gone: never signal its id again (it may be reused).
        self.groups[i + 1] = 0;
        self.killed[i] = Some((group, members));
        pid
    }

    /// Starts `pg_autoctl run` again for node `i` after [`Formation::kill_node`]: the keeper
    /// learns from the monitor that the other node is now the primary, rewinds and rejoins as
    /// its standby.
    ///
    /// It first waits (up to 15 s) until every process of the killed group has exited and been
    /// reaped: a new `pg_autoctl run` refuses to start while the pid in the old one's pidfile
    /// still answers a signal, which a killed process not yet reaped does.
    async fn restart(&mut self, i: usize) {
        if let Some((group, members)) = self.killed[i].take() {
            let until = Instant::now() + Duration::from_secs(15);
            loop {
                // The group's leader is this process's child: nothing else reaps it.
                reap(group);
                // A pid reused since belongs to another group.
                let left = members.iter().any(|&p| stat_field(p, 2) == Some(group));
                if !left || Instant::now() >= until {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
        let pgdata = self.nodes[i].1.to_str().expect("a UTF-8 path").to_string();
        let group = self.spawn(&format!("node{}", i + 1), &["run", "--pgdata", &pgdata]);
        self.groups[i + 1] = group;
    }
}

/// Field `n` after the command name of `/proc/PID/stat` (0 state, 1 ppid, 2 pgrp), as a
/// number.
fn stat_field(pid: u32, n: usize) -> Option<u32> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // pid (comm) state ppid pgrp ...: the command may contain spaces and parentheses.
    stat.rsplit_once(')')
        .and_then(|(_, rest)| rest.split_whitespace().nth(n))
        .and_then(|g| g.parse::<u32>().ok())
}

/// Reaps `pid`, a child of this process, if it has exited.
fn reap(pid: u32) {
    let mut status = 0;
    // SAFETY: waitpid only writes the status into the variable passed; WNOHANG never blocks.
    unsafe {
        libc::waitpid(pid as libc::pid_t, &mut status, libc::WNOHANG);
    }
}

/// The pids of the processes in process group `group`, from /proc.
fn group_members(group: u32) -> Vec<u32> {
    procs_where(2, group)
}

/// The pids of the live children of `parent`, from /proc.
fn children(parent: u32) -> Vec<u32> {
    procs_where(1, parent)
}

/// The pids in /proc whose [`stat_field`] `n` is `value`.
fn procs_where(n: usize, value: u32) -> Vec<u32> {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .flatten()
        .filter_map(|e| e.file_name().to_str().and_then(|n| n.parse::<u32>().ok()))
        .filter(|pid| stat_field(*pid, n) == Some(value))
        .collect()
}

fn postmaster_pid(pgdata: &Path) -> Option<u32> {
    std::fs::read_to_string(pgdata.join("postmaster.pid"))
        .ok()?
        .lines()
        .next()?
        .trim()
        .parse()
        .ok()
}

impl Drop for Formation {
    fn drop(&mut self) {
        // The groups hold pg_autoctl and every PostgreSQL it started (they do not leave it).
        for group in self.groups.iter().filter(|g| **g != 0) {
            let _ = Command::new("kill")
                .args(["-KILL", "--", &format!("-{group}")])
                .status();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// What the clients saw.
#[derive(Default)]
struct Seen {
    /// (tx id, expected to fail at step 3, when the acknowledged attempt was sent, when its
    /// acknowledgement arrived)
    acked: Mutex<Vec<(String, bool, Instant, Instant)>>,
    errors: AtomicU64,
}

impl Seen {
    /// The first acknowledgement of a Start sent after `at`.
    fn first_ack_after(&self, at: Instant) -> Option<Instant> {
        let acked = self.acked.lock().unwrap();
        acked
            .iter()
            .filter(|(_, _, sent, _)| *sent >= at)
            .map(|(_, _, _, ack)| *ack)
            .min()
    }

    fn count(&self) -> usize {
        self.acked.lock().unwrap().len()
    }
}

/// `clients` tasks starting sagas back to back (one in four fails at step 3 and compensates)
/// through both coordinators until `stop` (or a bound on time), each Start retried with its
/// idempotency key until it is acknowledged.
fn load(
    addrs: &[String],
    participant: &str,
    clients: usize,
    stop: Arc<AtomicBool>,
) -> (Arc<Seen>, Vec<tokio::task::JoinHandle<()>>) {
    let seen = Arc::new(Seen::default());
    let counter = Arc::new(AtomicU64::new(0));
    let bound = Duration::from_secs(120 + 60 * rounds() as u64);
    let mut handles = Vec::new();
    for c in 0..clients {
        let (seen, stop, counter) = (seen.clone(), stop.clone(), counter.clone());
        let (addrs, p) = (addrs.to_vec(), participant.to_string());
        handles.push(tokio::spawn(async move {
            let client = Client::connect_many(&addrs).await.unwrap();
            let deadline = Instant::now() + bound;
            while !stop.load(Ordering::SeqCst) && Instant::now() < deadline {
                let n = counter.fetch_add(1, Ordering::SeqCst);
                let fail = n % 4 == 3;
                let key = format!("client{c}-saga{n}");
                // Through an outage a Start fails (UNAVAILABLE) and is sent again with the same
                // key; it is acknowledged once the log takes writes again.
                loop {
                    let sent = Instant::now();
                    match client.start(order_saga(&p, &key, fail, 5)).await {
                        Ok(started) => {
                            seen.acked.lock().unwrap().push((
                                started.tx_id.to_string(),
                                fail,
                                sent,
                                Instant::now(),
                            ));
                            break;
                        }
                        Err(_) if Instant::now() < deadline => {
                            seen.errors.fetch_add(1, Ordering::Relaxed);
                            tokio::time::sleep(Duration::from_millis(20)).await;
                        }
                        Err(e) => panic!("saga {key} was never acknowledged: {e}"),
                    }
                }
            }
        }));
    }
    (seen, handles)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "takes minutes and needs pg_autoctl; .ci/run runs it"]
async fn primary_failovers_lose_no_acknowledged_transaction() {
    let mut formation = Formation::start().await;
    let first = formation.primary().await.expect("a primary");
    let mut admin = sqlx::PgConnection::connect(&formation.node_url(first, "postgres"))
        .await
        .unwrap();
    sqlx::Executor::execute(&mut admin, "CREATE DATABASE baton")
        .await
        .unwrap();
    drop(admin);
    let url = formation.url("baton");

    let (p, ledger) = participant().await;
    let flags = [
        "--lease-ms",
        "3000",
        "--claim-interval-ms",
        "100",
        "--max-connections",
        "4",
    ];
    let a = coordinator(&url, "a", &flags, &[]).await;
    let b = coordinator(&url, "b", &flags, &[]).await;
    let addrs = vec![a.endpoint.clone(), b.endpoint.clone()];
    let stop = Arc::new(AtomicBool::new(false));
    let (seen, clients) = load(&addrs, &p, 4, stop.clone());

    // Every round is a failover: the primary's node crashes, the standby is promoted, the old
    // node comes back as the new standby. The whole loop is bounded in time.
    let deadline = Instant::now() + Duration::from_secs(60 + 30 * rounds() as u64);
    let mut rtos = Vec::new();
    for round in 1..=rounds() {
        assert!(
            Instant::now() < deadline,
            "{} failovers took too long",
            round - 1
        );
        formation.wait_healthy().await;
        // Some load on this primary before it dies.
        let before = seen.count();
        let t = Instant::now();
        while seen.count() < before + 20 {
            assert!(
                t.elapsed() < Duration::from_secs(60),
                "the load stalled before failover {round}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let old = formation.primary().await.expect("a primary");
        let pid = formation.kill_node(old);
        let killed = Instant::now();
        formation
            .wait_for(
                &format!("the standby's promotion after failover {round}"),
                Duration::from_secs(60),
                |f| async move { f.primary().await.is_some_and(|n| n != old) },
            )
            .await;
        let promoted = killed.elapsed();
        formation.restart(old).await;
        let mut ack = None;
        while killed.elapsed() < Duration::from_secs(90) {
            ack = seen.first_ack_after(killed);
            if ack.is_some() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let ack = ack.unwrap_or_else(|| {
            panic!(
                "no Start acknowledged within 90 s of failover {round}\n{}",
                formation.logs()
            )
        });
        let rto = ack - killed;
        eprintln!(
            "failover {round}: killed node{} (postmaster {pid}), node{} promoted after {} ms, \
             RTO {} ms",
            old + 1,
            2 - old,
            promoted.as_millis(),
            rto.as_millis()
        );
        rtos.push(rto);
    }
    formation.wait_healthy().await;
    stop.store(true, Ordering::SeqCst);
    for c in clients {
        c.await.unwrap();
    }

    // RPO: every acknowledged Start is in the log, and reaches its outcome.
    let acked: Vec<(String, bool)> = seen
        .acked
        .lock()
        .unwrap()
        .iter()
        .map(|(id, fail, _, _)| (id.clone(), *fail))
        .collect();
    let ids: HashSet<&String> = acked.iter().map(|(id, _)| id).collect();
    assert_eq!(
        ids.len(),
        acked.len(),
        "one transaction per idempotency key"
    );
    let client = Client::connect_many(&addrs).await.unwrap();
    let mut lost = Vec::new();
    for (id, fail) in &acked {
        match client
            .wait(id.parse().unwrap(), Duration::from_secs(60))
            .await
        {
            Ok(tx) => check_saga(&ledger, &tx, *fail),
            Err(e) => lost.push(format!("{id}: {e}")),
        }
    }
    let primary = formation.primary().await.expect("a primary");
    check_event_writers(&formation.node_url(primary, "baton")).await;
    let ms: Vec<u128> = rtos.iter().map(Duration::as_millis).collect();
    let mean = ms.iter().sum::<u128>() / ms.len().max(1) as u128;
    eprintln!(
        "failover summary: {} failovers, {} Starts acknowledged, {} lost (RPO {}), \
         {} client retries, RTO ms min {} mean {} max {}",
        rtos.len(),
        acked.len(),
        lost.len(),
        lost.len(),
        seen.errors.load(Ordering::Relaxed),
        ms.iter().min().unwrap_or(&0),
        mean,
        ms.iter().max().unwrap_or(&0),
    );
    assert!(lost.is_empty(), "acknowledged transactions lost: {lost:?}");
    drop((a, b));
}

//! A throwaway PostgreSQL cluster of a test's own (initdb into a temporary directory, its own
//! port), so that a test can stop and start the server without touching the shared one.

use std::path::PathBuf;
use std::process::Command;

/// A private cluster; stopped and deleted on drop.
pub struct Cluster {
    dir: PathBuf,
    bin: PathBuf,
    pub port: u16,
}

fn as_owner(bin: &std::path::Path, args: &[&str]) -> Command {
    let tool = bin.join(args[0]);
    if super::db::is_root() {
        // PostgreSQL refuses to run as root; the cluster belongs to the postgres user.
        let mut c = Command::new("runuser");
        c.args(["-u", "postgres", "--"]).arg(tool).args(&args[1..]);
        c
    } else {
        let mut c = Command::new(tool);
        c.args(&args[1..]);
        c
    }
}

impl Cluster {
    /// Creates and starts a cluster on a free loopback port.
    pub fn start() -> Cluster {
        let bin = super::db::pg_bin_dir().expect(
            "this test needs the PostgreSQL server binaries (initdb, pg_ctl under \
             /usr/lib/postgresql): apt-get install postgresql",
        );
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("a free port")
            .port();
        let dir = std::env::temp_dir().join(format!("baton-cluster-{}", uuid::Uuid::now_v7()));
        std::fs::create_dir_all(&dir).expect("cluster dir");
        if super::db::is_root() {
            let ok = Command::new("chown")
                .arg("postgres:")
                .arg(&dir)
                .status()
                .expect("chown");
            assert!(ok.success(), "chown the cluster dir to postgres");
        }
        let data = dir.join("data");
        let out = as_owner(
            &bin,
            &[
                "initdb",
                "-D",
                data.to_str().unwrap(),
                "-A",
                "trust",
                "-U",
                "postgres",
            ],
        )
        .output()
        .expect("run initdb");
        assert!(
            out.status.success(),
            "initdb: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let cluster = Cluster { dir, bin, port };
        cluster.pg_ctl_start();
        cluster
    }

    /// The URL of database `name` on this cluster.
    pub fn url(&self, name: &str) -> String {
        format!("postgres://postgres@127.0.0.1:{}/{name}", self.port)
    }

    fn pg_ctl_start(&self) {
        let data = self.dir.join("data");
        let log = self.dir.join("server.log");
        let options = format!(
            "-p {} -k {} -c listen_addresses=127.0.0.1",
            self.port,
            self.dir.display()
        );
        let out = as_owner(
            &self.bin,
            &[
                "pg_ctl",
                "-D",
                data.to_str().unwrap(),
                "-l",
                log.to_str().unwrap(),
                "-w",
                "-o",
                &options,
                "start",
            ],
        )
        .output()
        .expect("run pg_ctl start");
        assert!(
            out.status.success(),
            "pg_ctl start: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// Stops the server abruptly (`-m immediate`: no checkpoint, clients cut off).
    pub fn stop(&self) {
        let data = self.dir.join("data");
        let out = as_owner(
            &self.bin,
            &[
                "pg_ctl",
                "-D",
                data.to_str().unwrap(),
                "-m",
                "immediate",
                "-w",
                "stop",
            ],
        )
        .output()
        .expect("run pg_ctl stop");
        assert!(
            out.status.success(),
            "pg_ctl stop: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// Starts the server again on the same port.
    pub fn restart(&self) {
        self.pg_ctl_start();
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        let data = self.dir.join("data");
        let _ = as_owner(
            &self.bin,
            &[
                "pg_ctl",
                "-D",
                data.to_str().unwrap(),
                "-m",
                "immediate",
                "stop",
            ],
        )
        .output();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

//! The raw-database baseline: a workload's durable writes done as plain statements, with nothing
//! else in the way, each statement its own commit, on a connection of its own, in the same closed
//! loop as Baton's cells ([`Plan`] lists them).
//!
//! - W1 and W2 (a saga): insert a transaction row (uuid, state, 202-byte payload), insert three
//!   step rows, mark the transaction done. Five commits.
//! - W3 (a two-phase commit): insert the transaction row, insert two branch rows, record the
//!   commit decision (state `committing`), mark the transaction done. Five commits.
//!
//! Against the bench's PostgreSQL database it uses its own tables (`bench_tx`, `bench_step`);
//! under `--sqlite` it writes the same rows to an SQLite file of its own, opened with the settings
//! of Baton's SQLite store (WAL, synchronous FULL).

use std::str::FromStr;
use std::time::Duration;

use sqlx::sqlite::{
    SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions, SqliteSynchronous,
};
use sqlx::{Connection, PgConnection};
use tokio::task::JoinSet;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::gauges::{Gauges, Readings};
use super::measure::{Recorder, Sample, Timing, CALL_TIMEOUT};
use super::{BenchError, Workload};

/// Bytes of the transaction row's payload.
pub const PAYLOAD_BYTES: usize = 202;

/// The durable writes of one baseline transaction, after the workload it stands for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Plan {
    /// W1 and W2: insert the transaction, insert three step rows, update it to done.
    Saga,
    /// W3: insert the transaction, insert two branch rows, update it to `committing` (the
    /// decision a 2PC coordinator must make durable before phase two), update it to done.
    TwoPhase,
}

impl Plan {
    /// The plan whose writes stand for `workload`'s.
    pub fn of(workload: Workload) -> Plan {
        match workload {
            Workload::W1 | Workload::W2 => Plan::Saga,
            Workload::W3 => Plan::TwoPhase,
        }
    }

    /// Commits per transaction: one per statement.
    pub fn commits(self) -> u32 {
        1 + self.children() as u32 + self.updates().len() as u32
    }

    /// The transaction row's state when inserted.
    fn initial(self) -> &'static str {
        match self {
            Plan::Saga => "running",
            Plan::TwoPhase => "preparing",
        }
    }

    /// Step rows (saga) or branch rows (2PC), inserted one by one in `bench_step`.
    fn children(self) -> i32 {
        match self {
            Plan::Saga => 3,
            Plan::TwoPhase => 2,
        }
    }

    /// The state of each inserted step or branch row.
    fn child_state(self) -> &'static str {
        match self {
            Plan::Saga => "done",
            Plan::TwoPhase => "prepared",
        }
    }

    /// The transaction row's later states, each its own `UPDATE`.
    fn updates(self) -> &'static [&'static str] {
        match self {
            Plan::Saga => &["done"],
            Plan::TwoPhase => &["committing", "done"],
        }
    }
}

const PG_SCHEMA: &[&str] = &[
    "CREATE TABLE IF NOT EXISTS bench_tx (
        id uuid PRIMARY KEY,
        state text NOT NULL,
        payload bytea NOT NULL,
        created_at timestamptz NOT NULL DEFAULT now(),
        updated_at timestamptz NOT NULL DEFAULT now()
    )",
    "CREATE TABLE IF NOT EXISTS bench_step (
        tx_id uuid NOT NULL,
        idx integer NOT NULL,
        state text NOT NULL,
        updated_at timestamptz NOT NULL DEFAULT now(),
        PRIMARY KEY (tx_id, idx)
    )",
];

const SQLITE_SCHEMA: &[&str] = &[
    "CREATE TABLE IF NOT EXISTS bench_tx (
        id blob PRIMARY KEY,
        state text NOT NULL,
        payload blob NOT NULL,
        created_at text NOT NULL DEFAULT CURRENT_TIMESTAMP,
        updated_at text NOT NULL DEFAULT CURRENT_TIMESTAMP
    )",
    "CREATE TABLE IF NOT EXISTS bench_step (
        tx_id blob NOT NULL,
        idx integer NOT NULL,
        state text NOT NULL,
        updated_at text NOT NULL DEFAULT CURRENT_TIMESTAMP,
        PRIMARY KEY (tx_id, idx)
    )",
];

const DROP: &[&str] = &[
    "DROP TABLE IF EXISTS bench_step",
    "DROP TABLE IF EXISTS bench_tx",
];

/// The baseline's database, with its tables created.
pub struct Baseline {
    backend: Backend,
}

enum Backend {
    /// Each client opens a connection of its own for its cell.
    Postgres { url: String },
    /// SQLite has one writer at a time anyway; a small pool like the store's.
    Sqlite { pool: SqlitePool },
}

impl Baseline {
    /// Connects to `url` (`postgres://…` or `sqlite://…`) and creates the tables.
    pub async fn prepare(url: &str) -> Result<Baseline, BenchError> {
        let backend = if baton_server::store::is_sqlite_url(url) {
            let options = SqliteConnectOptions::from_str(url)
                .map_err(fail)?
                .create_if_missing(true)
                .journal_mode(SqliteJournalMode::Wal)
                .synchronous(SqliteSynchronous::Full)
                .busy_timeout(Duration::from_secs(5));
            let pool = SqlitePoolOptions::new()
                .max_connections(4)
                .connect_with(options)
                .await
                .map_err(fail)?;
            for statement in SQLITE_SCHEMA {
                sqlx::query(statement).execute(&pool).await.map_err(fail)?;
            }
            Backend::Sqlite { pool }
        } else {
            let mut conn = PgConnection::connect(url).await.map_err(fail)?;
            for statement in PG_SCHEMA {
                sqlx::query(statement)
                    .execute(&mut conn)
                    .await
                    .map_err(fail)?;
            }
            let _ = conn.close().await;
            Backend::Postgres {
                url: url.to_string(),
            }
        };
        Ok(Baseline { backend })
    }

    /// One closed-loop cell of `plan` with `clients` clients.
    pub async fn run(
        &self,
        plan: Plan,
        clients: usize,
        timing: Timing,
        gauges: &Gauges,
        cancel: &CancellationToken,
    ) -> Result<(Sample, Readings), BenchError> {
        let payload = vec![0x5a_u8; PAYLOAD_BYTES];
        let mut loops: JoinSet<Recorder> = JoinSet::new();
        let window = match &self.backend {
            Backend::Postgres { url } => {
                let mut conns = Vec::with_capacity(clients);
                for _ in 0..clients {
                    conns.push(PgConnection::connect(url).await.map_err(fail)?);
                }
                let window = timing.window_from_now();
                for mut conn in conns {
                    let (payload, cancel) = (payload.clone(), cancel.clone());
                    loops.spawn(async move {
                        let mut recorder = Recorder::new(window);
                        while recorder.open(&cancel) {
                            let started = Instant::now();
                            let outcome = within(pg_tx(&mut conn, plan, &payload)).await;
                            recorder.record(started, outcome);
                        }
                        let _ = conn.close().await;
                        recorder
                    });
                }
                window
            }
            Backend::Sqlite { pool } => {
                let window = timing.window_from_now();
                for _ in 0..clients {
                    let (pool, payload, cancel) = (pool.clone(), payload.clone(), cancel.clone());
                    loops.spawn(async move {
                        let mut recorder = Recorder::new(window);
                        while recorder.open(&cancel) {
                            let started = Instant::now();
                            let outcome = within(sqlite_tx(&pool, plan, &payload)).await;
                            recorder.record(started, outcome);
                        }
                        recorder
                    });
                }
                window
            }
        };
        let (recorders, readings) =
            tokio::join!(loops.join_all(), gauges.during(window, None, cancel));
        Ok((Sample::merge(recorders, timing.duration), readings))
    }

    /// Drops the baseline's tables (they matter when the database is the user's).
    pub async fn finish(self) {
        let dropped = match &self.backend {
            Backend::Postgres { url } => {
                async {
                    let mut conn = PgConnection::connect(url).await?;
                    for statement in DROP {
                        sqlx::query(statement).execute(&mut conn).await?;
                    }
                    conn.close().await
                }
                .await
            }
            Backend::Sqlite { pool } => {
                pool.close().await;
                Ok(())
            }
        };
        if let Err(e) = dropped {
            tracing::warn!(error = %e, "could not drop the baseline tables");
        }
    }
}

/// One baseline transaction of `plan` on PostgreSQL: one commit per statement.
async fn pg_tx(conn: &mut PgConnection, plan: Plan, payload: &[u8]) -> Result<(), sqlx::Error> {
    let id = uuid::Uuid::now_v7();
    sqlx::query("INSERT INTO bench_tx (id, state, payload) VALUES ($1, $2, $3)")
        .bind(id)
        .bind(plan.initial())
        .bind(payload)
        .execute(&mut *conn)
        .await?;
    for idx in 0..plan.children() {
        sqlx::query("INSERT INTO bench_step (tx_id, idx, state) VALUES ($1, $2, $3)")
            .bind(id)
            .bind(idx)
            .bind(plan.child_state())
            .execute(&mut *conn)
            .await?;
    }
    for state in plan.updates() {
        sqlx::query("UPDATE bench_tx SET state = $2, updated_at = now() WHERE id = $1")
            .bind(id)
            .bind(state)
            .execute(&mut *conn)
            .await?;
    }
    Ok(())
}

/// One baseline transaction of `plan` on SQLite: the same statements and commits.
async fn sqlite_tx(pool: &SqlitePool, plan: Plan, payload: &[u8]) -> Result<(), sqlx::Error> {
    let id = uuid::Uuid::now_v7();
    sqlx::query("INSERT INTO bench_tx (id, state, payload) VALUES (?, ?, ?)")
        .bind(id)
        .bind(plan.initial())
        .bind(payload)
        .execute(pool)
        .await?;
    for idx in 0..plan.children() {
        sqlx::query("INSERT INTO bench_step (tx_id, idx, state) VALUES (?, ?, ?)")
            .bind(id)
            .bind(idx)
            .bind(plan.child_state())
            .execute(pool)
            .await?;
    }
    for state in plan.updates() {
        sqlx::query("UPDATE bench_tx SET state = ?, updated_at = CURRENT_TIMESTAMP WHERE id = ?")
            .bind(*state)
            .bind(id)
            .execute(pool)
            .await?;
    }
    Ok(())
}

/// Bounds one transaction by [`CALL_TIMEOUT`] and turns its error into text.
async fn within(
    tx: impl std::future::Future<Output = Result<(), sqlx::Error>>,
) -> Result<(), String> {
    match tokio::time::timeout(CALL_TIMEOUT, tx).await {
        Ok(Ok(())) => Ok(()),
        Ok(Err(e)) => Err(e.to_string()),
        Err(_) => Err(format!("no answer within {CALL_TIMEOUT:?}")),
    }
}

fn fail(e: sqlx::Error) -> BenchError {
    BenchError::Baseline(e.to_string())
}

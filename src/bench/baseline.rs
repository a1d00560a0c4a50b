//! The raw-database baseline: W1's durable writes done as plain statements, with nothing else in
//! the way. Per saga a client inserts a transaction row (uuid, state, 202-byte payload), inserts
//! three step rows and marks the transaction done: five statements, each its own commit, on a
//! connection of its own, in the same closed loop as Baton's cells.
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

use super::measure::{Recorder, Sample, Timing, CALL_TIMEOUT};
use super::BenchError;

/// Bytes of the transaction row's payload.
pub const PAYLOAD_BYTES: usize = 202;
/// Commits per baseline saga.
pub const COMMITS_PER_SAGA: u32 = 5;

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
        let backend = if url.starts_with("sqlite:") {
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

    /// One closed-loop cell with `clients` clients.
    pub async fn run(
        &self,
        clients: usize,
        timing: Timing,
        cancel: &CancellationToken,
    ) -> Result<Sample, BenchError> {
        let payload = vec![0x5a_u8; PAYLOAD_BYTES];
        let mut loops: JoinSet<Recorder> = JoinSet::new();
        match &self.backend {
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
                            let outcome = within(pg_saga(&mut conn, &payload)).await;
                            recorder.record(started, outcome);
                        }
                        let _ = conn.close().await;
                        recorder
                    });
                }
            }
            Backend::Sqlite { pool } => {
                let window = timing.window_from_now();
                for _ in 0..clients {
                    let (pool, payload, cancel) = (pool.clone(), payload.clone(), cancel.clone());
                    loops.spawn(async move {
                        let mut recorder = Recorder::new(window);
                        while recorder.open(&cancel) {
                            let started = Instant::now();
                            let outcome = within(sqlite_saga(&pool, &payload)).await;
                            recorder.record(started, outcome);
                        }
                        recorder
                    });
                }
            }
        }
        let recorders = loops.join_all().await;
        Ok(Sample::merge(recorders, timing.duration))
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

/// One baseline saga on PostgreSQL: five statements, five commits.
async fn pg_saga(conn: &mut PgConnection, payload: &[u8]) -> Result<(), sqlx::Error> {
    let id = uuid::Uuid::now_v7();
    sqlx::query("INSERT INTO bench_tx (id, state, payload) VALUES ($1, 'running', $2)")
        .bind(id)
        .bind(payload)
        .execute(&mut *conn)
        .await?;
    for idx in 0..3_i32 {
        sqlx::query("INSERT INTO bench_step (tx_id, idx, state) VALUES ($1, $2, 'done')")
            .bind(id)
            .bind(idx)
            .execute(&mut *conn)
            .await?;
    }
    sqlx::query("UPDATE bench_tx SET state = 'done', updated_at = now() WHERE id = $1")
        .bind(id)
        .execute(&mut *conn)
        .await?;
    Ok(())
}

/// One baseline saga on SQLite: the same five statements and commits.
async fn sqlite_saga(pool: &SqlitePool, payload: &[u8]) -> Result<(), sqlx::Error> {
    let id = uuid::Uuid::now_v7();
    sqlx::query("INSERT INTO bench_tx (id, state, payload) VALUES (?, 'running', ?)")
        .bind(id)
        .bind(payload)
        .execute(pool)
        .await?;
    for idx in 0..3_i32 {
        sqlx::query("INSERT INTO bench_step (tx_id, idx, state) VALUES (?, ?, 'done')")
            .bind(id)
            .bind(idx)
            .execute(pool)
            .await?;
    }
    sqlx::query("UPDATE bench_tx SET state = 'done', updated_at = CURRENT_TIMESTAMP WHERE id = ?")
        .bind(id)
        .execute(pool)
        .await?;
    Ok(())
}

/// Bounds one saga by [`CALL_TIMEOUT`] and turns its error into text.
async fn within(
    saga: impl std::future::Future<Output = Result<(), sqlx::Error>>,
) -> Result<(), String> {
    match tokio::time::timeout(CALL_TIMEOUT, saga).await {
        Ok(Ok(())) => Ok(()),
        Ok(Err(e)) => Err(e.to_string()),
        Err(_) => Err(format!("no answer within {CALL_TIMEOUT:?}")),
    }
}

fn fail(e: sqlx::Error) -> BenchError {
    BenchError::Baseline(e.to_string())
}

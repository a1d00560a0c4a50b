//! Where the barrier keeps its records: the `baton_barrier` table in the participant's own
//! database, and the handful of statements the protocol needs.
//!
//! The statements are the same text for PostgreSQL and SQLite (both accept `$n` parameters and
//! `ON CONFLICT DO NOTHING`); only the schema, how a transaction begins and how a schema error
//! looks differ. A macro stamps the one implementation out for each database, so the protocol in
//! the parent module is written once, generically.

use std::future::Future;
use std::time::Duration;

#[cfg(feature = "postgres")]
use sqlx::Postgres;
#[cfg(feature = "sqlite")]
use sqlx::Sqlite;
use sqlx::{Pool, Transaction};

/// One branch of one transaction: every barrier record of the branch hangs off it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Key {
    pub tx_id: String,
    /// The branch index, widened so every `u32` fits a PostgreSQL `bigint`.
    pub branch: i64,
}

/// A row as stored, before the protocol interprets its outcome.
#[derive(Debug)]
pub struct Stored {
    pub outcome: String,
    pub output: Vec<u8>,
    pub message: String,
}

/// The storage operations the protocol is built from. Public only inside the crate (the module is
/// private), which seals [`BarrierDb`](super::BarrierDb): users cannot add databases whose
/// locking the protocol was never checked against.
pub trait Backend: sqlx::Database {
    /// `CREATE TABLE IF NOT EXISTS`, safe to run on every start.
    const SCHEMA: &'static str;
    /// Run before the schema in the same transaction, so replicas starting together do not race
    /// on the `CREATE` (PostgreSQL can fail one of two concurrent `IF NOT EXISTS` creates).
    const MIGRATE_LOCK: Option<&'static str>;

    /// Whether a database error code means the schema is wrong (most likely the table is missing
    /// because `migrate` was never called), which retrying cannot fix.
    fn is_schema_error(code: &str) -> bool;

    /// Begins a local transaction that takes the write lock it needs before reading.
    fn begin(
        pool: &Pool<Self>,
    ) -> impl Future<Output = Result<Transaction<'static, Self>, sqlx::Error>> + Send + '_;

    /// Inserts the row (`key`, `phase`) with `outcome` unless it exists; true if it was inserted.
    fn claim<'c>(
        conn: &'c mut Self::Connection,
        key: &'c Key,
        phase: &'static str,
        outcome: &'static str,
    ) -> impl Future<Output = Result<bool, sqlx::Error>> + Send + 'c;

    /// The row (`key`, `phase`), if any.
    fn read<'c>(
        conn: &'c mut Self::Connection,
        key: &'c Key,
        phase: &'static str,
    ) -> impl Future<Output = Result<Option<Stored>, sqlx::Error>> + Send + 'c;

    /// Records the result of the row (`key`, `phase`), which this transaction claimed.
    fn settle<'c>(
        conn: &'c mut Self::Connection,
        key: &'c Key,
        phase: &'static str,
        outcome: &'static str,
        output: &'c [u8],
        message: &'c str,
    ) -> impl Future<Output = Result<(), sqlx::Error>> + Send + 'c;

    /// Deletes every record of at most `batch` transactions whose newest record is older than
    /// `age` by the database's clock; returns how many records went.
    fn purge(
        pool: &Pool<Self>,
        age: Duration,
        batch: u32,
    ) -> impl Future<Output = Result<u64, sqlx::Error>> + Send + '_;

    /// Runs a statement without parameters or results (savepoints, schema).
    fn run<'c>(
        conn: &'c mut Self::Connection,
        sql: &'static str,
    ) -> impl Future<Output = Result<(), sqlx::Error>> + Send + 'c;
}

const CLAIM: &str = "INSERT INTO baton_barrier (tx_id, branch, phase, outcome) \
                     VALUES ($1, $2, $3, $4) ON CONFLICT DO NOTHING";
const READ: &str = "SELECT outcome, output, message FROM baton_barrier \
                    WHERE tx_id = $1 AND branch = $2 AND phase = $3";
const SETTLE: &str = "UPDATE baton_barrier SET outcome = $4, output = $5, message = $6 \
                      WHERE tx_id = $1 AND branch = $2 AND phase = $3";

/// A transaction's records go together, and only once all of them are older than the cutoff
/// (`$1`): one that is still active keeps its history whole. The candidates come from the
/// `created_at` index, the activity check from the primary key.
macro_rules! purge_sql {
    ($cutoff:literal) => {
        concat!(
            "DELETE FROM baton_barrier WHERE tx_id IN (
                SELECT DISTINCT old.tx_id FROM baton_barrier old
                WHERE old.created_at < ",
            $cutoff,
            " AND NOT EXISTS (
                    SELECT 1 FROM baton_barrier young
                    WHERE young.tx_id = old.tx_id AND young.created_at >= ",
            $cutoff,
            ")
                LIMIT $2)"
        )
    };
}

#[cfg(feature = "postgres")]
const POSTGRES_PURGE: &str = purge_sql!("now() - $1 * interval '1 millisecond'");
/// SQLite keeps `created_at` as `YYYY-MM-DD HH:MM:SS` text (UTC); `datetime` writes the cutoff
/// the same way, so text order is time order. Both truncate to the second, which can only keep
/// a record up to a second longer, never delete a younger one.
#[cfg(feature = "sqlite")]
const SQLITE_PURGE: &str = purge_sql!("datetime('now', $1)");

/// Statements are separated by `;` (run one at a time by `migrate`).
#[cfg(feature = "postgres")]
const POSTGRES_SCHEMA: &str = "CREATE TABLE IF NOT EXISTS baton_barrier (
    tx_id      text        NOT NULL,
    branch     bigint      NOT NULL,
    phase      text        NOT NULL,
    outcome    text        NOT NULL,
    output     bytea       NOT NULL DEFAULT '\\x',
    message    text        NOT NULL DEFAULT '',
    created_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (tx_id, branch, phase)
);
CREATE INDEX IF NOT EXISTS baton_barrier_created ON baton_barrier (created_at)";

#[cfg(feature = "sqlite")]
const SQLITE_SCHEMA: &str = "CREATE TABLE IF NOT EXISTS baton_barrier (
    tx_id      TEXT    NOT NULL,
    branch     INTEGER NOT NULL,
    phase      TEXT    NOT NULL,
    outcome    TEXT    NOT NULL,
    output     BLOB    NOT NULL DEFAULT x'',
    message    TEXT    NOT NULL DEFAULT '',
    created_at TEXT    NOT NULL DEFAULT CURRENT_TIMESTAMP,
    PRIMARY KEY (tx_id, branch, phase)
);
CREATE INDEX IF NOT EXISTS baton_barrier_created ON baton_barrier (created_at)";

macro_rules! backend {
    (
        $db:ty,
        begin: $begin:literal,
        schema: $schema:expr,
        migrate_lock: $lock:expr,
        schema_error: $schema_error:expr,
        purge: $purge:expr,
        purge_age: $purge_age:expr $(,)?
    ) => {
        impl Backend for $db {
            const SCHEMA: &'static str = $schema;
            const MIGRATE_LOCK: Option<&'static str> = $lock;

            fn is_schema_error(code: &str) -> bool {
                let check: fn(&str) -> bool = $schema_error;
                check(code)
            }

            fn begin(
                pool: &Pool<Self>,
            ) -> impl Future<Output = Result<Transaction<'static, Self>, sqlx::Error>> + Send + '_
            {
                pool.begin_with($begin)
            }

            fn claim<'c>(
                conn: &'c mut Self::Connection,
                key: &'c Key,
                phase: &'static str,
                outcome: &'static str,
            ) -> impl Future<Output = Result<bool, sqlx::Error>> + Send + 'c {
                async move {
                    let done = sqlx::query(CLAIM)
                        .bind(&key.tx_id)
                        .bind(key.branch)
                        .bind(phase)
                        .bind(outcome)
                        .execute(conn)
                        .await?;
                    Ok(done.rows_affected() == 1)
                }
            }

            fn read<'c>(
                conn: &'c mut Self::Connection,
                key: &'c Key,
                phase: &'static str,
            ) -> impl Future<Output = Result<Option<Stored>, sqlx::Error>> + Send + 'c {
                async move {
                    let row: Option<(String, Vec<u8>, String)> = sqlx::query_as(READ)
                        .bind(&key.tx_id)
                        .bind(key.branch)
                        .bind(phase)
                        .fetch_optional(conn)
                        .await?;
                    Ok(row.map(|(outcome, output, message)| Stored {
                        outcome,
                        output,
                        message,
                    }))
                }
            }

            fn settle<'c>(
                conn: &'c mut Self::Connection,
                key: &'c Key,
                phase: &'static str,
                outcome: &'static str,
                output: &'c [u8],
                message: &'c str,
            ) -> impl Future<Output = Result<(), sqlx::Error>> + Send + 'c {
                async move {
                    let done = sqlx::query(SETTLE)
                        .bind(&key.tx_id)
                        .bind(key.branch)
                        .bind(phase)
                        .bind(outcome)
                        .bind(output)
                        .bind(message)
                        .execute(conn)
                        .await?;
                    // The row was claimed in this very transaction, so it cannot be gone; if it
                    // is, the result must not be reported as recorded.
                    if done.rows_affected() == 1 {
                        Ok(())
                    } else {
                        Err(sqlx::Error::RowNotFound)
                    }
                }
            }

            fn purge(
                pool: &Pool<Self>,
                age: Duration,
                batch: u32,
            ) -> impl Future<Output = Result<u64, sqlx::Error>> + Send + '_ {
                async move {
                    let done = sqlx::query($purge)
                        .bind(($purge_age)(age))
                        .bind(i64::from(batch))
                        .execute(pool)
                        .await?;
                    Ok(done.rows_affected())
                }
            }

            fn run<'c>(
                conn: &'c mut Self::Connection,
                sql: &'static str,
            ) -> impl Future<Output = Result<(), sqlx::Error>> + Send + 'c {
                async move {
                    sqlx::query(sql).execute(conn).await?;
                    Ok(())
                }
            }
        }
    };
}

#[cfg(feature = "postgres")]
backend!(
    Postgres,
    // READ COMMITTED is enough: a second insert of a key blocks on the first until it commits or
    // rolls back, then conflicts or proceeds, and each later statement sees what was committed.
    begin: "BEGIN",
    schema: POSTGRES_SCHEMA,
    // An arbitrary constant that names this table's migration.
    migrate_lock: Some("SELECT pg_advisory_xact_lock(7283514902761)"),
    // SQLSTATE class 42: undefined table, undefined column, syntax error.
    schema_error: |code| code.starts_with("42"),
    purge: POSTGRES_PURGE,
    purge_age: age_ms,
);

#[cfg(feature = "sqlite")]
backend!(
    Sqlite,
    // A deferred transaction would read, then fail to upgrade to a writer when another connection
    // wrote first (SQLITE_BUSY without waiting); taking the write lock up front makes duplicates
    // queue behind each other on the busy timeout instead.
    begin: "BEGIN IMMEDIATE",
    schema: SQLITE_SCHEMA,
    migrate_lock: None,
    // SQLITE_ERROR, which is what a missing table or column reports.
    schema_error: |code| code == "1",
    purge: SQLITE_PURGE,
    purge_age: |age: Duration| format!("-{:.3} seconds", age_ms(age) as f64 / 1000.0),
);

/// An age in milliseconds, capped at a thousand years so the database's time arithmetic cannot
/// overflow.
fn age_ms(age: Duration) -> i64 {
    const CAP_MS: u128 = 1000 * 366 * 24 * 3_600_000;
    age.as_millis().min(CAP_MS) as i64
}

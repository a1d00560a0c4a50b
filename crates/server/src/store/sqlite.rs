//! SQLite implementation of the store ([`super::Store`]): the embedded store of a single coordinator.
//!
//! One process owns the file (an advisory lock on `<path>.lock` enforces it), so the local clock
//! is the database's clock. Times are stored as unix milliseconds, ids as canonical lowercase uuid
//! text (which sorts like the uuid), JSON as text. The journal is WAL with full synchronous
//! commits: an acknowledged write survives a power cut.

use std::fs::File;
use std::str::FromStr;
use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use sqlx::sqlite::{
    SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteRow, SqliteSynchronous,
};
use sqlx::{QueryBuilder, Row, SqliteConnection};

use super::{
    age_ms, assemble, clamp_limit, coordinator, db_err, event_row, participant, raw_branch, raw_tx,
    to_i64, Health, ListFilter, LogWrite, Membership, NewTx, Participants, Retention, StoreError,
    TxLog, TxUpdate, WriteOutcome, BRANCH_COLUMNS, FINAL_SQL, MAX_PURGE_BATCH, PARTICIPANT_COLUMNS,
    RESTING_SQL,
};
use crate::model::{CoordinatorRecord, EventRecord, ParticipantRecord, TxId, TxRecord};

/// The embedded SQLite log.
pub struct SqliteLog {
    pub(crate) pool: sqlx::SqlitePool,
    /// Held (never read) so that the lock on `<path>.lock` lasts as long as the store; `None`
    /// for an in-memory store, which no other process can reach.
    _lock: Option<File>,
}

const TX_COLUMNS: &str = "id, kind, state, definition, labels, idempotency_key, owner, epoch, \
     stage, last_error, cancel_requested, deadline_at, created_at, updated_at, last_seq";

/// Writers wait this long for each other instead of failing with `SQLITE_BUSY` at once.
const BUSY_TIMEOUT: Duration = Duration::from_secs(5);

/// Ids handed back per statement by `release`, within SQLite's limit on bound values.
const RELEASE_CHUNK: usize = 500;

impl SqliteLog {
    /// Claims unfinished transactions of nobody, or of another coordinator with no live row
    /// (`claim`) or, `lapsed_only`, with a row whose heartbeat lapsed (`claim_lapsed`).
    async fn claim_where(
        &self,
        owner: &str,
        lease_ms: u64,
        limit: u32,
        lapsed_only: bool,
    ) -> Result<Vec<TxRecord>, StoreError> {
        if limit == 0 {
            return Ok(Vec::new());
        }
        let (exists, compared) = if lapsed_only {
            ("EXISTS", "<=")
        } else {
            ("NOT EXISTS", ">")
        };
        let now = now_ms();
        // The write lock serialises claimers, which is what SKIP LOCKED buys on Postgres.
        let mut tx = self.begin_write().await?;
        let rows = sqlx::query(&format!(
            "UPDATE baton_transactions SET owner = ?1, epoch = epoch + 1, updated_at = ?2
             WHERE id IN (
                SELECT id FROM baton_transactions t
                WHERE state NOT IN {RESTING_SQL}
                  AND (owner IS NULL OR (owner <> ?1 AND {exists} (
                        SELECT 1 FROM baton_coordinators c
                        WHERE c.id = t.owner AND c.heartbeat_at {compared} ?2 - ?3)))
                ORDER BY id
                LIMIT ?4)
             RETURNING {TX_COLUMNS}"
        ))
        .bind(owner)
        .bind(now)
        .bind(to_i64(lease_ms))
        .bind(i64::from(limit))
        .fetch_all(&mut *tx)
        .await
        .map_err(db_err)?;
        let mut claimed = Self::with_branches(&mut tx, rows).await?;
        tx.commit().await.map_err(db_err)?;
        claimed.sort_by_key(|r| r.id);
        Ok(claimed)
    }

    /// Opens (creating if missing) the store at `sqlite://path`, `sqlite:path` or
    /// `sqlite::memory:`. Fails with [`StoreError::Locked`] if another process has the file open.
    pub async fn open(url: &str) -> Result<Self, StoreError> {
        let options = SqliteConnectOptions::from_str(url)
            .map_err(db_err)?
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            .synchronous(SqliteSynchronous::Full)
            .busy_timeout(BUSY_TIMEOUT)
            .foreign_keys(true);
        let in_memory = url.contains(":memory:") || url.contains("mode=memory");
        let lock = if in_memory {
            None
        } else {
            Some(lock_file(&options.get_filename().display().to_string())?)
        };
        // Each connection to `:memory:` would be a database of its own.
        let max_connections = if in_memory { 1 } else { 4 };
        let pool = SqlitePoolOptions::new()
            .max_connections(max_connections)
            .min_connections(if in_memory { 1 } else { 0 })
            .idle_timeout(if in_memory {
                None
            } else {
                Some(Duration::from_secs(600))
            })
            .max_lifetime(if in_memory {
                None
            } else {
                Some(Duration::from_secs(1800))
            })
            .connect_with(options)
            .await
            .map_err(db_err)?;
        Ok(SqliteLog { pool, _lock: lock })
    }

    /// Write transactions take the write lock up front: a deferred one that read first could
    /// not upgrade while another connection writes, and would fail instead of waiting.
    async fn begin_write(&self) -> Result<sqlx::Transaction<'static, sqlx::Sqlite>, StoreError> {
        self.pool
            .begin_with("BEGIN IMMEDIATE")
            .await
            .map_err(db_err)
    }

    async fn create(conn: &mut SqliteConnection, new: &NewTx) -> Result<WriteOutcome, StoreError> {
        let definition = serde_json::to_string(&new.definition).map_err(encode_err)?;
        let labels = serde_json::to_string(&new.labels).map_err(encode_err)?;
        let max_seq = new.events.iter().map(|e| e.seq).max().unwrap_or(0);
        let id = new.id.0.to_string();
        let inserted = sqlx::query(
            "INSERT INTO baton_transactions
                (id, kind, state, definition, labels, idempotency_key, owner, epoch,
                 deadline_at, last_seq, created_at, updated_at)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?11)
             ON CONFLICT (idempotency_key) DO NOTHING",
        )
        .bind(&id)
        .bind(new.definition.kind().as_str())
        .bind(new.state.as_str())
        .bind(definition)
        .bind(labels)
        .bind(new.idempotency_key.as_deref())
        .bind(&new.owner)
        .bind(new.epoch)
        .bind(new.deadline_at.map(|t| t.timestamp_millis()))
        .bind(to_i64(max_seq))
        .bind(new.created_at.timestamp_millis())
        .execute(&mut *conn)
        .await
        .map_err(db_err)?;
        if inserted.rows_affected() == 0 {
            let existing: String =
                sqlx::query_scalar("SELECT id FROM baton_transactions WHERE idempotency_key = ?")
                    .bind(new.idempotency_key.as_deref())
                    .fetch_one(&mut *conn)
                    .await
                    .map_err(db_err)?;
            return Ok(WriteOutcome::Existing(parse_id(&existing)?));
        }
        // Branch rows are written when a branch first changes; pending ones are implied.
        insert_events(conn, &id, (&new.owner, new.epoch), &new.events).await?;
        Ok(WriteOutcome::Created)
    }

    async fn update(
        conn: &mut SqliteConnection,
        up: &TxUpdate,
        now: i64,
    ) -> Result<WriteOutcome, StoreError> {
        let id = up.id.0.to_string();
        let max_seq = up.events.iter().map(|e| e.seq).max().unwrap_or(0);
        let done = sqlx::query(
            "UPDATE baton_transactions
             SET state = ?4, stage = ?5, last_error = ?6, cancel_requested = ?7,
                 owner = CASE WHEN ?8 THEN NULL ELSE owner END,
                 last_seq = max(last_seq, ?9), updated_at = ?10
             WHERE id = ?1 AND owner = ?2 AND epoch = ?3 AND last_seq = ?11",
        )
        .bind(&id)
        .bind(&up.owner)
        .bind(up.epoch)
        .bind(up.state.as_str())
        .bind(i64::from(up.stage))
        .bind(up.last_error.as_deref())
        .bind(up.cancel_requested)
        .bind(up.release)
        .bind(to_i64(max_seq))
        .bind(now)
        .bind(to_i64(up.expected_last_seq))
        .execute(&mut *conn)
        .await
        .map_err(db_err)?;
        if done.rows_affected() == 0 {
            return Ok(WriteOutcome::Fenced);
        }
        for b in &up.branches {
            sqlx::query(
                "INSERT INTO baton_branches
                    (tx_id, idx, name, state, attempts, output, last_error, done_order)
                 VALUES (?, ?, ?, ?, ?, ?, ?, ?)
                 ON CONFLICT (tx_id, idx) DO UPDATE SET
                    name = excluded.name, state = excluded.state, attempts = excluded.attempts,
                    output = excluded.output, last_error = excluded.last_error,
                    done_order = excluded.done_order",
            )
            .bind(&id)
            .bind(i64::from(b.index))
            .bind(&b.name)
            .bind(b.status.as_str())
            .bind(i64::from(b.attempts))
            .bind(b.output.as_deref())
            .bind(b.last_error.as_deref())
            .bind(b.done_order.map(i64::from))
            .execute(&mut *conn)
            .await
            .map_err(db_err)?;
        }
        insert_events(conn, &id, (&up.owner, up.epoch), &up.events).await?;
        Ok(WriteOutcome::Updated)
    }

    /// Attaches the branches of `rows` to them, reading through `conn`.
    async fn with_branches(
        conn: &mut SqliteConnection,
        rows: Vec<SqliteRow>,
    ) -> Result<Vec<TxRecord>, StoreError> {
        let txs = rows.iter().map(raw_tx).collect::<Result<Vec<_>, _>>()?;
        let mut branches = Vec::new();
        for tx in &txs {
            let rows = sqlx::query(&format!(
                "SELECT {BRANCH_COLUMNS} FROM baton_branches WHERE tx_id = ? ORDER BY idx"
            ))
            .bind(tx.id.0.to_string())
            .fetch_all(&mut *conn)
            .await
            .map_err(db_err)?;
            for row in &rows {
                branches.push(raw_branch(row)?);
            }
        }
        assemble(txs, branches)
    }
}

/// Takes the advisory lock that keeps a second process off the file. The lock file is separate
/// from the database so that SQLite's own locking is left alone.
fn lock_file(path: &str) -> Result<File, StoreError> {
    let lock_path = format!("{path}.lock");
    let file = File::options()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&lock_path)
        .map_err(|e| StoreError::Unavailable(format!("cannot open lock file {lock_path}: {e}")))?;
    match file.try_lock() {
        Ok(()) => Ok(file),
        Err(std::fs::TryLockError::WouldBlock) => Err(StoreError::Locked(format!(
            "sqlite store {path} is in use by another baton process; \
             several coordinators need a postgres:// store"
        ))),
        Err(std::fs::TryLockError::Error(e)) => Err(StoreError::Unavailable(format!(
            "cannot lock {lock_path}: {e}"
        ))),
    }
}

/// Appends `events` to transaction `id`, each marked with the `(owner, epoch)` that wrote it.
async fn insert_events(
    conn: &mut SqliteConnection,
    id: &str,
    (owner, epoch): (&str, i64),
    events: &[super::NewEvent],
) -> Result<(), StoreError> {
    for e in events {
        sqlx::query(
            "INSERT INTO baton_events (tx_id, seq, at, kind, branch, detail, owner, epoch)
             VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
        )
        .bind(id)
        .bind(to_i64(e.seq))
        .bind(e.at.timestamp_millis())
        .bind(e.kind.as_str())
        .bind(e.branch.map(i64::from))
        .bind(&e.detail)
        .bind(owner)
        .bind(epoch)
        .execute(&mut *conn)
        .await
        .map_err(db_err)?;
    }
    Ok(())
}

fn encode_err(e: serde_json::Error) -> StoreError {
    StoreError::Database(sqlx::Error::Encode(Box::new(e)))
}

fn now_ms() -> i64 {
    Utc::now().timestamp_millis()
}

fn parse_id(text: &str) -> Result<TxId, StoreError> {
    text.parse()
        .map_err(|e: crate::model::BadTxId| StoreError::Corrupt {
            table: "baton_transactions",
            detail: e.to_string(),
        })
}

fn time(table: &'static str, ms: i64) -> Result<DateTime<Utc>, StoreError> {
    DateTime::from_timestamp_millis(ms).ok_or_else(|| StoreError::Corrupt {
        table,
        detail: format!("time {ms} is out of range"),
    })
}

fn opt_time(table: &'static str, ms: Option<i64>) -> Result<Option<DateTime<Utc>>, StoreError> {
    ms.map(|ms| time(table, ms)).transpose()
}

/// The expiry of a registration renewed now: `None` (never) for a ttl of 0.
fn expiry(now: i64, ttl_ms: u64) -> Option<i64> {
    (ttl_ms > 0).then(|| now.saturating_add(to_i64(ttl_ms)))
}

#[async_trait]
impl TxLog for SqliteLog {
    async fn migrate(&self) -> Result<(), StoreError> {
        sqlx::migrate!("../../migrations/sqlite")
            .run(&self.pool)
            .await?;
        Ok(())
    }

    async fn apply(&self, batch: &[LogWrite]) -> Result<Vec<WriteOutcome>, StoreError> {
        let cleaned = super::clean_batch(batch);
        let batch: &[LogWrite] = &cleaned;
        let mut tx = self.begin_write().await?;
        let now = now_ms();
        let mut outcomes = Vec::with_capacity(batch.len());
        for write in batch {
            outcomes.push(match write {
                LogWrite::Create(new) => Self::create(&mut tx, new).await?,
                LogWrite::Update(up) => Self::update(&mut tx, up, now).await?,
            });
        }
        tx.commit().await.map_err(db_err)?;
        Ok(outcomes)
    }

    async fn get(&self, id: TxId) -> Result<Option<TxRecord>, StoreError> {
        // One read transaction, so the row and its branches come from the same snapshot.
        let mut tx = self.pool.begin().await.map_err(db_err)?;
        let rows = sqlx::query(&format!(
            "SELECT {TX_COLUMNS} FROM baton_transactions WHERE id = ?"
        ))
        .bind(id.0.to_string())
        .fetch_all(&mut *tx)
        .await
        .map_err(db_err)?;
        let record = Self::with_branches(&mut tx, rows).await?.pop();
        tx.commit().await.map_err(db_err)?;
        Ok(record)
    }

    async fn list(&self, filter: &ListFilter) -> Result<Vec<TxRecord>, StoreError> {
        let mut q = QueryBuilder::new(format!(
            "SELECT {TX_COLUMNS} FROM baton_transactions t WHERE 1"
        ));
        if !filter.states.is_empty() {
            q.push(" AND state IN (");
            let mut states = q.separated(", ");
            for state in &filter.states {
                states.push_bind(state.as_str());
            }
            q.push(")");
        }
        // json_each rather than a JSON path, so that any label key works without quoting rules.
        for (key, value) in &filter.labels {
            q.push(" AND EXISTS (SELECT 1 FROM json_each(t.labels) l WHERE l.key = ")
                .push_bind(key)
                .push(" AND l.value = ")
                .push_bind(value)
                .push(")");
        }
        if let Some(after) = filter.created_after {
            q.push(" AND created_at >= ")
                .push_bind(after.timestamp_millis());
        }
        if let Some(before) = filter.created_before {
            q.push(" AND created_at < ")
                .push_bind(before.timestamp_millis());
        }
        if let Some(before_id) = filter.before_id {
            q.push(" AND id < ").push_bind(before_id.0.to_string());
        }
        q.push(" ORDER BY id DESC LIMIT ")
            .push_bind(clamp_limit(filter.limit));
        q.build()
            .fetch_all(&self.pool)
            .await
            .map_err(db_err)?
            .iter()
            .map(|row| raw_tx(row)?.into_record())
            .collect()
    }

    async fn events(
        &self,
        id: TxId,
        after_seq: u64,
        limit: u32,
    ) -> Result<Vec<EventRecord>, StoreError> {
        let rows = sqlx::query(
            "SELECT seq, at, kind, branch, detail FROM baton_events \
             WHERE tx_id = ? AND seq > ? ORDER BY seq LIMIT ?",
        )
        .bind(id.0.to_string())
        .bind(to_i64(after_seq))
        .bind(i64::from(limit))
        .fetch_all(&self.pool)
        .await
        .map_err(db_err)?;
        rows.iter()
            .map(|row| event_row("baton_events", id, row))
            .collect()
    }

    async fn claim(
        &self,
        owner: &str,
        lease_ms: u64,
        limit: u32,
    ) -> Result<Vec<TxRecord>, StoreError> {
        self.claim_where(owner, lease_ms, limit, false).await
    }

    async fn claim_lapsed(
        &self,
        owner: &str,
        lease_ms: u64,
        limit: u32,
    ) -> Result<Vec<TxRecord>, StoreError> {
        self.claim_where(owner, lease_ms, limit, true).await
    }

    async fn release_owned(&self, owner: &str) -> Result<u64, StoreError> {
        let done = sqlx::query(&format!(
            "UPDATE baton_transactions SET owner = NULL, epoch = epoch + 1, updated_at = ? \
             WHERE owner = ? AND state NOT IN {RESTING_SQL}"
        ))
        .bind(now_ms())
        .bind(owner)
        .execute(&self.pool)
        .await
        .map_err(db_err)?;
        Ok(done.rows_affected())
    }

    async fn release(&self, owner: &str, ids: &[TxId]) -> Result<u64, StoreError> {
        let mut released = 0;
        for chunk in ids.chunks(RELEASE_CHUNK) {
            let mut q = QueryBuilder::new(
                "UPDATE baton_transactions SET owner = NULL, epoch = epoch + 1, updated_at = ",
            );
            q.push_bind(now_ms())
                .push(" WHERE owner = ")
                .push_bind(owner)
                .push(format!(" AND state NOT IN {RESTING_SQL} AND id IN ("));
            let mut list = q.separated(", ");
            for id in chunk {
                list.push_bind(id.0.to_string());
            }
            list.push_unseparated(")");
            let done = q.build().execute(&self.pool).await.map_err(db_err)?;
            released += done.rows_affected();
        }
        Ok(released)
    }

    async fn request_cancel(&self, id: TxId, reason: &str) -> Result<bool, StoreError> {
        let mut tx = self.begin_write().await?;
        let unfinished = sqlx::query(&format!(
            "SELECT 1 FROM baton_transactions WHERE id = ? AND state NOT IN {RESTING_SQL}"
        ))
        .bind(id.0.to_string())
        .fetch_optional(&mut *tx)
        .await
        .map_err(db_err)?
        .is_some();
        if unfinished {
            sqlx::query(
                "INSERT INTO baton_cancel_requests (tx_id, reason, requested_at) VALUES (?, ?, ?) \
                 ON CONFLICT (tx_id) DO NOTHING",
            )
            .bind(id.0.to_string())
            .bind(reason)
            .bind(now_ms())
            .execute(&mut *tx)
            .await
            .map_err(db_err)?;
        }
        tx.commit().await.map_err(db_err)?;
        Ok(unfinished)
    }

    async fn cancel_requests(
        &self,
        owner: &str,
        limit: u32,
    ) -> Result<Vec<(TxId, String)>, StoreError> {
        let rows = sqlx::query(&format!(
            "SELECT r.tx_id, r.reason FROM baton_cancel_requests r \
             JOIN baton_transactions t ON t.id = r.tx_id \
             WHERE t.owner = ? AND t.state NOT IN {RESTING_SQL} \
             ORDER BY r.requested_at LIMIT ?"
        ))
        .bind(owner)
        .bind(i64::from(limit))
        .fetch_all(&self.pool)
        .await
        .map_err(db_err)?;
        let mut out = Vec::with_capacity(rows.len());
        for row in rows {
            let id: String = row.try_get("tx_id").map_err(db_err)?;
            out.push((parse_id(&id)?, row.try_get("reason").map_err(db_err)?));
        }
        Ok(out)
    }

    async fn clear_cancel_request(&self, id: TxId) -> Result<(), StoreError> {
        sqlx::query("DELETE FROM baton_cancel_requests WHERE tx_id = ?")
            .bind(id.0.to_string())
            .execute(&self.pool)
            .await
            .map_err(db_err)?;
        Ok(())
    }

    async fn claim_one(
        &self,
        id: TxId,
        owner: &str,
        expected_epoch: i64,
    ) -> Result<Option<TxRecord>, StoreError> {
        let mut tx = self.begin_write().await?;
        let rows = sqlx::query(&format!(
            "UPDATE baton_transactions SET owner = ?, epoch = epoch + 1, updated_at = ? \
             WHERE id = ? AND epoch = ? RETURNING {TX_COLUMNS}"
        ))
        .bind(owner)
        .bind(now_ms())
        .bind(id.0.to_string())
        .bind(expected_epoch)
        .fetch_all(&mut *tx)
        .await
        .map_err(db_err)?;
        let record = Self::with_branches(&mut tx, rows).await?.pop();
        tx.commit().await.map_err(db_err)?;
        Ok(record)
    }
}

#[async_trait]
impl Participants for SqliteLog {
    async fn register_participant(
        &self,
        service: &str,
        endpoint: &str,
        weight: u32,
        zone: &str,
        ttl_ms: u64,
    ) -> Result<ParticipantRecord, StoreError> {
        let row = sqlx::query(&format!(
            "INSERT INTO baton_participants (service, endpoint, weight, zone, expires_at)
             VALUES (?, ?, ?, ?, ?)
             ON CONFLICT (service, endpoint) DO UPDATE SET
                weight = excluded.weight, zone = excluded.zone, expires_at = excluded.expires_at
             RETURNING {PARTICIPANT_COLUMNS}"
        ))
        .bind(service)
        .bind(endpoint)
        .bind(i64::from(weight))
        .bind(zone)
        .bind(expiry(now_ms(), ttl_ms))
        .fetch_one(&self.pool)
        .await
        .map_err(db_err)?;
        participant(&row)
    }

    async fn heartbeat_participant(
        &self,
        service: &str,
        endpoint: &str,
        ttl_ms: u64,
    ) -> Result<Option<ParticipantRecord>, StoreError> {
        let now = now_ms();
        let row = sqlx::query(&format!(
            "UPDATE baton_participants SET expires_at = ?1
             WHERE service = ?2 AND endpoint = ?3 AND (expires_at IS NULL OR expires_at > ?4)
             RETURNING {PARTICIPANT_COLUMNS}"
        ))
        .bind(expiry(now, ttl_ms))
        .bind(service)
        .bind(endpoint)
        .bind(now)
        .fetch_optional(&self.pool)
        .await
        .map_err(db_err)?;
        row.as_ref().map(participant).transpose()
    }

    async fn deregister_participant(
        &self,
        service: &str,
        endpoint: &str,
    ) -> Result<bool, StoreError> {
        let done = sqlx::query("DELETE FROM baton_participants WHERE service = ? AND endpoint = ?")
            .bind(service)
            .bind(endpoint)
            .execute(&self.pool)
            .await
            .map_err(db_err)?;
        Ok(done.rows_affected() > 0)
    }

    async fn list_participants(
        &self,
        service: Option<&str>,
    ) -> Result<Vec<ParticipantRecord>, StoreError> {
        let rows = sqlx::query(&format!(
            "SELECT {PARTICIPANT_COLUMNS} FROM baton_participants
             WHERE (?1 IS NULL OR service = ?1) AND (expires_at IS NULL OR expires_at > ?2)
             ORDER BY service, endpoint"
        ))
        .bind(service)
        .bind(now_ms())
        .fetch_all(&self.pool)
        .await
        .map_err(db_err)?;
        rows.iter().map(participant).collect()
    }
}

#[async_trait]
impl Membership for SqliteLog {
    async fn heartbeat_coordinator(
        &self,
        id: &str,
        address: &str,
        version: &str,
        driving: u64,
    ) -> Result<(), StoreError> {
        sqlx::query(
            "INSERT INTO baton_coordinators
                (id, address, started_at, heartbeat_at, version, driving)
             VALUES (?1, ?2, ?3, ?3, ?4, ?5)
             ON CONFLICT (id) DO UPDATE SET
                address = excluded.address, heartbeat_at = excluded.heartbeat_at,
                version = excluded.version, driving = excluded.driving",
        )
        .bind(id)
        .bind(address)
        .bind(now_ms())
        .bind(version)
        .bind(to_i64(driving))
        .execute(&self.pool)
        .await
        .map_err(db_err)?;
        Ok(())
    }

    async fn remove_coordinator(&self, id: &str) -> Result<(), StoreError> {
        sqlx::query("DELETE FROM baton_coordinators WHERE id = ?")
            .bind(id)
            .execute(&self.pool)
            .await
            .map_err(db_err)?;
        Ok(())
    }

    async fn list_coordinators(&self, lease_ms: u64) -> Result<Vec<CoordinatorRecord>, StoreError> {
        let rows = sqlx::query(
            "SELECT c.id, c.address, c.started_at, c.heartbeat_at, c.version, c.driving AS owned
             FROM baton_coordinators c
             WHERE c.heartbeat_at > ?
             ORDER BY c.id",
        )
        .bind(now_ms().saturating_sub(to_i64(lease_ms)))
        .fetch_all(&self.pool)
        .await
        .map_err(db_err)?;
        rows.iter().map(coordinator).collect()
    }

    async fn forget_departed(
        &self,
        dead_for: Duration,
        batch: u32,
    ) -> Result<(u64, u64), StoreError> {
        let now = now_ms();
        let coordinators = sqlx::query(
            "DELETE FROM baton_coordinators WHERE id IN (
                SELECT id FROM baton_coordinators WHERE heartbeat_at < ?1 LIMIT ?2)",
        )
        .bind(now.saturating_sub(age_ms(dead_for)))
        .bind(i64::from(batch))
        .execute(&self.pool)
        .await
        .map_err(db_err)?;
        let participants = sqlx::query(
            "DELETE FROM baton_participants WHERE (service, endpoint) IN (
                SELECT service, endpoint FROM baton_participants WHERE expires_at < ?1 LIMIT ?2)",
        )
        .bind(now)
        .bind(i64::from(batch))
        .execute(&self.pool)
        .await
        .map_err(db_err)?;
        Ok((coordinators.rows_affected(), participants.rows_affected()))
    }
}

#[async_trait]
impl Retention for SqliteLog {
    async fn purge_finished(&self, older_than: Duration, batch: u32) -> Result<u64, StoreError> {
        if batch == 0 {
            return Ok(0);
        }
        // Branches, events and cancel requests go with the row (ON DELETE CASCADE; the pool
        // turns foreign keys on for every connection).
        let done = sqlx::query(&format!(
            "DELETE FROM baton_transactions WHERE id IN (
                SELECT id FROM baton_transactions
                WHERE state IN {FINAL_SQL} AND updated_at < ?
                ORDER BY updated_at
                LIMIT ?)"
        ))
        .bind(now_ms().saturating_sub(age_ms(older_than)))
        .bind(i64::from(batch.min(MAX_PURGE_BATCH)))
        .execute(&self.pool)
        .await
        .map_err(db_err)?;
        Ok(done.rows_affected())
    }
}

#[async_trait]
impl Health for SqliteLog {
    async fn ping(&self) -> Result<(), StoreError> {
        sqlx::query("SELECT 1")
            .execute(&self.pool)
            .await
            .map_err(db_err)?;
        Ok(())
    }

    fn pool_stats(&self) -> Option<super::PoolStats> {
        Some(super::PoolStats {
            size: self.pool.size(),
            idle: u32::try_from(self.pool.num_idle()).unwrap_or(u32::MAX),
            max: self.pool.options().get_max_connections(),
        })
    }
}

impl super::LogRow for SqliteRow {
    super::plain_columns!();

    fn id(&self, column: &str) -> Result<TxId, StoreError> {
        parse_id(self.try_get(column)?)
    }

    fn time(&self, table: &'static str, column: &str) -> Result<DateTime<Utc>, StoreError> {
        time(table, self.try_get(column)?)
    }

    fn opt_time(
        &self,
        table: &'static str,
        column: &str,
    ) -> Result<Option<DateTime<Utc>>, StoreError> {
        opt_time(table, self.try_get(column)?)
    }
}

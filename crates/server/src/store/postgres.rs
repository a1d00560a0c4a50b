//! PostgreSQL implementation of the store ([`super::Store`]): the store several coordinators share.
//!
//! Every time that matters to leases and expiry comes from the database's `now()`, so the
//! coordinators' clocks never have to agree. A group-commit batch is one statement (a CTE that
//! inserts the new transactions and applies the fenced updates, with rows bound as arrays; see
//! `batch`); a batch the set form cannot express is applied one statement per write, in one
//! database transaction.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use sqlx::pool::PoolConnection;
use sqlx::postgres::{PgConnectOptions, PgPoolOptions, PgRow};
use sqlx::types::Json;
use sqlx::{Connection, Postgres, QueryBuilder, Row};
use tokio::sync::Notify;
use uuid::Uuid;

use super::{
    age_ms, assemble, clamp_limit, coordinator, db_err, event_row, participant, raw_tx, to_i64,
    Health, ListFilter, LogWrite, Membership, Participants, Retention, StoreError, StoreOptions,
    TxLog, WriteOutcome, FINAL_SQL, MAX_PURGE_BATCH, PARTICIPANT_COLUMNS, RESTING_SQL,
};
use crate::model::{CoordinatorRecord, EventRecord, ParticipantRecord, TxId, TxRecord, TxState};

mod batch;
mod branches;
pub mod hosts;

/// The PostgreSQL log.
pub struct PgLog {
    pub(crate) pool: sqlx::PgPool,
    /// The log writers' connections, used by [`TxLog::apply`] only.
    writes: sqlx::PgPool,
    /// Writer connections between batches, kept out of `writes`: sqlx tests a connection with a
    /// round trip to the server each time it goes back to its pool, so returning one after every
    /// batch cost a round trip per batch, and the next batch waited for it when no other
    /// connection was idle. A connection whose batch failed is dropped instead, back to the pool,
    /// which tests it and replaces it if it is broken. Kept connections live as long as the
    /// store (or until the primary moves); the pool's idle timeout and lifetime do not reach them.
    idle_writes: KeptWrites,
    /// Following the primary of a multi-host URL; `None` for a single host.
    failover: Option<Failover>,
}

/// The transaction columns every read selects, in the order [`raw_tx`] decodes them, from
/// [`TX_TABLES`] (or an UPDATE of `baton_transactions` joined to `baton_definitions`). The two
/// tables share no column name, so none needs its table's name.
const TX_COLUMNS: &str = "id, kind, state, definition, \
     labels::text AS labels, idempotency_key, owner, epoch, stage, last_error, cancel_requested, \
     deadline_at, created_at, updated_at, last_seq, branches::text AS branches";

/// A transaction's row and its definition, kept apart because only the row is ever updated
/// (migration 0007).
const TX_TABLES: &str = "baton_transactions JOIN baton_definitions ON tx_id = id";

/// A `baton_branch_data` row: transaction, branch index, output, error.
type KeptApart = (Uuid, i64, Option<Vec<u8>>, Option<String>);

type KeptWrites = Arc<std::sync::Mutex<Vec<PoolConnection<Postgres>>>>;

/// The least time between two searches for the primary: a failover breaks every connection at
/// once, and each broken one reports it.
const RESOLVE_INTERVAL: Duration = Duration::from_millis(200);

/// The longest a search waits for one host to answer: a host that hangs (a stopped machine)
/// must not hold up trying the next one for the whole acquire timeout.
const PROBE_TIMEOUT: Duration = Duration::from_secs(2);

/// The resolver of a multi-host URL: a task, owned by the log (aborted when it is dropped), that
/// searches the hosts for the primary whenever a statement fails for the connection's sake and
/// points both pools at it.
struct Failover {
    wake: Arc<Notify>,
    task: tokio::task::JoinHandle<()>,
}

/// When the pools last moved to another host, as milliseconds since `base` (`u64::MAX`: never).
/// A pooled connection older than the move still talks to the old host, which may be back as a
/// standby serving stale reads: the pools drop such connections instead of handing them out.
struct SwitchClock {
    base: Instant,
    switched_ms: AtomicU64,
}

impl SwitchClock {
    /// Whether a connection `age` old was opened after the last move.
    fn is_current(&self, age: Duration) -> bool {
        let switched = self.switched_ms.load(Ordering::Acquire);
        if switched == u64::MAX {
            return true;
        }
        let since = self
            .base
            .elapsed()
            .saturating_sub(Duration::from_millis(switched));
        age < since
    }

    fn mark(&self) {
        let now = u64::try_from(self.base.elapsed().as_millis()).unwrap_or(u64::MAX - 1);
        self.switched_ms.store(now, Ordering::Release);
    }
}

/// Everything but log writes is planned for its own parameters on every execution.
/// PostgreSQL's default switches a prepared statement to a generic plan after five runs, and on
/// a new database that plan is made while the tables are nearly empty: a scan that was right for
/// ten rows then stays cached while the table grows. Reads, claims and listings are few enough
/// to pay a planning pass each. The log writers' statements run on every commit and keep their
/// generic plans (a custom plan of the fenced update costs 0.13 ms, ten times its generic one);
/// they are written so that plan is a key lookup at any table size (see `batch`).
fn read_options(connect: PgConnectOptions) -> PgConnectOptions {
    connect.options([("plan_cache_mode", "force_custom_plan")])
}

impl PgLog {
    /// Opens its two connection pools, one for the log writers and one for everything else;
    /// the schema is left alone until [`TxLog::migrate`]. A URL naming several hosts (libpq
    /// syntax) connects to the first one that is a primary and follows the primary from then on.
    pub async fn connect(url: &str, options: &StoreOptions) -> Result<Self, StoreError> {
        let targets = hosts::parse(url)?;
        let probe_timeout = Duration::from_millis(options.acquire_timeout_ms)
            .clamp(RESOLVE_INTERVAL, PROBE_TIMEOUT);
        let first = if targets.hosts.len() > 1 {
            hosts::find_primary(&targets, probe_timeout).await?
        } else {
            0
        };
        let connect = targets.hosts[first].clone();
        let clock = Arc::new(SwitchClock {
            base: Instant::now(),
            switched_ms: AtomicU64::new(u64::MAX),
        });
        let need_primary = targets.need_primary;
        let pool = |size: u32, connect: PgConnectOptions| {
            let clock = clock.clone();
            let mut pool = PgPoolOptions::new()
                .max_connections(size.max(1))
                // No ping round trip before every use: a broken connection fails its statement,
                // which callers already treat as transient (the pool then replaces it).
                .test_before_acquire(false)
                .acquire_timeout(Duration::from_millis(options.acquire_timeout_ms))
                .before_acquire(move |_, meta| {
                    let current = clock.is_current(meta.age);
                    Box::pin(async move { Ok(current) })
                });
            if need_primary {
                // A host that was the primary may come back as a standby: a new connection
                // checks that it can write before it is used, and the pool retries until its
                // acquire timeout (by then the search has found the new primary).
                pool = pool.after_connect(|conn, _| {
                    Box::pin(async move {
                        if hosts::is_primary(conn).await? {
                            Ok(())
                        } else {
                            Err(sqlx::Error::Io(std::io::Error::new(
                                std::io::ErrorKind::ConnectionRefused,
                                "the host is read-only (a standby), not the primary",
                            )))
                        }
                    })
                });
            }
            pool.connect_with(connect)
        };
        let reads = pool(options.max_connections, read_options(connect.clone()))
            .await
            .map_err(db_err)?;
        let writes = pool(options.write_connections, connect)
            .await
            .map_err(db_err)?;
        let idle_writes: KeptWrites = Arc::default();
        let failover = (targets.hosts.len() > 1).then(|| {
            let wake = Arc::new(Notify::new());
            let resolver = Resolver {
                targets,
                current: first,
                probe_timeout,
                reads: reads.clone(),
                writes: writes.clone(),
                idle_writes: idle_writes.clone(),
                clock,
                wake: wake.clone(),
            };
            Failover {
                wake,
                task: tokio::spawn(resolver.run()),
            }
        });
        Ok(PgLog {
            pool: reads,
            writes,
            idle_writes,
            failover,
        })
    }

    /// Notes a failed statement: one that failed for its connection's sake (broken, refused,
    /// server shutting down, or a server that no longer takes writes) starts a search for the
    /// primary. A write refused by a standby (SQLSTATE 25006) is reported unavailable: the same
    /// write succeeds once the pools reach the new primary.
    fn seen(&self, e: StoreError) -> StoreError {
        let (connection, read_only) = match &e {
            StoreError::Unavailable(_) => (true, false),
            StoreError::Database(sqlx::Error::Database(db)) => {
                let code = db.code();
                let code = code.as_deref().unwrap_or("");
                let read_only = code == "25006";
                (
                    read_only || code.starts_with("08") || code.starts_with("57P"),
                    read_only,
                )
            }
            StoreError::Database(other) => (super::is_transient_sqlx(other), false),
            _ => (false, false),
        };
        if connection {
            if let Some(f) = &self.failover {
                f.wake.notify_one();
            }
        }
        if read_only {
            return StoreError::Unavailable(e.to_string());
        }
        e
    }

    /// [`db_err`], then [`PgLog::seen`].
    fn err(&self, e: sqlx::Error) -> StoreError {
        self.seen(db_err(e))
    }

    /// A writer connection: one kept from an earlier batch, or a new one from the pool.
    async fn write_connection(&self) -> Result<PoolConnection<Postgres>, StoreError> {
        let kept = self.idle_writes.lock().expect("writer connections").pop();
        match kept {
            Some(conn) => Ok(conn),
            None => self.writes.acquire().await.map_err(|e| self.err(e)),
        }
    }

    /// Keeps a writer connection whose batch succeeded for the next batch.
    fn keep_write_connection(&self, conn: PoolConnection<Postgres>) {
        self.idle_writes
            .lock()
            .expect("writer connections")
            .push(conn);
    }

    /// Decodes `rows` with the branch states their rows hold, reading what is kept apart of
    /// them in one query (migration 0010).
    async fn with_branches<'e>(
        &self,
        db: impl sqlx::PgExecutor<'e>,
        rows: Vec<PgRow>,
    ) -> Result<Vec<TxRecord>, StoreError> {
        let txs = rows.iter().map(raw_tx).collect::<Result<Vec<_>, _>>()?;
        let columns = rows
            .iter()
            .map(|row| row.try_get::<Option<String>, _>("branches"))
            .collect::<Result<Vec<_>, _>>()
            .map_err(db_err)?;
        let apart: Vec<Uuid> = txs
            .iter()
            .zip(&columns)
            .filter(|(_, column)| branches::has_apart(column.as_deref()))
            .map(|(tx, _)| tx.id.0)
            .collect();
        let mut data = HashMap::new();
        if !apart.is_empty() {
            let kept: Vec<KeptApart> = sqlx::query_as(
                "SELECT tx_id, idx, output, last_error FROM baton_branch_data \
                 WHERE tx_id = ANY($1)",
            )
            .bind(&apart)
            .fetch_all(db)
            .await
            .map_err(|e| self.err(e))?;
            for (tx_id, idx, output, last_error) in kept {
                data.insert((TxId(tx_id), idx), branches::Apart { output, last_error });
            }
        }
        let mut all = Vec::new();
        for (tx, column) in txs.iter().zip(&columns) {
            all.extend(branches::decode(tx.id, column.as_deref(), &mut data)?);
        }
        assemble(txs, all)
    }

    /// The records of rows a claim took in `tx`, oldest first, read in that transaction and
    /// committed only once they are whole: a claim that fails (a database error, a corrupt row)
    /// leaves nothing owned that no driver runs.
    async fn claimed(
        &self,
        mut tx: sqlx::Transaction<'_, sqlx::Postgres>,
        rows: Vec<PgRow>,
    ) -> Result<Vec<TxRecord>, StoreError> {
        let mut claimed = self.with_branches(&mut *tx, rows).await?;
        tx.commit().await.map_err(|e| self.err(e))?;
        claimed.sort_by_key(|r| r.id);
        Ok(claimed)
    }
}

/// How many lapsed coordinators a tick's claim takes work from (the most recently lapsed).
const LAPSED_PER_TICK: i64 = 32;

/// Which range of the unfinished index (by owner, then id) a claim statement reads. Every
/// claim reads ranges of owners that may have lapsed, in the index's order, so that no plan walks
/// a live coordinator's range: that range keeps an entry for every transaction the coordinator
/// finished since the last vacuum, each read again (with its row) by every claim that walks it.
/// Public only for the plan tests.
#[doc(hidden)]
#[derive(Clone, Copy, Debug)]
pub enum ClaimRange {
    /// Transactions owned by nobody. Parameters: `$1` claimer, `$2` limit.
    Unowned,
    /// Those of the lapsed coordinator `$3`, whose lease is `$4` ms.
    Lapsed,
    /// Those of owners strictly between two bounds (`$4`, then the next parameter, when
    /// `after` and `before` say there is such a bound) whose heartbeat is older than the lease
    /// `$3` ms or who have no coordinator row.
    Between { after: bool, before: bool },
}

/// The text of a claim of the transactions in `range`. A lapsed owner is checked again in the
/// statement: a heartbeat that arrived since the list of live coordinators was read keeps its
/// transactions.
#[doc(hidden)]
pub fn claim_sql(range: ClaimRange) -> String {
    let lapsed = |owner: &str, lease: &str| {
        format!(
            "NOT EXISTS (
                SELECT 1 FROM baton_coordinators c
                WHERE c.id = {owner} AND c.heartbeat_at > now() - {lease} * interval '1 millisecond')"
        )
    };
    let which = match range {
        ClaimRange::Unowned => "t.owner IS NULL".to_string(),
        ClaimRange::Lapsed => format!("t.owner = $3 AND {}", lapsed("$3", "$4")),
        ClaimRange::Between { after, before } => {
            let mut which = Vec::new();
            let mut next = 4;
            if after {
                which.push(format!("t.owner > ${next}"));
                next += 1;
            }
            if before {
                which.push(format!("t.owner < ${next}"));
            }
            if which.is_empty() {
                which.push("t.owner IS NOT NULL".to_string());
            }
            which.push(lapsed("t.owner", "$3"));
            which.join(" AND ")
        }
    };
    format!(
        "UPDATE baton_transactions SET owner = $1, epoch = epoch + 1, updated_at = now()
         FROM baton_definitions
         WHERE tx_id = id AND id IN (
            SELECT id FROM baton_transactions t
            WHERE state NOT IN {RESTING_SQL} AND {which}
            ORDER BY t.owner, t.id LIMIT $2
            FOR UPDATE SKIP LOCKED)
         RETURNING {TX_COLUMNS}"
    )
}

/// The text of [`TxLog::release`]: `$1` owner, `$2` ids. Public only for the plan tests.
#[doc(hidden)]
pub fn release_sql() -> String {
    format!(
        "UPDATE baton_transactions SET owner = NULL, epoch = epoch + 1, updated_at = now() \
         WHERE id = ANY($2) AND owner = $1 AND state NOT IN {RESTING_SQL}"
    )
}

/// The claimer and the coordinators whose heartbeat is fresh, in the order of the unfinished
/// index's owner column (the database's collation, not Rust's): the bounds of the ranges a full
/// claim reads. `$1` claimer, `$2` lease in ms.
const LIVE_OWNERS_SQL: &str = "SELECT id FROM baton_coordinators
     WHERE heartbeat_at > now() - $2 * interval '1 millisecond'
     UNION SELECT $1::text
     ORDER BY 1";

impl Drop for PgLog {
    fn drop(&mut self) {
        if let Some(f) = &self.failover {
            f.task.abort();
        }
    }
}

/// The search for the primary (see [`Failover`]).
struct Resolver {
    targets: hosts::Targets,
    /// The index of the host the pools point at.
    current: usize,
    probe_timeout: Duration,
    reads: sqlx::PgPool,
    writes: sqlx::PgPool,
    idle_writes: KeptWrites,
    clock: Arc<SwitchClock>,
    wake: Arc<Notify>,
}

impl Resolver {
    async fn run(mut self) {
        loop {
            self.wake.notified().await;
            // Until some host is the primary (during a failover none is, for a few seconds):
            // the statements failing meanwhile are reported unavailable, as in any outage.
            loop {
                match hosts::find_primary(&self.targets, self.probe_timeout).await {
                    Ok(found) => {
                        if found != self.current {
                            self.switch(found);
                        }
                        break;
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "looking for the database primary");
                        tokio::time::sleep(RESOLVE_INTERVAL).await;
                    }
                }
            }
            tokio::time::sleep(RESOLVE_INTERVAL).await;
        }
    }

    /// Points both pools at host `to`; connections to the old host are dropped as they come
    /// back (see [`SwitchClock`]), and the kept writer connections at once.
    fn switch(&mut self, to: usize) {
        tracing::warn!(
            from = %self.targets.names[self.current],
            to = %self.targets.names[to],
            "the database primary moved"
        );
        let connect = self.targets.hosts[to].clone();
        self.reads
            .set_connect_options(read_options(connect.clone()));
        self.writes.set_connect_options(connect);
        self.clock.mark();
        self.current = to;
        let kept = std::mem::take(&mut *self.idle_writes.lock().expect("writer connections"));
        drop(kept);
    }
}

/// The outcome of every write of a batch, or an error if one got none.
fn outcomes_of(found: Vec<Option<WriteOutcome>>) -> Result<Vec<WriteOutcome>, StoreError> {
    found
        .into_iter()
        .map(|o| {
            o.ok_or_else(|| StoreError::Corrupt {
                table: "baton_transactions",
                detail: "a batched write got no outcome".into(),
            })
        })
        .collect()
}

/// `ttl_ms` as a nullable interval in milliseconds: 0 means the registration never expires.
fn ttl_param(ttl_ms: u64) -> Option<i64> {
    (ttl_ms > 0).then(|| to_i64(ttl_ms))
}

#[async_trait]
impl TxLog for PgLog {
    async fn migrate(&self) -> Result<(), StoreError> {
        sqlx::migrate!("../../migrations/postgres")
            .run(&self.pool)
            .await
            .map_err(|e| match e {
                sqlx::migrate::MigrateError::Execute(e) => self.err(e),
                other => StoreError::Migrate(other),
            })?;
        Ok(())
    }

    async fn apply(&self, batch: &[LogWrite]) -> Result<Vec<WriteOutcome>, StoreError> {
        let cleaned = super::clean_batch(batch);
        let batch: &[LogWrite] = &cleaned;
        match batch::plan(batch) {
            // One statement for the whole batch, atomic by itself: no BEGIN and COMMIT round
            // trips around it.
            Some(plan) => {
                let mut found = vec![None; batch.len()];
                let mut conn = self.write_connection().await?;
                batch::apply(&mut conn, plan, &mut found)
                    .await
                    .map_err(|e| self.seen(e))?;
                self.keep_write_connection(conn);
                outcomes_of(found)
            }
            // One write at a time, in order, in one database transaction: each is a batch of
            // one, which always plans.
            None => {
                let mut conn = self.write_connection().await?;
                let mut tx = conn.begin().await.map_err(|e| self.err(e))?;
                let mut found = vec![None; batch.len()];
                for (i, write) in batch.iter().enumerate() {
                    let one = std::slice::from_ref(write);
                    let plan = batch::plan(one).ok_or_else(|| StoreError::Corrupt {
                        table: "baton_transactions",
                        detail: "a single write could not be planned".into(),
                    })?;
                    batch::apply(&mut tx, plan, &mut found[i..=i])
                        .await
                        .map_err(|e| self.seen(e))?;
                }
                tx.commit().await.map_err(|e| self.err(e))?;
                self.keep_write_connection(conn);
                outcomes_of(found)
            }
        }
    }

    async fn get(&self, id: TxId) -> Result<Option<TxRecord>, StoreError> {
        let rows = sqlx::query(&format!(
            "SELECT {TX_COLUMNS} FROM {TX_TABLES} WHERE id = $1"
        ))
        .bind(id.0)
        .fetch_all(&self.pool)
        .await
        .map_err(|e| self.err(e))?;
        Ok(self.with_branches(&self.pool, rows).await?.pop())
    }

    async fn list(&self, filter: &ListFilter) -> Result<Vec<TxRecord>, StoreError> {
        let mut q = QueryBuilder::new(format!("SELECT {TX_COLUMNS} FROM {TX_TABLES} WHERE TRUE"));
        if !filter.states.is_empty() {
            // One arm per index that serves a part of the states (migration 0008): unfinished
            // ones, `committed`, and the other final states. Each arm implies the predicate of
            // its partial index, so a filter mixing them can still use both indexes.
            let mut groups: [Vec<&str>; 3] = Default::default();
            for state in &filter.states {
                let group = match state {
                    s if !s.is_resting() => 0,
                    TxState::Committed => 1,
                    _ => 2,
                };
                groups[group].push(state.as_str());
            }
            let mut separator = " AND (";
            for group in groups.into_iter().filter(|g| !g.is_empty()) {
                q.push(separator)
                    .push("state = ANY(")
                    .push_bind(group)
                    .push(")");
                separator = " OR ";
            }
            q.push(")");
        }
        if !filter.labels.is_empty() {
            // Implied by a non-empty filter; lets the partial GIN index serve it (migration 0006).
            q.push(" AND labels <> '{}'::jsonb AND labels @> ")
                .push_bind(Json(&filter.labels))
                .push("::jsonb");
        }
        // The primary key serves a time range: ids are UUIDv7 from the clock that set
        // `created_at` (migration 0008). The id bounds only narrow the scan; `created_at` decides.
        if let Some(after) = filter.created_after {
            q.push(" AND id >= ")
                .push_bind(
                    after
                        .checked_sub_signed(ID_TIME_SLACK)
                        .map_or(Uuid::nil(), v7_floor),
                )
                .push(" AND created_at >= ")
                .push_bind(after);
        }
        if let Some(before) = filter.created_before {
            q.push(" AND id < ")
                .push_bind(
                    before
                        .checked_add_signed(ID_TIME_SLACK)
                        .map_or(Uuid::from_u128(u128::MAX), v7_floor),
                )
                .push(" AND created_at < ")
                .push_bind(before);
        }
        if let Some(before_id) = filter.before_id {
            q.push(" AND id < ").push_bind(before_id.0);
        }
        q.push(" ORDER BY id DESC LIMIT ")
            .push_bind(clamp_limit(filter.limit));
        q.build()
            .fetch_all(&self.pool)
            .await
            .map_err(|e| self.err(e))?
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
        // The runs from the one holding `after_seq + 1` on (migration 0009), unnested.
        let rows = sqlx::query(
            "SELECT r.first_seq + e.n - 1 AS seq, e.at, e.kind, e.branch, e.detail
             FROM baton_event_runs r
             CROSS JOIN LATERAL unnest(r.at, r.kind, r.branch, r.detail)
                 WITH ORDINALITY AS e(at, kind, branch, detail, n)
             WHERE r.tx_id = $1
               AND r.first_seq >= (SELECT coalesce(max(first_seq), 0) FROM baton_event_runs
                                   WHERE tx_id = $1 AND first_seq - 1 <= $2)
               AND r.first_seq + e.n - 1 > $2
             ORDER BY 1 LIMIT $3",
        )
        .bind(id.0)
        .bind(to_i64(after_seq))
        .bind(i64::from(limit))
        .fetch_all(&self.pool)
        .await
        .map_err(|e| self.err(e))?;
        rows.iter()
            .map(|row| event_row("baton_event_runs", id, row))
            .collect()
    }

    async fn claim(
        &self,
        owner: &str,
        lease_ms: u64,
        limit: u32,
    ) -> Result<Vec<TxRecord>, StoreError> {
        if limit == 0 {
            return Ok(Vec::new());
        }
        let mut tx = self.pool.begin().await.map_err(|e| self.err(e))?;
        // The unowned range, then the ranges around and between the claimer and the live
        // coordinators (see `ClaimRange`): every other owner, with a coordinator row or not.
        let live: Vec<String> = sqlx::query_scalar(LIVE_OWNERS_SQL)
            .bind(owner)
            .bind(to_i64(lease_ms))
            .fetch_all(&mut *tx)
            .await
            .map_err(|e| self.err(e))?;
        let mut ranges = vec![(ClaimRange::Unowned, None, None)];
        for i in 0..=live.len() {
            let after = i.checked_sub(1).map(|j| live[j].as_str());
            let before = live.get(i).map(String::as_str);
            let range = ClaimRange::Between {
                after: after.is_some(),
                before: before.is_some(),
            };
            ranges.push((range, after, before));
        }
        let mut rows = Vec::new();
        for (range, after, before) in ranges {
            let room = i64::from(limit) - rows.len() as i64;
            if room <= 0 {
                break;
            }
            let query = claim_sql(range);
            let mut query = sqlx::query(&query).bind(owner).bind(room);
            if let ClaimRange::Between { .. } = range {
                query = query.bind(to_i64(lease_ms));
            }
            for bound in after.into_iter().chain(before) {
                query = query.bind(bound);
            }
            rows.extend(query.fetch_all(&mut *tx).await.map_err(|e| self.err(e))?);
        }
        self.claimed(tx, rows).await
    }

    async fn claim_lapsed(
        &self,
        owner: &str,
        lease_ms: u64,
        limit: u32,
    ) -> Result<Vec<TxRecord>, StoreError> {
        if limit == 0 {
            return Ok(Vec::new());
        }
        // One database transaction: a failure anywhere leaves nothing claimed and undriven.
        let mut tx = self.pool.begin().await.map_err(|e| self.err(e))?;
        // The most recently lapsed coordinators, a bounded number: rows of coordinators that
        // died long ago stay in the table, and their work is left to the full claim.
        let lapsed: Vec<String> = sqlx::query_scalar(
            "SELECT id FROM baton_coordinators
             WHERE id <> $1 AND heartbeat_at <= now() - $2 * interval '1 millisecond'
             ORDER BY heartbeat_at DESC, id LIMIT $3",
        )
        .bind(owner)
        .bind(to_i64(lease_ms))
        .bind(LAPSED_PER_TICK)
        .fetch_all(&mut *tx)
        .await
        .map_err(|e| self.err(e))?;
        // Unowned transactions first, then each lapsed coordinator's, one index range at a
        // time (see `claim_sql`): live owners' ranges are never read.
        let mut rows = Vec::new();
        for from in std::iter::once(None).chain(lapsed.iter().map(Some)) {
            let room = i64::from(limit) - rows.len() as i64;
            if room <= 0 {
                break;
            }
            let query = claim_sql(match from {
                None => ClaimRange::Unowned,
                Some(_) => ClaimRange::Lapsed,
            });
            let mut query = sqlx::query(&query).bind(owner).bind(room);
            if let Some(from) = from {
                query = query.bind(from).bind(to_i64(lease_ms));
            }
            rows.extend(query.fetch_all(&mut *tx).await.map_err(|e| self.err(e))?);
        }
        self.claimed(tx, rows).await
    }

    async fn release_owned(&self, owner: &str) -> Result<u64, StoreError> {
        let done = sqlx::query(&format!(
            "UPDATE baton_transactions SET owner = NULL, epoch = epoch + 1, updated_at = now() \
             WHERE owner = $1 AND state NOT IN {RESTING_SQL}"
        ))
        .bind(owner)
        .execute(&self.pool)
        .await
        .map_err(|e| self.err(e))?;
        Ok(done.rows_affected())
    }

    async fn release(&self, owner: &str, ids: &[TxId]) -> Result<u64, StoreError> {
        if ids.is_empty() {
            return Ok(0);
        }
        let ids: Vec<Uuid> = ids.iter().map(|id| id.0).collect();
        let done = sqlx::query(&release_sql())
            .bind(owner)
            .bind(&ids)
            .execute(&self.pool)
            .await
            .map_err(|e| self.err(e))?;
        Ok(done.rows_affected())
    }

    async fn request_cancel(&self, id: TxId, reason: &str) -> Result<bool, StoreError> {
        let row = sqlx::query(&format!(
            "WITH target AS (SELECT id FROM baton_transactions \
                             WHERE id = $1 AND state NOT IN {RESTING_SQL}), \
                  added AS (INSERT INTO baton_cancel_requests (tx_id, reason) \
                            SELECT id, $2 FROM target ON CONFLICT (tx_id) DO NOTHING) \
             SELECT count(*) AS n FROM target"
        ))
        .bind(id.0)
        .bind(reason)
        .fetch_one(&self.pool)
        .await
        .map_err(|e| self.err(e))?;
        let n: i64 = row.try_get("n").map_err(|e| self.err(e))?;
        Ok(n > 0)
    }

    async fn cancel_requests(
        &self,
        owner: &str,
        limit: u32,
    ) -> Result<Vec<(TxId, String)>, StoreError> {
        // Runs every claim tick. Each request looks up its transaction by id (OFFSET 0 keeps the
        // lookup from being flattened into a join that the planner could drive from the owner's
        // range of the unfinished index, which holds an entry for every transaction the owner
        // finished since the last vacuum).
        let rows = sqlx::query(&format!(
            "SELECT r.tx_id, r.reason FROM baton_cancel_requests r, LATERAL ( \
                SELECT 1 FROM baton_transactions t \
                WHERE t.id = r.tx_id AND t.owner = $1 AND t.state NOT IN {RESTING_SQL} \
                OFFSET 0) owned \
             ORDER BY r.requested_at LIMIT $2"
        ))
        .bind(owner)
        .bind(i64::from(limit))
        .fetch_all(&self.pool)
        .await
        .map_err(|e| self.err(e))?;
        rows.iter()
            .map(|row| Ok((TxId(row.try_get("tx_id")?), row.try_get("reason")?)))
            .collect::<Result<_, sqlx::Error>>()
            .map_err(|e| self.err(e))
    }

    async fn clear_cancel_request(&self, id: TxId) -> Result<(), StoreError> {
        sqlx::query("DELETE FROM baton_cancel_requests WHERE tx_id = $1")
            .bind(id.0)
            .execute(&self.pool)
            .await
            .map_err(|e| self.err(e))?;
        Ok(())
    }

    async fn claim_one(
        &self,
        id: TxId,
        owner: &str,
        expected_epoch: i64,
    ) -> Result<Option<TxRecord>, StoreError> {
        let mut tx = self.pool.begin().await.map_err(|e| self.err(e))?;
        let rows = sqlx::query(&format!(
            "UPDATE baton_transactions SET owner = $2, epoch = epoch + 1, updated_at = now() \
             FROM baton_definitions \
             WHERE tx_id = id AND id = $1 AND epoch = $3 RETURNING {TX_COLUMNS}"
        ))
        .bind(id.0)
        .bind(owner)
        .bind(expected_epoch)
        .fetch_all(&mut *tx)
        .await
        .map_err(|e| self.err(e))?;
        Ok(self.claimed(tx, rows).await?.pop())
    }
}

#[async_trait]
impl Participants for PgLog {
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
             VALUES ($1, $2, $3, $4, now() + $5 * interval '1 millisecond')
             ON CONFLICT (service, endpoint) DO UPDATE SET
                weight = excluded.weight, zone = excluded.zone, expires_at = excluded.expires_at
             RETURNING {PARTICIPANT_COLUMNS}"
        ))
        .bind(service)
        .bind(endpoint)
        .bind(i64::from(weight))
        .bind(zone)
        .bind(ttl_param(ttl_ms))
        .fetch_one(&self.pool)
        .await
        .map_err(|e| self.err(e))?;
        participant(&row)
    }

    async fn heartbeat_participant(
        &self,
        service: &str,
        endpoint: &str,
        ttl_ms: u64,
    ) -> Result<Option<ParticipantRecord>, StoreError> {
        let row = sqlx::query(&format!(
            "UPDATE baton_participants SET expires_at = now() + $3 * interval '1 millisecond'
             WHERE service = $1 AND endpoint = $2 AND (expires_at IS NULL OR expires_at > now())
             RETURNING {PARTICIPANT_COLUMNS}"
        ))
        .bind(service)
        .bind(endpoint)
        .bind(ttl_param(ttl_ms))
        .fetch_optional(&self.pool)
        .await
        .map_err(|e| self.err(e))?;
        row.as_ref().map(participant).transpose()
    }

    async fn deregister_participant(
        &self,
        service: &str,
        endpoint: &str,
    ) -> Result<bool, StoreError> {
        let done =
            sqlx::query("DELETE FROM baton_participants WHERE service = $1 AND endpoint = $2")
                .bind(service)
                .bind(endpoint)
                .execute(&self.pool)
                .await
                .map_err(|e| self.err(e))?;
        Ok(done.rows_affected() > 0)
    }

    async fn list_participants(
        &self,
        service: Option<&str>,
    ) -> Result<Vec<ParticipantRecord>, StoreError> {
        let rows = sqlx::query(&format!(
            "SELECT {PARTICIPANT_COLUMNS} FROM baton_participants
             WHERE ($1::text IS NULL OR service = $1)
               AND (expires_at IS NULL OR expires_at > now())
             ORDER BY service, endpoint"
        ))
        .bind(service)
        .fetch_all(&self.pool)
        .await
        .map_err(|e| self.err(e))?;
        rows.iter().map(participant).collect()
    }
}

#[async_trait]
impl Membership for PgLog {
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
             VALUES ($1, $2, now(), now(), $3, $4)
             ON CONFLICT (id) DO UPDATE SET
                address = excluded.address, heartbeat_at = now(), version = excluded.version,
                driving = excluded.driving",
        )
        .bind(id)
        .bind(address)
        .bind(version)
        .bind(to_i64(driving))
        .execute(&self.pool)
        .await
        .map_err(|e| self.err(e))?;
        Ok(())
    }

    async fn remove_coordinator(&self, id: &str) -> Result<(), StoreError> {
        sqlx::query("DELETE FROM baton_coordinators WHERE id = $1")
            .bind(id)
            .execute(&self.pool)
            .await
            .map_err(|e| self.err(e))?;
        Ok(())
    }

    async fn list_coordinators(&self, lease_ms: u64) -> Result<Vec<CoordinatorRecord>, StoreError> {
        // The published count (migration 0011), not a count of the owner's index range.
        let rows = sqlx::query(
            "SELECT c.id, c.address, c.started_at, c.heartbeat_at, c.version, c.driving AS owned
             FROM baton_coordinators c
             WHERE c.heartbeat_at > now() - $1 * interval '1 millisecond'
             ORDER BY c.id",
        )
        .bind(to_i64(lease_ms))
        .fetch_all(&self.pool)
        .await
        .map_err(|e| self.err(e))?;
        rows.iter().map(coordinator).collect()
    }

    async fn forget_departed(
        &self,
        dead_for: Duration,
        batch: u32,
    ) -> Result<(u64, u64), StoreError> {
        // Rows another coordinator is deleting, or a returning member is writing, are skipped;
        // each DELETE checks its condition again on the row it locked.
        let (coordinators, participants): (i64, i64) = sqlx::query_as(
            "WITH coordinators AS (
                DELETE FROM baton_coordinators
                WHERE id IN (
                    SELECT id FROM baton_coordinators
                    WHERE heartbeat_at < now() - $1 * interval '1 millisecond'
                    LIMIT $2 FOR UPDATE SKIP LOCKED)
                  AND heartbeat_at < now() - $1 * interval '1 millisecond'
                RETURNING 1
            ), participants AS (
                DELETE FROM baton_participants
                WHERE (service, endpoint) IN (
                    SELECT service, endpoint FROM baton_participants
                    WHERE expires_at < now()
                    LIMIT $2 FOR UPDATE SKIP LOCKED)
                  AND expires_at < now()
                RETURNING 1
            )
            SELECT (SELECT count(*) FROM coordinators), (SELECT count(*) FROM participants)",
        )
        .bind(age_ms(dead_for))
        .bind(i64::from(batch))
        .fetch_one(&self.pool)
        .await
        .map_err(|e| self.err(e))?;
        Ok((coordinators as u64, participants as u64))
    }
}

#[async_trait]
impl Retention for PgLog {
    async fn purge_finished(&self, older_than: Duration, batch: u32) -> Result<u64, StoreError> {
        if batch == 0 {
            return Ok(0);
        }
        // One statement, one transaction. SKIP LOCKED keeps concurrent sweepers (other
        // coordinators, `baton tx purge`) from queueing behind each other; final rows are never
        // written by the hot path, so nothing there waits on these locks. Definitions, branch
        // data and events have no foreign keys (migrations 0005, 0007, 0009, 0010) and are deleted with their
        // transaction in the same statement; cancel requests go with the row (ON DELETE CASCADE).
        let done: i64 = sqlx::query_scalar(&format!(
            "WITH gone AS (
                DELETE FROM baton_transactions
                WHERE id IN (
                    SELECT id FROM baton_transactions
                    WHERE state IN {FINAL_SQL}
                      AND updated_at < now() - $1 * interval '1 millisecond'
                    ORDER BY updated_at
                    LIMIT $2
                    FOR UPDATE SKIP LOCKED)
                  AND state IN {FINAL_SQL}
                RETURNING id
            ), definitions AS (
                DELETE FROM baton_definitions WHERE tx_id IN (SELECT id FROM gone)
            ), branch_data AS (
                DELETE FROM baton_branch_data WHERE tx_id IN (SELECT id FROM gone)
            ), events AS (
                DELETE FROM baton_event_runs WHERE tx_id IN (SELECT id FROM gone)
            )
            SELECT count(*) FROM gone"
        ))
        .bind(age_ms(older_than))
        .bind(i64::from(batch.min(MAX_PURGE_BATCH)))
        .fetch_one(&self.pool)
        .await
        .map_err(|e| self.err(e))?;
        Ok(u64::try_from(done).unwrap_or(0))
    }
}

#[async_trait]
impl Health for PgLog {
    async fn ping(&self) -> Result<(), StoreError> {
        sqlx::query("SELECT 1")
            .execute(&self.pool)
            .await
            .map_err(|e| self.err(e))?;
        Ok(())
    }

    fn pool_stats(&self) -> Option<super::PoolStats> {
        let pools = [&self.pool, &self.writes];
        Some(super::PoolStats {
            size: pools.iter().map(|p| p.size()).sum(),
            // A kept writer connection is idle between batches, though its pool counts it in use.
            idle: pools
                .iter()
                .map(|p| p.num_idle())
                .chain([self.idle_writes.lock().expect("writer connections").len()])
                .map(|n| u32::try_from(n).unwrap_or(u32::MAX))
                .fold(0, u32::saturating_add),
            max: pools
                .iter()
                .map(|p| p.options().get_max_connections())
                .sum(),
        })
    }
}

impl super::LogRow for PgRow {
    super::plain_columns!();

    fn id(&self, column: &str) -> Result<TxId, StoreError> {
        Ok(TxId(self.try_get(column)?))
    }

    fn time(&self, _table: &'static str, column: &str) -> Result<DateTime<Utc>, StoreError> {
        Ok(self.try_get(column)?)
    }

    fn opt_time(
        &self,
        _table: &'static str,
        column: &str,
    ) -> Result<Option<DateTime<Utc>>, StoreError> {
        Ok(self.try_get(column)?)
    }
}

/// How far a transaction's id time may be from its `created_at`: both are read from the
/// accepting coordinator's clock at the same moment, so a bound this wide never excludes a row
/// that the `created_at` test would keep, and still lets the primary key narrow a time range.
const ID_TIME_SLACK: chrono::TimeDelta = chrono::TimeDelta::hours(1);

/// The smallest UUIDv7 of the millisecond of `at` (clamped to the 48-bit range): every id
/// created in that millisecond or later sorts at or above it, every earlier one below.
fn v7_floor(at: DateTime<Utc>) -> Uuid {
    let ms = u128::try_from(at.timestamp_millis())
        .unwrap_or(0)
        .min((1 << 48) - 1);
    Uuid::from_u128(ms << 80)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn v7_floor_orders_ids_by_their_millisecond() {
        let at = Utc::now();
        let id = TxId::new().0;
        let ms = chrono::TimeDelta::milliseconds(1);
        let second = chrono::TimeDelta::seconds(1);
        assert!(v7_floor(at - second) <= id, "{id} from {at}");
        assert!(id < v7_floor(at + second), "{id} from {at}");
        assert!(v7_floor(at) < v7_floor(at + ms));
        let epoch = DateTime::<Utc>::UNIX_EPOCH;
        assert_eq!(v7_floor(epoch - second), Uuid::nil());
        assert_eq!(v7_floor(epoch + ms), Uuid::from_u128(1 << 80));
    }
}

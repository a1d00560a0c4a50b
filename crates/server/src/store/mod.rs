//! The durable store: the transaction log ([`TxLog`]), the participant registry
//! ([`Participants`]), coordinator membership ([`Membership`]), retention ([`Retention`]) and
//! the database's health ([`Health`]), together a [`Store`]. A PostgreSQL and an SQLite
//! implementation, and one conformance suite (`tests/store_conformance.rs`) that runs against
//! both.
//!
//! The coordinator never writes rows directly: it hands [`LogWrite`]s to the log writer
//! (`coordinator::writer`), which commits the writes of many transactions in one database
//! transaction (group commit) through [`TxLog::apply`].

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, Utc};

use crate::model::{
    BranchRecord, CoordinatorRecord, Definition, EventKind, EventRecord, ParticipantRecord,
    StepStatus, TxId, TxRecord, TxState,
};

pub mod postgres;
pub mod sqlite;

/// Why a store call failed.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The database could not be reached or the connection broke; the call may be retried.
    #[error("database unavailable: {0}")]
    Unavailable(String),
    /// A row could not be decoded (for example an unknown state text).
    #[error("corrupt row in {table}: {detail}")]
    Corrupt { table: &'static str, detail: String },
    /// The URL names no store Baton knows.
    #[error("unsupported database url {0:?}: expected postgres://... or sqlite://...")]
    UnsupportedUrl(String),
    /// Another process holds the embedded store.
    #[error("{0}")]
    Locked(String),
    #[error("database error: {0}")]
    Database(#[from] sqlx::Error),
    #[error("migration failed: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
}

impl StoreError {
    /// Whether retrying the same call later may succeed.
    pub fn is_transient(&self) -> bool {
        match self {
            StoreError::Unavailable(_) => true,
            StoreError::Database(e) => is_transient_sqlx(e),
            _ => false,
        }
    }
}

/// Classifies a database error by its kind and SQLSTATE class, never by message text.
pub fn is_transient_sqlx(e: &sqlx::Error) -> bool {
    match e {
        sqlx::Error::Io(_)
        | sqlx::Error::PoolTimedOut
        | sqlx::Error::PoolClosed
        | sqlx::Error::WorkerCrashed => true,
        sqlx::Error::Database(db) => match db.code() {
            // 08: connection exception; 40: transaction rollback (serialization, deadlock);
            // 53: insufficient resources; 57P: operator intervention (shutdown, restart).
            Some(code) => {
                code.starts_with("08")
                    || code.starts_with("40")
                    || code.starts_with("53")
                    || code.starts_with("57P")
                    // SQLite: SQLITE_BUSY (5) and SQLITE_LOCKED (6).
                    || code == "5"
                    || code == "6"
            }
            None => false,
        },
        _ => false,
    }
}

/// Whether the database refused a statement for the data it carries, so the same write fails
/// again however often it is retried (unlike [`is_transient_sqlx`]). Classified by SQLSTATE
/// class, never by message text: 22 data exception (22021, a NUL byte in text; 22P05, `\u0000`
/// in jsonb), 23 integrity constraint violation (the log's own conflicts are handled in its
/// statements, so one that surfaces is the data's), 54 program limit exceeded (an index row too
/// large). SQLite reports its result code instead: constraint (19), too big (18) and datatype
/// mismatch (20). A value that cannot be encoded at all is refused the same way.
pub fn is_data_refusal(e: &StoreError) -> bool {
    let StoreError::Database(e) = e else {
        return false;
    };
    match e {
        sqlx::Error::Encode(_) => true,
        sqlx::Error::Database(db) => {
            let Some(code) = db.code() else {
                return false;
            };
            if db.try_downcast_ref::<sqlx::sqlite::SqliteError>().is_some() {
                // SQLite gives the extended result code; its low byte is the primary one.
                return code
                    .parse::<i64>()
                    .is_ok_and(|c| matches!(c & 0xff, 18..=20));
            }
            code.starts_with("22") || code.starts_with("23") || code.starts_with("54")
        }
        _ => false,
    }
}

/// Text from outside the coordinator (participants' messages and errors, which become event
/// details and `last_error`s, and step names) as a text column can hold it: PostgreSQL's text
/// type has no room for NUL and refuses the whole statement (22021), so each NUL becomes
/// U+FFFD. Both backends store the same text, so the log reads the same whichever is used.
fn clean_text(text: &str) -> std::borrow::Cow<'_, str> {
    if text.contains('\0') {
        std::borrow::Cow::Owned(text.replace('\0', "\u{FFFD}"))
    } else {
        std::borrow::Cow::Borrowed(text)
    }
}

/// The batch with [`clean_text`] applied to every text column fed from outside, copied only if
/// some text needs it. Labels and idempotency keys are left alone: they come from the client,
/// which is refused instead of having its keys silently changed.
fn clean_batch(batch: &[LogWrite]) -> std::borrow::Cow<'_, [LogWrite]> {
    let dirty = |s: &str| s.contains('\0');
    let dirty_events = |events: &[NewEvent]| events.iter().any(|e| dirty(&e.detail));
    let needs = batch.iter().any(|write| match write {
        LogWrite::Create(new) => dirty_events(&new.events),
        LogWrite::Update(up) => {
            up.last_error.as_deref().is_some_and(dirty)
                || dirty_events(&up.events)
                || up
                    .branches
                    .iter()
                    .any(|b| dirty(&b.name) || b.last_error.as_deref().is_some_and(dirty))
        }
    });
    if !needs {
        return std::borrow::Cow::Borrowed(batch);
    }
    let clean = |s: &mut String| {
        if let std::borrow::Cow::Owned(c) = clean_text(s) {
            *s = c;
        }
    };
    let mut batch = batch.to_vec();
    for write in &mut batch {
        let events = match write {
            LogWrite::Create(new) => &mut new.events,
            LogWrite::Update(up) => {
                if let Some(e) = &mut up.last_error {
                    clean(e);
                }
                for b in &mut up.branches {
                    clean(&mut b.name);
                    if let Some(e) = &mut b.last_error {
                        clean(e);
                    }
                }
                &mut up.events
            }
        };
        for e in events {
            clean(&mut e.detail);
        }
    }
    std::borrow::Cow::Owned(batch)
}

/// A transaction accepted by `Start`: its row and its first events. Branch rows are written only
/// once a branch first changes; until then a branch reads as `pending`.
#[derive(Clone, Debug)]
pub struct NewTx {
    pub id: TxId,
    pub definition: Definition,
    pub state: TxState,
    pub labels: BTreeMap<String, String>,
    pub idempotency_key: Option<String>,
    pub owner: String,
    pub epoch: i64,
    pub deadline_at: Option<DateTime<Utc>>,
    /// When it was accepted (whole milliseconds, which every store keeps exactly).
    pub created_at: DateTime<Utc>,
    /// Event seqs start at 1.
    pub events: Vec<NewEvent>,
}

/// A change to one transaction by its owner. Applied only if the row still has this `owner` and
/// `epoch` (fencing) and its history ends at `expected_last_seq` (so a write queued behind one
/// that failed can never land on top of the gap); otherwise nothing of it is written and the
/// outcome is [`WriteOutcome::Fenced`].
#[derive(Clone, Debug)]
pub struct TxUpdate {
    pub id: TxId,
    pub owner: String,
    pub epoch: i64,
    /// The row's `last_seq` this write follows.
    pub expected_last_seq: u64,
    pub state: TxState,
    pub stage: u32,
    pub last_error: Option<String>,
    pub cancel_requested: bool,
    /// Clear the owner after this write (the transaction is resting or handed back), so that any
    /// coordinator may claim it at once.
    pub release: bool,
    /// Branch rows that changed, written whole (matched by index).
    pub branches: Vec<BranchRecord>,
    /// Appended to the history; seqs continue the transaction's sequence.
    pub events: Vec<NewEvent>,
}

impl TxUpdate {
    /// Folds `later`, the next write of the same transaction by the same owner, into this one:
    /// applying the result is the same as applying both in order, in one statement.
    pub fn absorb(&mut self, later: TxUpdate) {
        debug_assert_eq!((self.id, self.epoch), (later.id, later.epoch));
        self.state = later.state;
        self.stage = later.stage;
        self.last_error = later.last_error;
        self.cancel_requested = later.cancel_requested;
        self.release = later.release;
        for branch in later.branches {
            match self.branches.iter_mut().find(|b| b.index == branch.index) {
                Some(slot) => *slot = branch,
                None => self.branches.push(branch),
            }
        }
        self.events.extend(later.events);
    }

    /// Numbers the history again from `expected_last_seq + 1`, after events were dropped from
    /// it (see [`crate::engine::drop_answered_sends`]). Used on progress that is held before it
    /// is queued, never on a write already queued (its numbering is fixed then).
    pub fn renumber_events(&mut self) {
        for (i, event) in self.events.iter_mut().enumerate() {
            event.seq = self.expected_last_seq + 1 + i as u64;
        }
    }
}

/// An event not yet written.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NewEvent {
    pub seq: u64,
    pub at: DateTime<Utc>,
    pub kind: EventKind,
    pub branch: Option<u32>,
    pub detail: String,
}

/// One write handed to the log.
#[derive(Clone, Debug)]
pub enum LogWrite {
    Create(Box<NewTx>),
    Update(Box<TxUpdate>),
}

/// What became of one [`LogWrite`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum WriteOutcome {
    /// The transaction was inserted.
    Created,
    /// Its idempotency key already named this transaction; nothing was written.
    Existing(TxId),
    /// The update was applied.
    Updated,
    /// The row's owner or epoch differ (or the row is gone); nothing was written.
    Fenced,
    /// The database refused this write for its data ([`is_data_refusal`]); nothing of it was
    /// written, and the same write would be refused again. The log writer gives it, with the
    /// database's reason, to the one write of a failed batch that is to blame (its neighbours
    /// are applied without it); [`TxLog::apply`] itself fails the whole batch instead.
    Refused(String),
}

/// Filters for [`TxLog::list`]. Results are newest first.
#[derive(Clone, Debug, Default)]
pub struct ListFilter {
    /// Any state when empty.
    pub states: Vec<TxState>,
    /// Transactions carrying all of these labels.
    pub labels: BTreeMap<String, String>,
    pub created_after: Option<DateTime<Utc>>,
    pub created_before: Option<DateTime<Utc>>,
    /// Keyset paging: only ids strictly less than this (ids sort by creation time).
    pub before_id: Option<TxId>,
    pub limit: u32,
}

/// The durable log of transactions: their rows, branches and history, who owns each, and the
/// cancel requests for their owners.
#[async_trait]
pub trait TxLog: Send + Sync + 'static {
    /// Creates or upgrades the schema.
    async fn migrate(&self) -> Result<(), StoreError>;

    /// Applies the writes in one database transaction, in order, and returns one outcome per
    /// write. Either every outcome holds or (on `Err`) nothing was written.
    async fn apply(&self, batch: &[LogWrite]) -> Result<Vec<WriteOutcome>, StoreError>;

    /// The transaction with its branches (in index order), or `None`.
    async fn get(&self, id: TxId) -> Result<Option<TxRecord>, StoreError>;

    /// Transactions matching the filter, newest first, without their branches
    /// (`branches` is empty).
    async fn list(&self, filter: &ListFilter) -> Result<Vec<TxRecord>, StoreError>;

    /// Events with `seq > after_seq`, in seq order, at most `limit`.
    async fn events(
        &self,
        id: TxId,
        after_seq: u64,
        limit: u32,
    ) -> Result<Vec<EventRecord>, StoreError>;

    /// Takes over unfinished (not resting) transactions owned by nobody, or by a coordinator other
    /// than `owner` whose heartbeat (by the database's clock) is older than `lease_ms` or missing.
    /// Sets owner and `epoch + 1`, at most `limit` rows, skipping rows locked by another claimer
    /// (`FOR UPDATE SKIP LOCKED` on Postgres), and returns them with their branches.
    async fn claim(
        &self,
        owner: &str,
        lease_ms: u64,
        limit: u32,
    ) -> Result<Vec<TxRecord>, StoreError>;

    /// As [`TxLog::claim`], but only transactions owned by nobody or by a coordinator whose row is
    /// there with a heartbeat older than `lease_ms`: owners with no row at all are left to
    /// `claim` (PostgreSQL also leaves it the owners lapsed before the 32 most recently lapsed).
    /// This is the claim a coordinator runs every few seconds. It reads only those owners' index
    /// entries, while `claim` reads every unfinished entry, and on PostgreSQL the index keeps one
    /// for each transaction finished since the table's last vacuum (millions on a busy, growing
    /// table), each read again by every such claim.
    async fn claim_lapsed(
        &self,
        owner: &str,
        lease_ms: u64,
        limit: u32,
    ) -> Result<Vec<TxRecord>, StoreError>;

    /// Hands back every unfinished transaction `owner` holds: owner cleared and `epoch + 1`, so
    /// that any coordinator (this one after a restart, or another) claims them at once and the
    /// old drivers are fenced. Returns how many.
    async fn release_owned(&self, owner: &str) -> Result<u64, StoreError>;

    /// Hands back those of `ids` that `owner` holds unfinished, as [`TxLog::release_owned`]
    /// does, looking each one up by id: a coordinator that knows what it was driving hands it
    /// back without reading its range of the unfinished index (which keeps an entry for every
    /// transaction it finished since the last vacuum). Returns how many.
    async fn release(&self, owner: &str, ids: &[TxId]) -> Result<u64, StoreError>;

    /// Records a request to cancel an unfinished transaction that another coordinator drives; its
    /// owner acts on it (see [`TxLog::cancel_requests`]). Returns whether the transaction is
    /// unfinished (a repeated request is kept once); `false` if it rests or does not exist.
    async fn request_cancel(&self, id: TxId, reason: &str) -> Result<bool, StoreError>;

    /// Pending cancel requests of unfinished transactions that `owner` holds, oldest first.
    async fn cancel_requests(
        &self,
        owner: &str,
        limit: u32,
    ) -> Result<Vec<(TxId, String)>, StoreError>;

    /// Forgets a cancel request once it was acted on.
    async fn clear_cancel_request(&self, id: TxId) -> Result<(), StoreError>;

    /// Takes over one resting or unowned transaction (for an operator's retry): sets owner and
    /// `epoch + 1` if its epoch is still `expected_epoch`. Returns the claimed record or `None`.
    async fn claim_one(
        &self,
        id: TxId,
        owner: &str,
        expected_epoch: i64,
    ) -> Result<Option<TxRecord>, StoreError>;
}

/// The participant registry: which endpoints serve each service, for how long.
#[async_trait]
pub trait Participants: Send + Sync + 'static {
    /// Inserts or replaces a participant registration; `ttl_ms = 0` never expires. Expiry is
    /// computed with the database's clock.
    async fn register_participant(
        &self,
        service: &str,
        endpoint: &str,
        weight: u32,
        zone: &str,
        ttl_ms: u64,
    ) -> Result<ParticipantRecord, StoreError>;

    /// Extends a registration; `None` if there is none (expired ones count as none).
    async fn heartbeat_participant(
        &self,
        service: &str,
        endpoint: &str,
        ttl_ms: u64,
    ) -> Result<Option<ParticipantRecord>, StoreError>;

    /// Removes a registration; whether there was one.
    async fn deregister_participant(
        &self,
        service: &str,
        endpoint: &str,
    ) -> Result<bool, StoreError>;

    /// Unexpired registrations (of one service, or all), ordered by service then endpoint.
    async fn list_participants(
        &self,
        service: Option<&str>,
    ) -> Result<Vec<ParticipantRecord>, StoreError>;
}

/// Coordinator membership: the coordinators sharing the log, by their heartbeats. A coordinator
/// whose heartbeat is older than the lease loses its transactions to [`TxLog::claim`].
#[async_trait]
pub trait Membership: Send + Sync + 'static {
    /// Inserts or refreshes this coordinator's heartbeat row (heartbeat_at = the database's now),
    /// publishing `driving`, how many transactions it drives now.
    async fn heartbeat_coordinator(
        &self,
        id: &str,
        address: &str,
        version: &str,
        driving: u64,
    ) -> Result<(), StoreError>;

    /// Removes this coordinator's row (graceful exit).
    async fn remove_coordinator(&self, id: &str) -> Result<(), StoreError>;

    /// Coordinators whose heartbeat is younger than `lease_ms`, each with the number of
    /// transactions it drove at that heartbeat (as `owned`). The number is published, not
    /// counted here: counting an owner's unfinished transactions reads every entry of its index
    /// range, dead ones included, which a console refreshing every few seconds must not cost.
    async fn list_coordinators(&self, lease_ms: u64) -> Result<Vec<CoordinatorRecord>, StoreError>;

    /// Forgets what left without saying so: the rows of coordinators whose heartbeat is older
    /// than `dead_for`, and participant registrations that have expired, at most `batch` of
    /// each. Neither is read again (a lapsed coordinator's transactions are claimed whether or
    /// not it has a row; an expired registration is neither listed nor refreshed), but without
    /// this both tables grow with every crashed coordinator and every participant instance
    /// that stopped heartbeating: under rolling deployments, without end. Returns how many rows
    /// of each were deleted.
    async fn forget_departed(
        &self,
        dead_for: Duration,
        batch: u32,
    ) -> Result<(u64, u64), StoreError>;
}

/// Retention: deleting what is finished and old.
#[async_trait]
pub trait Retention: Send + Sync + 'static {
    /// Deletes at most `batch` finished transactions (committed, compensated or aborted; never
    /// `failed`, which waits for an operator, nor anything unfinished) whose last update is older
    /// than `older_than` by the database's clock, with their branches, events and cancel
    /// requests, in one database transaction. Oldest first; rows another sweeper holds are
    /// skipped, not waited for. Returns how many transactions were deleted: fewer than `batch`
    /// means nothing older is left.
    async fn purge_finished(&self, older_than: Duration, batch: u32) -> Result<u64, StoreError>;
}

/// The database's health, for readiness checks and `/metrics`.
#[async_trait]
pub trait Health: Send + Sync + 'static {
    /// Whether the database answers.
    async fn ping(&self) -> Result<(), StoreError>;

    /// The connection pool's use now, for the `/metrics` gauges; `None` when the store has no
    /// pool to report.
    fn pool_stats(&self) -> Option<PoolStats> {
        None
    }
}

/// Everything a store provides: what [`open`] returns. Each part of the coordinator depends on
/// the narrowest of these traits it needs.
pub trait Store: TxLog + Participants + Membership + Retention + Health {}

impl<T: TxLog + Participants + Membership + Retention + Health + ?Sized> Store for T {}

/// How a store's connection pool is used at one moment.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PoolStats {
    /// Open connections, in use or idle.
    pub size: u32,
    /// Open connections not in use.
    pub idle: u32,
    /// The most connections the pool opens.
    pub max: u32,
}

/// Options for opening a store.
#[derive(Clone, Debug)]
pub struct StoreOptions {
    /// Connections in the pool for reads, claims and everything but log writes (PostgreSQL);
    /// SQLite uses its own small pool.
    pub max_connections: u32,
    /// Connections of the log writers' own pool (PostgreSQL): one per log writer.
    pub write_connections: u32,
    /// How long to wait for a connection before reporting the database unavailable.
    pub acquire_timeout_ms: u64,
}

impl Default for StoreOptions {
    fn default() -> Self {
        StoreOptions {
            max_connections: 16,
            write_connections: 4,
            acquire_timeout_ms: 5_000,
        }
    }
}

/// Whether `url` names the embedded SQLite store (`sqlite://path`).
pub fn is_sqlite_url(url: &str) -> bool {
    url.starts_with("sqlite:")
}

/// Opens the store named by `url` (`postgres://…` or `sqlite://path`), without migrating.
pub async fn open(url: &str, options: &StoreOptions) -> Result<Arc<dyn Store>, StoreError> {
    if url.starts_with("postgres://") || url.starts_with("postgresql://") {
        Ok(Arc::new(postgres::PgLog::connect(url, options).await?))
    } else if is_sqlite_url(url) {
        Ok(Arc::new(sqlite::SqliteLog::open(url).await?))
    } else {
        Err(StoreError::UnsupportedUrl(url.to_string()))
    }
}

/// Final states as an SQL list: what retention may delete. Must match [`TxState::is_final`] and
/// the partial index of migration 0003.
const FINAL_SQL: &str = "('committed', 'compensated', 'aborted')";

/// Resting states as an SQL list, for the claim and ownership queries of both backends.
/// Must match [`TxState::is_resting`]; the conformance suite claims every state to check it.
const RESTING_SQL: &str = "('committed', 'compensated', 'aborted', 'failed')";

/// Splits connection trouble (retry later) from everything else the database said.
fn db_err(e: sqlx::Error) -> StoreError {
    match e {
        sqlx::Error::Io(_)
        | sqlx::Error::PoolTimedOut
        | sqlx::Error::PoolClosed
        | sqlx::Error::WorkerCrashed => StoreError::Unavailable(e.to_string()),
        other => StoreError::Database(other),
    }
}

/// A column that must hold a `u32` but does not is a corrupt row, not a panic.
fn to_u32(table: &'static str, column: &str, value: i64) -> Result<u32, StoreError> {
    u32::try_from(value).map_err(|_| StoreError::Corrupt {
        table,
        detail: format!("{column} {value} is out of range"),
    })
}

/// Integers are stored as signed 64-bit; this keeps `u64` values that do not fit from wrapping.
fn to_i64(value: u64) -> i64 {
    i64::try_from(value).unwrap_or(i64::MAX)
}

/// A `baton_transactions` row as either backend reads it, before its text columns are checked.
struct RawTx {
    id: TxId,
    kind: String,
    state: String,
    definition: String,
    labels: String,
    idempotency_key: Option<String>,
    owner: Option<String>,
    epoch: i64,
    stage: i64,
    last_error: Option<String>,
    cancel_requested: bool,
    deadline_at: Option<DateTime<Utc>>,
    created_at: DateTime<Utc>,
    updated_at: DateTime<Utc>,
    last_seq: i64,
}

impl RawTx {
    /// Checks and converts the row; branches are left empty for the caller to fill.
    fn into_record(self) -> Result<TxRecord, StoreError> {
        const TABLE: &str = "baton_transactions";
        let corrupt = |detail: String| StoreError::Corrupt {
            table: TABLE,
            detail: format!("transaction {}: {detail}", self.id),
        };
        let kind = self.kind.parse().map_err(corrupt)?;
        let state = self.state.parse().map_err(corrupt)?;
        let definition: Definition = serde_json::from_str(&self.definition)
            .map_err(|e| corrupt(format!("definition: {e}")))?;
        let labels =
            serde_json::from_str(&self.labels).map_err(|e| corrupt(format!("labels: {e}")))?;
        let last_seq = u64::try_from(self.last_seq)
            .map_err(|_| corrupt(format!("last_seq {} is negative", self.last_seq)))?;
        Ok(TxRecord {
            id: self.id,
            kind,
            state,
            definition,
            labels,
            idempotency_key: self.idempotency_key,
            owner: self.owner,
            epoch: self.epoch,
            stage: to_u32(TABLE, "stage", self.stage)?,
            last_error: self.last_error,
            cancel_requested: self.cancel_requested,
            deadline_at: self.deadline_at,
            created_at: self.created_at,
            updated_at: self.updated_at,
            last_seq,
            branches: Vec::new(),
        })
    }
}

/// A branch as either backend reads it: a `baton_branches` row on SQLite, an entry of the
/// transaction row's `branches` on PostgreSQL.
struct RawBranch {
    /// Where it was read from, for errors.
    table: &'static str,
    tx_id: TxId,
    index: i64,
    name: String,
    state: String,
    attempts: i64,
    output: Option<Vec<u8>>,
    last_error: Option<String>,
    done_order: Option<i64>,
}

impl RawBranch {
    fn into_record(self) -> Result<BranchRecord, StoreError> {
        let table = self.table;
        Ok(BranchRecord {
            index: to_u32(table, "idx", self.index)?,
            status: self.state.parse().map_err(|detail| StoreError::Corrupt {
                table,
                detail: format!("transaction {} branch {}: {detail}", self.tx_id, self.index),
            })?,
            name: self.name,
            attempts: to_u32(table, "attempts", self.attempts)?,
            output: self.output,
            last_error: self.last_error,
            done_order: self
                .done_order
                .map(|d| to_u32(table, "done_order", d))
                .transpose()?,
        })
    }
}

/// Builds records from transaction rows and the stored branches of all of them (in any order).
fn assemble(txs: Vec<RawTx>, branches: Vec<RawBranch>) -> Result<Vec<TxRecord>, StoreError> {
    let mut records = txs
        .into_iter()
        .map(RawTx::into_record)
        .collect::<Result<Vec<_>, _>>()?;
    let mut by_tx: BTreeMap<TxId, Vec<BranchRecord>> = BTreeMap::new();
    for branch in branches {
        let tx_id = branch.tx_id;
        by_tx.entry(tx_id).or_default().push(branch.into_record()?);
    }
    for record in &mut records {
        let mut own = by_tx.remove(&record.id).unwrap_or_default();
        own.sort_by_key(|b| b.index);
        record.branches = with_pending(&record.definition, own);
    }
    Ok(records)
}

/// A transaction's branches, with a pending one for every branch of its definition that has no
/// stored state: a branch's state is written when its branch first changes, not when the
/// transaction is created, which saves a saga's creation one entry per step.
fn with_pending(definition: &Definition, rows: Vec<BranchRecord>) -> Vec<BranchRecord> {
    let names = definition.branch_names();
    if rows.len() >= names.len() {
        return rows;
    }
    let mut rows = rows.into_iter().peekable();
    let mut all = Vec::with_capacity(names.len());
    for (index, name) in names.into_iter().enumerate() {
        let index = index as u32;
        while let Some(row) = rows.next_if(|b| b.index < index) {
            all.push(row);
        }
        match rows.next_if(|b| b.index == index) {
            Some(row) => all.push(row),
            None => all.push(BranchRecord {
                index,
                name: name.to_string(),
                status: StepStatus::Pending,
                attempts: 0,
                output: None,
                last_error: None,
                done_order: None,
            }),
        }
    }
    all.extend(rows);
    all
}

/// The event row decoded; `at` and ids are already typed by the backend.
fn event_record(
    table: &'static str,
    tx_id: TxId,
    seq: i64,
    at: DateTime<Utc>,
    kind: String,
    branch: Option<i64>,
    detail: String,
) -> Result<EventRecord, StoreError> {
    Ok(EventRecord {
        tx_id,
        seq: u64::try_from(seq).map_err(|_| StoreError::Corrupt {
            table,
            detail: format!("transaction {tx_id}: seq {seq} is negative"),
        })?,
        at,
        kind: kind.parse().map_err(|detail| StoreError::Corrupt {
            table,
            detail: format!("transaction {tx_id} event {seq}: {detail}"),
        })?,
        branch: branch.map(|b| to_u32(table, "branch", b)).transpose()?,
        detail,
    })
}

/// Branch columns, in the order [`raw_branch`] reads them.
const BRANCH_COLUMNS: &str = "tx_id, idx, name, state, attempts, output, last_error, done_order";

/// Participant columns, in the order [`participant`] reads them.
const PARTICIPANT_COLUMNS: &str = "service, endpoint, weight, zone, expires_at";

/// A result row of either backend. Each kind of row is decoded once ([`raw_tx`], [`raw_branch`],
/// [`participant`], [`coordinator`], [`event_row`]); only what the backends store differently is
/// read by the backend's own code: ids (uuid on PostgreSQL, text on SQLite) and times
/// (timestamptz, unix milliseconds). The plain columns come from [`plain_columns`].
trait LogRow {
    fn text(&self, column: &str) -> Result<String, StoreError>;
    fn opt_text(&self, column: &str) -> Result<Option<String>, StoreError>;
    fn int(&self, column: &str) -> Result<i64, StoreError>;
    fn opt_int(&self, column: &str) -> Result<Option<i64>, StoreError>;
    fn flag(&self, column: &str) -> Result<bool, StoreError>;
    fn opt_bytes(&self, column: &str) -> Result<Option<Vec<u8>>, StoreError>;
    fn id(&self, column: &str) -> Result<TxId, StoreError>;
    fn time(&self, table: &'static str, column: &str) -> Result<DateTime<Utc>, StoreError>;
    fn opt_time(
        &self,
        table: &'static str,
        column: &str,
    ) -> Result<Option<DateTime<Utc>>, StoreError>;
}

/// The [`LogRow`] methods whose column types both backends decode alike.
macro_rules! plain_columns {
    () => {
        fn text(&self, column: &str) -> Result<String, StoreError> {
            Ok(sqlx::Row::try_get(self, column)?)
        }
        fn opt_text(&self, column: &str) -> Result<Option<String>, StoreError> {
            Ok(sqlx::Row::try_get(self, column)?)
        }
        fn int(&self, column: &str) -> Result<i64, StoreError> {
            Ok(sqlx::Row::try_get(self, column)?)
        }
        fn opt_int(&self, column: &str) -> Result<Option<i64>, StoreError> {
            Ok(sqlx::Row::try_get(self, column)?)
        }
        fn flag(&self, column: &str) -> Result<bool, StoreError> {
            Ok(sqlx::Row::try_get(self, column)?)
        }
        fn opt_bytes(&self, column: &str) -> Result<Option<Vec<u8>>, StoreError> {
            Ok(sqlx::Row::try_get(self, column)?)
        }
    };
}
use plain_columns;

fn raw_tx(row: &impl LogRow) -> Result<RawTx, StoreError> {
    const T: &str = "baton_transactions";
    Ok(RawTx {
        id: row.id("id")?,
        kind: row.text("kind")?,
        state: row.text("state")?,
        definition: row.text("definition")?,
        labels: row.text("labels")?,
        idempotency_key: row.opt_text("idempotency_key")?,
        owner: row.opt_text("owner")?,
        epoch: row.int("epoch")?,
        stage: row.int("stage")?,
        last_error: row.opt_text("last_error")?,
        cancel_requested: row.flag("cancel_requested")?,
        deadline_at: row.opt_time(T, "deadline_at")?,
        created_at: row.time(T, "created_at")?,
        updated_at: row.time(T, "updated_at")?,
        last_seq: row.int("last_seq")?,
    })
}

fn raw_branch(row: &impl LogRow) -> Result<RawBranch, StoreError> {
    Ok(RawBranch {
        table: "baton_branches",
        tx_id: row.id("tx_id")?,
        index: row.int("idx")?,
        name: row.text("name")?,
        state: row.text("state")?,
        attempts: row.int("attempts")?,
        output: row.opt_bytes("output")?,
        last_error: row.opt_text("last_error")?,
        done_order: row.opt_int("done_order")?,
    })
}

fn participant(row: &impl LogRow) -> Result<ParticipantRecord, StoreError> {
    const T: &str = "baton_participants";
    Ok(ParticipantRecord {
        service: row.text("service")?,
        endpoint: row.text("endpoint")?,
        weight: to_u32(T, "weight", row.int("weight")?)?,
        zone: row.text("zone")?,
        expires_at: row.opt_time(T, "expires_at")?,
    })
}

/// A row of the coordinators query (with its published `owned` count).
fn coordinator(row: &impl LogRow) -> Result<CoordinatorRecord, StoreError> {
    const T: &str = "baton_coordinators";
    Ok(CoordinatorRecord {
        id: row.text("id")?,
        address: row.text("address")?,
        started_at: row.time(T, "started_at")?,
        heartbeat_at: row.time(T, "heartbeat_at")?,
        version: row.text("version")?,
        owned: row.int("owned")?.max(0) as u64,
    })
}

/// One event of transaction `tx_id` as a row (`seq, at, kind, branch, detail`) read from
/// `table`: SQLite's `baton_events`, or PostgreSQL's `baton_event_runs` unnested.
fn event_row(
    table: &'static str,
    tx_id: TxId,
    row: &impl LogRow,
) -> Result<EventRecord, StoreError> {
    event_record(
        table,
        tx_id,
        row.int("seq")?,
        row.time(table, "at")?,
        row.text("kind")?,
        row.opt_int("branch")?,
        row.text("detail")?,
    )
}

/// Page sizes the store serves: at least one row, at most a thousand.
fn clamp_limit(limit: u32) -> i64 {
    i64::from(limit.clamp(1, 1000))
}

/// Most transactions one [`Retention::purge_finished`] call deletes, whatever it is asked: one
/// database transaction stays short.
pub const MAX_PURGE_BATCH: u32 = 10_000;

/// A retention age in milliseconds for the database, capped at a thousand years so that an
/// absurd age cannot overflow the database's interval or time arithmetic.
fn age_ms(age: Duration) -> i64 {
    const CAP_MS: u64 = 1000 * 366 * 24 * 3_600_000;
    to_i64(
        u64::try_from(age.as_millis())
            .unwrap_or(u64::MAX)
            .min(CAP_MS),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use EventKind::*;

    #[test]
    fn a_shortened_history_is_numbered_again() {
        let mut up = TxUpdate {
            id: TxId::new(),
            owner: "c1".into(),
            epoch: 1,
            expected_last_seq: 4,
            state: TxState::Running,
            stage: 0,
            last_error: None,
            cancel_requested: false,
            release: false,
            branches: Vec::new(),
            events: [(9, ExecuteOk, Some(0)), (7, ExecuteSent, Some(1))]
                .into_iter()
                .map(|(seq, kind, branch)| NewEvent {
                    seq,
                    at: Utc::now(),
                    kind,
                    branch,
                    detail: format!("event {seq}"),
                })
                .collect(),
        };
        up.renumber_events();
        let kinds: Vec<_> = up
            .events
            .iter()
            .map(|e| (e.seq, e.kind, e.branch))
            .collect();
        assert_eq!(kinds, [(5, ExecuteOk, Some(0)), (6, ExecuteSent, Some(1))]);
        assert_eq!(up.events[0].detail, "event 9");
    }
}

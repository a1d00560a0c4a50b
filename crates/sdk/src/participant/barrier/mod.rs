//! The participant barrier: effectively-once handlers on top of at-least-once delivery.
//!
//! The coordinator delivers every call at least once, with a stable key (tx_id, branch, phase).
//! The barrier records that key in the participant's own database, **in the same local
//! transaction as the business change**, and decides from what is already recorded:
//!
//! - a repeated call returns the first result and changes nothing (also when the repeats arrive
//!   concurrently);
//! - a compensation (saga) or abort (2PC) whose action or prepare never ran does nothing and is
//!   recorded ("null compensation"), so the action arriving late is refused as a business failure
//!   instead of reserving something nobody will release ("hanging" prevention);
//! - a compensation or abort after a *failed* action or prepare does nothing: the failure was
//!   recorded without its business change;
//! - commit and abort of one branch exclude each other: whichever is recorded first wins and the
//!   other is refused with [`HandlerError::Permanent`].
//!
//! It works with PostgreSQL ([`PgBarrier`]) and SQLite ([`SqliteBarrier`]) pools. Every phase of
//! a branch must go through the barrier (a commit whose prepare was not recorded is refused).
//!
//! ```no_run
//! use baton_tx::participant::barrier::PgBarrier;
//! use baton_tx::participant::{HandlerError, Participant, Reply, Request};
//!
//! # async fn demo(pool: sqlx::PgPool) -> Result<(), Box<dyn std::error::Error>> {
//! let barrier = PgBarrier::new(pool);
//! barrier.migrate().await?; // creates baton_barrier once; safe on every start
//!
//! let (debit, refund) = (barrier.clone(), barrier.clone());
//! let participant = Participant::new()
//!     .on_execute("debit", move |req: Request| {
//!         let barrier = debit.clone();
//!         async move {
//!             let amount: i64 = req.json()?;
//!             barrier
//!                 .run(&req, |conn| {
//!                     Box::pin(async move {
//!                         let left: i64 = sqlx::query_scalar(
//!                             "UPDATE accounts SET balance = balance - $1 WHERE id = 1 \
//!                              RETURNING balance",
//!                         )
//!                         .bind(amount)
//!                         .fetch_one(conn)
//!                         .await
//!                         .map_err(|e| HandlerError::transient(e.to_string()))?;
//!                         if left < 0 {
//!                             // Recorded without the update: every repeat answers the same.
//!                             return Err(HandlerError::failed("insufficient funds"));
//!                         }
//!                         Ok(Reply::ok())
//!                     })
//!                 })
//!                 .await
//!         }
//!     })
//!     .on_compensate("debit", move |req: Request| {
//!         let barrier = refund.clone();
//!         async move {
//!             let amount: i64 = req.json()?;
//!             barrier
//!                 .run(&req, |conn| {
//!                     Box::pin(async move {
//!                         sqlx::query("UPDATE accounts SET balance = balance + $1 WHERE id = 1")
//!                             .bind(amount)
//!                             .execute(conn)
//!                             .await
//!                             .map_err(|e| HandlerError::transient(e.to_string()))?;
//!                         Ok(Reply::ok())
//!                     })
//!                 })
//!                 .await
//!         }
//!     });
//! # let _ = participant;
//! # Ok(())
//! # }
//! ```
//!
//! When the business code needs more control than a closure gives, [`Barrier::enter`] returns the
//! decision as an [`Entry`]; a [`Entry::Fresh`] entry holds a [`Guard`] whose
//! [`tx`](Guard::tx) is the local transaction to make the change in, finished with
//! [`Guard::commit`] or [`Guard::fail`].
//!
//! # Cleaning up
//!
//! Records pile up, one or more per call. [`Barrier::purge_older_than`] deletes the records of
//! transactions whose **newest** record is older than an age (all of a transaction's records
//! together, so a transaction still active keeps its history whole). Run it periodically, for
//! example hourly from one task of the participant:
//!
//! ```no_run
//! # use std::time::Duration;
//! # async fn demo(barrier: baton_tx::participant::barrier::PgBarrier) {
//! // Twice the coordinator's default --retention of 7 days; see below.
//! const KEEP: Duration = Duration::from_secs(14 * 24 * 3600);
//! let mut every = tokio::time::interval(Duration::from_secs(3600));
//! loop {
//!     every.tick().await;
//!     loop {
//!         match barrier.purge_older_than(KEEP, 500).await {
//!             Ok(0) => break,
//!             Ok(_) => tokio::time::sleep(Duration::from_millis(20)).await,
//!             Err(e) => {
//!                 tracing::warn!(error = %e, "barrier purge failed");
//!                 break;
//!             }
//!         }
//!     }
//! }
//! # }
//! ```
//!
//! **How long to keep records.** A record must outlive every call that can still arrive for its
//! transaction: once a record is gone, a late compensation would find no action and do nothing,
//! and a late action would run again. Calls stop when the transaction is finished, but a
//! transaction can stay unfinished for long: a `failed` saga waits for an operator's
//! `baton tx retry`, and its compensations then need the records of its actions. So keep records
//! longer than any transaction may stay unfinished, `failed` ones included
//! (`baton tx list --state failed` shows them), and at least as long as the coordinator's
//! `--retention` (7 days by default), so a participant never forgets a transaction before the
//! coordinator does. Twice the coordinator's retention is a sensible
//! default; with `--retention off`, pick an age past which no failed transaction will be retried.
//!
//! Errors of the barrier's own statements are [`HandlerError::Transient`] (the coordinator
//! retries, and the retry is safe because nothing was recorded), except schema errors such as a
//! missing table, which are [`HandlerError::Permanent`].

mod backend;

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::time::Duration;

#[cfg(feature = "postgres")]
use sqlx::Postgres;
#[cfg(feature = "sqlite")]
use sqlx::Sqlite;
use sqlx::{Pool, Transaction};

use self::backend::{Backend, Key, Stored};
use super::{HandlerError, Phase, Reply, Request};

/// A database the barrier can keep its records in: `Postgres` (feature `postgres`) or `Sqlite`
/// (feature `sqlite`). Sealed, because the protocol's safety under concurrency depends on each
/// database's locking.
pub trait BarrierDb: Backend {}

#[cfg(feature = "postgres")]
impl BarrierDb for Postgres {}
#[cfg(feature = "sqlite")]
impl BarrierDb for Sqlite {}

/// A barrier over a PostgreSQL pool.
#[cfg(feature = "postgres")]
pub type PgBarrier = Barrier<Postgres>;
/// A barrier over an SQLite pool.
#[cfg(feature = "sqlite")]
pub type SqliteBarrier = Barrier<Sqlite>;

/// The future a [`Barrier::run`] business closure returns: it borrows the local transaction's
/// connection for `'c`.
pub type Business<'c> = Pin<Box<dyn Future<Output = Result<Reply, HandlerError>> + Send + 'c>>;

/// Why [`Barrier::migrate`] could not create the barrier's table.
#[derive(Debug, thiserror::Error)]
#[error("cannot create the baton_barrier table")]
pub struct MigrateError(#[source] sqlx::Error);

/// Why [`Barrier::purge_older_than`] could not delete old records.
#[derive(Debug, thiserror::Error)]
#[error("cannot purge old baton_barrier records")]
pub struct PurgeError(#[source] sqlx::Error);

/// Records each call's key and result in the participant's own database (table
/// `baton_barrier`), so handlers take effect once per (tx_id, branch, phase). Cheap to clone: it
/// holds the pool.
pub struct Barrier<DB: BarrierDb> {
    pool: Pool<DB>,
}

impl<DB: BarrierDb> Clone for Barrier<DB> {
    fn clone(&self) -> Self {
        Barrier {
            pool: self.pool.clone(),
        }
    }
}

impl<DB: BarrierDb> fmt::Debug for Barrier<DB> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Barrier").finish_non_exhaustive()
    }
}

/// What the barrier decided for a call, from what it had recorded before.
pub enum Entry<DB: BarrierDb> {
    /// The first delivery: make the business change in [`Guard::tx`], then
    /// [`commit`](Guard::commit) or [`fail`](Guard::fail).
    Fresh(Guard<DB>),
    /// A repeat of a call that already finished: its recorded result, to be returned as is.
    Repeat(Result<Reply, HandlerError>),
    /// A compensation or abort with nothing to undo (the action never ran, or failed); recorded,
    /// and to be answered `OK`.
    Skip(Reply),
    /// A call that must not take effect: an action or prepare after its compensation or abort
    /// ([`HandlerError::Failed`]), or a commit after abort and vice versa
    /// ([`HandlerError::Permanent`]). Nothing was recorded.
    Refused(HandlerError),
}

impl<DB: BarrierDb> fmt::Debug for Entry<DB> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Entry::Fresh(guard) => f.debug_tuple("Fresh").field(guard).finish(),
            Entry::Repeat(result) => f.debug_tuple("Repeat").field(result).finish(),
            Entry::Skip(reply) => f.debug_tuple("Skip").field(reply).finish(),
            Entry::Refused(error) => f.debug_tuple("Refused").field(error).finish(),
        }
    }
}

/// A first delivery in progress: the open local transaction in which the call's key is claimed.
/// Dropping it without [`commit`](Guard::commit) or [`fail`](Guard::fail) rolls everything
/// back, so a retry runs the business code again.
pub struct Guard<DB: BarrierDb> {
    tx: Transaction<'static, DB>,
    key: Key,
    phase: Phase,
}

impl<DB: BarrierDb> fmt::Debug for Guard<DB> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Guard")
            .field("tx_id", &self.key.tx_id)
            .field("branch", &self.key.branch)
            .field("phase", &self.phase)
            .finish()
    }
}

// Outcomes as stored. `pending` is only ever seen inside the transaction that claimed the row.
const PENDING: &str = "pending";
const OK: &str = "ok";
const FAILED: &str = "failed";
/// On a forward row (execute, prepare) that a compensation or abort wrote first.
const SKIPPED: &str = "skipped";

/// The row that commit and abort of a branch both claim, so that only one of them can be
/// recorded: a second insert of the same key waits for the first and then conflicts.
const DECISION: &str = "decision";
const COMMIT: &str = "commit";
const ABORT: &str = "abort";

/// Lets [`Guard::fail`] drop the business change but keep the claimed row, so the failure is
/// recorded without ever releasing the key to a concurrent duplicate.
const SAVEPOINT: &str = "SAVEPOINT baton_barrier_business";
const ROLLBACK_TO_SAVEPOINT: &str = "ROLLBACK TO SAVEPOINT baton_barrier_business";

/// Most transactions one [`Barrier::purge_older_than`] call deletes, so one call stays short.
pub const MAX_PURGE_BATCH: u32 = 10_000;

/// Longest accepted tx_id; the coordinator's are UUIDs, this only bounds what a caller can store.
const MAX_TX_ID: usize = 255;

impl<DB: BarrierDb> Barrier<DB> {
    /// A barrier keeping its records in `pool`'s database, which should be the database the
    /// handlers change (the record and the change commit together).
    pub fn new(pool: Pool<DB>) -> Self {
        Barrier { pool }
    }

    /// The pool the barrier uses.
    pub fn pool(&self) -> &Pool<DB> {
        &self.pool
    }

    /// The `CREATE TABLE IF NOT EXISTS` and `CREATE INDEX IF NOT EXISTS` statements for
    /// `baton_barrier` (separated by `;`), for services that manage their schema with their own
    /// migration tool instead of calling [`migrate`](Self::migrate).
    pub fn schema() -> &'static str {
        DB::SCHEMA
    }

    /// Creates the `baton_barrier` table unless it exists. Safe to call on every start, also from
    /// several replicas at once. It does not use sqlx's migration table, which belongs to the
    /// service's own migrations.
    pub async fn migrate(&self) -> Result<(), MigrateError> {
        let mut tx = DB::begin(&self.pool).await.map_err(MigrateError)?;
        if let Some(lock) = DB::MIGRATE_LOCK {
            DB::run(&mut tx, lock).await.map_err(MigrateError)?;
        }
        for statement in DB::SCHEMA.split(';').filter(|s| !s.trim().is_empty()) {
            DB::run(&mut tx, statement).await.map_err(MigrateError)?;
        }
        tx.commit().await.map_err(MigrateError)
    }

    /// Deletes the records of at most `batch` transactions (every record of each) whose newest
    /// record is older than `age`, judged by the database's clock. Returns how many records were
    /// deleted; call it again until it returns 0 (see [the module docs](self) for how long to
    /// keep records and how to run it periodically).
    pub async fn purge_older_than(&self, age: Duration, batch: u32) -> Result<u64, PurgeError> {
        if batch == 0 {
            return Ok(0);
        }
        DB::purge(&self.pool, age, batch.min(MAX_PURGE_BATCH))
            .await
            .map_err(PurgeError)
    }

    /// Decides what to do with `req` from what is recorded for its branch, recording the call in
    /// a new local transaction. See [`Entry`] for the answers; the error is a database problem
    /// ([`HandlerError::Transient`]) or an invalid request ([`HandlerError::Permanent`]).
    pub async fn enter(&self, req: &Request) -> Result<Entry<DB>, HandlerError> {
        let key = key_of(req)?;
        let phase = req.phase;
        let mut tx = DB::begin(&self.pool)
            .await
            .map_err(|e| db_error::<DB>("begin", e))?;
        let entry = match decide(&mut tx, &key, phase).await? {
            Decision::Fresh => {
                if matches!(phase, Phase::Execute | Phase::Prepare) {
                    DB::run(&mut tx, SAVEPOINT)
                        .await
                        .map_err(|e| db_error::<DB>("savepoint", e))?;
                }
                return Ok(Entry::Fresh(Guard { tx, key, phase }));
            }
            Decision::Skip(reply) => {
                DB::settle(
                    &mut tx,
                    &key,
                    phase.as_str(),
                    OK,
                    &reply.output,
                    &reply.message,
                )
                .await
                .map_err(|e| db_error::<DB>("record", e))?;
                tx.commit().await.map_err(|e| db_error::<DB>("commit", e))?;
                Entry::Skip(reply)
            }
            // Nothing to keep: a repeat wrote nothing, and a refusal must not leave its own row
            // behind (so a retry of it is refused again).
            Decision::Repeat(result) => {
                let _ = tx.rollback().await;
                Entry::Repeat(result)
            }
            Decision::Refused(error) => {
                let _ = tx.rollback().await;
                Entry::Refused(error)
            }
        };
        tracing::debug!(tx_id = %key.tx_id, branch = key.branch, %phase, ?entry, "barrier");
        Ok(entry)
    }

    /// Runs `business` once per (tx_id, branch, phase), inside the barrier's local transaction:
    /// the whole handler in one call.
    ///
    /// `business` gets the transaction's connection. `Ok` commits the change with the reply;
    /// [`HandlerError::Failed`] is [`Guard::fail`] (recorded without the change for execute and
    /// prepare); a transient or permanent error rolls back and records nothing, so a retry runs
    /// `business` again. Repeats, null compensations and refusals never call it.
    pub async fn run<F>(&self, req: &Request, business: F) -> Result<Reply, HandlerError>
    where
        F: for<'c> FnOnce(&'c mut DB::Connection) -> Business<'c> + Send,
    {
        match self.enter(req).await? {
            Entry::Fresh(mut guard) => match business(guard.tx()).await {
                Ok(reply) => guard.commit(reply).await,
                Err(HandlerError::Failed(message)) => guard.fail(message).await,
                Err(error) => {
                    guard.rollback().await;
                    Err(error)
                }
            },
            Entry::Repeat(result) => result,
            Entry::Skip(reply) => Ok(reply),
            Entry::Refused(error) => Err(error),
        }
    }
}

impl<DB: BarrierDb> Guard<DB> {
    /// The local transaction's connection: make the business change here, so it commits with the
    /// barrier's record or not at all.
    pub fn tx(&mut self) -> &mut DB::Connection {
        &mut self.tx
    }

    /// Records `reply` as the call's result and commits it with the business change. Repeats
    /// return this reply.
    ///
    /// A failed commit is [`HandlerError::Transient`]: whether or not it took effect, the
    /// coordinator's retry is answered correctly (a repeat, or a fresh run).
    pub async fn commit(mut self, reply: Reply) -> Result<Reply, HandlerError> {
        DB::settle(
            &mut self.tx,
            &self.key,
            self.phase.as_str(),
            OK,
            &reply.output,
            &reply.message,
        )
        .await
        .map_err(|e| db_error::<DB>("record", e))?;
        self.tx
            .commit()
            .await
            .map_err(|e| db_error::<DB>("commit", e))?;
        Ok(reply)
    }

    /// Reports a business failure ([`HandlerError::Failed`] with `message`) without the business
    /// change.
    ///
    /// For execute and prepare the failure is recorded, so repeats answer it again (a declined
    /// payment stays declined) and a later compensation or abort has nothing to undo. For
    /// compensate, commit and abort, which must eventually succeed, nothing is recorded and the
    /// coordinator's retry runs the business code again.
    pub async fn fail(mut self, message: impl Into<String>) -> Result<Reply, HandlerError> {
        let message = message.into();
        if matches!(self.phase, Phase::Execute | Phase::Prepare) {
            DB::run(&mut self.tx, ROLLBACK_TO_SAVEPOINT)
                .await
                .map_err(|e| db_error::<DB>("rollback to savepoint", e))?;
            DB::settle(
                &mut self.tx,
                &self.key,
                self.phase.as_str(),
                FAILED,
                &[],
                &message,
            )
            .await
            .map_err(|e| db_error::<DB>("record", e))?;
            self.tx
                .commit()
                .await
                .map_err(|e| db_error::<DB>("commit", e))?;
        } else {
            self.rollback().await;
        }
        Err(HandlerError::Failed(message))
    }

    /// Rolls back the business change and the record, as if the call never arrived.
    pub async fn rollback(self) {
        // A rollback that fails leaves nothing behind either: the database discards the
        // transaction when the connection closes.
        let _ = self.tx.rollback().await;
    }
}

/// [`Entry`] without the transaction, while it is being decided.
#[derive(Debug)]
enum Decision {
    Fresh,
    Repeat(Result<Reply, HandlerError>),
    Skip(Reply),
    Refused(HandlerError),
}

/// The protocol. Every decision starts by claiming the call's own row, so concurrent duplicates
/// queue on one primary key and all but the first see its committed result.
async fn decide<DB: BarrierDb>(
    tx: &mut Transaction<'static, DB>,
    key: &Key,
    phase: Phase,
) -> Result<Decision, HandlerError> {
    if !claim::<DB>(tx, key, phase.as_str(), PENDING).await? {
        let stored = read::<DB>(tx, key, phase.as_str())
            .await?
            .ok_or_else(|| vanished(key, phase.as_str()))?;
        return recorded(key, phase, stored);
    }
    match phase {
        Phase::Execute | Phase::Prepare => Ok(Decision::Fresh),
        Phase::Compensate | Phase::Abort => {
            if phase == Phase::Abort {
                if let Some(refusal) = claim_decision::<DB>(tx, key, ABORT).await? {
                    return Ok(Decision::Refused(refusal));
                }
            }
            let forward = forward_of(phase);
            // Writing the forward row ourselves both tells whether the action ran and, when it
            // did not, makes its late arrival find a `skipped` row and be refused.
            if claim::<DB>(tx, key, forward.as_str(), SKIPPED).await? {
                return Ok(Decision::Skip(
                    Reply::ok().with_message(format!("nothing to undo: {forward} never ran")),
                ));
            }
            let stored = read::<DB>(tx, key, forward.as_str())
                .await?
                .ok_or_else(|| vanished(key, forward.as_str()))?;
            match stored.outcome.as_str() {
                OK => Ok(Decision::Fresh),
                FAILED => Ok(Decision::Skip(
                    Reply::ok().with_message(format!("nothing to undo: {forward} failed")),
                )),
                other => Err(corrupt(key, forward.as_str(), other)),
            }
        }
        Phase::Commit => {
            if let Some(refusal) = claim_decision::<DB>(tx, key, COMMIT).await? {
                return Ok(Decision::Refused(refusal));
            }
            let prepared = read::<DB>(tx, key, Phase::Prepare.as_str()).await?;
            match prepared.as_ref().map(|s| s.outcome.as_str()) {
                Some(OK) => Ok(Decision::Fresh),
                Some(FAILED) => Ok(Decision::Refused(HandlerError::permanent(format!(
                    "tx {} branch {}: cannot commit, prepare voted no",
                    key.tx_id, key.branch
                )))),
                Some(other) => Err(corrupt(key, Phase::Prepare.as_str(), other)),
                None => Ok(Decision::Refused(HandlerError::permanent(format!(
                    "tx {} branch {}: cannot commit, prepare was not recorded by the barrier",
                    key.tx_id, key.branch
                )))),
            }
        }
    }
}

/// Claims the branch's commit-or-abort decision; `Some(refusal)` if the other one holds it.
async fn claim_decision<DB: BarrierDb>(
    tx: &mut Transaction<'static, DB>,
    key: &Key,
    decision: &'static str,
) -> Result<Option<HandlerError>, HandlerError> {
    if claim::<DB>(tx, key, DECISION, decision).await? {
        return Ok(None);
    }
    let stored = read::<DB>(tx, key, DECISION)
        .await?
        .ok_or_else(|| vanished(key, DECISION))?;
    match (decision, stored.outcome.as_str()) {
        (COMMIT, COMMIT) | (ABORT, ABORT) => Ok(None),
        (COMMIT, ABORT) => Ok(Some(HandlerError::permanent(format!(
            "tx {} branch {}: already aborted, cannot commit",
            key.tx_id, key.branch
        )))),
        (ABORT, COMMIT) => Ok(Some(HandlerError::permanent(format!(
            "tx {} branch {}: already committed, cannot abort",
            key.tx_id, key.branch
        )))),
        (_, other) => Err(corrupt(key, DECISION, other)),
    }
}

/// The answer to a repeat of `phase`, from its stored row.
fn recorded(key: &Key, phase: Phase, stored: Stored) -> Result<Decision, HandlerError> {
    match stored.outcome.as_str() {
        OK => Ok(Decision::Repeat(Ok(Reply {
            output: stored.output,
            message: stored.message,
        }))),
        FAILED => Ok(Decision::Repeat(Err(HandlerError::Failed(stored.message)))),
        // Only forward rows are ever skipped: their compensation or abort came first.
        SKIPPED => {
            let undone = if phase == Phase::Prepare {
                "aborted"
            } else {
                "compensated"
            };
            Ok(Decision::Refused(HandlerError::failed(format!(
                "tx {} branch {}: already {undone}, {phase} refused",
                key.tx_id, key.branch
            ))))
        }
        other => Err(corrupt(key, phase.as_str(), other)),
    }
}

/// The phase whose effect `phase` undoes.
fn forward_of(phase: Phase) -> Phase {
    match phase {
        Phase::Abort => Phase::Prepare,
        _ => Phase::Execute,
    }
}

fn key_of(req: &Request) -> Result<Key, HandlerError> {
    if req.tx_id.is_empty() {
        return Err(HandlerError::permanent("tx_id: must not be empty"));
    }
    if req.tx_id.len() > MAX_TX_ID {
        return Err(HandlerError::permanent(format!(
            "tx_id: longer than {MAX_TX_ID} bytes"
        )));
    }
    Ok(Key {
        tx_id: req.tx_id.clone(),
        branch: i64::from(req.branch_index),
    })
}

async fn claim<DB: BarrierDb>(
    tx: &mut Transaction<'static, DB>,
    key: &Key,
    phase: &'static str,
    outcome: &'static str,
) -> Result<bool, HandlerError> {
    DB::claim(tx, key, phase, outcome)
        .await
        .map_err(|e| db_error::<DB>("claim", e))
}

async fn read<DB: BarrierDb>(
    tx: &mut Transaction<'static, DB>,
    key: &Key,
    phase: &'static str,
) -> Result<Option<Stored>, HandlerError> {
    DB::read(tx, key, phase)
        .await
        .map_err(|e| db_error::<DB>("read", e))
}

fn db_error<DB: BarrierDb>(step: &str, error: sqlx::Error) -> HandlerError {
    if let sqlx::Error::Database(db) = &error {
        if db.code().is_some_and(|code| DB::is_schema_error(&code)) {
            return HandlerError::permanent(format!(
                "baton_barrier: {step}: {db} (was the barrier's migrate() run on this database?)"
            ));
        }
    }
    HandlerError::transient(format!("baton_barrier: {step}: {error}"))
}

/// A row that conflicted on insert but cannot be read: only possible if something outside the
/// barrier deletes its rows. Retrying re-reads it.
fn vanished(key: &Key, phase: &str) -> HandlerError {
    HandlerError::transient(format!(
        "baton_barrier: tx {} branch {} {phase}: record vanished while being read",
        key.tx_id, key.branch
    ))
}

fn corrupt(key: &Key, phase: &str, outcome: &str) -> HandlerError {
    HandlerError::permanent(format!(
        "baton_barrier: tx {} branch {} {phase}: unexpected recorded outcome {outcome:?}",
        key.tx_id, key.branch
    ))
}

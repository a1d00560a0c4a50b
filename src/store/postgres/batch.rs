//! A group-commit batch as two statements: every new transaction of the batch in one, every
//! update in another, with the rows bound as arrays and spread by `UNNEST`.
//!
//! Statement count per batch is what bounds the log writer at high concurrency: a batch of 40
//! writes applied one statement at a time costs 40 round trips and 40 executor start-ups inside
//! one database transaction. The set form costs two, whatever the batch size.
//!
//! It requires each transaction to appear once per statement. Updates of one transaction queued
//! back to back are folded into one ([`TxUpdate::absorb`]), which applies the same rows; a batch
//! that cannot be planned that way (a create and an update of one transaction, or updates that do
//! not follow each other) returns `None` and is applied one write at a time instead.
//!
//! These statements run on the writers' connections with PostgreSQL's default plan caching, so
//! after five runs each keeps a generic plan, usually made while a new database is nearly
//! empty. Each is written so that plan reaches existing rows by key whatever the table's size.
//! A statement that joins a table to an `UNNEST` reads the `UNNEST` through
//! `LIMIT cardinality(…)`, which keeps every row but makes the planner expect one. A nested loop
//! over the primary key is then the cheapest plan even for an empty table, and it stays right as
//! the table grows. Without the `LIMIT`, the join over a near-empty table was planned as a hash
//! join over a sequential scan, and every later write read the whole table.

use std::collections::{HashMap, HashSet};

use chrono::{DateTime, Utc};
use sqlx::postgres::PgArguments;
use sqlx::query::QueryScalar;
use sqlx::{PgConnection, Postgres};
use uuid::Uuid;

use super::super::{db_err, to_i64, LogWrite, NewTx, StoreError, TxUpdate, WriteOutcome};
use crate::model::TxId;

/// How a batch is applied as sets.
pub(super) struct Plan<'a> {
    creates: Vec<(usize, &'a NewTx)>,
    /// Folded updates, each with the positions in the batch it answers for.
    updates: Vec<(TxUpdate, Vec<usize>)>,
}

/// Groups the batch by kind, folding consecutive updates of one transaction; `None` when the
/// set form cannot express it.
pub(super) fn plan(batch: &[LogWrite]) -> Option<Plan<'_>> {
    let mut creates = Vec::new();
    let mut updates: Vec<(TxUpdate, Vec<usize>)> = Vec::new();
    let mut by_id: HashMap<TxId, usize> = HashMap::new();
    for (pos, write) in batch.iter().enumerate() {
        match write {
            LogWrite::Create(new) => {
                if by_id.insert(new.id, usize::MAX).is_some() {
                    return None;
                }
                creates.push((pos, &**new));
            }
            LogWrite::Update(up) => match by_id.get(&up.id) {
                None => {
                    by_id.insert(up.id, updates.len());
                    updates.push(((**up).clone(), vec![pos]));
                }
                Some(&usize::MAX) => return None,
                Some(&slot) => {
                    let (held, positions) = &mut updates[slot];
                    let follows = held.owner == up.owner
                        && held.epoch == up.epoch
                        && up.expected_last_seq
                            == held.expected_last_seq + held.events.len() as u64;
                    if !follows {
                        return None;
                    }
                    held.absorb((**up).clone());
                    positions.push(pos);
                }
            },
        }
    }
    Some(Plan { creates, updates })
}

impl Plan<'_> {
    /// How many writing statements the batch takes (one per kind present).
    pub(super) fn statements(&self) -> usize {
        usize::from(!self.creates.is_empty()) + usize::from(!self.updates.is_empty())
    }
}

/// Applies a planned batch: inside the caller's database transaction when it takes two
/// statements, else as one atomic statement.
pub(super) async fn apply(
    conn: &mut PgConnection,
    plan: Plan<'_>,
    outcomes: &mut [Option<WriteOutcome>],
) -> Result<(), StoreError> {
    if !plan.creates.is_empty() {
        create_all(conn, &plan.creates, outcomes).await?;
    }
    if !plan.updates.is_empty() {
        update_all(conn, &plan.updates, outcomes).await?;
    }
    Ok(())
}

async fn create_all(
    conn: &mut PgConnection,
    creates: &[(usize, &NewTx)],
    outcomes: &mut [Option<WriteOutcome>],
) -> Result<(), StoreError> {
    let n = creates.len();
    let mut id = Vec::with_capacity(n);
    let mut kind = Vec::with_capacity(n);
    let mut state = Vec::with_capacity(n);
    let mut definition = Vec::with_capacity(n);
    let mut labels = Vec::with_capacity(n);
    let mut key: Vec<Option<&str>> = Vec::with_capacity(n);
    let mut owner = Vec::with_capacity(n);
    let mut epoch = Vec::with_capacity(n);
    let mut deadline: Vec<Option<DateTime<Utc>>> = Vec::with_capacity(n);
    let mut last_seq = Vec::with_capacity(n);
    let mut created = Vec::with_capacity(n);
    let (mut b_tx, mut b_idx, mut b_name) = (Vec::new(), Vec::new(), Vec::new());
    let mut events = Events::default();
    for (_, new) in creates {
        id.push(new.id.0);
        kind.push(new.definition.kind().as_str());
        state.push(new.state.as_str());
        definition.push(serde_json::to_string(&new.definition).map_err(encode_err)?);
        labels.push(serde_json::to_string(&new.labels).map_err(encode_err)?);
        key.push(new.idempotency_key.as_deref());
        owner.push(new.owner.as_str());
        epoch.push(new.epoch);
        deadline.push(new.deadline_at);
        last_seq.push(to_i64(new.events.iter().map(|e| e.seq).max().unwrap_or(0)));
        created.push(new.created_at);
        for (i, name) in new.definition.branch_names().into_iter().enumerate() {
            b_tx.push(new.id.0);
            b_idx.push(i as i64);
            b_name.push(name.to_string());
        }
        events.extend(new.id, &new.events);
    }
    // A duplicate idempotency key inserts nothing, and the joins on `tx` then add no branch or
    // event rows for it.
    let inserted: Vec<Uuid> = sqlx::query_scalar(
        "WITH tx AS (
            INSERT INTO baton_transactions
                (id, kind, state, definition, labels, idempotency_key, owner, epoch,
                 deadline_at, last_seq, created_at, updated_at)
            SELECT i.id, i.kind, i.state, i.definition::jsonb, i.labels::jsonb, i.key, i.owner,
                   i.epoch, i.deadline_at, i.last_seq, i.created_at, i.created_at
            FROM UNNEST($1::uuid[], $2::text[], $3::text[], $4::text[], $5::text[], $6::text[],
                        $7::text[], $8::bigint[], $9::timestamptz[], $10::bigint[],
                        $11::timestamptz[])
                AS i(id, kind, state, definition, labels, key, owner, epoch, deadline_at,
                     last_seq, created_at)
            ON CONFLICT (idempotency_key) DO NOTHING
            RETURNING id, owner, epoch
        ), branches AS (
            INSERT INTO baton_branches (tx_id, idx, name, state)
            SELECT b.tx_id, b.idx, b.name, 'pending'
            FROM UNNEST($12::uuid[], $13::bigint[], $14::text[]) AS b(tx_id, idx, name)
            JOIN tx ON tx.id = b.tx_id
        ), events AS (
            INSERT INTO baton_events (tx_id, seq, at, kind, branch, detail, owner, epoch)
            SELECT e.tx_id, e.seq, e.at, e.kind, e.branch, e.detail, tx.owner, tx.epoch
            FROM UNNEST($15::uuid[], $16::bigint[], $17::timestamptz[], $18::text[],
                        $19::bigint[], $20::text[]) AS e(tx_id, seq, at, kind, branch, detail)
            JOIN tx ON tx.id = e.tx_id
        )
        SELECT id FROM tx",
    )
    .bind(&id)
    .bind(&kind)
    .bind(&state)
    .bind(&definition)
    .bind(&labels)
    .bind(&key)
    .bind(&owner)
    .bind(&epoch)
    .bind(&deadline)
    .bind(&last_seq)
    .bind(&created)
    .bind(&b_tx)
    .bind(&b_idx)
    .bind(&b_name)
    .bind_events(&events)
    .fetch_all(&mut *conn)
    .await
    .map_err(db_err)?;
    let inserted: HashSet<Uuid> = inserted.into_iter().collect();
    let mut missing: Vec<&str> = Vec::new();
    for &(pos, new) in creates {
        if inserted.contains(&new.id.0) {
            outcomes[pos] = Some(WriteOutcome::Created);
        } else if let Some(key) = new.idempotency_key.as_deref() {
            missing.push(key);
        }
    }
    if missing.is_empty() {
        return Ok(());
    }
    // A separate statement, so that it sees rows another transaction committed while the insert
    // waited on their keys.
    let existing: Vec<(String, Uuid)> = sqlx::query_as(
        "SELECT t.idempotency_key, t.id
         FROM (SELECT * FROM UNNEST($1::text[]) AS k(key) LIMIT cardinality($1::text[])) AS k
         JOIN baton_transactions t ON t.idempotency_key = k.key",
    )
    .bind(&missing)
    .fetch_all(&mut *conn)
    .await
    .map_err(db_err)?;
    for &(pos, new) in creates {
        if outcomes[pos].is_some() {
            continue;
        }
        let key = new.idempotency_key.as_deref();
        if let Some((_, id)) = existing.iter().find(|(k, _)| Some(k.as_str()) == key) {
            outcomes[pos] = Some(WriteOutcome::Existing(TxId(*id)));
        }
    }
    Ok(())
}

async fn update_all(
    conn: &mut PgConnection,
    updates: &[(TxUpdate, Vec<usize>)],
    outcomes: &mut [Option<WriteOutcome>],
) -> Result<(), StoreError> {
    let n = updates.len();
    let mut id = Vec::with_capacity(n);
    let mut owner = Vec::with_capacity(n);
    let mut epoch = Vec::with_capacity(n);
    let mut expected = Vec::with_capacity(n);
    let mut state = Vec::with_capacity(n);
    let mut stage = Vec::with_capacity(n);
    let mut last_error: Vec<Option<&str>> = Vec::with_capacity(n);
    let mut cancel = Vec::with_capacity(n);
    let mut release = Vec::with_capacity(n);
    let mut max_seq = Vec::with_capacity(n);
    let mut b_tx = Vec::new();
    let mut b_idx = Vec::new();
    let mut b_name: Vec<&str> = Vec::new();
    let mut b_state: Vec<&str> = Vec::new();
    let mut b_attempts = Vec::new();
    let mut b_output: Vec<Option<&[u8]>> = Vec::new();
    let mut b_error: Vec<Option<&str>> = Vec::new();
    let mut b_done: Vec<Option<i64>> = Vec::new();
    let mut events = Events::default();
    for (up, _) in updates {
        id.push(up.id.0);
        owner.push(up.owner.as_str());
        epoch.push(up.epoch);
        expected.push(to_i64(up.expected_last_seq));
        state.push(up.state.as_str());
        stage.push(i64::from(up.stage));
        last_error.push(up.last_error.as_deref());
        cancel.push(up.cancel_requested);
        release.push(up.release);
        max_seq.push(to_i64(up.events.iter().map(|e| e.seq).max().unwrap_or(0)));
        for b in &up.branches {
            b_tx.push(up.id.0);
            b_idx.push(i64::from(b.index));
            b_name.push(b.name.as_str());
            b_state.push(b.status.as_str());
            b_attempts.push(i64::from(b.attempts));
            b_output.push(b.output.as_deref());
            b_error.push(b.last_error.as_deref());
            b_done.push(b.done_order.map(i64::from));
        }
        events.extend(up.id, &up.events);
    }
    // The fenced UPDATE gates the branch and event rows: a transaction whose owner, epoch or
    // history differ matches no row, and the joins on `tx` then write nothing of it.
    let applied: Vec<Uuid> = sqlx::query_scalar(
        "WITH tx AS (
            UPDATE baton_transactions t
            SET state = u.state, stage = u.stage, last_error = u.last_error,
                cancel_requested = u.cancel_requested,
                owner = CASE WHEN u.release THEN NULL ELSE t.owner END,
                last_seq = GREATEST(t.last_seq, u.max_seq), updated_at = now()
            FROM (SELECT * FROM UNNEST($1::uuid[], $2::text[], $3::bigint[], $4::bigint[],
                        $5::text[], $6::bigint[], $7::text[], $8::bool[], $9::bool[],
                        $10::bigint[])
                    AS u(id, owner, epoch, expected, state, stage, last_error,
                         cancel_requested, release, max_seq)
                  LIMIT cardinality($1::uuid[])) AS u
            WHERE t.id = u.id AND t.owner = u.owner AND t.epoch = u.epoch
              AND t.last_seq = u.expected
            RETURNING t.id, u.owner, u.epoch
        ), branches AS (
            INSERT INTO baton_branches
                (tx_id, idx, name, state, attempts, output, last_error, done_order)
            SELECT b.tx_id, b.idx, b.name, b.state, b.attempts, b.output, b.last_error,
                   b.done_order
            FROM UNNEST($11::uuid[], $12::bigint[], $13::text[], $14::text[], $15::bigint[],
                        $16::bytea[], $17::text[], $18::bigint[])
                AS b(tx_id, idx, name, state, attempts, output, last_error, done_order)
            JOIN tx ON tx.id = b.tx_id
            ON CONFLICT (tx_id, idx) DO UPDATE SET
                name = excluded.name, state = excluded.state, attempts = excluded.attempts,
                output = excluded.output, last_error = excluded.last_error,
                done_order = excluded.done_order
        ), events AS (
            INSERT INTO baton_events (tx_id, seq, at, kind, branch, detail, owner, epoch)
            SELECT e.tx_id, e.seq, e.at, e.kind, e.branch, e.detail, tx.owner, tx.epoch
            FROM UNNEST($19::uuid[], $20::bigint[], $21::timestamptz[], $22::text[],
                        $23::bigint[], $24::text[]) AS e(tx_id, seq, at, kind, branch, detail)
            JOIN tx ON tx.id = e.tx_id
        )
        SELECT id FROM tx",
    )
    .bind(&id)
    .bind(&owner)
    .bind(&epoch)
    .bind(&expected)
    .bind(&state)
    .bind(&stage)
    .bind(&last_error)
    .bind(&cancel)
    .bind(&release)
    .bind(&max_seq)
    .bind(&b_tx)
    .bind(&b_idx)
    .bind(&b_name)
    .bind(&b_state)
    .bind(&b_attempts)
    .bind(&b_output)
    .bind(&b_error)
    .bind(&b_done)
    .bind_events(&events)
    .fetch_all(&mut *conn)
    .await
    .map_err(db_err)?;
    let applied: HashSet<Uuid> = applied.into_iter().collect();
    for (up, positions) in updates {
        let outcome = if applied.contains(&up.id.0) {
            WriteOutcome::Updated
        } else {
            WriteOutcome::Fenced
        };
        for &pos in positions {
            outcomes[pos] = Some(outcome.clone());
        }
    }
    Ok(())
}

/// New events of several transactions as parallel arrays.
#[derive(Default)]
struct Events<'a> {
    tx: Vec<Uuid>,
    seq: Vec<i64>,
    at: Vec<DateTime<Utc>>,
    kind: Vec<&'a str>,
    branch: Vec<Option<i64>>,
    detail: Vec<&'a str>,
}

/// Binds an [`Events`]' arrays as the next six parameters of a statement.
trait BindEvents<'q> {
    fn bind_events(self, events: &'q Events<'_>) -> Self;
}

impl<'q> BindEvents<'q> for QueryScalar<'q, Postgres, Uuid, PgArguments> {
    fn bind_events(self, events: &'q Events<'_>) -> Self {
        self.bind(&events.tx)
            .bind(&events.seq)
            .bind(&events.at)
            .bind(&events.kind)
            .bind(&events.branch)
            .bind(&events.detail)
    }
}

impl<'a> Events<'a> {
    fn extend(&mut self, id: TxId, events: &'a [super::super::NewEvent]) {
        for e in events {
            self.tx.push(id.0);
            self.seq.push(to_i64(e.seq));
            self.at.push(e.at);
            self.kind.push(e.kind.as_str());
            self.branch.push(e.branch.map(i64::from));
            self.detail.push(e.detail.as_str());
        }
    }
}

fn encode_err(e: serde_json::Error) -> StoreError {
    StoreError::Database(sqlx::Error::Encode(Box::new(e)))
}

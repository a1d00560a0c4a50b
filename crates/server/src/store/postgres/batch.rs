//! A group-commit batch as one statement: every new transaction and every update of the batch,
//! with the rows bound as arrays and spread by `UNNEST`.
//!
//! Statements per batch are what bound the log writer: a batch of 40 writes applied one
//! statement at a time costs 40 round trips and 40 executor start-ups inside one database
//! transaction. The set form costs one round trip and one commit, whatever the batch size, and
//! being one statement it needs no BEGIN and COMMIT round trips either.
//!
//! It requires each transaction to appear once in the statement. Updates of one transaction queued
//! back to back are folded into one ([`TxUpdate::absorb`]), which applies the same rows; a batch
//! that cannot be planned that way (a create and an update of one transaction, or updates that do
//! not follow each other) returns `None` and is applied one write at a time instead.
//!
//! The statement runs on the writers' connections with PostgreSQL's default plan caching, so
//! after five runs it keeps a generic plan, usually made while a new database is nearly
//! empty. It is written so that plan reaches existing rows by key whatever the table's size.
//! Where it joins a table to an `UNNEST` it reads the `UNNEST` through
//! `LIMIT cardinality(…)`, which keeps every row but makes the planner expect one. A nested loop
//! over the primary key is then the cheapest plan even for an empty table, and it stays right as
//! the table grows. Without the `LIMIT`, the join over a near-empty table was planned as a hash
//! join over a sequential scan, and every later write read the whole table.

use std::collections::{HashMap, HashSet};
use std::sync::LazyLock;

use chrono::{DateTime, Utc};
use sqlx::PgConnection;
use uuid::Uuid;

use super::super::{db_err, to_i64, LogWrite, NewTx, StoreError, TxUpdate, WriteOutcome};
use super::branches;
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

/// Applies a planned batch as one statement, atomic by itself (no BEGIN and COMMIT round trips
/// around it), then looks up the transactions that duplicate idempotency keys name.
pub(super) async fn apply(
    conn: &mut PgConnection,
    plan: Plan<'_>,
    outcomes: &mut [Option<WriteOutcome>],
) -> Result<(), StoreError> {
    let mut creates = Creates::default();
    for (_, new) in &plan.creates {
        creates.push(new)?;
    }
    let mut updates = Updates::default();
    for (up, _) in &plan.updates {
        updates.push(up)?;
    }
    let mut events = Events::default();
    for (_, new) in &plan.creates {
        events.extend(new.id, &new.events)?;
    }
    for (up, _) in &plan.updates {
        events.extend(up.id, &up.events)?;
    }
    // A batch of one write (always so under light load) binds its values as they are: no
    // `UNNEST` to read, no join to make. A batch of one kind takes a statement without the other
    // kind's parts: fewer parameters to bind and fewer sub-statements to start.
    let one_run = events.run_tx.len() == 1;
    let query = match (plan.creates.len(), plan.updates.len()) {
        (1, 0) if one_run && creates.key[0].is_none() => create_one(&creates, &events),
        (0, 1) if one_run && updates.d_tx.is_empty() => update_one(&updates, &events),
        (_, 0) => bind_events(
            bind_creates(sqlx::query_as(CREATES.as_str()), &creates),
            &events,
        ),
        (0, _) => bind_events(
            bind_updates(sqlx::query_as(UPDATES.as_str()), &updates),
            &events,
        ),
        _ => bind_events(
            bind_updates(
                bind_creates(sqlx::query_as(MIXED.as_str()), &creates),
                &updates,
            ),
            &events,
        ),
    };
    let written: Vec<(Uuid, bool)> = query.fetch_all(&mut *conn).await.map_err(db_err)?;
    let created: HashSet<Uuid> = written.iter().filter(|w| w.1).map(|w| w.0).collect();
    let updated: HashSet<Uuid> = written.iter().filter(|w| !w.1).map(|w| w.0).collect();
    for (up, positions) in &plan.updates {
        let outcome = if updated.contains(&up.id.0) {
            WriteOutcome::Updated
        } else {
            WriteOutcome::Fenced
        };
        for &pos in positions {
            outcomes[pos] = Some(outcome.clone());
        }
    }
    let mut missing: Vec<&str> = Vec::new();
    for &(pos, new) in &plan.creates {
        if created.contains(&new.id.0) {
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
    for &(pos, new) in &plan.creates {
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

/// `$first::type[], …` for one `UNNEST` of parallel arrays.
fn arrays(first: usize, types: &[&str]) -> String {
    let list: Vec<String> = types
        .iter()
        .enumerate()
        .map(|(i, t)| format!("${}::{t}[]", first + i))
        .collect();
    list.join(", ")
}

/// The parts of the batch statements, each given the number of its first parameter.
fn created(first: usize) -> String {
    let arrays = arrays(
        first,
        &[
            "uuid",
            "text",
            "text",
            "text",
            "text",
            "text",
            "text",
            "bigint",
            "timestamptz",
            "bigint",
            "timestamptz",
        ],
    );
    // A key-less transaction is inserted plainly. Only one with an idempotency key needs
    // `ON CONFLICT`, whose speculative insertion writes a second WAL record per row (the
    // confirmation) and takes a speculative lock, so the two are split.
    let insert = |keyed: bool| {
        format!(
            "INSERT INTO baton_transactions
                (id, kind, state, labels, idempotency_key, owner, epoch, deadline_at, last_seq,
                 created_at, updated_at)
            SELECT i.id, i.kind, i.state, i.labels::jsonb, i.key, i.owner, i.epoch,
                   i.deadline_at, i.last_seq, i.created_at, i.created_at
            FROM UNNEST({arrays})
                AS i(id, kind, state, definition, labels, key, owner, epoch, deadline_at,
                     last_seq, created_at)
            WHERE i.key IS {not} NULL
            {conflict}
            RETURNING id, owner, epoch",
            not = if keyed { "NOT" } else { "" },
            conflict = if keyed {
                "ON CONFLICT (idempotency_key) WHERE idempotency_key IS NOT NULL DO NOTHING"
            } else {
                ""
            },
        )
    };
    format!(
        "created_plain AS ({plain}), created_keyed AS ({keyed}),
        created AS (SELECT * FROM created_plain UNION ALL SELECT * FROM created_keyed),
        defined AS (
            INSERT INTO baton_definitions (tx_id, definition)
            SELECT d.id, d.definition
            FROM UNNEST(${id}::uuid[], ${definition}::text[]) AS d(id, definition)
            WHERE d.id IN (SELECT id FROM created)
        )",
        plain = insert(false),
        keyed = insert(true),
        id = first,
        definition = first + 3,
    )
}

fn updated(first: usize) -> String {
    let arrays = arrays(
        first,
        &[
            "uuid", "text", "bigint", "bigint", "text", "bigint", "text", "bool", "bool", "bigint",
            "text",
        ],
    );
    // The changed branches are merged into the row's object by index (migration 0010); a write
    // that changes none leaves the column as it is, so a value stored out of line is not copied.
    format!(
        "updated AS (
            UPDATE baton_transactions t
            SET state = u.state, stage = u.stage, last_error = u.last_error,
                cancel_requested = u.cancel_requested,
                owner = CASE WHEN u.release THEN NULL ELSE t.owner END,
                last_seq = GREATEST(t.last_seq, u.max_seq), updated_at = now(),
                branches = CASE WHEN u.branches IS NULL THEN t.branches
                                ELSE coalesce(t.branches, '{{}}'::jsonb) || u.branches::jsonb END
            FROM (SELECT * FROM UNNEST({arrays})
                    AS u(id, owner, epoch, expected, state, stage, last_error,
                         cancel_requested, release, max_seq, branches)
                  LIMIT cardinality(${first}::uuid[])) AS u
            WHERE t.id = u.id AND t.owner = u.owner AND t.epoch = u.epoch
              AND t.last_seq = u.expected
            RETURNING t.id, u.owner, u.epoch
        )"
    )
}

/// Outputs and errors too long for the row ([`branches::INLINE_MAX`]), written whole with the
/// update that changes their branch. Rare: a batch without any binds empty arrays.
fn branch_data(first: usize) -> String {
    let arrays = arrays(first, &["uuid", "bigint", "bytea", "text"]);
    format!(
        "branch_data AS (
            INSERT INTO baton_branch_data (tx_id, idx, output, last_error)
            SELECT d.tx_id, d.idx, d.output, d.last_error
            FROM (SELECT * FROM UNNEST({arrays}) AS d(tx_id, idx, output, last_error)
                  LIMIT cardinality(${first}::uuid[])) AS d
            JOIN updated ON updated.id = d.tx_id
            ON CONFLICT (tx_id, idx) DO UPDATE
            SET output = excluded.output, last_error = excluded.last_error
        )"
    )
}

/// The events of the transactions in `written` (a relation of `id, owner, epoch`), one run row
/// per transaction (migration 0009): a batch holds one write of each, and a write's events are
/// consecutive ([`Events::extend`] checks it). The events are bound as four flat arrays and each
/// run as its transaction, first seq and the bounds of its slice of them, so that PostgreSQL
/// only slices, without grouping or sorting.
fn events(first: usize, written: &str) -> String {
    let runs = arrays(first + 4, &["uuid", "bigint", "int", "int"]);
    format!(
        "events AS (
            INSERT INTO baton_event_runs (tx_id, first_seq, at, kind, branch, detail, owner, epoch)
            SELECT r.tx_id, r.first_seq, (${at}::timestamptz[])[r.lo:r.hi],
                   (${kind}::text[])[r.lo:r.hi], (${branch}::bigint[])[r.lo:r.hi],
                   (${detail}::text[])[r.lo:r.hi], w.owner, w.epoch
            FROM UNNEST({runs}) AS r(tx_id, first_seq, lo, hi)
            JOIN {written} AS w ON w.id = r.tx_id
        )",
        at = first,
        kind = first + 1,
        branch = first + 2,
        detail = first + 3,
    )
}

/// The statement for a batch with new transactions and updates. The fenced UPDATE gates the
/// branch and event rows of updates: a transaction whose owner, epoch or history differ matches
/// no row, and the joins on `updated` then write nothing of it. A duplicate idempotency key
/// inserts nothing, and the joins on `created` then add no definition or event rows for it.
/// The definition goes to a table of its own, never updated (migration 0007). A branch's state
/// is written into the row when the branch first changes (pending ones are implied by the
/// definition). `plan` keeps every transaction to one of the two lists, so the sub-statements
/// never touch the same row. Parameters: creates from $1, updates from $12, branch data kept
/// apart from $23, events from $27.
static MIXED: LazyLock<String> = LazyLock::new(|| {
    format!(
        "WITH {}, {}, {}, {}
        SELECT id, true FROM created UNION ALL SELECT id, false FROM updated",
        created(1),
        updated(12),
        branch_data(23),
        events(
            27,
            "(SELECT id, owner, epoch FROM created UNION ALL SELECT id, owner, epoch FROM updated)"
        ),
    )
});

/// [`MIXED`] for new transactions only: creates from $1, events from $12.
static CREATES: LazyLock<String> = LazyLock::new(|| {
    format!(
        "WITH {}, {} SELECT id, true FROM created",
        created(1),
        events(12, "created")
    )
});

/// [`MIXED`] for updates only: updates from $1, branch data from $12, events from $16.
static UPDATES: LazyLock<String> = LazyLock::new(|| {
    format!(
        "WITH {}, {}, {} SELECT id, false FROM updated",
        updated(1),
        branch_data(12),
        events(16, "updated")
    )
});

/// [`CREATES`] for a batch of one key-less transaction with one event run, its values bound as
/// they are. Without an `ON CONFLICT` the inserts either all happen or fail the statement, so the
/// definition and the run need no join to the transaction's insert.
const CREATE_ONE: &str = "WITH created AS (
        INSERT INTO baton_transactions
            (id, kind, state, labels, owner, epoch, deadline_at, last_seq, created_at, updated_at)
        VALUES ($1, $2, $3, $4::jsonb, $5, $6, $7, $8, $9, $9)
        RETURNING id
    ), defined AS (
        INSERT INTO baton_definitions (tx_id, definition) VALUES ($1, $10)
    ), events AS (
        INSERT INTO baton_event_runs (tx_id, first_seq, at, kind, branch, detail, owner, epoch)
        VALUES ($1, $11, $12, $13, $14, $15, $5, $6)
    )
    SELECT id, true FROM created";

/// [`UPDATES`] for a batch of one update with one event run and no branch data kept apart, its
/// values bound as they are; the run is written only if the fenced update matched.
const UPDATE_ONE: &str = "WITH updated AS (
        UPDATE baton_transactions t
        SET state = $5, stage = $6, last_error = $7, cancel_requested = $8,
            owner = CASE WHEN $9 THEN NULL ELSE t.owner END,
            last_seq = GREATEST(t.last_seq, $10), updated_at = now(),
            branches = CASE WHEN $11::text IS NULL THEN t.branches
                            ELSE coalesce(t.branches, '{}'::jsonb) || $11::jsonb END
        WHERE t.id = $1 AND t.owner = $2 AND t.epoch = $3 AND t.last_seq = $4
        RETURNING t.id
    ), events AS (
        INSERT INTO baton_event_runs (tx_id, first_seq, at, kind, branch, detail, owner, epoch)
        SELECT id, $12, $13, $14, $15, $16, $2, $3 FROM updated
    )
    SELECT id, false FROM updated";

fn create_one<'q>(c: &'q Creates<'_>, e: &'q Events<'_>) -> Written<'q> {
    sqlx::query_as(CREATE_ONE)
        .bind(c.id[0])
        .bind(c.kind[0])
        .bind(c.state[0])
        .bind(&c.labels[0])
        .bind(c.owner[0])
        .bind(c.epoch[0])
        .bind(c.deadline[0])
        .bind(c.last_seq[0])
        .bind(c.created[0])
        .bind(&c.definition[0])
        .bind(e.run_first[0])
        .bind(&e.at)
        .bind(&e.kind)
        .bind(&e.branch)
        .bind(&e.detail)
}

fn update_one<'q>(u: &'q Updates<'_>, e: &'q Events<'_>) -> Written<'q> {
    sqlx::query_as(UPDATE_ONE)
        .bind(u.id[0])
        .bind(u.owner[0])
        .bind(u.epoch[0])
        .bind(u.expected[0])
        .bind(u.state[0])
        .bind(u.stage[0])
        .bind(u.last_error[0])
        .bind(u.cancel[0])
        .bind(u.release[0])
        .bind(u.max_seq[0])
        .bind(&u.branches[0])
        .bind(e.run_first[0])
        .bind(&e.at)
        .bind(&e.kind)
        .bind(&e.branch)
        .bind(&e.detail)
}

type Written<'q> =
    sqlx::query::QueryAs<'q, sqlx::Postgres, (Uuid, bool), sqlx::postgres::PgArguments>;

fn bind_creates<'q>(query: Written<'q>, c: &'q Creates<'_>) -> Written<'q> {
    query
        .bind(&c.id)
        .bind(&c.kind)
        .bind(&c.state)
        .bind(&c.definition)
        .bind(&c.labels)
        .bind(&c.key)
        .bind(&c.owner)
        .bind(&c.epoch)
        .bind(&c.deadline)
        .bind(&c.last_seq)
        .bind(&c.created)
}

fn bind_updates<'q>(query: Written<'q>, u: &'q Updates<'_>) -> Written<'q> {
    query
        .bind(&u.id)
        .bind(&u.owner)
        .bind(&u.epoch)
        .bind(&u.expected)
        .bind(&u.state)
        .bind(&u.stage)
        .bind(&u.last_error)
        .bind(&u.cancel)
        .bind(&u.release)
        .bind(&u.max_seq)
        .bind(&u.branches)
        .bind(&u.d_tx)
        .bind(&u.d_idx)
        .bind(&u.d_output)
        .bind(&u.d_error)
}

fn bind_events<'q>(query: Written<'q>, e: &'q Events<'_>) -> Written<'q> {
    query
        .bind(&e.at)
        .bind(&e.kind)
        .bind(&e.branch)
        .bind(&e.detail)
        .bind(&e.run_tx)
        .bind(&e.run_first)
        .bind(&e.run_lo)
        .bind(&e.run_hi)
}

/// New transactions as parallel arrays.
#[derive(Default)]
struct Creates<'a> {
    id: Vec<Uuid>,
    kind: Vec<&'a str>,
    state: Vec<&'a str>,
    definition: Vec<String>,
    labels: Vec<String>,
    key: Vec<Option<&'a str>>,
    owner: Vec<&'a str>,
    epoch: Vec<i64>,
    deadline: Vec<Option<DateTime<Utc>>>,
    last_seq: Vec<i64>,
    created: Vec<DateTime<Utc>>,
}

impl<'a> Creates<'a> {
    fn push(&mut self, new: &'a NewTx) -> Result<(), StoreError> {
        self.id.push(new.id.0);
        self.kind.push(new.definition.kind().as_str());
        self.state.push(new.state.as_str());
        self.definition
            .push(serde_json::to_string(&new.definition).map_err(encode_err)?);
        self.labels
            .push(serde_json::to_string(&new.labels).map_err(encode_err)?);
        self.key.push(new.idempotency_key.as_deref());
        self.owner.push(new.owner.as_str());
        self.epoch.push(new.epoch);
        self.deadline.push(new.deadline_at);
        self.last_seq
            .push(to_i64(new.events.iter().map(|e| e.seq).max().unwrap_or(0)));
        self.created.push(new.created_at);
        Ok(())
    }
}

/// Folded updates, with their changed branches as one JSON object each, and the branch data
/// kept apart, as parallel arrays.
#[derive(Default)]
struct Updates<'a> {
    id: Vec<Uuid>,
    owner: Vec<&'a str>,
    epoch: Vec<i64>,
    expected: Vec<i64>,
    state: Vec<&'a str>,
    stage: Vec<i64>,
    last_error: Vec<Option<&'a str>>,
    cancel: Vec<bool>,
    release: Vec<bool>,
    max_seq: Vec<i64>,
    branches: Vec<Option<String>>,
    d_tx: Vec<Uuid>,
    d_idx: Vec<i64>,
    d_output: Vec<Option<&'a [u8]>>,
    d_error: Vec<Option<&'a str>>,
}

impl<'a> Updates<'a> {
    fn push(&mut self, up: &'a TxUpdate) -> Result<(), StoreError> {
        self.id.push(up.id.0);
        self.owner.push(up.owner.as_str());
        self.epoch.push(up.epoch);
        self.expected.push(to_i64(up.expected_last_seq));
        self.state.push(up.state.as_str());
        self.stage.push(i64::from(up.stage));
        self.last_error.push(up.last_error.as_deref());
        self.cancel.push(up.cancel_requested);
        self.release.push(up.release);
        self.max_seq
            .push(to_i64(up.events.iter().map(|e| e.seq).max().unwrap_or(0)));
        self.branches.push(branches::encode(&up.branches)?);
        for b in up.branches.iter().filter(|b| branches::apart(b)) {
            self.d_tx.push(up.id.0);
            self.d_idx.push(i64::from(b.index));
            self.d_output.push(b.output.as_deref());
            self.d_error.push(b.last_error.as_deref());
        }
        Ok(())
    }
}

/// New events of several transactions as parallel arrays.
#[derive(Default)]
struct Events<'a> {
    at: Vec<DateTime<Utc>>,
    kind: Vec<&'a str>,
    branch: Vec<Option<i64>>,
    detail: Vec<&'a str>,
    /// Per run: its transaction, first seq, and its slice of the arrays above (1-based, both
    /// ends included, as PostgreSQL slices).
    run_tx: Vec<Uuid>,
    run_first: Vec<i64>,
    run_lo: Vec<i32>,
    run_hi: Vec<i32>,
}

impl<'a> Events<'a> {
    /// Adds the events of one write of transaction `id`; they must be consecutive, since their
    /// run stores only the first seq.
    fn extend(&mut self, id: TxId, events: &'a [super::super::NewEvent]) -> Result<(), StoreError> {
        if let Some(first) = events.first() {
            let consecutive = events
                .iter()
                .zip(first.seq..)
                .all(|(event, seq)| event.seq == seq);
            if !consecutive {
                return Err(StoreError::Corrupt {
                    table: "baton_event_runs",
                    detail: format!(
                        "transaction {id}: a write's events are not consecutive ({:?})",
                        events.iter().map(|e| e.seq).collect::<Vec<_>>()
                    ),
                });
            }
        }
        let Some(first) = events.first() else {
            return Ok(());
        };
        let slice_bound = |n: usize| {
            i32::try_from(n).map_err(|_| StoreError::Corrupt {
                table: "baton_event_runs",
                detail: format!("a batch of more than {} events", i32::MAX),
            })
        };
        self.run_tx.push(id.0);
        self.run_first.push(to_i64(first.seq));
        self.run_lo.push(slice_bound(self.kind.len() + 1)?);
        for e in events {
            self.at.push(e.at);
            self.kind.push(e.kind.as_str());
            self.branch.push(e.branch.map(i64::from));
            self.detail.push(e.detail.as_str());
        }
        self.run_hi.push(slice_bound(self.kind.len())?);
        Ok(())
    }
}

fn encode_err(e: serde_json::Error) -> StoreError {
    StoreError::Database(sqlx::Error::Encode(Box::new(e)))
}

-- Baton's log for the embedded store: the PostgreSQL schema, with ids as canonical lowercase uuid
-- text (which sorts like the uuid), JSON as text, booleans as 0/1 and times as unix milliseconds.

CREATE TABLE baton_transactions (
    id               TEXT    PRIMARY KEY NOT NULL,
    kind             TEXT    NOT NULL,
    state            TEXT    NOT NULL,
    definition       TEXT    NOT NULL,
    labels           TEXT    NOT NULL DEFAULT '{}',
    idempotency_key  TEXT    UNIQUE,
    owner            TEXT,
    epoch            INTEGER NOT NULL DEFAULT 0,
    stage            INTEGER NOT NULL DEFAULT 0,
    last_error       TEXT,
    cancel_requested INTEGER NOT NULL DEFAULT 0,
    deadline_at      INTEGER,
    next_wake_at     INTEGER,
    last_seq         INTEGER NOT NULL DEFAULT 0,
    created_at       INTEGER NOT NULL,
    updated_at       INTEGER NOT NULL
);

-- Claiming and counting what a coordinator owns only ever look at unfinished transactions.
CREATE INDEX baton_transactions_unfinished ON baton_transactions (owner, id)
    WHERE state NOT IN ('committed', 'compensated', 'aborted', 'failed');
CREATE INDEX baton_transactions_state ON baton_transactions (state, id);
CREATE INDEX baton_transactions_created ON baton_transactions (created_at, id);

CREATE TABLE baton_branches (
    tx_id      TEXT    NOT NULL REFERENCES baton_transactions (id) ON DELETE CASCADE,
    idx        INTEGER NOT NULL,
    name       TEXT    NOT NULL,
    state      TEXT    NOT NULL,
    attempts   INTEGER NOT NULL DEFAULT 0,
    output     BLOB,
    last_error TEXT,
    done_order INTEGER,
    PRIMARY KEY (tx_id, idx)
);

CREATE TABLE baton_events (
    tx_id  TEXT    NOT NULL REFERENCES baton_transactions (id) ON DELETE CASCADE,
    seq    INTEGER NOT NULL,
    at     INTEGER NOT NULL,
    kind   TEXT    NOT NULL,
    branch INTEGER,
    detail TEXT    NOT NULL DEFAULT '',
    PRIMARY KEY (tx_id, seq)
);

CREATE TABLE baton_participants (
    service    TEXT    NOT NULL,
    endpoint   TEXT    NOT NULL,
    weight     INTEGER NOT NULL DEFAULT 1,
    zone       TEXT    NOT NULL DEFAULT '',
    expires_at INTEGER,
    PRIMARY KEY (service, endpoint)
);

CREATE TABLE baton_coordinators (
    id           TEXT    PRIMARY KEY NOT NULL,
    address      TEXT    NOT NULL,
    started_at   INTEGER NOT NULL,
    heartbeat_at INTEGER NOT NULL,
    version      TEXT    NOT NULL
);

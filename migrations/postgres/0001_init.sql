-- Baton's log: transactions, their branches and history, the participant registry and the
-- coordinators sharing the database.

CREATE TABLE baton_transactions (
    id               uuid        PRIMARY KEY,
    kind             text        NOT NULL,
    state            text        NOT NULL,
    definition       jsonb       NOT NULL,
    labels           jsonb       NOT NULL DEFAULT '{}',
    idempotency_key  text        UNIQUE,
    owner            text,
    epoch            bigint      NOT NULL DEFAULT 0,
    stage            bigint      NOT NULL DEFAULT 0,
    last_error       text,
    cancel_requested boolean     NOT NULL DEFAULT false,
    deadline_at      timestamptz,
    next_wake_at     timestamptz,
    last_seq         bigint      NOT NULL DEFAULT 0,
    created_at       timestamptz NOT NULL DEFAULT now(),
    updated_at       timestamptz NOT NULL DEFAULT now()
);

-- Claiming and counting what a coordinator owns only ever look at unfinished transactions, which
-- stay few while finished ones pile up until the retention sweep.
CREATE INDEX baton_transactions_unfinished ON baton_transactions (owner, id)
    WHERE state NOT IN ('committed', 'compensated', 'aborted', 'failed');
-- Listing is newest first by id; these serve the state and time-range filters.
CREATE INDEX baton_transactions_state ON baton_transactions (state, id);
CREATE INDEX baton_transactions_created ON baton_transactions (created_at, id);
CREATE INDEX baton_transactions_labels ON baton_transactions USING gin (labels jsonb_path_ops);

CREATE TABLE baton_branches (
    tx_id      uuid   NOT NULL REFERENCES baton_transactions (id) ON DELETE CASCADE,
    idx        bigint NOT NULL,
    name       text   NOT NULL,
    state      text   NOT NULL,
    attempts   bigint NOT NULL DEFAULT 0,
    output     bytea,
    last_error text,
    done_order bigint,
    PRIMARY KEY (tx_id, idx)
);

CREATE TABLE baton_events (
    tx_id  uuid        NOT NULL REFERENCES baton_transactions (id) ON DELETE CASCADE,
    seq    bigint      NOT NULL,
    at     timestamptz NOT NULL,
    kind   text        NOT NULL,
    branch bigint,
    detail text        NOT NULL DEFAULT '',
    PRIMARY KEY (tx_id, seq)
);

CREATE TABLE baton_participants (
    service    text        NOT NULL,
    endpoint   text        NOT NULL,
    weight     bigint      NOT NULL DEFAULT 1,
    zone       text        NOT NULL DEFAULT '',
    expires_at timestamptz,
    PRIMARY KEY (service, endpoint)
);

CREATE TABLE baton_coordinators (
    id           text        PRIMARY KEY,
    address      text        NOT NULL,
    started_at   timestamptz NOT NULL DEFAULT now(),
    heartbeat_at timestamptz NOT NULL DEFAULT now(),
    version      text        NOT NULL
);

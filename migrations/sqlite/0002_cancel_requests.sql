-- Cancel requests for transactions driven by another coordinator (see the Postgres migration).
CREATE TABLE baton_cancel_requests (
    tx_id        TEXT    PRIMARY KEY REFERENCES baton_transactions (id) ON DELETE CASCADE,
    reason       TEXT    NOT NULL,
    requested_at INTEGER NOT NULL
);

-- A transaction's history, stored as runs: one row holds the events one log write appended for
-- one transaction, consecutive from `first_seq`, as parallel arrays. A W1 saga's five events
-- took five rows and five primary-key entries (about 1.2 kB of WAL, a third of the saga's);
-- as two runs (accepted; the three answers and the outcome) they take two of each
-- (docs/BENCHMARKS.md, "Log volume"). Reading a page of history unnests the runs that hold it.
-- Like baton_events before it, the table has no foreign key: runs are inserted only joined to
-- the transaction row their statement inserted or updated under its fence, and the retention
-- sweep deletes them with their transaction. Existing events become runs of one. Coordinators
-- of earlier versions cannot share a database migrated this far.
CREATE TABLE baton_event_runs (
    tx_id     uuid          NOT NULL,
    first_seq bigint        NOT NULL,
    at        timestamptz[] NOT NULL,
    kind      text[]        NOT NULL,
    branch    bigint[]      NOT NULL,
    detail    text[]        NOT NULL,
    -- The coordinator that wrote the run, and under which epoch of the transaction.
    owner     text,
    epoch     bigint,
    PRIMARY KEY (tx_id, first_seq),
    CHECK (cardinality(kind) > 0 AND cardinality(at) = cardinality(kind)
           AND cardinality(branch) = cardinality(kind) AND cardinality(detail) = cardinality(kind))
);
INSERT INTO baton_event_runs (tx_id, first_seq, at, kind, branch, detail, owner, epoch)
    SELECT tx_id, seq, ARRAY[at], ARRAY[kind], ARRAY[branch], ARRAY[detail], owner, epoch
    FROM baton_events;
DROP TABLE baton_events;

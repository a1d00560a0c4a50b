-- A transaction's definition is written once and never changes, but it lived in the row that
-- every log write rewrites: PostgreSQL copies the whole row on UPDATE, and a definition under
-- about 2 kB is stored inside it (not TOASTed), so each fenced update of a W1 saga copied its
-- 1.3 kB definition into the heap and the WAL again. Kept in a table of its own, an update
-- copies a row of about 200 bytes (docs/BENCHMARKS.md, session 7). Like branches and events
-- (migration 0005), definitions have no foreign key: the log writes insert one only joined to
-- the transaction row the same statement inserted, and the retention sweep deletes it with its
-- transaction. The definition is kept as the JSON text the coordinator wrote (cast it to jsonb
-- to query it): PostgreSQL no longer parses it on every insert (jsonb_in was about 8 % of the
-- log writer backend's CPU samples) nor prints it on every read; the coordinator checks it when
-- it reads it back. Coordinators of earlier versions cannot share a database migrated this far.
CREATE TABLE baton_definitions (
    tx_id      uuid PRIMARY KEY,
    definition text NOT NULL
);
INSERT INTO baton_definitions (tx_id, definition)
    SELECT id, definition::text FROM baton_transactions;
ALTER TABLE baton_transactions DROP COLUMN definition;

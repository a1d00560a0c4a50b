-- Fewer index entries per transaction. A saga's outcome changes `state`, so its update is never
-- HOT and adds an entry to every index of the table; with the insert, each index costs a
-- committed saga two entries. Two indexes are dropped for that reason (docs/BENCHMARKS.md, "Log
-- volume"):
--
-- `(created_at, id)`: transaction ids are UUIDv7, taken from the accepting coordinator's clock
-- at the moment `created_at` is, so an id range selects a time range. The list query bounds
-- `id` from its `created_at` filter (with an hour of slack either side) and keeps the exact
-- `created_at` test; the primary key serves both the range and the newest-first order.
--
-- `(state, id)`: unfinished states are served by `baton_transactions_unfinished`, whose
-- predicate a filter on them implies. `committed`, where most rows end, is served by walking
-- the primary key newest first. The other final states get a partial index of their own, which
-- a committed saga never enters.
DROP INDEX IF EXISTS baton_transactions_created;
DROP INDEX IF EXISTS baton_transactions_state;
CREATE INDEX IF NOT EXISTS baton_transactions_ended_otherwise ON baton_transactions (state, id)
    WHERE state IN ('compensated', 'aborted', 'failed');

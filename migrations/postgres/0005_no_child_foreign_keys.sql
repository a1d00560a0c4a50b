-- Branch and event rows no longer carry foreign keys to their transaction. Each key cost every
-- inserted row a trigger that looked the transaction up and locked it FOR KEY SHARE: about a
-- quarter of the database time of a saga's two log writes (docs/BENCHMARKS.md, session 4). The
-- log writes add these rows only joined to the transaction row the same statement inserted or
-- updated under its fence, so none can be orphaned by them; the retention sweep deletes them
-- with their transaction in one statement. Cancel requests keep theirs: they are rare.
ALTER TABLE baton_branches DROP CONSTRAINT IF EXISTS baton_branches_tx_id_fkey;
ALTER TABLE baton_events DROP CONSTRAINT IF EXISTS baton_events_tx_id_fkey;

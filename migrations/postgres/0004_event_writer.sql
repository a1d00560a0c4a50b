-- Which coordinator wrote each event, and under which epoch of the transaction: an operator sees
-- who drove each step, and the fault tests check that no epoch of a transaction has events from
-- two owners. Empty for events written before this migration.
ALTER TABLE baton_events ADD COLUMN owner text, ADD COLUMN epoch bigint;

-- Most transactions carry no idempotency key and no labels, yet every insert and every
-- non-HOT update (a saga's outcome changes `state`, so none is HOT) added an entry to both
-- indexes: a NULL key to the unique index and an empty object to the GIN index. Index only the
-- rows that have one. Lookups by key (`=`) imply `IS NOT NULL` and use the partial index as
-- before; the list query adds `labels <> '{}'` to a label filter, which any non-empty
-- containment filter implies, so that it can use the partial GIN index.
ALTER TABLE baton_transactions DROP CONSTRAINT IF EXISTS baton_transactions_idempotency_key_key;
CREATE UNIQUE INDEX IF NOT EXISTS baton_transactions_idempotency_key
    ON baton_transactions (idempotency_key) WHERE idempotency_key IS NOT NULL;
DROP INDEX IF EXISTS baton_transactions_labels;
CREATE INDEX baton_transactions_labels ON baton_transactions
    USING gin (labels jsonb_path_ops) WHERE labels <> '{}'::jsonb;

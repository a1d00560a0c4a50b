-- The retention sweep finds finished transactions by how long ago they ended (their last
-- update). Only final states are indexed: `failed` waits for an operator and is never purged,
-- and unfinished rows change too often to be worth indexing here.
CREATE INDEX baton_transactions_finished ON baton_transactions (updated_at)
    WHERE state IN ('committed', 'compensated', 'aborted');

-- The retention sweep's index (see the PostgreSQL migration).
CREATE INDEX baton_transactions_finished ON baton_transactions (updated_at)
    WHERE state IN ('committed', 'compensated', 'aborted');

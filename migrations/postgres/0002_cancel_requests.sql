-- Cancel requests for transactions driven by another coordinator: any coordinator records one,
-- the owner picks it up on its next claim tick and forgets it once acted on.
CREATE TABLE baton_cancel_requests (
    tx_id        uuid        PRIMARY KEY REFERENCES baton_transactions (id) ON DELETE CASCADE,
    reason       text        NOT NULL,
    requested_at timestamptz NOT NULL DEFAULT now()
);

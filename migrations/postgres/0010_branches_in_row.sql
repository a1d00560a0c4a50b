-- A transaction's branch states move into its own row, as a JSON object keyed by branch index.
-- A W1 saga wrote three branch rows with their primary-key entries at its outcome (about 610
-- bytes of WAL, a fifth of the saga's), and the log statement probed the branch table twice per
-- branch to update or insert them; in the row they cost one merge into the update the outcome
-- writes anyway (docs/BENCHMARKS.md, "Log volume"). An output or error longer than 256 bytes
-- stays out of the row, in baton_branch_data, so that a transaction with large outputs does not
-- copy them into every later version of its row; its entry says "apart". Like the other child
-- tables, baton_branch_data has no foreign key and is deleted with its transaction by the
-- retention sweep. Coordinators of earlier versions cannot share a database migrated this far.
ALTER TABLE baton_transactions ADD COLUMN branches jsonb;

CREATE TABLE baton_branch_data (
    tx_id      uuid   NOT NULL,
    idx        bigint NOT NULL,
    output     bytea,
    last_error text,
    PRIMARY KEY (tx_id, idx)
);

CREATE TEMPORARY TABLE branches_split ON COMMIT DROP AS
    SELECT *, coalesce(octet_length(output) > 256 OR octet_length(last_error) > 256, false)
              AS apart
    FROM baton_branches;

INSERT INTO baton_branch_data (tx_id, idx, output, last_error)
    SELECT tx_id, idx, output, last_error FROM branches_split WHERE apart;

UPDATE baton_transactions t SET branches = b.branches
FROM (
    SELECT tx_id, jsonb_object_agg(idx::text, jsonb_strip_nulls(jsonb_build_object(
        'name', name,
        'state', state,
        'attempts', attempts,
        'done_order', done_order,
        'output', CASE WHEN NOT apart THEN translate(encode(output, 'base64'), E'\n', '') END,
        'last_error', CASE WHEN NOT apart THEN last_error END,
        'apart', CASE WHEN apart THEN true END))) AS branches
    FROM branches_split
    GROUP BY tx_id
) b
WHERE t.id = b.tx_id;

DROP TABLE baton_branches;

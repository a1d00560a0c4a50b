-- How many transactions each coordinator drives, published with its heartbeat (see the
-- PostgreSQL migration).
ALTER TABLE baton_coordinators ADD COLUMN driving INTEGER NOT NULL DEFAULT 0;

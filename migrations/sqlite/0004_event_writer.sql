-- Which coordinator wrote each event, and under which epoch (see the PostgreSQL migration).
ALTER TABLE baton_events ADD COLUMN owner TEXT;
ALTER TABLE baton_events ADD COLUMN epoch INTEGER;

-- Each coordinator publishes with its heartbeat how many transactions it drives, and
-- `ListCoordinators` reads that number instead of counting the coordinator's range of the
-- unfinished index. That count read every entry of the range, including the dead one a
-- finished transaction leaves there until a vacuum, so on a busy table (or with a snapshot held
-- open elsewhere) it cost what the old claim did, each time the console's coordinators page
-- refreshed (docs/NOTES.md, "The tick's claim reads only what it may take"). A coordinator of an
-- earlier version that is already running when this is applied keeps working (its heartbeats
-- leave the column at 0, so it is listed as driving nothing); like every migration, it makes
-- earlier versions refuse to start on the database.
ALTER TABLE baton_coordinators ADD COLUMN driving bigint NOT NULL DEFAULT 0;

-- A heartbeat updates its job's read-model rows in place (a HOT update), touching no index.
--
-- PostgreSQL can update a row without adding entries to the table's indexes when no indexed
-- column changes and the new version fits on the same page. A heartbeat, nearly every event
-- the service receives, changes a running job's updated_at, last_position and counters; its
-- status, created_at and run_id stay the same. Two things stood in the way:
--
-- * job_status_updated_at_idx (0003): updated_at changes with every event, so every update of
--   job_status wrote a new entry into each of its five indexes. The watchdog that used it now
--   finds live jobs through job_status_status_created_at_job_id_idx (status is its first
--   column) and sorts the few live ones by updated_at itself.
-- * Full pages: at the default fillfactor of 100 a page has no room for a row's new version,
--   so the update moves it to another page and indexes it again. A quarter of each page is
--   now kept free for that; pruning reclaims the dead versions as the page fills up.
--
-- Measured with pg_stat_statements under make bench's load (heartbeats that keep their job's
-- run id, as the workflow's do): job_status's upsert 19.8 -> 7.7 us an event, job_heartbeat's
-- 5.5 -> 4.3 us. A rebuild copies these storage options to the tables it swaps in
-- (projections/replay.py).

DROP INDEX job_status_updated_at_idx;
ALTER TABLE job_status SET (fillfactor = 75);
ALTER TABLE job_heartbeat SET (fillfactor = 75);

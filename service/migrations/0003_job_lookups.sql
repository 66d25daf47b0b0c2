-- Lookups beside the job_status projection's primary key.
--
-- Index names are the ones PostgreSQL would generate (see 0002): a rebuild renames the copy's
-- indexes by replacing the table name prefix.

-- A native GitHub delivery finds the job whose callbacks carried its run id.
CREATE INDEX job_status_run_id_idx ON job_status (run_id);

-- The watchdog looks for live jobs silent for longer than the timeout.
CREATE INDEX job_status_updated_at_idx ON job_status (updated_at)
    WHERE status IN ('queued', 'provisioning', 'running');

-- name: try_lock_replay --
SELECT pg_try_advisory_lock($1)

-- name: unlock_replay --
SELECT pg_advisory_unlock($1)

-- name: table_indexes --
SELECT indexname FROM pg_indexes WHERE schemaname = current_schema() AND tablename = $1

-- name: table_options --
-- A table's storage parameters (fillfactor=75, ...), which CREATE TABLE ... LIKE leaves behind.
SELECT c.reloptions
  FROM pg_class c
  JOIN pg_namespace n ON n.oid = c.relnamespace
 WHERE n.nspname = current_schema() AND c.relname = $1

-- name: lock_log --
-- The first statement of an audit's REPEATABLE READ transaction, before its snapshot is taken:
-- no month can be detached from the log (jobtrail archive) once the snapshot sees it attached.
LOCK TABLE events IN ACCESS SHARE MODE

-- name: read_checkpoints --
SELECT name, position, updated_at FROM projection_checkpoints ORDER BY name

-- name: get_job --
-- A job as the API shows it: its job_status row, its heartbeat, and whether it is stale (live,
-- and its last heartbeat or, without one, its last event older than the threshold).
-- $1 terminal statuses, $2 stale threshold, $3 job id.
SELECT s.*, h.last_heartbeat_at, coalesce(h.heartbeat_count, 0) AS heartbeat_count,
       (s.status <> ALL($1::text[])
        AND coalesce(h.last_heartbeat_at, s.updated_at) < $2::timestamptz) AS stale
  FROM job_status s
  LEFT JOIN job_heartbeat h USING (job_id)
 WHERE s.job_id = $3::text

-- name: list_jobs --
-- A page of jobs as get_job shows them, newest created first, optionally filtered.
-- $1 terminal statuses, $2 stale threshold, $3 status or null, $4 stale or null,
-- $5 and $6 keyset cursor (created_at and job_id of the previous page's last job) or null,
-- $7 limit.
SELECT *
  FROM (SELECT s.*, h.last_heartbeat_at, coalesce(h.heartbeat_count, 0) AS heartbeat_count,
               (s.status <> ALL($1::text[])
                AND coalesce(h.last_heartbeat_at, s.updated_at) < $2::timestamptz) AS stale
          FROM job_status s
          LEFT JOIN job_heartbeat h USING (job_id)) AS job
 WHERE ($3::text IS NULL OR status = $3::text)
   AND ($4::boolean IS NULL OR stale = $4::boolean)
   AND ($5::timestamptz IS NULL OR (created_at, job_id) < ($5::timestamptz, $6::text))
 ORDER BY created_at DESC, job_id DESC
 LIMIT $7

-- name: job_for_run --
SELECT job_id FROM job_status WHERE run_id = $1 ORDER BY created_at, job_id LIMIT 1

-- name: silent_jobs --
-- Live jobs whose last event is older than $1, oldest first; event_count is the version of the
-- job's stream the projection has seen.
SELECT job_id, updated_at, event_count
  FROM job_status
 WHERE status IN ('queued', 'provisioning', 'running')
   AND updated_at < $1
 ORDER BY updated_at
 LIMIT $2

-- name: jobs_changed_after --
-- Jobs as get_job shows them whose last applied event is after $3, in the order of that
-- position, $4 at most: the live stream's rounds and its resume. Complete: the projector applies
-- events in position order, rows and checkpoint in one transaction, so a job that changes later
-- gets a last_position above every one visible now.
-- $1 terminal statuses, $2 stale threshold, $3 position, $4 limit.
SELECT s.*, h.last_heartbeat_at, coalesce(h.heartbeat_count, 0) AS heartbeat_count,
       (s.status <> ALL($1::text[])
        AND coalesce(h.last_heartbeat_at, s.updated_at) < $2::timestamptz) AS stale
  FROM job_status s
  LEFT JOIN job_heartbeat h USING (job_id)
 WHERE s.last_position > $3::bigint
 ORDER BY s.last_position
 LIMIT $4

-- name: list_heartbeats --
-- Every job's last heartbeat, most recent first; stale as get_job says it.
-- $1 terminal statuses, $2 stale threshold, $3 stale or null.
SELECT *
  FROM (SELECT h.job_id, h.last_heartbeat_at, h.heartbeat_count,
               (s.status <> ALL($1::text[]) AND h.last_heartbeat_at < $2::timestamptz) AS stale
          FROM job_heartbeat h
          JOIN job_status s USING (job_id)) AS beat
 WHERE ($3::boolean IS NULL OR stale = $3::boolean)
 ORDER BY last_heartbeat_at DESC, job_id

-- name: projection_progress --
-- Each projection's checkpoint against the head of the log: how many events it has still to
-- apply and when the oldest of them was received.
SELECT c.name, c.position, c.updated_at, head.position AS head_position,
       (SELECT count(*) FROM events e WHERE e.position > c.position) AS lag_events,
       (SELECT e.received_at FROM events e WHERE e.position > c.position
         ORDER BY e.position LIMIT 1) AS oldest_unapplied_at
  FROM projection_checkpoints c
 CROSS JOIN (SELECT coalesce(max(position), 0) AS position FROM events) AS head
 ORDER BY c.name

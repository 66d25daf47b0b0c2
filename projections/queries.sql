-- name: lock_checkpoints --
-- Taken first in every projector batch and every rebuild: two projectors (or a projector and
-- a replay) never apply the same events, and each sees the other's committed checkpoint.
SELECT name, position
  FROM projection_checkpoints
 WHERE name = any($1::text[])
 ORDER BY name
   FOR UPDATE

-- name: save_checkpoints --
UPDATE projection_checkpoints c
   SET position = v.position, updated_at = now()
  FROM unnest($1::text[], $2::bigint[]) AS v(name, position)
 WHERE c.name = v.name

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

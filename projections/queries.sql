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

-- name: load_job_status --
SELECT job_id, status, created_at, updated_at, started_at, finished_at, run_id, run_attempt,
       agent_id, region, message, error, event_count, last_position, late_event_count
  FROM job_status
 WHERE job_id = any($1::text[])

-- name: upsert_job_status --
INSERT INTO job_status (job_id, status, created_at, updated_at, started_at, finished_at, run_id,
                        run_attempt, agent_id, region, message, error, event_count,
                        last_position, late_event_count)
SELECT *
  FROM unnest($1::text[], $2::text[], $3::timestamptz[], $4::timestamptz[], $5::timestamptz[],
              $6::timestamptz[], $7::bigint[], $8::bigint[], $9::text[], $10::text[],
              $11::text[], $12::text[], $13::bigint[], $14::bigint[], $15::bigint[])
    ON CONFLICT (job_id) DO UPDATE
   SET status = excluded.status,
       created_at = excluded.created_at,
       updated_at = excluded.updated_at,
       started_at = excluded.started_at,
       finished_at = excluded.finished_at,
       run_id = excluded.run_id,
       run_attempt = excluded.run_attempt,
       agent_id = excluded.agent_id,
       region = excluded.region,
       message = excluded.message,
       error = excluded.error,
       event_count = excluded.event_count,
       last_position = excluded.last_position,
       late_event_count = excluded.late_event_count

-- name: load_job_heartbeat --
SELECT job_id, last_heartbeat_at, heartbeat_count, first_heartbeat_at
  FROM job_heartbeat
 WHERE job_id = any($1::text[])

-- name: upsert_job_heartbeat --
INSERT INTO job_heartbeat (job_id, last_heartbeat_at, heartbeat_count, first_heartbeat_at)
SELECT *
  FROM unnest($1::text[], $2::timestamptz[], $3::bigint[], $4::timestamptz[])
    ON CONFLICT (job_id) DO UPDATE
   SET last_heartbeat_at = excluded.last_heartbeat_at,
       heartbeat_count = excluded.heartbeat_count,
       first_heartbeat_at = excluded.first_heartbeat_at

-- name: list_jobs --
-- A job as the API shows it. $1 terminal statuses, $2 stale threshold (older heartbeats are
-- stale), $3 status filter, $4 stale filter, $5 and $6 keyset cursor (created_at and job_id of
-- the previous page's last job), $7 limit, $8 one job id.
SELECT s.job_id, s.status, s.created_at, s.updated_at, s.started_at, s.finished_at, s.run_id,
       s.run_attempt, s.agent_id, s.region, s.message, s.error, s.event_count, s.last_position,
       s.late_event_count, h.last_heartbeat_at, coalesce(h.heartbeat_count, 0) AS heartbeat_count,
       (s.status <> ALL($1::text[])
        AND coalesce(h.last_heartbeat_at, s.updated_at) < $2::timestamptz) AS stale
  FROM job_status s
  LEFT JOIN job_heartbeat h USING (job_id)
 WHERE ($3::text IS NULL OR s.status = $3::text)
   AND ($4::boolean IS NULL
        OR (s.status <> ALL($1::text[])
            AND coalesce(h.last_heartbeat_at, s.updated_at) < $2::timestamptz) = $4::boolean)
   AND ($5::timestamptz IS NULL OR (s.created_at, s.job_id) < ($5::timestamptz, $6::text))
   AND ($8::text IS NULL OR s.job_id = $8::text)
 ORDER BY s.created_at DESC, s.job_id DESC
 LIMIT $7

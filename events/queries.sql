-- name: lock_appends --
-- $1 the append lock, $2 the events channel (events/locks.py).
-- Transaction-scoped: released by COMMIT or ROLLBACK, after the transaction became visible.
-- The NOTIFY is only a wake-up hint for projectors; it is delivered at commit, and not at all
-- on rollback.
SELECT pg_advisory_xact_lock($1), pg_notify($2, '')

-- name: append --
-- A batch in one statement (migration 0007): $1 the append lock, $2 the events channel, then
-- one array per column, in batch order. One row per event, in order. The third argument,
-- true, has the commit wait for the WAL flush (false, which commits at once and leaves the
-- flush to the caller, is unused since session 19: events/appender.py says why).
SELECT r_event_id, r_position, r_outcome
  FROM jobtrail_append($1, $2, true, $3::uuid[], $4::text[], $5::text[], $6::int[],
                       $7::jsonb[], $8::jsonb[], $9::timestamptz[], $10::bytea[], $11::text[],
                       $12::bigint[], $13::smallint[], $14::bytea[], $15::text[], $16::jsonb[])

-- name: durable_commits --
-- Commits of this session wait for the local WAL flush at least (events/store.py,
-- init_connection); a stricter setting is kept.
SELECT set_config('synchronous_commit', 'local', false)
 WHERE current_setting('synchronous_commit') = 'off'

-- name: read_heads_and_keys --
SELECT stream_id, version, last_hash, NULL::text AS key, NULL::uuid AS event_id,
       NULL::bigint AS position
  FROM streams
 WHERE stream_id = any($1::text[])
UNION ALL
SELECT NULL, NULL, NULL, key, event_id, position
  FROM idempotency_keys
 WHERE key = any($2::text[])

-- name: insert_events --
-- One statement for the whole batch: the events, their streams' new heads, their keys.
WITH batch AS (
    SELECT *
      FROM unnest($1::uuid[], $2::text[], $3::bigint[], $4::text[], $5::int[], $6::jsonb[],
                  $7::jsonb[], $8::timestamptz[], $9::bytea[], $10::bytea[], $11::text[],
                  $12::smallint[], $13::bytea[], $14::text[], $15::jsonb[])
           WITH ORDINALITY
           AS b(event_id, stream_id, stream_position, type, version, data, metadata,
                received_at, prev_hash, hash, idempotency_key, digest_version, raw_body,
                raw_content_type, raw_headers, ord)
),
inserted AS (
    INSERT INTO events (event_id, stream_id, stream_position, type, version, data, metadata,
                        received_at, prev_hash, hash, digest_version, raw_body,
                        raw_content_type, raw_headers)
    SELECT event_id, stream_id, stream_position, type, version, data, metadata,
           received_at, prev_hash, hash, digest_version, raw_body, raw_content_type,
           raw_headers
      FROM batch
     ORDER BY ord
    RETURNING position, event_id, stream_id, stream_position, hash
),
heads AS (
    INSERT INTO streams (stream_id, version, last_hash, last_position)
    SELECT DISTINCT ON (stream_id) stream_id, stream_position, hash, position
      FROM inserted
     ORDER BY stream_id, stream_position DESC
    ON CONFLICT (stream_id) DO UPDATE
       SET version = excluded.version,
           last_hash = excluded.last_hash,
           last_position = excluded.last_position
),
keys AS (
    INSERT INTO idempotency_keys (key, event_id, position)
    SELECT b.idempotency_key, i.event_id, i.position
      FROM batch b JOIN inserted i USING (event_id)
     WHERE b.idempotency_key IS NOT NULL
)
SELECT event_id, position FROM inserted

-- name: read_all --
-- The projector's read: what the folds read (events.models.FoldedEvent, its fields in order),
-- never the raw request (bodies are the bulk), and the metadata only of the event types in $3
-- (all when null), '{}' for the others: the folds read little of it, and decoding it was a
-- tenth of a replay.
SELECT position, stream_id, type, version, data,
       CASE WHEN $3::text[] IS NULL OR type = any($3::text[]) THEN metadata
            ELSE '{}'::jsonb END AS metadata,
       received_at
  FROM events
 WHERE position > $1
 ORDER BY position
 LIMIT $2

-- name: read_range --
-- A keyset page of what the folds read: $1 < position <= $2, at most $3 events, metadata only
-- for the types in $4 (as read_all).
SELECT position, stream_id, type, version, data,
       CASE WHEN $4::text[] IS NULL OR type = any($4::text[]) THEN metadata
            ELSE '{}'::jsonb END AS metadata,
       received_at
  FROM events
 WHERE position > $1 AND position <= $2
 ORDER BY position
 LIMIT $3

-- name: read_range_raw --
-- read_range with each event's raw request: what auditing the chains needs.
SELECT position, event_id, stream_id, stream_position, type, version, data, metadata,
       received_at, prev_hash, hash, digest_version, raw_body, raw_content_type, raw_headers
  FROM events
 WHERE position > $1 AND position <= $2
 ORDER BY position
 LIMIT $3

-- name: read_stream --
SELECT position, event_id, stream_id, stream_position, type, version, data, metadata,
       received_at, prev_hash, hash, digest_version
  FROM events
 WHERE stream_id = $1
 ORDER BY stream_position

-- name: read_stream_raw --
SELECT position, event_id, stream_id, stream_position, type, version, data, metadata,
       received_at, prev_hash, hash, digest_version, raw_body, raw_content_type, raw_headers
  FROM events
 WHERE stream_id = $1
 ORDER BY stream_position

-- name: read_event --
SELECT position, event_id, stream_id, stream_position, type, version, data, metadata,
       received_at, prev_hash, hash, digest_version, raw_body, raw_content_type, raw_headers
  FROM events
 WHERE event_id = $1

-- name: head_position --
SELECT coalesce(max(position), 0) FROM events

-- name: read_heads --
SELECT stream_id, version, last_hash, last_position FROM streams ORDER BY stream_id

-- name: export_events --
-- For a cursor: $1 < position <= $2, in position order, with each event's idempotency key.
SELECT e.position, e.event_id, e.stream_id, e.stream_position, e.type, e.version, e.data,
       e.metadata, e.received_at, e.prev_hash, e.hash, e.digest_version, e.raw_body,
       e.raw_content_type, e.raw_headers, k.key AS idempotency_key
  FROM events e
  LEFT JOIN idempotency_keys k ON k.event_id = e.event_id
 WHERE e.position > $1 AND e.position <= $2
 ORDER BY e.position

-- name: hashes_by_id --
SELECT event_id, hash FROM events WHERE event_id = any($1::uuid[])

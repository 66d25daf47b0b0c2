-- Appending a batch of events in one round trip (events/store.py, append_batch).
--
-- The group-commit writer used to spend five round trips per batch (BEGIN, the append lock,
-- reading stream heads and idempotency keys, the insert, COMMIT); under load each one waited
-- for a turn of the service's busy event loop, and the writer, not the CPU, set the pace. This
-- function does all of it in one statement, so a batch is a single autocommit round trip.
--
-- It is the same algorithm as before, moved next to the data:
-- 1. Take the append lock (transaction-scoped). In a VOLATILE function every statement takes a
--    fresh snapshot, so the heads and keys read after the lock are the committed ones: no
--    other append can commit between that read and our commit.
-- 2. Give each distinct stream and idempotency key of the batch a slot (1..n), and look up
--    each event's stream head and stored key.
-- 3. Walk the batch in order: an event whose key is stored, or was taken earlier in the batch,
--    is a duplicate; one whose expected_version is not its stream's version is a conflict
--    (and takes no key); every other event extends its stream's chain:
--    hash = sha256(prev_hash || stream_position as 8 bytes big-endian || digest), exactly
--    events/hashing.py's chain_hash. The digests themselves are computed by the caller.
-- 4. Insert the fresh events in batch order (positions are drawn in that order, under the
--    lock), move their stream heads, store their keys; answer one row per input event, in
--    order: (event_id, position, outcome) with outcome 'n' stored, 'd' duplicate (the first
--    event's id and position), 'c' conflict (position 0).
--
-- p_wait_for_flush = false commits without waiting for the WAL flush (synchronous_commit off
-- for this transaction only), so the append lock is not held through an fsync: the next batch
-- may append while this one's WAL reaches the disk. The caller must then flush the WAL before
-- it acknowledges anything (events/store.py, flush_wal): until then the batch is visible but
-- may not survive a crash. What reads it meanwhile is safe: the projector's own commit flushes
-- the WAL up to its own commit record, which comes after this one.

CREATE FUNCTION jobtrail_append(
    p_lock bigint,
    p_channel text,
    p_wait_for_flush boolean,
    p_event_id uuid[],
    p_stream_id text[],
    p_type text[],
    p_version int[],
    p_data jsonb[],
    p_metadata jsonb[],
    p_received_at timestamptz[],
    p_digest bytea[],
    p_key text[],
    p_expected bigint[],
    p_digest_version smallint[],
    p_raw_body bytea[],
    p_raw_content_type text[],
    p_raw_headers jsonb[]
) RETURNS TABLE (r_event_id uuid, r_position bigint, r_outcome "char")
LANGUAGE plpgsql VOLATILE AS $fn$
DECLARE
    n int := coalesce(array_length(p_event_id, 1), 0);
    stream_slot int[];          -- per event: its stream's slot (1..streams in the batch)
    key_slot int[];             -- per event: its key's slot, NULL without a key
    first_version bigint[];     -- per event: its stream's head as stored
    first_hash bytea[];
    stored_event uuid[];        -- per event: the event its key was stored with, if any
    stored_position bigint[];
    head_version bigint[];      -- per stream slot: the head so far in this batch
    head_hash bytea[];
    key_owner int[];            -- per key slot: the event of this batch that took the key
    stream_slots int;
    key_slots int;
    all_fresh boolean;          -- no key seen before or twice, no expected version
    outcome "char"[];
    fresh_ord int[];            -- the events to store, 1..m (filled in place: O(1) a step)
    fresh_stream_position bigint[];
    fresh_prev bytea[];
    fresh_hash bytea[];
    m int := 0;
    i int;
    s int;
    k int;
    v bigint;
    link bytea;
BEGIN
    IF n = 0 THEN
        RETURN;
    END IF;
    PERFORM pg_advisory_xact_lock(p_lock);
    PERFORM pg_notify(p_channel, '');
    IF NOT p_wait_for_flush THEN
        -- The caller flushes the WAL itself before acknowledging (see below).
        PERFORM set_config('synchronous_commit', 'off', true);
    END IF;

    -- One pass over the batch: slots, and each event's stream head and stored key, each a
    -- LATERAL probe of a primary key. LIMIT 1 keeps the planner from flattening the probes
    -- into a join it may run as a scan of the whole table on every batch (plpgsql caches a
    -- generic plan that knows nothing of the arrays' sizes).
    SELECT array_agg(b.stream_rank ORDER BY b.o),
           array_agg(CASE WHEN b.key IS NOT NULL THEN b.key_rank END ORDER BY b.o),
           array_agg(coalesce(st.version, 0) ORDER BY b.o),
           array_agg(coalesce(st.last_hash, '\x0000000000000000000000000000000000000000000000000000000000000000'::bytea)
                     ORDER BY b.o),
           array_agg(ik.event_id ORDER BY b.o),
           array_agg(ik."position" ORDER BY b.o),
           max(b.stream_rank),
           max(b.key_rank),
           count(ik.event_id) = 0 AND count(DISTINCT b.key) = count(b.key)
               AND count(b.expected) = 0
      INTO stream_slot, key_slot, first_version, first_hash, stored_event, stored_position,
           stream_slots, key_slots, all_fresh
      FROM (SELECT u.o, u.stream_id, u.key, u.expected,
                   dense_rank() OVER (ORDER BY u.stream_id)::int AS stream_rank,
                   dense_rank() OVER (ORDER BY u.key)::int AS key_rank
              FROM unnest(p_stream_id, p_key, p_expected)
                   WITH ORDINALITY AS u(stream_id, key, expected, o)) b
      LEFT JOIN LATERAL (SELECT h.version, h.last_hash
                           FROM streams h
                          WHERE h.stream_id = b.stream_id
                          LIMIT 1) st ON true
      LEFT JOIN LATERAL (SELECT ik.event_id, ik."position"
                           FROM idempotency_keys ik
                          WHERE ik.key = b.key
                          LIMIT 1) ik ON true;

    IF all_fresh AND stream_slots = n THEN
        -- The common batch: every event new, each of another stream. No event depends on
        -- another, so the chain links are computed in one set-based pass (what the loop below
        -- would compute, without its cost per event).
        outcome := array_fill('n'::"char", ARRAY[n]);
        m := n;
        SELECT array_agg(e.o ORDER BY e.o),
               array_agg(first_version[e.o] + 1 ORDER BY e.o),
               array_agg(first_hash[e.o] ORDER BY e.o),
               array_agg(sha256(first_hash[e.o] || int8send(first_version[e.o] + 1)
                                || p_digest[e.o]) ORDER BY e.o)
          INTO fresh_ord, fresh_stream_position, fresh_prev, fresh_hash
          FROM generate_series(1, n) AS e(o);
    ELSE
        head_version := array_fill(NULL::bigint, ARRAY[stream_slots]);
        head_hash := array_fill(NULL::bytea, ARRAY[stream_slots]);
        key_owner := array_fill(NULL::int, ARRAY[key_slots]);
        outcome := array_fill('n'::"char", ARRAY[n]);
        fresh_ord := array_fill(NULL::int, ARRAY[n]);
        fresh_stream_position := array_fill(NULL::bigint, ARRAY[n]);
        fresh_prev := array_fill(NULL::bytea, ARRAY[n]);
        fresh_hash := array_fill(NULL::bytea, ARRAY[n]);
        FOR i IN 1..n LOOP
            k := key_slot[i];
            IF stored_event[i] IS NOT NULL OR (k IS NOT NULL AND key_owner[k] IS NOT NULL) THEN
                outcome[i] := 'd';
                CONTINUE;
            END IF;
            s := stream_slot[i];
            IF head_version[s] IS NULL THEN
                head_version[s] := first_version[i];
                head_hash[s] := first_hash[i];
            END IF;
            v := head_version[s];
            IF p_expected[i] IS NOT NULL AND p_expected[i] <> v THEN
                outcome[i] := 'c';
                CONTINUE;
            END IF;
            IF k IS NOT NULL THEN
                key_owner[k] := i;
            END IF;
            link := sha256(head_hash[s] || int8send(v + 1) || p_digest[i]);
            m := m + 1;
            fresh_ord[m] := i;
            fresh_stream_position[m] := v + 1;
            fresh_prev[m] := head_hash[s];
            fresh_hash[m] := link;
            head_version[s] := v + 1;
            head_hash[s] := link;
        END LOOP;
    END IF;

    RETURN QUERY
    WITH fresh AS (
        SELECT f.o, f.stream_position, f.prev_hash, f.hash
          FROM unnest(fresh_ord[1:m], fresh_stream_position[1:m], fresh_prev[1:m],
                      fresh_hash[1:m]) AS f(o, stream_position, prev_hash, hash)
    ),
    inserted AS (
        INSERT INTO events (event_id, stream_id, stream_position, type, version, data, metadata,
                            received_at, prev_hash, hash, digest_version, raw_body,
                            raw_content_type, raw_headers)
        SELECT p_event_id[f.o], p_stream_id[f.o], f.stream_position, p_type[f.o],
               p_version[f.o], p_data[f.o], p_metadata[f.o], p_received_at[f.o], f.prev_hash,
               f.hash, p_digest_version[f.o], p_raw_body[f.o], p_raw_content_type[f.o],
               p_raw_headers[f.o]
          FROM fresh f
         ORDER BY f.o
        RETURNING events."position", events.event_id, events.stream_id, events.stream_position,
                  events.hash
    ),
    heads AS (
        INSERT INTO streams (stream_id, version, last_hash, last_position)
        SELECT DISTINCT ON (ins.stream_id) ins.stream_id, ins.stream_position, ins.hash,
               ins."position"
          FROM inserted ins
         ORDER BY ins.stream_id, ins.stream_position DESC
        ON CONFLICT (stream_id) DO UPDATE
           SET version = excluded.version,
               last_hash = excluded.last_hash,
               last_position = excluded.last_position
    ),
    keys AS (
        INSERT INTO idempotency_keys (key, event_id, "position")
        SELECT p_key[f.o], ins.event_id, ins."position"
          FROM fresh f
          JOIN inserted ins ON ins.event_id = p_event_id[f.o]
         WHERE p_key[f.o] IS NOT NULL
    )
    SELECT t.event_id,
           CASE t.outcome WHEN 'c' THEN 0::bigint
                ELSE coalesce(t.stored_position, ins."position") END,
           t.outcome
      FROM (SELECT b.o, outcome[b.o] AS outcome, stored_position[b.o] AS stored_position,
                   CASE WHEN outcome[b.o] <> 'd' THEN p_event_id[b.o]
                        WHEN stored_event[b.o] IS NOT NULL THEN stored_event[b.o]
                        ELSE p_event_id[key_owner[key_slot[b.o]]] END AS event_id
              FROM generate_series(1, n) AS b(o)) t
      LEFT JOIN inserted ins ON ins.event_id = t.event_id AND t.stored_position IS NULL
     ORDER BY t.o;
END;
$fn$;

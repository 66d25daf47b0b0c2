-- The log partitioned by month, so that old months can be exported and detached (SPEC 10).
--
-- events becomes PARTITION BY RANGE (received_at), one partition per calendar month in UTC,
-- named events_YYYY_MM. Partitions are created ahead of time by
-- jobtrail_ensure_event_partitions (below): for the current month and the next two at
-- `jobtrail migrate`, at `jobtrail serve` start and hourly by the leader, for the months of a
-- file by `jobtrail import`. `jobtrail archive` (events/archive.py) writes a month's events to
-- a JSON Lines file, records it in archived_partitions and detaches the partition.
--
-- Unique constraints of a partitioned table must include the partition key, so the global
-- ones of 0001 become:
--   PRIMARY KEY (position)                 -> PRIMARY KEY (position, received_at)
--   UNIQUE (event_id)                      -> UNIQUE (event_id, received_at)
--   UNIQUE (stream_id, stream_position)    -> UNIQUE (stream_id, stream_position, received_at)
-- They still hold globally, because nothing writes the log except under the append lock
-- (events/store.py, module docstring): positions come from the identity, drawn only under that
-- lock; a stream position is the stream's head (streams) plus one, read and written under that
-- lock; an event id is new (uuid4) for an append, and `import` skips every id the log already
-- holds (hashes_by_id), under the same lock. The database no longer rejects a duplicate event
-- id or stream position that arrives in another month by itself: `jobtrail verify` would report
-- it (the stream positions of the chain, the stream head).
--
-- The conversion copies every row, keeping its position (OVERRIDING SYSTEM VALUE): the log is
-- locked (ACCESS EXCLUSIVE) for as long as that takes, about a second per million events, so
-- appends wait (an old release's appends carry on against the new table once it commits).
-- events_raw_request_check, NOT VALID since 0005, is now valid on every partition: the copy
-- checks every row (those written since 0005 satisfy it, older ones are all version 1 without a
-- raw request). A row that fails it was edited behind the database's back: the migration then
-- stops and changes nothing; the previous release's `jobtrail verify` names the row.
--
-- Append-only, as in 0001 and 0004:
--   - the BEFORE UPDATE OR DELETE row trigger on events is cloned by PostgreSQL to every
--     partition, present and future (and removed from one that is detached);
--   - TRUNCATE triggers are not cloned, and TRUNCATE of a partition by name does not fire the
--     parent's: every partition gets its own events_no_truncate;
--   - jobtrail_writer reaches the partitions only through events, whose privileges are the ones
--     checked; it gets none on a partition (default privileges would grant it UPDATE and DELETE).

LOCK TABLE events IN ACCESS EXCLUSIVE MODE;

ALTER TABLE events RENAME TO events_unpartitioned;
ALTER INDEX events_pkey RENAME TO events_unpartitioned_pkey;
ALTER INDEX events_event_id_key RENAME TO events_unpartitioned_event_id_key;
ALTER INDEX events_stream_id_stream_position_key
    RENAME TO events_unpartitioned_stream_id_stream_position_key;
ALTER SEQUENCE events_position_seq RENAME TO events_unpartitioned_position_seq;

-- The same columns, constraints and constraint names as before (named here: the old table still
-- holds the names PostgreSQL would choose).

CREATE TABLE events (
    position         bigint      GENERATED ALWAYS AS IDENTITY
                                 CONSTRAINT events_position_not_null NOT NULL,
    event_id         uuid        CONSTRAINT events_event_id_not_null NOT NULL,
    stream_id        text        CONSTRAINT events_stream_id_not_null NOT NULL,
    stream_position  bigint      CONSTRAINT events_stream_position_not_null NOT NULL
                                 CONSTRAINT events_stream_position_check
                                 CHECK (stream_position > 0),
    type             text        CONSTRAINT events_type_not_null NOT NULL,
    version          integer     CONSTRAINT events_version_not_null NOT NULL
                                 CONSTRAINT events_version_check CHECK (version > 0),
    data             jsonb       CONSTRAINT events_data_not_null NOT NULL,
    metadata         jsonb       CONSTRAINT events_metadata_not_null NOT NULL,
    received_at      timestamptz CONSTRAINT events_received_at_not_null NOT NULL,
    prev_hash        bytea       CONSTRAINT events_prev_hash_not_null NOT NULL
                                 CONSTRAINT events_prev_hash_check
                                 CHECK (octet_length(prev_hash) = 32),
    hash             bytea       CONSTRAINT events_hash_not_null NOT NULL
                                 CONSTRAINT events_hash_check CHECK (octet_length(hash) = 32),
    raw_body         bytea,
    raw_content_type text,
    raw_headers      jsonb,
    digest_version   smallint    CONSTRAINT events_digest_version_not_null NOT NULL DEFAULT 1,
    PRIMARY KEY (position, received_at),
    UNIQUE (event_id, received_at),
    UNIQUE (stream_id, stream_position, received_at),
    CONSTRAINT events_raw_request_check CHECK (
        CASE digest_version
            WHEN 1 THEN raw_body IS NULL AND raw_content_type IS NULL AND raw_headers IS NULL
            WHEN 2 THEN raw_body IS NOT NULL AND raw_content_type IS NOT NULL
                        AND coalesce(jsonb_typeof(raw_headers) = 'object', false)
            ELSE false
        END
    )
) PARTITION BY RANGE (received_at);

CREATE TRIGGER events_append_only
    BEFORE UPDATE OR DELETE ON events
    FOR EACH ROW EXECUTE FUNCTION refuse_event_change();

CREATE TRIGGER events_no_truncate
    BEFORE TRUNCATE ON events
    FOR EACH STATEMENT EXECUTE FUNCTION refuse_event_change();

-- One row per month whose partition `jobtrail archive` exported and detached. streams holds,
-- for each stream with events in the month, its runs of consecutive stream positions there:
--   {"<stream_id>": [[first_stream_position, last_stream_position, prev_hash (hex) of the
--                     first, hash (hex) of the last, position of the last], ...], ...}
-- (almost always one run; two when a stream's events straddle the month's end out of clock
-- order). It is what lets `verify` follow a chain across an archived range and `history` say
-- which stream positions are archived. Deleting the row is part of a restore.
CREATE TABLE archived_partitions (
    month             date        PRIMARY KEY CHECK (extract(day FROM month) = 1),
    partition_name    text        NOT NULL UNIQUE,
    file_name         text        NOT NULL,
    sha256            bytea       NOT NULL CHECK (octet_length(sha256) = 32),
    event_count       bigint      NOT NULL CHECK (event_count >= 0),
    first_position    bigint,
    last_position     bigint,
    first_received_at timestamptz,
    last_received_at  timestamptz,
    streams           jsonb       NOT NULL,
    archived_at       timestamptz NOT NULL DEFAULT now()
);

-- Create the missing monthly partitions of from_month and the months-1 after it; return the
-- names of those created. A month that is archived (archived_partitions) gets none, so an
-- event of an archived month is refused rather than stored beside its archive.
--
-- Cheap when nothing is missing (the service calls it often): one look at the catalog, no lock.
-- Otherwise it takes advisory lock 7413690205 (PARTITION_LOCK in events/locks.py: `jobtrail
-- archive` takes it too), looks again and creates what is still missing, so concurrent callers
-- create each partition once. CREATE TABLE ... PARTITION OF would lock events ACCESS EXCLUSIVE,
-- waiting behind every reader and stopping every one behind it; a table created apart and
-- ATTACHed takes SHARE UPDATE EXCLUSIVE on events, which readers and appends do not wait for
-- (and the attached table, empty, is validated at once). It inherits the position identity.
--
-- SECURITY DEFINER, owned by the migrating role, with search_path pinned: the service may run
-- as jobtrail_writer, which may call it but cannot create tables.
CREATE FUNCTION jobtrail_ensure_event_partitions(from_month date, months integer)
RETURNS text[]
LANGUAGE plpgsql
SECURITY DEFINER
AS $$
DECLARE
    start_month date := date_trunc('month', from_month)::date;
    wanted      date[];
    one_month   date;
    part_name   text;
    created     text[] := '{}';
BEGIN
    IF from_month IS NULL OR months IS NULL OR months < 1 OR months > 120 THEN
        RAISE EXCEPTION 'from_month must be a date and months 1 to 120, not %', months
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    SELECT array_agg(m ORDER BY m) INTO wanted
      FROM (SELECT (start_month + make_interval(months => i))::date AS m
              FROM generate_series(0, months - 1) AS n(i)) AS g
     WHERE NOT EXISTS (
               SELECT FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid
                WHERE i.inhparent = 'events'::regclass
                  AND c.relname = 'events_' || to_char(g.m, 'YYYY_MM'))
       AND NOT EXISTS (SELECT FROM archived_partitions a WHERE a.month = g.m);
    IF wanted IS NULL THEN
        RETURN created;
    END IF;
    PERFORM pg_advisory_xact_lock(7413690205);
    FOREACH one_month IN ARRAY wanted LOOP
        part_name := 'events_' || to_char(one_month, 'YYYY_MM');
        CONTINUE WHEN EXISTS (SELECT FROM archived_partitions a WHERE a.month = one_month);
        CONTINUE WHEN EXISTS (
            SELECT FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid
             WHERE i.inhparent = 'events'::regclass AND c.relname = part_name);
        IF to_regclass(quote_ident(part_name)) IS NOT NULL THEN
            RAISE EXCEPTION 'table % exists but is not a partition of events', part_name
                USING ERRCODE = 'duplicate_table',
                      HINT = 'attach it (jobtrail archive --restore) or drop it';
        END IF;
        EXECUTE format('CREATE TABLE %I (LIKE events INCLUDING DEFAULTS INCLUDING CONSTRAINTS)',
                       part_name);
        EXECUTE format('ALTER TABLE events ATTACH PARTITION %I FOR VALUES FROM (%L) TO (%L)',
                       part_name, to_char(one_month, 'YYYY-MM-DD') || ' 00:00:00+00',
                       to_char(one_month + interval '1 month', 'YYYY-MM-DD') || ' 00:00:00+00');
        EXECUTE format('CREATE TRIGGER events_no_truncate BEFORE TRUNCATE ON %I'
                       ' FOR EACH STATEMENT EXECUTE FUNCTION refuse_event_change()', part_name);
        IF EXISTS (SELECT FROM pg_roles WHERE rolname = 'jobtrail_writer') THEN
            EXECUTE format('REVOKE ALL ON %I FROM jobtrail_writer', part_name);
        END IF;
        created := created || part_name;
    END LOOP;
    RETURN created;
END
$$;

REVOKE ALL ON FUNCTION jobtrail_ensure_event_partitions(date, integer) FROM PUBLIC;

DO $$
DECLARE
    resume_at bigint;
BEGIN
    EXECUTE format(
        'ALTER FUNCTION jobtrail_ensure_event_partitions(date, integer)'
        ' SET search_path = %I, pg_temp',
        current_schema()
    );

    -- Every month the log holds, then the month before this one (an event received just
    -- before midnight of the 1st may arrive on a database migrated just after it), this one
    -- and the next two.
    PERFORM jobtrail_ensure_event_partitions(m, 1)
       FROM (SELECT DISTINCT date_trunc('month', received_at AT TIME ZONE 'UTC')::date AS m
               FROM events_unpartitioned) AS held;
    PERFORM jobtrail_ensure_event_partitions(
        (date_trunc('month', now() AT TIME ZONE 'UTC') - interval '1 month')::date, 4);

    INSERT INTO events (position, event_id, stream_id, stream_position, type, version, data,
                        metadata, received_at, prev_hash, hash, raw_body, raw_content_type,
                        raw_headers, digest_version)
    OVERRIDING SYSTEM VALUE
    SELECT position, event_id, stream_id, stream_position, type, version, data, metadata,
           received_at, prev_hash, hash, raw_body, raw_content_type, raw_headers,
           digest_version
      FROM events_unpartitioned
     ORDER BY position;

    -- Positions go on from where the old identity was (past any position a rolled-back
    -- append drew), never below the highest one stored.
    SELECT greatest((SELECT max(position) FROM events),
                    (SELECT s.last_value FROM events_unpartitioned_position_seq s
                      WHERE s.is_called))
      INTO resume_at;
    IF resume_at IS NOT NULL THEN
        PERFORM setval(pg_get_serial_sequence('events', 'position'), resume_at);
    END IF;

    IF EXISTS (SELECT FROM pg_roles WHERE rolname = 'jobtrail_writer') THEN
        -- What 0004 granted on the log, on the new table; default privileges gave it more.
        REVOKE ALL ON events, archived_partitions FROM jobtrail_writer;
        GRANT SELECT, INSERT ON events TO jobtrail_writer;
        GRANT SELECT ON archived_partitions TO jobtrail_writer;
        EXECUTE format('GRANT USAGE, SELECT ON SEQUENCE %s TO jobtrail_writer',
                       pg_get_serial_sequence('events', 'position'));
        GRANT EXECUTE ON FUNCTION jobtrail_ensure_event_partitions(date, integer)
            TO jobtrail_writer;
    END IF;
END
$$;

DROP TABLE events_unpartitioned;

-- The planner's row estimates for the new partitions (autovacuum analyses partitions later, but
-- never the partitioned table itself).
ANALYZE events;

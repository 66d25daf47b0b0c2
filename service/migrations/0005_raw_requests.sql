-- Evidence: the request each event was received as, and how its hash is computed.
--
-- raw_body, raw_content_type, raw_headers: the body byte for byte, its Content-Type, and the
-- headers that authenticated it (lower-case names: signatures and ids, never a secret). NULL
-- for the events the service derives itself (job.timed_out) and for every event stored before
-- this migration.
-- digest_version: 1 = canonical JSON of the event (events/hashing.py), 2 = canonical envelope
-- plus the raw body bytes. Existing rows are version 1, which is how they were hashed.
--
-- Adding nullable columns, and a column with a constant default, rewrites no row: the
-- migration is instant on any size of log. The constraint is NOT VALID for the same reason
-- (existing rows satisfy it: all NULL, version 1); it holds for every new row.

ALTER TABLE events
    ADD COLUMN raw_body         bytea,
    ADD COLUMN raw_content_type text,
    ADD COLUMN raw_headers      jsonb,
    ADD COLUMN digest_version   smallint NOT NULL DEFAULT 1;

ALTER TABLE events
    ADD CONSTRAINT events_raw_request_check CHECK (
        CASE digest_version
            WHEN 1 THEN raw_body IS NULL AND raw_content_type IS NULL AND raw_headers IS NULL
            WHEN 2 THEN raw_body IS NOT NULL AND raw_content_type IS NOT NULL
                        AND coalesce(jsonb_typeof(raw_headers) = 'object', false)
            ELSE false
        END
    ) NOT VALID;

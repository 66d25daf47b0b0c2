-- The append-only event log.
--
-- Positions come from an identity column, drawn only while the append lock is held (see
-- events/store.py), so commit order equals position order and a reader that resumes after the
-- last position it saw never skips an event.

CREATE TABLE events (
    position        bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    event_id        uuid        NOT NULL UNIQUE,
    stream_id       text        NOT NULL,
    stream_position bigint      NOT NULL CHECK (stream_position > 0),
    type            text        NOT NULL,
    version         integer     NOT NULL CHECK (version > 0),
    data            jsonb       NOT NULL,
    metadata        jsonb       NOT NULL,
    received_at     timestamptz NOT NULL,
    prev_hash       bytea       NOT NULL CHECK (octet_length(prev_hash) = 32),
    hash            bytea       NOT NULL CHECK (octet_length(hash) = 32),
    UNIQUE (stream_id, stream_position)
);

-- The head of every stream: its last stream position and hash. Read and written under the
-- append lock only.
CREATE TABLE streams (
    stream_id     text   PRIMARY KEY,
    version       bigint NOT NULL,
    last_hash     bytea  NOT NULL,
    last_position bigint NOT NULL
);

-- One row per idempotency key ever accepted (webhook-id, delivery_id, X-GitHub-Delivery).
CREATE TABLE idempotency_keys (
    key      text   PRIMARY KEY,
    event_id uuid   NOT NULL,
    position bigint NOT NULL
);

CREATE FUNCTION refuse_event_change() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'table % is append-only: % refused', TG_TABLE_NAME, TG_OP
        USING ERRCODE = 'insufficient_privilege';
END;
$$;

CREATE TRIGGER events_append_only
    BEFORE UPDATE OR DELETE ON events
    FOR EACH ROW EXECUTE FUNCTION refuse_event_change();

CREATE TRIGGER events_no_truncate
    BEFORE TRUNCATE ON events
    FOR EACH STATEMENT EXECUTE FUNCTION refuse_event_change();

CREATE TRIGGER idempotency_keys_append_only
    BEFORE UPDATE OR DELETE ON idempotency_keys
    FOR EACH ROW EXECUTE FUNCTION refuse_event_change();

CREATE TRIGGER idempotency_keys_no_truncate
    BEFORE TRUNCATE ON idempotency_keys
    FOR EACH STATEMENT EXECUTE FUNCTION refuse_event_change();

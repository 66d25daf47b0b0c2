-- Read models built from the log, and the checkpoint of each.
--
-- Index names are the ones PostgreSQL would generate, so that a rebuild (which creates a copy
-- with CREATE TABLE ... LIKE ... INCLUDING ALL and renames it over the original) ends with the
-- same names.

CREATE TABLE projection_checkpoints (
    name       text        PRIMARY KEY,
    position   bigint      NOT NULL DEFAULT 0,
    updated_at timestamptz NOT NULL DEFAULT now()
);

INSERT INTO projection_checkpoints (name) VALUES ('job_status'), ('job_heartbeat');

CREATE TABLE job_status (
    job_id           text        PRIMARY KEY,
    status           text        NOT NULL,
    created_at       timestamptz NOT NULL,
    updated_at       timestamptz NOT NULL,
    started_at       timestamptz,
    finished_at      timestamptz,
    run_id           bigint,
    run_attempt      bigint,
    agent_id         text,
    region           text,
    message          text,
    error            text,
    event_count      bigint      NOT NULL,
    last_position    bigint      NOT NULL,
    late_event_count bigint      NOT NULL
);

-- Pages are walked newest-created first; created_at never changes, so a walk never skips a job.
CREATE INDEX job_status_created_at_job_id_idx ON job_status (created_at, job_id);
CREATE INDEX job_status_status_created_at_job_id_idx ON job_status (status, created_at, job_id);

CREATE TABLE job_heartbeat (
    job_id             text        PRIMARY KEY,
    last_heartbeat_at  timestamptz NOT NULL,
    heartbeat_count    bigint      NOT NULL,
    first_heartbeat_at timestamptz NOT NULL
);

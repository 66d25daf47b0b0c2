-- The role the service runs as: it may append to the log and read it, never change it.
--
-- jobtrail_writer is a NOLOGIN group role; a login role that is a member of it is what
-- `jobtrail serve` connects with (README, "Running as the writer role"). The append-only
-- triggers of 0001 stop an UPDATE, DELETE or TRUNCATE of the log by anyone; without those
-- privileges the writer is refused even when a trigger has been disabled, and it cannot
-- disable one (that takes the table's owner).
--
-- The writer may:
--   events, idempotency_keys    SELECT, INSERT (and USAGE on the position identity)
--   streams                     SELECT, INSERT, UPDATE (the stream heads)
--   projection tables           SELECT, INSERT, UPDATE, DELETE (job_status, job_heartbeat,
--                               projection_checkpoints)
--   schema_migrations           SELECT (readiness: are migrations applied?)
-- and, through default privileges, SELECT, INSERT, UPDATE, DELETE on tables that the migrating
-- role creates later in this schema: the tables a replay builds aside and swaps in, and those
-- of later migrations. A later append-only table must REVOKE UPDATE, DELETE, TRUNCATE from
-- jobtrail_writer in its own migration. Migrations and `jobtrail replay` (which drops and
-- creates tables) run as the owning, migrating role.
--
-- Creating a role needs CREATEROLE: without it the role is not created (a NOTICE says so) and
-- the grants wait for a role that an administrator creates, then `GRANT`s as above by hand.

DO $$
DECLARE
    me    record;
    seq   text := pg_get_serial_sequence('events', 'position');
BEGIN
    SELECT rolsuper, rolcreaterole INTO me FROM pg_roles WHERE rolname = current_user;
    IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'jobtrail_writer') THEN
        IF NOT (me.rolsuper OR me.rolcreaterole) THEN
            RAISE NOTICE 'role jobtrail_writer not created: % lacks CREATEROLE', current_user;
            RETURN;
        END IF;
        BEGIN
            CREATE ROLE jobtrail_writer NOLOGIN;
        EXCEPTION WHEN duplicate_object OR unique_violation THEN
            NULL;  -- created meanwhile by a concurrent migration of another database
        END;
    END IF;
    EXECUTE format('GRANT USAGE ON SCHEMA %I TO jobtrail_writer', current_schema());
    GRANT SELECT, INSERT ON events, idempotency_keys TO jobtrail_writer;
    GRANT SELECT, INSERT, UPDATE ON streams TO jobtrail_writer;
    GRANT SELECT, INSERT, UPDATE, DELETE
        ON job_status, job_heartbeat, projection_checkpoints TO jobtrail_writer;
    GRANT SELECT ON schema_migrations TO jobtrail_writer;
    EXECUTE format('GRANT USAGE, SELECT ON SEQUENCE %s TO jobtrail_writer', seq);
    EXECUTE format(
        'ALTER DEFAULT PRIVILEGES IN SCHEMA %I'
        ' GRANT SELECT, INSERT, UPDATE, DELETE ON TABLES TO jobtrail_writer',
        current_schema()
    );
END
$$;

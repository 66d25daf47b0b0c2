"""The database refuses to change the log for the role the service runs as (migration 0004).

A login role that is a member of ``jobtrail_writer`` may append and read, run the projector and
the watchdog, and serve; UPDATE, DELETE and TRUNCATE of the log are refused by its privileges,
even with the append-only triggers disabled, and it cannot disable them.
"""

from __future__ import annotations

import secrets
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from urllib.parse import quote, urlsplit, urlunsplit

import aiohttp
import asyncpg
import pytest

from events.catalog import STATUS_REPORTED, job_stream
from events.models import NewEvent
from events.partitions import add_months, current_month, partition_name
from events.store import append_batch, register_codecs
from projections.registry import PROJECTIONS
from projections.replay import rebuild
from projections.runner import apply_batch
from projections.watchdog import time_out_silent_jobs
from tests.conftest import ServeProcessFactory
from tests.helpers import AUTH, body_of, free_port, standard_headers
from tests.reliability.harness import URL

WRITER = "jobtrail_writer"
REFUSED = [
    "UPDATE events SET type = 'x'",
    "DELETE FROM events",
    "TRUNCATE events",
    "UPDATE idempotency_keys SET position = 0",
    "DELETE FROM idempotency_keys",
    "TRUNCATE idempotency_keys",
    "TRUNCATE streams",
    "DELETE FROM streams",
    "ALTER TABLE events DISABLE TRIGGER events_append_only",
    "DROP TABLE events",
    "CREATE TABLE sneaky (x int)",
]


def as_user(dsn: str, user: str, password: str) -> str:
    parts = urlsplit(dsn)
    host = parts.netloc.rpartition("@")[2]
    return urlunsplit(parts._replace(netloc=f"{quote(user)}:{quote(password)}@{host}"))


@pytest.fixture
async def writer_url(database_url: str) -> AsyncIterator[str]:
    """A login role in ``jobtrail_writer`` (created for this test), as a DSN."""
    owner = await asyncpg.connect(database_url)
    try:
        if not await owner.fetchval("SELECT true FROM pg_roles WHERE rolname = $1", WRITER):
            pytest.skip("jobtrail_writer was not created: the test server's user lacks CREATEROLE")
        name, password = f"jt_service_{secrets.token_hex(4)}", secrets.token_urlsafe(12)
        await owner.execute(f"CREATE ROLE {name} LOGIN PASSWORD '{password}' IN ROLE {WRITER}")
        try:
            yield as_user(database_url, name, password)
        finally:
            await owner.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE usename = $1", name
            )
            await owner.execute(f"DROP ROLE {name}")
    finally:
        await owner.close()


def callback(job_id: str, status: str, key: str) -> NewEvent:
    return NewEvent(
        stream_id=job_stream(job_id),
        type=STATUS_REPORTED,
        data={"job_id": job_id, "status": status},
        metadata={"scheme": "standard", "idempotency_key": key},
        received_at=datetime.now(UTC),
        idempotency_key=key,
    )


async def test_the_writer_cannot_change_the_log_even_with_the_triggers_off(
    database_url: str, writer_url: str
) -> None:
    owner = await asyncpg.connect(database_url)
    writer = await asyncpg.connect(writer_url)
    try:
        await register_codecs(owner)
        async with owner.transaction():
            await append_batch(owner, [callback("vm-w", "running", "k-1")])
        await owner.execute(
            "ALTER TABLE events DISABLE TRIGGER events_append_only;"
            " ALTER TABLE events DISABLE TRIGGER events_no_truncate;"
            " ALTER TABLE idempotency_keys DISABLE TRIGGER USER"
        )
        for statement in REFUSED:
            with pytest.raises(asyncpg.InsufficientPrivilegeError) as refused:
                await writer.execute(statement)
            assert refused.value.sqlstate == "42501"
            # Refused by privileges (or ownership), not by a trigger: they are off.
            assert "append-only" not in str(refused.value), statement
        assert await writer.fetchval("SELECT count(*) FROM events") == 1
        # With the triggers off, only the owner could now edit the log (and is not the service).
        edit = owner.transaction()
        await edit.start()
        try:
            assert await owner.execute("UPDATE events SET type = 'x'") == "UPDATE 1"
        finally:
            await edit.rollback()
    finally:
        await writer.close()
        await owner.close()


async def test_the_writer_appends_projects_and_times_out(
    database_url: str, writer_url: str
) -> None:
    async with asyncpg.create_pool(
        writer_url, init=register_codecs, min_size=1, max_size=2
    ) as pool:
        async with pool.acquire() as conn, conn.transaction():
            first = await append_batch(conn, [callback("vm-w", "running", "k-1")])
            again = await append_batch(conn, [callback("vm-w", "running", "k-1")])
        assert again[0].duplicate and again[0].position == first[0].position
        async with pool.acquire() as conn:
            applied = await apply_batch(conn, PROJECTIONS)
        assert applied.events == 1 and applied.changed == {"job_status": {"vm-w"}}
        later = datetime.now(UTC) + timedelta(hours=1)
        assert await time_out_silent_jobs(pool, timeout_s=60, now=later) == ["vm-w"]

        # A replay, run as the owner, swaps in new tables: the writer keeps its privileges.
        async with asyncpg.create_pool(
            database_url, init=register_codecs, min_size=1, max_size=2
        ) as owner:
            await rebuild(owner)
        async with pool.acquire() as conn, conn.transaction():
            await append_batch(conn, [callback("vm-w2", "queued", "k-2")])
        async with pool.acquire() as conn:
            assert (await apply_batch(conn, PROJECTIONS)).events >= 1
            status = await conn.fetchval("SELECT status FROM job_status WHERE job_id = 'vm-w2'")
        assert status == "queued"


@pytest.mark.slow
async def test_jobtrail_serves_as_the_writer(
    writer_url: str, tmp_path: Path, serve_process: ServeProcessFactory
) -> None:
    service = serve_process(writer_url, tmp_path, free_port())
    await service.start()  # migrations are applied already: serve only checks them
    try:
        body = body_of({"job_id": "vm-writer", "status": "running"})
        async with aiohttp.ClientSession() as session:
            async with session.post(
                service.base + URL, data=body, headers=standard_headers(body)
            ) as response:
                assert response.status == 200, await response.text()
                position = (await response.json())["position"]
            async with session.get(
                f"{service.base}/api/jobs/vm-writer?after_position={position}", headers=AUTH
            ) as response:
                assert response.status == 200
                assert (await response.json())["status"] == "running"
    finally:
        assert await service.stop() == 0, service.logs()[-2000:]


async def test_the_writer_cannot_change_a_partition_but_can_create_the_next_ones(
    database_url: str, writer_url: str
) -> None:
    """Migration 0006: the log's partitions, present and created later through the SECURITY
    DEFINER function, are out of the writer's reach by name too; only the function creates
    them, and the writer may call it."""
    owner = await asyncpg.connect(database_url)
    writer = await asyncpg.connect(writer_url)
    try:
        await register_codecs(owner)
        async with owner.transaction():
            await append_batch(owner, [callback("vm-p", "running", "k-p")])
        ahead = add_months(current_month(), 6)
        created = await writer.fetchval(
            "SELECT jobtrail_ensure_event_partitions($1, 1)", ahead
        )  # as the service does at start and hourly
        assert created == [partition_name(ahead)]
        for name in (partition_name(current_month()), partition_name(ahead)):
            for statement in (
                f"UPDATE {name} SET type = 'x'",
                f"DELETE FROM {name}",
                f"TRUNCATE {name}",
                f"SELECT count(*) FROM {name}",
                f"ALTER TABLE events DETACH PARTITION {name}",
                f"DROP TABLE {name}",
                f"ALTER TABLE {name} DISABLE TRIGGER USER",
            ):
                with pytest.raises(asyncpg.InsufficientPrivilegeError):
                    await writer.execute(statement)
        for statement in (
            "INSERT INTO archived_partitions (month, partition_name, file_name, sha256,"
            " event_count, streams) VALUES ('2001-01-01', 'x', 'x', '\\x00', 0, '{}')",
            "DELETE FROM archived_partitions",
        ):
            with pytest.raises(asyncpg.InsufficientPrivilegeError):
                await writer.execute(statement)
        assert await writer.fetchval("SELECT count(*) FROM archived_partitions") == 0
        assert await writer.fetchval("SELECT count(*) FROM events") == 1  # through events only
        # Even the owner cannot empty a partition by name: each has its own TRUNCATE trigger.
        with pytest.raises(asyncpg.InsufficientPrivilegeError, match="append-only"):
            await owner.execute(f"TRUNCATE {partition_name(current_month())}")
    finally:
        await writer.close()
        await owner.close()

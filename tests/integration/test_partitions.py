"""The log's monthly partitions (migration 0006, ``events.partitions``): created ahead, once,
cheaply when they exist, never for an archived month, with bounds in UTC whatever the session's
time zone."""

from __future__ import annotations

import asyncio
from datetime import timedelta
from typing import Any

import asyncpg
import pytest

from events.locks import PARTITION_LOCK
from events.partitions import (
    add_months,
    attached_months,
    current_month,
    ensure_partitions,
    month_start,
    partition_name,
)
from events.store import append_batch
from tests.workload import callback


async def test_ensure_takes_no_lock_when_every_partition_exists(pool: asyncpg.Pool[Any]) -> None:
    month = current_month()
    async with pool.acquire() as holder, pool.acquire() as conn:
        # The template database was made with its month and the next two; a session that
        # crosses into a new month since needs one more, made here before the lock is taken.
        await ensure_partitions(conn, month, 2)
        await holder.execute("SELECT pg_advisory_lock($1)", PARTITION_LOCK)
        try:
            # This month and the next two exist: nothing to wait for.
            assert await asyncio.wait_for(ensure_partitions(conn, month, 2), 5) == []
            # A missing month is created under the lock: it waits for the holder.
            later = add_months(month, 8)
            creating = asyncio.create_task(ensure_partitions(conn, later, 0))
            await asyncio.sleep(0.3)
            assert not creating.done()
        finally:
            await holder.execute("SELECT pg_advisory_unlock($1)", PARTITION_LOCK)
        assert await asyncio.wait_for(creating, 5) == [partition_name(later)]


async def test_concurrent_ensures_create_each_partition_once(pool: asyncpg.Pool[Any]) -> None:
    first = add_months(current_month(), 3)
    async with pool.acquire() as one, pool.acquire() as two:
        # One caller creates inside a transaction it keeps open; the other waits for its lock,
        # then finds the partitions made and makes none.
        async with one.transaction():
            made = await ensure_partitions(one, first, 2)
            other = asyncio.create_task(ensure_partitions(two, first, 2))
            await asyncio.sleep(0.3)
            assert not other.done()
        assert await asyncio.wait_for(other, 5) == []
    assert made == [partition_name(add_months(first, k)) for k in range(3)]

    # And any number at once, without a transaction of their own: each created exactly once.
    later = add_months(first, 3)

    async def ensure() -> list[str]:
        async with pool.acquire() as conn:
            return await ensure_partitions(conn, later, 2)

    results = await asyncio.gather(*(ensure() for _ in range(6)))
    created = sorted(name for names in results for name in names)
    assert created == [partition_name(add_months(later, k)) for k in range(3)]


async def test_an_archived_month_gets_no_partition_and_no_event(pool: asyncpg.Pool[Any]) -> None:
    month = add_months(current_month(), 9)
    async with pool.acquire() as conn:
        await conn.execute(
            "INSERT INTO archived_partitions (month, partition_name, file_name, sha256,"
            " event_count, streams) VALUES ($1, $2, 'x.jsonl', $3, 0, '{}')",
            month,
            partition_name(month),
            bytes(32),
        )
        assert await ensure_partitions(conn, month, 0) == []
        assert month not in await attached_months(conn)
        with pytest.raises(asyncpg.PostgresError, match="no partition of relation"):
            async with conn.transaction():
                await append_batch(conn, [callback("vm-x", "queued", month_start(month))])


async def test_a_table_in_the_way_of_a_partition_is_named(pool: asyncpg.Pool[Any]) -> None:
    month = add_months(current_month(), 10)
    async with pool.acquire() as conn:
        await conn.execute(f"CREATE TABLE {partition_name(month)} (x int)")
        with pytest.raises(asyncpg.DuplicateTableError, match="is not a partition of events"):
            await ensure_partitions(conn, month, 0)


async def test_months_are_utc_months_whatever_the_session_time_zone(
    pool: asyncpg.Pool[Any],
) -> None:
    month = add_months(current_month(), 4)
    async with pool.acquire() as conn:
        await conn.execute("SET TimeZone = 'Pacific/Kiritimati'")  # UTC+14
        await ensure_partitions(conn, add_months(month, -1), 1)
        boundary = month_start(month)
        async with conn.transaction():
            await append_batch(
                conn,
                [
                    callback("vm-edge", "queued", boundary - timedelta(microseconds=1)),
                    callback("vm-edge", "running", boundary),
                ],
            )
        rows = await conn.fetch(
            "SELECT tableoid::regclass::text AS partition FROM events WHERE stream_id = $1"
            " ORDER BY stream_position",
            "job-vm-edge",
        )
    assert [r["partition"] for r in rows] == [
        partition_name(add_months(month, -1)),
        partition_name(month),
    ]

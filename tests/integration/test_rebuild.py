"""The replay's swap: short, retried behind a long reader without losing what it caught up on,
given up cleanly, and one replay at a time; and the fold under it: a failing fold frees its
connection, and a first pass folds as event by event does."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, NamedTuple

import asyncpg
import pytest

from events.locks import REPLAY_LOCK
from events.models import Foldable
from projections.base import Projection
from projections.folding import Fold
from projections.registry import PROJECTIONS
from projections.replay import ReplayError, rebuild
from tests.e2e.test_replay import folded
from tests.workload import append, aside_tables, callback, head, jobtrail, lifecycle, snapshot


async def test_a_swap_blocked_by_a_long_reader_retries_and_keeps_what_it_caught_up(
    pool: asyncpg.Pool[Any],
) -> None:
    await append(pool, lifecycle(jobs=20, per_job=10))
    await rebuild(pool)
    reader = await pool.acquire()
    try:
        transaction = reader.transaction()
        await transaction.start()
        await reader.fetch("SELECT * FROM job_status")  # holds the table until it ends
        task = asyncio.create_task(rebuild(pool, swap_timeout_s=0.1, swap_attempts=20))
        await asyncio.sleep(0.25)  # a swap or two failed on the reader's lock
        # Arrives between tries: one that fails folds and writes it, and rolls that back.
        await append(pool, [callback("vm-00003", "succeeded", datetime.now(UTC))])
        await append(pool, [callback("vm-new", "queued", datetime.now(UTC))])
        await asyncio.sleep(0.3)
        assert not task.done()
        await transaction.rollback()
    finally:
        await pool.release(reader)
    rebuilt = await asyncio.wait_for(task, 10)
    assert rebuilt.position == await head(pool) == 202
    state = await snapshot(pool)
    assert {t: state[t] for t in ("job_status", "job_heartbeat")} == await folded(pool)
    assert set(state["checkpoints"].values()) == {202}
    statuses = {row["job_id"]: row["status"] for row in state["job_status"]}
    assert statuses["vm-00003"] == "succeeded" and statuses["vm-new"] == "queued"


async def test_a_swap_that_never_gets_its_locks_gives_up_and_changes_nothing(
    pool: asyncpg.Pool[Any],
) -> None:
    await append(pool, lifecycle(jobs=5, per_job=4))
    before = await snapshot(pool)  # nothing projected yet
    async with pool.acquire() as reader, reader.transaction():
        await reader.fetch("SELECT * FROM job_heartbeat")
        with pytest.raises(ReplayError, match="could not swap"):
            await rebuild(pool, swap_timeout_s=0.05, swap_attempts=3)
    assert await snapshot(pool) == before
    await rebuild(pool)  # and the next one cleans up and succeeds
    assert await aside_tables(pool) == []
    assert (await snapshot(pool))["checkpoints"] == {"job_status": 20, "job_heartbeat": 20}


async def test_one_replay_at_a_time(
    pool: asyncpg.Pool[Any], database_url: str, tmp_path: Path
) -> None:
    await append(pool, lifecycle(jobs=2, per_job=2))
    async with pool.acquire() as other:
        await other.execute("SELECT pg_advisory_lock($1)", REPLAY_LOCK)
        try:
            with pytest.raises(ReplayError, match="another replay"):
                await rebuild(pool)
            busy = await jobtrail("replay", database_url=database_url, cwd=tmp_path)
        finally:
            await other.execute("SELECT pg_advisory_unlock($1)", REPLAY_LOCK)
    assert busy.code == 2, busy
    assert "another replay is running" in busy.stderr and "Traceback" not in busy.stderr
    assert (await rebuild(pool)).position == 4


class Seen(NamedTuple):
    job_id: str
    events: int


def fails_at_the_25th(state: Seen | None, event: Foldable) -> Seen:
    if event.position == 25:
        raise RuntimeError("fold failed at 25")
    return Seen(event.data["job_id"], (state.events if state else 0) + 1)


async def test_a_fold_failing_mid_log_raises_its_error_and_frees_the_connection(
    pool: asyncpg.Pool[Any],
) -> None:
    # The log is read a page ahead of the fold; the page in flight must not outlive the fold.
    await append(pool, lifecycle(jobs=10, per_job=5))
    failing = Projection(
        "seen", Seen, key_of=lambda e: str(e.data["job_id"]), apply=fails_at_the_25th
    )
    async with pool.acquire() as conn:
        with pytest.raises(RuntimeError, match="fold failed at 25"):
            async with conn.transaction(isolation="repeatable_read"):
                await Fold([failing]).run(conn, page=10)
        assert await conn.fetchval("SELECT count(*) FROM events") == 50


async def test_a_first_pass_folds_as_event_by_event_does(pool: asyncpg.Pool[Any]) -> None:
    # A replay's first pass tracks nothing and takes a leaner loop than apply's; the states,
    # and the count of events taken, must come out the same.
    await append(pool, lifecycle(jobs=30, per_job=7))
    await append(pool, [callback("vm-first-heard-failing", "failed", datetime.now(UTC))])
    untracked, tracked = Fold(PROJECTIONS), Fold(PROJECTIONS)
    untracked.track_changes = False
    async with pool.acquire() as conn:
        await untracked.run(conn, page=16)
        await tracked.run(conn, page=16)
    assert untracked.states == tracked.states
    assert untracked.states["job_status"]["vm-first-heard-failing"].status == "failed"
    assert untracked.events == tracked.events == untracked.position == 211

"""The projector applies each event exactly once, survives being killed at the worst moment,
and a replay of the whole log reproduces the live read models row for row."""

from __future__ import annotations

import asyncio
import contextlib
import random
import re
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg
import pytest

from events.appender import Appender
from events.catalog import HEARTBEAT_RECORDED, STATUS_REPORTED, TIMED_OUT, job_stream
from events.models import FoldedEvent, NewEvent
from projections.registry import PROJECTIONS
from projections.replay import fold_log, rebuild
from projections.runner import Projector, apply_batch
from projections.sql import batch_sql
from tests.helpers import running
from tests.workload import append as workload_append
from tests.workload import callback

STATUSES = [
    "queued",
    "provisioning",
    "running",
    "heartbeat",
    "heartbeat",
    "succeeded",
    "failed",
    "cancelled",
    "completed",
    "success",
    "failure",
    "error",
]


def mixed_workload(seed: int, count: int) -> list[NewEvent]:
    """Callbacks for a dozen jobs in a shuffled order: late, duplicate and out-of-order ones,
    aliases, heartbeats, watchdog timeouts and retried deliveries."""
    rng = random.Random(seed)
    events = []
    for i in range(count):
        job_id = f"job-{rng.randrange(12)}"
        status = rng.choice(STATUSES)
        kind = HEARTBEAT_RECORDED if status == "heartbeat" else STATUS_REPORTED
        if rng.random() < 0.05:
            kind, status = TIMED_OUT, "timed_out"
        data: dict[str, Any] = {"job_id": job_id, "status": status}
        if rng.random() < 0.5:
            data.update(run_id=rng.randrange(1, 5), run_attempt=1, agent_id=f"agent-{i % 3}")
        if rng.random() < 0.3:
            data["message"] = f"step {i}"
        key = f"delivery-{rng.randrange(count)}" if rng.random() < 0.3 else None
        events.append(
            NewEvent(
                stream_id=job_stream(job_id),
                type=kind,
                data=data,
                metadata={"scheme": "test"},
                received_at=datetime.now(UTC),
                idempotency_key=key,
            )
        )
    return events


async def append_all(pool: asyncpg.Pool[Any], events: Sequence[NewEvent]) -> None:
    appender = Appender(pool)
    async with running(appender.run()):
        await asyncio.gather(*(appender.append([e]) for e in events))


async def table_rows(pool: asyncpg.Pool[Any]) -> dict[str, list[dict[str, Any]]]:
    async with pool.acquire() as conn:
        return {
            p.name: [dict(r) for r in await conn.fetch(f"SELECT * FROM {p.name} ORDER BY job_id")]
            for p in PROJECTIONS
        }


async def folded_rows(
    pool: asyncpg.Pool[Any], until_position: int | None = None
) -> dict[str, list[dict[str, Any]]]:
    """What a fresh in-memory replay of the log gives, as table rows."""
    async with pool.acquire() as conn:
        states, _ = await fold_log(conn, until_position=until_position)
    return {
        p.name: [
            dict(zip(p.columns, p.to_row(states[p.name][key]), strict=True))
            for key in sorted(states[p.name])
        ]
        for p in PROJECTIONS
    }


async def checkpoints(pool: asyncpg.Pool[Any]) -> dict[str, int]:
    async with pool.acquire() as conn:
        rows = await conn.fetch("SELECT name, position FROM projection_checkpoints")
        head = await conn.fetchval("SELECT coalesce(max(position), 0) FROM events")
    return {"head": head, **{r["name"]: r["position"] for r in rows}}


class Crash(Exception):
    pass


async def test_a_crash_mid_batch_applies_nothing_twice(
    pool: asyncpg.Pool[Any],
) -> None:
    await append_all(pool, mixed_workload(seed=1, count=120))
    crashes = 0

    async def crash_once(_events: Sequence[FoldedEvent]) -> None:
        nonlocal crashes
        crashes += 1
        if crashes == 2:  # the second batch: folded, about to write its rows and checkpoints
            raise Crash

    doomed = Projector(pool, batch_size=25, before_write=crash_once)
    with pytest.raises(Crash):
        await doomed.catch_up()
    # The first batch committed whole; of the second, neither rows nor checkpoint remain.
    first_batch_end = (await checkpoints(pool))["job_status"]
    assert first_batch_end == 25
    assert await table_rows(pool) == await folded_rows(pool, until_position=first_batch_end)

    await Projector(pool, batch_size=25).catch_up()
    assert await table_rows(pool) == await folded_rows(pool)
    marks = await checkpoints(pool)
    assert marks["job_status"] == marks["job_heartbeat"] == marks["head"]


async def test_a_projector_cancelled_mid_batch_is_rolled_back_and_resumes(
    pool: asyncpg.Pool[Any],
) -> None:
    await append_all(pool, mixed_workload(seed=2, count=80))
    stuck = asyncio.Event()

    async def hang(_events: Sequence[FoldedEvent]) -> None:
        stuck.set()
        await asyncio.Event().wait()

    task = asyncio.create_task(Projector(pool, batch_size=30, before_write=hang).run())
    await asyncio.wait_for(stuck.wait(), 5)
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task
    async with pool.acquire() as conn:
        assert await conn.fetchval("SELECT count(*) FROM job_status") == 0

    await Projector(pool, batch_size=30).catch_up()
    assert await table_rows(pool) == await folded_rows(pool)


async def test_two_projectors_racing_apply_each_event_once(pool: asyncpg.Pool[Any]) -> None:
    events = mixed_workload(seed=3, count=150)
    await append_all(pool, events)
    await asyncio.gather(*(Projector(pool, batch_size=10).catch_up() for _ in range(3)))
    rows = await table_rows(pool)
    assert rows == await folded_rows(pool)
    async with pool.acquire() as conn:
        stored = await conn.fetchval("SELECT count(*) FROM events")
    assert sum(r["event_count"] for r in rows["job_status"]) == stored


async def test_a_batch_overtaken_while_it_folded_writes_nothing_and_starts_again(
    pool: asyncpg.Pool[Any],
) -> None:
    # A new leader's projector applies the same events while the old one is still folding
    # them: the old one's write must find the checkpoints moved, not overwrite the rows with
    # states folded from before and move the checkpoints back.
    events = mixed_workload(seed=16, count=90)
    await append_all(pool, events)
    other = Projector(pool, batch_size=40)
    overtaken = 0

    async def overtake_once(_events: Sequence[FoldedEvent]) -> None:
        nonlocal overtaken
        if overtaken == 0:
            overtaken += 1
            assert await other.catch_up() == len(events)

    await Projector(pool, batch_size=30, before_write=overtake_once).catch_up()
    assert overtaken == 1
    rows = await table_rows(pool)
    assert rows == await folded_rows(pool)
    assert sum(r["event_count"] for r in rows["job_status"]) == len(events)
    marks = await checkpoints(pool)
    assert marks["job_status"] == marks["job_heartbeat"] == marks["head"]


@pytest.mark.parametrize("seed", [4, 5, 6])
async def test_replay_reproduces_the_live_projections_row_for_row(
    pool: asyncpg.Pool[Any], seed: int
) -> None:
    events = mixed_workload(seed=seed, count=300)
    projector = Projector(pool, batch_size=7, poll_interval=0.01)
    async with running(projector.run()):
        for start in range(0, len(events), 50):
            await append_all(pool, events[start : start + 50])
        await projector.catch_up()
    live = await table_rows(pool)
    assert live["job_status"], "the workload should have produced jobs"

    last = (await rebuild(pool)).position
    assert await table_rows(pool) == live
    marks = await checkpoints(pool)
    assert last == marks["head"] == marks["job_status"] == marks["job_heartbeat"]


async def test_events_appended_during_a_replay_are_not_lost(pool: asyncpg.Pool[Any]) -> None:
    await append_all(pool, mixed_workload(seed=7, count=200))
    projector = Projector(pool, poll_interval=0.01)
    appender = Appender(pool)
    async with running(projector.run(), appender.run()):
        more = mixed_workload(seed=8, count=100)
        writes = asyncio.gather(*(appender.append([e]) for e in more))
        await rebuild(pool)
        await writes
        await projector.catch_up()
    assert await table_rows(pool) == await folded_rows(pool)
    marks = await checkpoints(pool)
    assert marks["job_status"] == marks["job_heartbeat"] == marks["head"]


async def test_a_running_jobs_heartbeats_update_its_rows_without_touching_an_index(
    pool: asyncpg.Pool[Any],
) -> None:
    # Heartbeats are nearly every event: a HOT update (the row rewritten in its page, no index
    # entry added) is what keeps the projector's share of PostgreSQL's work small.
    start = datetime.now(UTC)
    beat = [callback("vm-hot", "heartbeat", start + timedelta(seconds=i), run_id=7) for i in (1, 2)]
    await workload_append(pool, [callback("vm-hot", "running", start, run_id=7), beat[0]])
    async with pool.acquire() as conn:
        async with conn.transaction():
            await apply_batch(conn, PROJECTIONS)
        await workload_append(pool, [beat[1]])
        async with conn.transaction():
            await apply_batch(conn, PROJECTIONS)
            updates = await conn.fetch(
                "SELECT relname, n_tup_upd, n_tup_hot_upd FROM pg_stat_xact_user_tables"
                " WHERE relname = any($1) ORDER BY relname",
                ["job_status", "job_heartbeat"],
            )
    assert [tuple(r) for r in updates] == [("job_heartbeat", 1, 1), ("job_status", 1, 1)]


async def test_a_projector_batch_plans_its_checkpoint_statements_once(
    pool: asyncpg.Pool[Any],
) -> None:
    # Every batch locks and moves the checkpoints: planning them afresh each time cost
    # PostgreSQL ~160 µs a batch. After its first five custom plans a statement whose plan
    # does not depend on its parameters must run on the cached generic one.
    start = datetime.now(UTC)
    async with pool.acquire() as conn:
        for i in range(10):
            await workload_append(pool, [callback("vm-plan", "heartbeat", start + timedelta(i))])
            async with conn.transaction():
                assert (await apply_batch(conn, PROJECTIONS))[0] == 1
        plans = await conn.fetch(
            "SELECT statement, generic_plans, custom_plans FROM pg_prepared_statements"
            " WHERE statement LIKE '%projection_checkpoints%'"
            " AND statement NOT LIKE '%pg_prepared_statements%'"
        )
    assert len(plans) == 2, plans
    for statement in plans:
        assert statement["generic_plans"] + statement["custom_plans"] == 10, statement
        assert statement["custom_plans"] <= 5, statement


async def test_a_batch_writes_rows_by_key_probes_whatever_size_the_tables_were_planned_at(
    pool: asyncpg.Pool[Any],
) -> None:
    # A new database's first batches plan the write while the tables are empty, and each
    # connection keeps that generic plan once the tables have grown. A plan that hashed the
    # batch and scanned the table went on scanning 5,000 jobs a batch (bench/README.md).
    write = batch_sql(tuple(PROJECTIONS)).write
    positions = 2 * len(PROJECTIONS)
    arrays = max(int(n) for n in re.findall(r"\$(\d+)", write)) - positions
    arguments = positions * ["0"] + arrays * ["'{}'"]
    async with pool.acquire() as conn, conn.transaction():
        assert await conn.fetchval("SELECT count(*) FROM job_status") == 0
        await conn.execute("SET LOCAL plan_cache_mode = force_generic_plan")
        await conn.execute(f"PREPARE write AS {write}")
        lines = await conn.fetch(f"EXPLAIN EXECUTE write({', '.join(arguments)})")
        await conn.execute("DEALLOCATE write")
    plan = "\n".join(line[0] for line in lines)
    for projection in PROJECTIONS:
        assert f"Seq Scan on {projection.name}" not in plan, plan
        assert f"Index Scan using {projection.name}_pkey" in plan, plan


async def test_rebuilt_tables_keep_their_index_names_and_fillfactor(
    pool: asyncpg.Pool[Any],
) -> None:
    indexes = "SELECT indexname FROM pg_indexes WHERE tablename = any($1) ORDER BY indexname"
    options = "SELECT relname, reloptions FROM pg_class WHERE relname = any($1) ORDER BY relname"
    names = [p.name for p in PROJECTIONS]
    async with pool.acquire() as conn:
        before = [r["indexname"] for r in await conn.fetch(indexes, names)]
        assert "job_status_updated_at_idx" not in before  # would stop heartbeats' HOT updates
        assert [tuple(r) for r in await conn.fetch(options, names)] == [
            ("job_heartbeat", ["fillfactor=75"]),
            ("job_status", ["fillfactor=75"]),
        ]
    await rebuild(pool)
    await rebuild(pool)
    async with pool.acquire() as conn:
        assert [r["indexname"] for r in await conn.fetch(indexes, names)] == before
        assert [tuple(r) for r in await conn.fetch(options, names)] == [
            ("job_heartbeat", ["fillfactor=75"]),
            ("job_status", ["fillfactor=75"]),
        ]


async def test_a_projector_whose_connections_died_still_stops_when_cancelled(
    pool: asyncpg.Pool[Any], database_url: str
) -> None:
    """Regression: clean-up on a dead connection used to swallow the cancellation, and the
    service then never finished shutting down."""
    for _ in range(5):
        task = asyncio.create_task(Projector(pool, poll_interval=0.05).run())
        await asyncio.sleep(0.2)  # listening, idle
        killer = await asyncpg.connect(database_url)
        await killer.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
            " WHERE datname = current_database() AND pid <> pg_backend_pid()"
        )
        await killer.close()
        task.cancel()
        done, _ = await asyncio.wait([task], timeout=5)
        if not done:
            task.print_stack()
        assert done, "the projector ignored its cancellation"


async def test_a_projector_never_folds_onto_rows_another_has_written_since(
    pool: asyncpg.Pool[Any],
) -> None:
    # Each projector keeps the rows it last wrote, to spare reading them back. Once another
    # projector (a new leader) has moved the checkpoint on, what it kept is out of date.
    first, second = Projector(pool), Projector(pool)
    events = mixed_workload(seed=12, count=120)
    for start, projector in zip(range(0, 120, 30), (first, second, first, second), strict=True):
        await append_all(pool, events[start : start + 30])
        await projector.catch_up()
        assert await table_rows(pool) == await folded_rows(pool)


async def test_a_projector_never_folds_onto_rows_a_rebuild_has_replaced(
    pool: asyncpg.Pool[Any],
) -> None:
    projector = Projector(pool)
    await append_all(pool, mixed_workload(seed=13, count=60))
    await projector.catch_up()
    # The rebuild folds these too: the swapped-in tables are ahead of what the projector kept.
    await append_all(pool, mixed_workload(seed=14, count=60))
    await rebuild(pool)
    await append_all(pool, mixed_workload(seed=15, count=60))
    await projector.catch_up()
    assert await table_rows(pool) == await folded_rows(pool)


async def test_projections_at_different_checkpoints_each_apply_an_event_once(
    pool: asyncpg.Pool[Any],
) -> None:
    await append_all(pool, mixed_workload(seed=9, count=100))
    await Projector(pool).catch_up()
    # Rebuild one projection alone while more events arrive: the two checkpoints now differ.
    job_status = next(p for p in PROJECTIONS if p.name == "job_status")
    await append_all(pool, mixed_workload(seed=10, count=60))
    await rebuild(pool, [job_status])
    await append_all(pool, mixed_workload(seed=11, count=40))
    await Projector(pool, batch_size=15).catch_up()
    assert await table_rows(pool) == await folded_rows(pool)
    marks = await checkpoints(pool)
    assert marks["job_status"] == marks["job_heartbeat"] == marks["head"]

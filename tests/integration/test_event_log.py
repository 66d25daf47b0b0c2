"""The event log's guarantees against a real PostgreSQL: serialised appends (no reader ever
skips a late commit), idempotency across writers, gap-free streams, an immutable table."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Sequence
from datetime import UTC, datetime
from typing import Any

import asyncpg
import pytest

from events.appender import Appender
from events.catalog import STATUS_REPORTED, job_stream
from events.hashing import check_chain
from events.models import FoldedEvent, NewEvent
from events.store import Q, folded, read_all, read_stream, recorded, register_codecs, scan
from projections.runner import Projector
from tests import workload
from tests.helpers import running, wait_for_projection


def callback(job_id: str, status: str = "running", key: str | None = None) -> NewEvent:
    return NewEvent(
        stream_id=job_stream(job_id),
        type=STATUS_REPORTED,
        data={"job_id": job_id, "status": status},
        metadata={"scheme": "test"},
        received_at=datetime.now(UTC),
        idempotency_key=key,
    )


@contextlib.asynccontextmanager
async def second_process_pool(database_url: str) -> AsyncIterator[asyncpg.Pool[Any]]:
    """Another pool on the same database: what a second worker or host would have."""
    async with asyncpg.create_pool(database_url, init=register_codecs, min_size=1) as pool:
        yield pool


async def test_appends_chain_each_stream_without_gaps(pool: asyncpg.Pool[Any]) -> None:
    appender = Appender(pool)
    async with running(appender.run()):
        results = await asyncio.gather(
            *(appender.append([callback(f"job-{i % 3}")]) for i in range(30))
        )
    assert len({r[0].position for r in results}) == 30
    async with pool.acquire() as conn:
        for i in range(3):
            events = await read_stream(conn, job_stream(f"job-{i}"))
            assert [e.stream_position for e in events] == list(range(1, 11))
            assert all(check_chain(events))


async def test_one_request_with_several_events_is_atomic_and_ordered(
    pool: asyncpg.Pool[Any],
) -> None:
    appender = Appender(pool)
    async with running(appender.run()):
        results = await appender.append([callback("a"), callback("b"), callback("a")])
    assert [r.position for r in results] == sorted(r.position for r in results)
    assert not any(r.duplicate for r in results)


async def test_a_retry_racing_its_original_across_two_processes_is_stored_once(
    pool: asyncpg.Pool[Any], database_url: str
) -> None:
    async with second_process_pool(database_url) as other_pool:
        first, second = Appender(pool), Appender(other_pool)
        async with running(first.run(), second.run()):
            results = await asyncio.gather(
                *(
                    (first if i % 2 else second).append([callback("vm", key="delivery-1")])
                    for i in range(50)
                )
            )
    answers = {(r[0].event_id, r[0].position) for r in results}
    assert len(answers) == 1
    assert sum(not r[0].duplicate for r in results) == 1
    async with pool.acquire() as conn:
        assert await conn.fetchval("SELECT count(*) FROM events") == 1


async def test_the_same_key_twice_in_one_batch_is_stored_once(pool: asyncpg.Pool[Any]) -> None:
    appender = Appender(pool)
    async with running(appender.run()):
        one, two = await appender.append([callback("a", key="k"), callback("a", key="k")])
    assert (one.event_id, one.position, one.duplicate) == (two.event_id, two.position, False)
    assert two.duplicate


async def lock_waiters(pool: asyncpg.Pool[Any]) -> int:
    async with pool.acquire() as conn:
        return int(
            await conn.fetchval(
                "SELECT count(*) FROM pg_stat_activity"
                " WHERE wait_event_type = 'Lock' AND wait_event = 'advisory'"
            )
        )


async def test_a_slow_commit_holds_later_appends_back_so_no_reader_skips_it(
    pool: asyncpg.Pool[Any], database_url: str
) -> None:
    """The skipped-event bug: a transaction that drew a lower position commits after a higher
    one is visible. Our appends are serialised, so the later appends must wait for the slow
    one, and the projector must apply every event exactly once."""
    paused, release = asyncio.Event(), asyncio.Event()

    async def hold_open(_events: Sequence[NewEvent]) -> None:
        paused.set()
        await release.wait()

    async with second_process_pool(database_url) as other_pool:
        slow = Appender(pool, before_commit=hold_open)
        fast = Appender(other_pool)
        projector = Projector(pool, poll_interval=0.05)
        async with running(slow.run(), fast.run(), projector.run()):
            slow_append = asyncio.create_task(slow.append([callback("slow")]))
            await asyncio.wait_for(paused.wait(), 5)
            fast_appends = [
                asyncio.create_task(fast.append([callback(f"fast-{i}")])) for i in range(5)
            ]
            # The fast appender should now be blocked on the append lock inside PostgreSQL.
            for _ in range(100):
                if await lock_waiters(pool) or all(t.done() for t in fast_appends):
                    break
                await asyncio.sleep(0.01)
            await asyncio.sleep(0.2)  # time for a (wrongly) unblocked projector to run ahead
            blocked = await lock_waiters(pool)
            finished_early = sum(t.done() for t in fast_appends)
            release.set()
            [slow_result] = await slow_append
            fast_results = [r for t in fast_appends for r in await t]
            await wait_for_projection(pool)

    # Every event applied exactly once: a skipped late commit would leave "slow" out.
    async with pool.acquire() as conn:
        counts = {
            r["job_id"]: r["event_count"]
            for r in await conn.fetch("SELECT job_id, event_count FROM job_status")
        }
    assert counts == {"slow": 1, **{f"fast-{i}": 1 for i in range(5)}}
    # And that is because the later appends waited for the slow one to commit.
    assert (blocked, finished_early) == (1, 0)
    assert all(slow_result.position < r.position for r in fast_results)


@pytest.mark.parametrize(
    "statement",
    [
        "UPDATE events SET type = 'x'",
        "DELETE FROM events",
        "TRUNCATE events",
        "UPDATE idempotency_keys SET key = 'x'",
        "DELETE FROM idempotency_keys",
    ],
)
async def test_the_database_refuses_changes_to_stored_events(
    pool: asyncpg.Pool[Any], statement: str
) -> None:
    appender = Appender(pool)
    async with running(appender.run()):
        await appender.append([callback("a", key="k")])
    async with pool.acquire() as conn:
        with pytest.raises(asyncpg.InsufficientPrivilegeError, match="append-only"):
            await conn.execute(statement)
        assert await conn.fetchval("SELECT count(*) FROM events") == 1


async def test_integers_of_any_size_read_back_exactly(pool: asyncpg.Pool[Any]) -> None:
    """jsonb keeps integers of any size; reading them back must not turn one into a float
    (the fast JSON decoder does, silently, past 64 bits and below -2**63)."""
    integers = [
        -9223372036854775809,  # one below -2**63: 19 digits
        -9999999999999999999,
        -(2**63),
        2**63,
        2**64 - 1,
        2**64,
        -(2**64),
        10**30,
        -(10**300),
    ]
    # One integer an event: a document is decoded one way or the other as a whole.
    events = [
        NewEvent(
            stream_id=job_stream("integers"),
            type=STATUS_REPORTED,
            data={"job_id": "integers", "status": "running", "n": n},
            metadata={"scheme": "test", "n": n},
            received_at=datetime.now(UTC),
        )
        for n in integers
    ]
    appender = Appender(pool)
    async with running(appender.run()):
        await appender.append(events)
    async with pool.acquire() as conn:
        stored = await read_stream(conn, job_stream("integers"))
    for document in ("data", "metadata"):
        read = [getattr(event, document)["n"] for event in stored]
        assert read == integers
        assert all(type(n) is int for n in read)
    assert check_chain(stored) == [True] * len(integers)


async def test_hashes_survive_the_jsonb_round_trip(pool: asyncpg.Pool[Any]) -> None:
    """jsonb keeps values, not spelling: numbers and strings that PostgreSQL rewrites must
    still verify when read back."""
    awkward = [
        1e300,
        -0.0,
        0.0,
        1e-7,
        5e-324,
        1.5,
        2.0,
        1.2345678901234568e17,
        0.1,
        1e16,
        1.7976931348623157e308,
        -1e-300,
        -2.5e20,
        9007199254740991,
        0,
        10,
        100,
    ]
    event = NewEvent(
        stream_id=job_stream("numbers"),
        type=STATUS_REPORTED,
        data={
            "job_id": "numbers",
            "status": "running",
            "details": {"n": awkward},
            "text": 'é 😀 \\ " \u2028 <b>',
            "": {"nested": [[], {}]},
        },
        metadata={"scheme": "test", "note": "Ünïcode"},
        received_at=datetime.now(UTC),
    )
    appender = Appender(pool)
    async with running(appender.run()):
        await appender.append([event])
    async with pool.acquire() as conn:
        [stored] = await read_stream(conn, job_stream("numbers"))
    assert check_chain([stored]) == [True]


async def test_the_fold_reads_select_the_fields_of_a_folded_event_in_order(
    pool: asyncpg.Pool[Any],
) -> None:
    """read_all and read_range rows are turned into events positionally (``store.folded``),
    with the values the whole event has under the same names."""
    appender = Appender(pool)
    async with running(appender.run()):
        await appender.append([callback("order")])
    async with pool.acquire() as conn:
        [whole] = [recorded(r) for r in await conn.fetch(Q["read_range_raw"], 0, 10, 10)]
        for query, args in ((Q["read_all"], (0, 10, None)), (Q["read_range"], (0, 10, 10, None))):
            [row] = await conn.fetch(query, *args)
            assert list(row.keys()) == list(FoldedEvent._fields)
            assert folded(row) == FoldedEvent(*(getattr(whole, f) for f in FoldedEvent._fields))


async def test_the_fold_reads_decode_metadata_only_for_the_types_asked_for(
    pool: asyncpg.Pool[Any],
) -> None:
    await workload.append(pool, [callback("meta")])
    async with pool.acquire() as conn:
        [whole] = await read_all(conn, 0, 10)
        [trimmed] = await read_all(conn, 0, 10, metadata_of=())
        [asked] = await read_all(conn, 0, 10, metadata_of=[STATUS_REPORTED])
        [[paged]] = [page async for page in scan(conn, metadata_of=["job.other"])]
    assert whole.metadata == asked.metadata == {"scheme": "test"}
    assert trimmed.metadata == paged.metadata == {}
    # Everything else, the data above all, is read whole.
    assert trimmed._replace(metadata=whole.metadata) == whole
    assert paged._replace(metadata=whole.metadata) == whole

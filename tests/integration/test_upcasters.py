"""Upcasting: a v1 event stored before a v2 of its type existed is folded as a v2 by every reader
that feeds a fold (replay, the live projector, verify), while the log keeps it, and its hash,
as stored."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any, NamedTuple

import asyncpg
import pytest

from events.hashing import check_chain
from events.models import Foldable, NewEvent, RecordedEvent, StreamId
from events.store import read_stream
from events.upcasters import UPCASTERS, Upcasters
from projections.audit import compare
from projections.base import Projection
from projections.replay import fold_log
from projections.runner import Projector
from tests.workload import append

PAINTED = "test.painted"  # v1: {"item", "colour"}; v2 renamed the field: {"item", "color"}


class Paint(NamedTuple):
    item: str
    color: str
    version: int  # the version the fold was given


def painted_key(event: Foldable) -> str | None:
    return str(event.data["item"]) if event.type == PAINTED else None


def paint(_state: Paint | None, event: Foldable) -> Paint:
    return Paint(event.data["item"], event.data["color"], event.version)  # v2 only


PAINT = Projection("test_paint", Paint, key_of=painted_key, apply=paint)


def colour_to_color(data: dict[str, Any]) -> dict[str, Any]:
    data["color"] = data.pop("colour")
    return data


V2 = Upcasters().register(PAINTED, 1, colour_to_color)


def painted(item: str, version: int, **data: str) -> NewEvent:
    return NewEvent(
        stream_id=StreamId(f"paint-{item}"),
        type=PAINTED,
        data={"item": item, **data},
        metadata={"scheme": "test"},
        received_at=datetime.now(UTC),
        version=version,
    )


async def test_a_v1_event_is_folded_as_v2_by_replay_projector_and_verify(
    pool: asyncpg.Pool[Any],
) -> None:
    await append(pool, [painted("a", 1, colour="red"), painted("b", 2, color="blue")])
    as_v2 = {"a": Paint("a", "red", 2), "b": Paint("b", "blue", 2)}

    # Replay's reader.
    async with pool.acquire() as conn:
        states, last = await fold_log(conn, [PAINT], upcasters=V2)
    assert states["test_paint"] == as_v2 and last == 2

    # The live projector's reader, into a real table.
    async with pool.acquire() as conn:
        await conn.execute(
            "CREATE TABLE test_paint (item text PRIMARY KEY, color text NOT NULL,"
            " version bigint NOT NULL)"
        )
        await conn.execute("INSERT INTO projection_checkpoints (name) VALUES ('test_paint')")
    await Projector(pool, [PAINT], upcasters=V2).catch_up()
    async with pool.acquire() as conn:
        rows = await conn.fetch("SELECT * FROM test_paint ORDER BY item")
    assert [PAINT.from_row(r) for r in rows] == list(as_v2.values())

    # verify's reader: the chains hold (hashed as stored) and the table equals a replay.
    async with pool.acquire() as conn:
        result = await compare(conn, [PAINT], chains=True, upcasters=V2)
    assert result.all_problems() == []
    assert (result.events, result.streams) == (2, 2)

    # The log itself still holds the v1 event as it was stored, and its hash checks out.
    async with pool.acquire() as conn:
        [stored] = await read_stream(conn, "paint-a")
    assert (stored.version, stored.data) == (1, {"item": "a", "colour": "red"})
    assert check_chain([stored]) == [True]

    # The production registry has no such step: that fold would see the v1 payload.
    assert UPCASTERS.upcast(stored) is stored
    async with pool.acquire() as conn:
        with pytest.raises(KeyError, match="color"):
            await fold_log(conn, [PAINT])


def recorded(version: int, data: dict[str, Any]) -> RecordedEvent:
    return RecordedEvent(
        position=1,
        event_id=painted("x", version).event_id,
        stream_id=StreamId("paint-x"),
        stream_position=1,
        type=PAINTED,
        version=version,
        data=data,
        metadata={},
        received_at=datetime.now(UTC),
        prev_hash=bytes(32),
        hash=bytes(32),
    )


def test_steps_chain_and_leave_the_stored_event_alone() -> None:
    v3 = V2.register(PAINTED, 2, lambda d: {**d, "color": d["color"].upper()})
    original = recorded(1, {"item": "x", "colour": "red"})
    upcast = v3.upcast(original)
    assert (upcast.version, upcast.data) == (3, {"item": "x", "color": "RED"})
    assert (original.version, original.data) == (1, {"item": "x", "colour": "red"})
    assert v3.upcast(recorded(3, {"item": "x", "color": "RED"})).version == 3
    assert V2.upcast(original).version == 2  # registering returned a new registry
    with pytest.raises(ValueError, match="already registered"):
        V2.register(PAINTED, 1, colour_to_color)

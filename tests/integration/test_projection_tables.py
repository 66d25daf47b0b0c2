"""Each read model's declared columns, its table (as the migrations leave it) and its SQL agree.

A column added to a projection's dataclass but not to its migration, or the other way round,
fails here rather than in the projector at run time.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import asyncpg
import pytest

from events.store import Connection
from projections.base import AnyProjection, evolve
from projections.registry import PROJECTIONS

SAMPLES: dict[str, Any] = {
    "text": "x",
    "bigint": 7,
    "timestamptz": datetime(2026, 11, 30, 12, 0, 0, 123456, tzinfo=UTC),
    "boolean": True,
}


async def table_columns(conn: Connection, table: str) -> list[tuple[str, str, bool]]:
    rows = await conn.fetch(
        """SELECT a.attname, format_type(a.atttypid, a.atttypmod) AS type, NOT a.attnotnull
             FROM pg_attribute a
            WHERE a.attrelid = $1::regclass AND a.attnum > 0 AND NOT a.attisdropped
            ORDER BY a.attnum""",
        table,
    )
    short = {"timestamp with time zone": "timestamptz"}
    return [(r[0], short.get(r[1], r[1]), r[2]) for r in rows]


@pytest.mark.parametrize("projection", PROJECTIONS, ids=lambda p: p.name)
async def test_declared_columns_match_the_table(
    projection: AnyProjection, pool: asyncpg.Pool[Any]
) -> None:
    async with pool.acquire() as conn:
        assert await table_columns(conn, projection.name) == list(projection.schema)
        key = await conn.fetchval(
            """SELECT a.attname FROM pg_index i
                 JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = i.indkey[0]
                WHERE i.indrelid = $1::regclass AND i.indisprimary""",
            projection.name,
        )
    assert key == projection.columns[0], "the first declared column is the key"


@pytest.mark.parametrize("projection", PROJECTIONS, ids=lambda p: p.name)
async def test_a_row_saved_by_the_upsert_loads_back_equal(
    projection: AnyProjection, pool: asyncpg.Pool[Any]
) -> None:
    state = projection.state_type(*(SAMPLES[pg_type] for _, pg_type, _ in projection.schema))
    changed = evolve(state, **{projection.columns[-1]: state_last(projection)})
    async with pool.acquire() as conn:
        for saved in (state, changed):  # an insert, then an update of the same key
            await conn.execute(projection.upsert_sql, *([v] for v in projection.to_row(saved)))
            [row] = await conn.fetch(projection.load_sql, [projection.to_row(saved)[0]])
            assert projection.from_row(row) == saved


def state_last(projection: AnyProjection) -> Any:
    _, pg_type, _ = projection.schema[-1]
    return {"text": "y", "bigint": 8, "boolean": False}.get(
        pg_type, datetime(2027, 1, 1, tzinfo=UTC)
    )


async def test_removing_a_column_from_the_table_only_is_caught(pool: asyncpg.Pool[Any]) -> None:
    projection = PROJECTIONS[0]
    async with pool.acquire() as conn:
        await conn.execute(
            f'ALTER TABLE "{projection.name}" DROP COLUMN "{projection.columns[-1]}"'
        )
        assert await table_columns(conn, projection.name) != list(projection.schema)
        with pytest.raises(asyncpg.UndefinedColumnError):
            await conn.fetch(projection.load_sql, ["x"])

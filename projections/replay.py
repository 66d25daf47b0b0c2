"""Rebuilding read models from the log.

A rebuild never shows a half-built table: it folds the whole log in memory, writes the result
into a fresh copy of each table, and swaps the copy in, all in one transaction. Until COMMIT,
readers keep reading the old tables; the live projector waits on the checkpoint lock and then
resumes after the rebuild's last position.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import asyncpg

from events.store import Connection, connect, head_position, read_all
from projections.base import AnyProjection, quoted
from projections.registry import PROJECTIONS
from projections.sql import Q

Progress = Callable[[int, int], None]  # (last position folded, head position)
States = dict[str, dict[str, Any]]  # projection name -> key -> state


async def fold_log(
    conn: Connection,
    projections: Sequence[AnyProjection] = PROJECTIONS,
    *,
    until_position: int | None = None,
    chunk: int = 10_000,
    progress: Progress | None = None,
) -> tuple[States, int]:
    """Fold every event up to ``until_position`` (inclusive; default: all) in memory.

    Returns the states of each projection and the position of the last event folded.
    """
    states: States = {p.name: {} for p in projections}
    head = await head_position(conn)
    last = 0
    while True:
        events = await read_all(conn, last, chunk)
        if until_position is not None:
            events = [e for e in events if e.position <= until_position]
        if not events:
            break
        for event in events:
            for projection in projections:
                projection.fold(states[projection.name], event)
        last = events[-1].position
        if progress is not None:
            progress(last, max(head, last))
    return states, last


async def rebuild(
    pool: asyncpg.Pool[Any],
    projections: Sequence[AnyProjection] = PROJECTIONS,
    *,
    progress: Progress | None = None,
) -> int:
    """Rebuild ``projections`` from position 0 and swap them in; return the last position."""
    async with connect(pool) as conn, conn.transaction():
        await conn.fetch(Q["lock_checkpoints"], [p.name for p in projections])
        states, last = await fold_log(conn, projections, progress=progress)
        for projection in projections:
            table, aside = projection.name, f"{projection.name}_rebuild"
            await conn.execute(f"DROP TABLE IF EXISTS {quoted(aside)}")
            await conn.execute(f"CREATE TABLE {quoted(aside)} (LIKE {quoted(table)} INCLUDING ALL)")
            await conn.copy_records_to_table(
                aside,
                records=[projection.to_row(s) for s in states[projection.name].values()],
                columns=list(projection.columns),
            )
            indexes = await conn.fetch(
                "SELECT indexname FROM pg_indexes WHERE schemaname = current_schema()"
                " AND tablename = $1",
                aside,
            )
            await conn.execute(f"DROP TABLE {quoted(table)}")
            await conn.execute(f"ALTER TABLE {quoted(aside)} RENAME TO {quoted(table)}")
            for row in indexes:
                index = row["indexname"]
                renamed = table + index.removeprefix(aside)
                await conn.execute(f"ALTER INDEX {quoted(index)} RENAME TO {quoted(renamed)}")
            await conn.execute(Q["save_checkpoints"], [table], [last])
        return last

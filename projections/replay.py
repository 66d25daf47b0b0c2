"""Rebuilding read models from the log beside the live ones, and swapping them in.

Who holds what, and when:

1. The whole run holds ``REPLAY_LOCK`` (a session-level advisory lock): one replay at a time per
   database. Under it, the aside tables a killed replay left behind are dropped first. A log
   whose oldest months are archived (``events.archive``, which holds the same lock) cannot be
   replayed: ``ArchivedRange`` names them.
2. The long part holds nothing that readers or the live projector wait for: create
   ``<name>_rebuild`` (``LIKE`` the live table, indexes included), stream the whole log in keyset
   pages and fold it in memory, COPY the states into the aside tables, then read on to the head
   once more and upsert the rows that changed meanwhile.
3. One short transaction: lock the checkpoint rows (``checkpoint_sql``, FOR UPDATE: the
   projector's next write waits, then finds them moved and folds again), catch up from the
   aside build's position to the head, upsert what changed, drop each live table and rename
   its aside table (and indexes) into its place, and set the checkpoints to that position.
   Readers see the old tables until COMMIT and the new ones after, never an empty or
   half-built one; the projector then resumes from the new checkpoints. ``lock_timeout``
   bounds the wait behind a long-running reader (DROP needs the table to itself); on timeout
   the transaction is retried.

Interrupted anywhere before that COMMIT (Ctrl-C, crash, kill -9), a replay leaves the live tables
and checkpoints as they were; the advisory lock dies with its session.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import asyncpg
import structlog

from events.locks import REPLAY_LOCK
from events.partitions import refuse_if_archived
from events.store import Connection, connect, head_position
from events.upcasters import UPCASTERS, Upcasters
from projections.base import AnyProjection, quoted
from projections.folding import Fold, Progress, States
from projections.registry import PROJECTIONS
from projections.sql import Q, checkpoint_sql

log = structlog.get_logger(component="replay")

ASIDE_SUFFIX = "_rebuild"
SWAP_TIMEOUT_S = 5.0  # lock_timeout of the swap transaction
SWAP_ATTEMPTS = 5


class ReplayError(Exception):
    """A replay could not run or finish; the live projections are unchanged."""


@dataclass(frozen=True)
class Rebuilt:
    projections: tuple[str, ...]
    position: int  # the checkpoint the rebuilt projections start from
    events: int  # events folded


def aside_table(projection: AnyProjection) -> str:
    return projection.name + ASIDE_SUFFIX


async def fold_log(
    conn: Connection,
    projections: Sequence[AnyProjection] = PROJECTIONS,
    *,
    until_position: int | None = None,
    chunk: int = 10_000,
    progress: Progress | None = None,
    upcasters: Upcasters = UPCASTERS,
) -> tuple[States, int]:
    """Fold every event up to ``until_position`` (inclusive; default: all) in memory.

    Returns the states of each projection and the position of the last event folded.
    """
    fold = Fold(projections)
    await fold.run(conn, until=until_position, upcasters=upcasters, page=chunk, progress=progress)
    return fold.states, fold.position


async def rebuild(
    pool: asyncpg.Pool[Any],
    projections: Sequence[AnyProjection] = PROJECTIONS,
    *,
    progress: Progress | None = None,
    upcasters: Upcasters = UPCASTERS,
    page: int = 10_000,
    swap_timeout_s: float = SWAP_TIMEOUT_S,
    swap_attempts: int = SWAP_ATTEMPTS,
) -> Rebuilt:
    """Rebuild ``projections`` from position 0 and swap them in (see the module docstring)."""
    fold = Fold(projections)
    async with connect(pool) as conn:
        if not await conn.fetchval(Q["try_lock_replay"], REPLAY_LOCK):
            raise ReplayError("another replay is running on this database")
        await refuse_if_archived(conn)
        await _build_aside(conn, fold, upcasters=upcasters, page=page, progress=progress)
        await _swap_in(
            conn, fold, upcasters, page=page, timeout_s=swap_timeout_s, attempts=swap_attempts
        )
        # On any failure the pool's reset (or closing a broken connection) releases it.
        await conn.fetchval(Q["unlock_replay"], REPLAY_LOCK)
    names = tuple(p.name for p in fold.projections)
    return Rebuilt(names, fold.position, fold.events)


async def _build_aside(
    conn: Connection, fold: Fold, *, upcasters: Upcasters, page: int, progress: Progress | None
) -> None:
    """Step 2: the aside tables, filled up to about the head, without locking anyone out."""
    leftovers = {aside_table(p) for p in (*PROJECTIONS, *fold.projections)}
    for table in sorted(leftovers):
        await conn.execute(f"DROP TABLE IF EXISTS {quoted(table)}")
    for projection in fold.projections:
        aside = quoted(aside_table(projection))
        await conn.execute(f"CREATE TABLE {aside} (LIKE {quoted(projection.name)} INCLUDING ALL)")
        # Before the COPY: a fillfactor decides how full it packs the pages.
        options = await conn.fetchval(Q["table_options"], projection.name)
        if options:
            await conn.execute(f"ALTER TABLE {aside} SET ({', '.join(options)})")
    # Every state is new in this pass and is copied whole: no need to track which changed.
    fold.track_changes = False
    await fold.run(conn, upcasters=upcasters, page=page, progress=progress)
    for projection in fold.projections:
        await conn.copy_records_to_table(
            aside_table(projection), records=fold.rows(projection), columns=projection.columns
        )
    fold.track_changes = True
    # What arrived while the log was folded and copied: the locked catch-up stays short.
    await fold.run(conn, upcasters=upcasters, page=page)
    await _flush(conn, fold)
    fold.clean()


async def _flush(conn: Connection, fold: Fold) -> None:
    """Upsert the states changed since the last ``clean()`` into the aside tables."""
    for projection in fold.projections:
        keys = fold.dirty[projection.name]
        if keys:
            columns = zip(*fold.rows(projection, keys), strict=True)
            await conn.execute(projection.upsert_into(aside_table(projection)), *map(list, columns))


async def _swap_in(
    conn: Connection,
    fold: Fold,
    upcasters: Upcasters,
    *,
    page: int,
    timeout_s: float,
    attempts: int,
) -> None:
    """Step 3: the final catch-up and the swap, in one short transaction."""
    lock, save = checkpoint_sql(tuple(p.name for p in fold.projections))
    for attempt in range(1, attempts + 1):
        try:
            async with conn.transaction():
                await conn.execute(f"SET LOCAL lock_timeout = {int(timeout_s * 1000)}")
                await conn.fetch(lock)
                head = await head_position(conn)
                await fold.run(conn, until=head, upcasters=upcasters, page=page)
                await _flush(conn, fold)
                for projection in fold.projections:
                    await _replace(conn, projection)
                await conn.execute(save, *[fold.position] * len(fold.projections))
        except asyncpg.LockNotAvailableError:
            # Rolled back: the states keep their dirty keys, so the next try writes them again.
            log.warning("replay.swap_waited_too_long", attempt=attempt)
            continue
        fold.clean()
        return
    raise ReplayError(
        f"could not swap the rebuilt tables in: readers or the projector held them for more"
        f" than {timeout_s:g} s, {attempts} times"
    )


async def _replace(conn: Connection, projection: AnyProjection) -> None:
    """Put the aside table, and its indexes under their usual names, in the live one's place."""
    table, aside = projection.name, aside_table(projection)
    indexes = [row["indexname"] for row in await conn.fetch(Q["table_indexes"], aside)]
    await conn.execute(f"DROP TABLE {quoted(table)}")
    await conn.execute(f"ALTER TABLE {quoted(aside)} RENAME TO {quoted(table)}")
    for index in indexes:
        renamed = table + index.removeprefix(aside)
        await conn.execute(f"ALTER INDEX {quoted(index)} RENAME TO {quoted(renamed)}")

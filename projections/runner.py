"""The projector: applies new events to the read models, exactly once.

Each batch is one transaction that locks the checkpoint rows, reads the events after the lowest
checkpoint in position order, folds them into the affected rows, writes those rows and moves the
checkpoints — so a crash anywhere leaves either all of a batch applied or none of it. Reading
"position > checkpoint" is complete because appends are serialised (see ``events.store``). The
rows a batch folds come from the states the projector last wrote, where it still holds them
and the checkpoint says nobody else has written since (``projections.cache``), else from the
tables.

The runner LISTENs for the appenders' NOTIFY only as a wake-up hint and always re-reads from the
checkpoint; it also polls, so a lost notification or a lost listening connection costs at most
one poll interval.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from typing import Any

import asyncpg
import structlog

from events.errors import StorageUnavailable, cancelling, translate
from events.locks import EVENTS_CHANNEL
from events.models import FoldedEvent
from events.store import Connection, connect, read_all
from events.upcasters import UPCASTERS, Upcasters
from projections.base import AnyProjection, metadata_read_by
from projections.cache import StateCache
from projections.registry import PROJECTIONS
from projections.sql import checkpoint_sql

log = structlog.get_logger(component="projector")

# Awaited inside the batch transaction after the rows are written and before the checkpoint
# moves: tests use it to kill the projector at the worst moment.
BeforeCheckpoint = Callable[[Sequence[FoldedEvent]], Awaitable[None]]


async def apply_batch(
    conn: Connection,
    projections: Sequence[AnyProjection],
    *,
    batch_size: int = 1000,
    before_checkpoint: BeforeCheckpoint | None = None,
    upcasters: Upcasters = UPCASTERS,
    cache: StateCache | None = None,
) -> tuple[int, dict[str, set[str]]]:
    """Apply the next batch inside the caller's transaction.

    Returns the number of events read and, per projection, the keys whose rows changed. With
    a ``cache``, states it holds are not read from the tables; once the transaction has
    committed, the caller must call ``cache.commit()``.
    """
    if cache is not None:
        cache.begin()
    names = [p.name for p in projections]
    lock, save = checkpoint_sql(tuple(names))
    checkpoints = {r["name"]: r["position"] for r in await conn.fetch(lock)}
    events = await read_all(
        conn,
        min(checkpoints.values()),
        batch_size,
        upcasters=upcasters,
        metadata_of=metadata_read_by(projections),
    )
    if not events:
        return 0, {}
    # Checkpoints only move forward (one projection may have been rebuilt further ahead).
    positions = [max(checkpoints[name], events[-1].position) for name in names]
    changed: dict[str, set[str]] = {}
    for projection, position in zip(projections, positions, strict=True):
        checkpoint = checkpoints[projection.name]
        mine = [e for e in events if e.position > checkpoint]
        keys = {k for e in mine if (k := projection.key_of(e)) is not None}
        states: dict[str, Any] = {}
        if keys:
            cached = cache.states_at(projection.name, checkpoint) if cache is not None else {}
            states = {k: cached[k] for k in keys if k in cached}
            if len(states) < len(keys):
                missing = [k for k in keys if k not in states]
                rows = await conn.fetch(projection.load_sql, missing)
                states.update((r[0], projection.from_row(r)) for r in rows)
            before = dict(states)  # the table's rows, for the keys that have one
            for event in mine:
                projection.fold(states, event)
            await _write(conn, projection, keys, before, states)
            changed[projection.name] = keys
        if cache is not None:
            cache.stage(projection.name, checkpoint, position, states)
    if before_checkpoint is not None:
        await before_checkpoint(events)
    await conn.execute(save, *positions)
    return len(events), changed


async def _write(
    conn: Connection,
    projection: AnyProjection,
    keys: Iterable[str],
    before: Mapping[str, Any],
    after: Mapping[str, Any],
) -> None:
    """Write the states of ``keys`` whose rows changed: whole (an upsert), or only the key and
    the often-changed columns when none of the others did (``Projection.often_changed``)."""
    whole, narrow = [], []
    rest_of = projection.rest_of if projection.often_changed else None
    for key in keys:
        state, old = after[key], before.get(key)
        if old is None or rest_of is None or rest_of(old) != rest_of(state):
            whole.append(projection.to_row(state))
        elif old != state:
            narrow.append(projection.often_changed_of(state))
    if whole:
        await conn.execute(projection.upsert_sql, *map(list, zip(*whole, strict=True)))
    if narrow:
        await conn.execute(projection.update_sql, *map(list, zip(*narrow, strict=True)))


class Projector:
    """Runs ``apply_batch`` whenever new events may exist. Start ``run()`` as a task."""

    def __init__(
        self,
        pool: asyncpg.Pool[Any],
        projections: Sequence[AnyProjection] = PROJECTIONS,
        *,
        batch_size: int = 1000,
        poll_interval: float = 1.0,
        before_checkpoint: BeforeCheckpoint | None = None,
        on_commit: Callable[[int, dict[str, set[str]]], None] | None = None,
        upcasters: Upcasters = UPCASTERS,
    ) -> None:
        self._pool = pool
        self._projections = tuple(projections)
        self._batch_size = batch_size
        self._poll_interval = poll_interval
        self._before_checkpoint = before_checkpoint
        self._on_commit = on_commit
        self._upcasters = upcasters
        self._wakeup = asyncio.Event()
        self._cache = StateCache()
        # run() and a caller's catch_up() may overlap; their batches would queue on the
        # checkpoint lock anyway, and one at a time keeps the cache's staging their own.
        self._one_batch_at_a_time = asyncio.Lock()

    async def catch_up(self) -> int:
        """Apply batches until no new events are left; return how many events were read."""
        total = 0
        while True:
            async with self._one_batch_at_a_time:
                async with connect(self._pool) as conn, conn.transaction():
                    count, changed = await apply_batch(
                        conn,
                        self._projections,
                        batch_size=self._batch_size,
                        before_checkpoint=self._before_checkpoint,
                        upcasters=self._upcasters,
                        cache=self._cache,
                    )
                self._cache.commit()
            if count == 0:
                return total
            total += count
            if self._on_commit is not None:
                self._on_commit(count, changed)

    async def run(self) -> None:
        while True:
            try:
                await self._listen_and_apply()
            except Exception as error:
                if cancelling():
                    raise asyncio.CancelledError from error
                if isinstance(error, StorageUnavailable):
                    log.warning("projector.storage_unavailable", error=str(error))
                else:
                    # The batch rolled back whole; the next try starts from the checkpoint.
                    log.exception("projector.batch_failed")
            await asyncio.sleep(self._poll_interval)

    async def _listen_and_apply(self) -> None:
        async with connect(self._pool) as listener:
            lost = asyncio.Event()

            def on_termination(_conn: object) -> None:
                lost.set()

            await listener.add_listener(EVENTS_CHANNEL, self._notified)
            listener.add_termination_listener(on_termination)
            try:
                while not lost.is_set():
                    await self.catch_up()
                    # asyncio.timeout, not wait_for: on Python 3.11 wait_for swallows a
                    # cancellation that coincides with the wake-up, and stopping would hang.
                    with contextlib.suppress(TimeoutError):
                        async with asyncio.timeout(self._poll_interval):
                            await self._wakeup.wait()
                    self._wakeup.clear()
            finally:
                listener.remove_termination_listener(on_termination)
                # The connection may already be dead (that may be why we are leaving): a
                # failing clean-up must not replace the error, or a cancellation, in flight.
                with contextlib.suppress(StorageUnavailable), translate():
                    await listener.remove_listener(EVENTS_CHANNEL, self._notified)

    def _notified(self, *_args: object) -> None:
        self._wakeup.set()

"""The projector: applies new events to the read models, exactly once.

A batch reads the events after the lowest checkpoint in position order, folds them into the
affected rows, then writes those rows and moves the checkpoints in one statement, which first
checks, under the checkpoint rows' lock, that each checkpoint is still where the batch folded
from (a compare-and-set: ``projections.sql.batch_sql``). So a crash anywhere leaves either all
of a batch applied or none of it, and when two projectors (or a projector and a rebuild) have
folded the same events only one writes them: the other starts again from where the
checkpoints now are. Reading "position > checkpoint" is complete because appends are
serialised (see ``events.store``).

A projector remembers where its last batch left the checkpoints, and the states it wrote
(``projections.cache``), so a batch is two round trips: the read and the write. Whatever it
remembers that is no longer true (another process wrote since) fails the compare: it costs a
batch folded again, never a wrong row.

The runner LISTENs for the appenders' NOTIFY only as a wake-up hint and always reads from its
checkpoint; it also polls, so a lost notification or a lost listening connection costs at most
one poll interval.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from typing import Any, NamedTuple

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
from projections.sql import BatchSql, batch_sql

log = structlog.get_logger(component="projector")

# Awaited once a batch is folded, before its write: tests use it to stop a projector mid-batch.
BeforeWrite = Callable[[Sequence[FoldedEvent]], Awaitable[None]]


class Applied(NamedTuple):
    """What one ``apply_batch`` did."""

    events: int  # read and applied; 0 when there were none
    changed: dict[str, set[str]]  # per projection, the keys whose rows changed
    checkpoints: dict[str, int]  # where the batch left each checkpoint


async def apply_batch(
    conn: Connection,
    projections: Sequence[AnyProjection],
    *,
    checkpoints: Mapping[str, int] | None = None,
    batch_size: int = 1000,
    before_write: BeforeWrite | None = None,
    upcasters: Upcasters = UPCASTERS,
    cache: StateCache | None = None,
) -> Applied:
    """Apply the next batch of events to ``projections``.

    ``checkpoints``: where this caller's last batch left them, if it knows; otherwise they are
    read first. The batch writes only if they are still there, in one statement that commits
    on its own (or with the caller's transaction); if they have moved it starts over from where
    they are. With a ``cache``, states it holds are not read from the tables; once the write
    has committed, the caller must call ``cache.commit()``.
    """
    sql = batch_sql(tuple(projections))
    while True:
        if cache is not None:
            cache.begin()
        if checkpoints is None:
            checkpoints = {r[0]: r[1] for r in await conn.fetch(sql.read_checkpoints)}
        written = await _try_batch(
            conn, projections, sql, checkpoints, batch_size, before_write, upcasters, cache
        )
        if written is not None:
            return written
        checkpoints = None  # moved by another projector or a rebuild: read where they are


async def _try_batch(
    conn: Connection,
    projections: Sequence[AnyProjection],
    sql: BatchSql,
    checkpoints: Mapping[str, int],
    batch_size: int,
    before_write: BeforeWrite | None,
    upcasters: Upcasters,
    cache: StateCache | None,
) -> Applied | None:
    """One batch folded from ``checkpoints``; None if they had moved when it came to write."""
    events = await read_all(
        conn,
        min(checkpoints.values()),
        batch_size,
        upcasters=upcasters,
        metadata_of=metadata_read_by(projections),
    )
    if not events:
        return Applied(0, {}, dict(checkpoints))
    # Checkpoints only move forward (one projection may have been rebuilt further ahead).
    moved = {p.name: max(checkpoints[p.name], events[-1].position) for p in projections}
    changed: dict[str, set[str]] = {}
    rows: list[list[Any]] = []
    for projection in projections:
        checkpoint = checkpoints[projection.name]
        mine = [e for e in events if e.position > checkpoint]
        keys = {k for e in mine if (k := projection.key_of(e)) is not None}
        states: dict[str, Any] = {}
        before: dict[str, Any] = {}
        if keys:
            cached = cache.states_at(projection.name, checkpoint) if cache is not None else {}
            states = {k: cached[k] for k in keys if k in cached}
            if len(states) < len(keys):
                missing = [k for k in keys if k not in states]
                loaded = await conn.fetch(projection.load_sql, missing)
                states.update((r[0], projection.from_row(r)) for r in loaded)
            before = dict(states)  # the table's rows, for the keys that have one
            for event in mine:
                projection.fold(states, event)
            changed[projection.name] = keys
        rows.extend(_columns_to_write(projection, keys, before, states))
        if cache is not None:
            cache.stage(projection.name, checkpoint, moved[projection.name], states)
    if before_write is not None:
        await before_write(events)
    expected = [checkpoints[p.name] for p in projections]
    if not await conn.fetchval(sql.write, *expected, *moved.values(), *rows):
        return None
    return Applied(len(events), changed, moved)


def _columns_to_write(
    projection: AnyProjection,
    keys: Iterable[str],
    before: Mapping[str, Any],
    after: Mapping[str, Any],
) -> list[list[Any]]:
    """The column arrays that write the states of ``keys`` whose rows changed: whole (an
    upsert), or only the key and the often-changed columns when none of the others did
    (``Projection.often_changed``), in ``batch_sql``'s order."""
    whole, narrow = [], []
    rest_of = projection.rest_of if projection.often_changed else None
    for key in keys:
        state, old = after[key], before.get(key)
        if old is None or rest_of is None or rest_of(old) != rest_of(state):
            whole.append(projection.to_row(state))
        elif old != state:
            narrow.append(projection.often_changed_of(state))
    columns = _transposed(whole, len(projection.schema))
    if projection.often_changed:
        columns += _transposed(narrow, len(projection.hot_columns))
    return columns


def _transposed(rows: list[tuple[Any, ...]], width: int) -> list[list[Any]]:
    return list(map(list, zip(*rows, strict=True))) if rows else [[] for _ in range(width)]


class Projector:
    """Runs ``apply_batch`` whenever new events may exist. Start ``run()`` as a task.

    ``on_commit`` is called with what each batch that applied events did, once it committed.
    """

    def __init__(
        self,
        pool: asyncpg.Pool[Any],
        projections: Sequence[AnyProjection] = PROJECTIONS,
        *,
        batch_size: int = 1000,
        poll_interval: float = 1.0,
        before_write: BeforeWrite | None = None,
        on_commit: Callable[[Applied], None] | None = None,
        upcasters: Upcasters = UPCASTERS,
    ) -> None:
        self._pool = pool
        self._projections = tuple(projections)
        self._batch_size = batch_size
        self._poll_interval = poll_interval
        self._before_write = before_write
        self._on_commit = on_commit
        self._upcasters = upcasters
        self._wakeup = asyncio.Event()
        self._cache = StateCache()
        # Where this projector's last batch left the checkpoints; None: read them first.
        self._checkpoints: dict[str, int] | None = None
        # run() and a caller's catch_up() may overlap: one batch at a time keeps the cache's
        # staging and the checkpoints above their own (else each would undo the other's).
        self._one_batch_at_a_time = asyncio.Lock()

    async def catch_up(self) -> int:
        """Apply batches until no new events are left; return how many events were read."""
        total = 0
        while True:
            async with self._one_batch_at_a_time:
                checkpoints, self._checkpoints = self._checkpoints, None
                # No transaction: the batch's reads need none, and its write is one statement.
                async with connect(self._pool) as conn:
                    applied = await apply_batch(
                        conn,
                        self._projections,
                        checkpoints=checkpoints,
                        batch_size=self._batch_size,
                        before_write=self._before_write,
                        upcasters=self._upcasters,
                        cache=self._cache,
                    )
                self._checkpoints = applied.checkpoints
                self._cache.commit()
            if applied.events == 0:
                return total
            total += applied.events
            if self._on_commit is not None:
                self._on_commit(applied)

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

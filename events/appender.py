"""Group commit: many concurrent appends share one transaction and one fsync.

Callers await ``Appender.append``; a single background task drains everything that queued up
while the previous batch was being committed, appends it as one batch in one statement that
commits synchronously, and answers every caller only after the batch is on disk. Under load
batches grow by themselves (what arrives during one commit, fsync included, is the next batch);
when idle a lone event is committed at once, with no timer to wait for.

The append lock is held through the commit's fsync. Sessions 14 to 18 released it first (the
batch committed without waiting for the WAL, and a separate call flushed it while the next
batch appended), which on two busy cores made more, smaller batches and a second round trip
for each: committing synchronously measured more callbacks a second on less CPU each, in every
pair of runs (bench/README.md, session 19).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

import asyncpg
import structlog
from asyncpg.pool import PoolConnectionProxy

from events.errors import AppendFailed, StorageUnavailable, cancelling, is_unavailable
from events.models import AppendResult, NewEvent
from events.store import append_batch

log = structlog.get_logger(component="appender")

BatchHook = Callable[[Sequence[NewEvent]], Awaitable[None]]
_Request = tuple[Sequence[NewEvent], "asyncio.Future[list[AppendResult]]"]


class Appender:
    """The one writer of this process. Start ``run()`` as a task; stop by cancelling it.

    ``before_commit`` is awaited inside the transaction, after the insert and before COMMIT,
    with the append lock held. It is how tests hold a transaction open.
    ``on_batch`` is called after each commit with the batch size and duration (metrics).
    """

    def __init__(
        self,
        pool: asyncpg.Pool[Any],
        *,
        max_batch: int = 2000,
        before_commit: BatchHook | None = None,
        on_batch: Callable[[int, float], None] | None = None,
    ) -> None:
        self._pool = pool
        self._max_batch = max_batch
        self._before_commit = before_commit
        self._on_batch = on_batch
        self._pending: list[_Request] = []
        self._wakeup = asyncio.Event()
        self._stopped = False

    async def append(self, events: Sequence[NewEvent]) -> list[AppendResult]:
        """Durably append ``events`` (in order, in one transaction) and return where they are.

        Raises ``StorageUnavailable`` when the database cannot be reached (nothing was
        acknowledged; the same events may be retried) and ``AppendFailed`` when it refused them.
        """
        if self._stopped:  # nobody would ever answer
            raise StorageUnavailable("appender stopped")
        future: asyncio.Future[list[AppendResult]] = asyncio.get_running_loop().create_future()
        self._pending.append((events, future))
        self._wakeup.set()
        # A caller that goes away cancels only its wait: its events are committed all the same
        # (a retry then finds them by idempotency key).
        return await future

    async def run(self) -> None:
        try:
            while True:
                await self._wakeup.wait()
                self._wakeup.clear()
                while self._pending:
                    await self._commit(self._take_batch())
        finally:
            # Shutting down (or a bug): whoever still waits gets a clear "try again", not a hang.
            self._stopped = True
            pending, self._pending = self._pending, []
            self._fail(pending, StorageUnavailable("appender stopped"))

    def _take_batch(self) -> list[_Request]:
        taken, size = 0, 0
        for events, _ in self._pending:
            if taken and size + len(events) > self._max_batch:
                break
            taken += 1
            size += len(events)
        requests, self._pending = self._pending[:taken], self._pending[taken:]
        return requests

    async def _commit(self, requests: list[_Request]) -> None:
        """Append one batch and answer its callers once it is on disk."""
        events = [event for batch, _ in requests for event in batch]
        loop = asyncio.get_running_loop()
        started = loop.time()
        try:
            conn = await self._pool.acquire()
            try:
                hook = self._before_commit
                if hook is None:
                    # One round trip: the statement commits on its own, after the fsync.
                    results = await append_batch(conn, events)
                else:
                    async with conn.transaction():
                        results = await append_batch(conn, events)
                        await hook(events)
            finally:
                await self._release(conn)
        except BaseException as error:
            await self._failed(requests, error)
            return
        if self._on_batch is not None:
            self._on_batch(len(results), loop.time() - started)
        offset = 0
        for batch, future in requests:
            if not future.done():
                future.set_result(results[offset : offset + len(batch)])
            offset += len(batch)

    async def _failed(self, requests: list[_Request], error: BaseException) -> None:
        events = sum(len(batch) for batch, _ in requests)
        if isinstance(error, asyncio.CancelledError):
            # Stopping mid-commit: the outcome is unknown, so nothing is acknowledged.
            self._fail(requests, StorageUnavailable("appender stopped"))
            raise error
        if cancelling():
            self._fail(requests, StorageUnavailable("appender stopped"))
            raise asyncio.CancelledError from error
        if is_unavailable(error):
            log.warning("append.unavailable", error=type(error).__name__, events=events)
            self._fail(requests, StorageUnavailable(type(error).__name__))
        elif len(requests) > 1:
            # One request's events sank the batch: give each request its own transaction so
            # that only the bad one fails.
            for request in requests:
                await self._commit([request])
        else:
            log.error("append.failed", error=type(error).__name__, detail=str(error))
            self._fail(requests, AppendFailed(type(error).__name__))

    async def _release(self, conn: PoolConnectionProxy[Any]) -> None:
        # A connection that cannot be reset is terminated by the pool, which then raises: the
        # pool is whole again, and the batch's outcome was decided already.
        with contextlib.suppress(Exception):
            await self._pool.release(conn)

    @staticmethod
    def _fail(requests: list[_Request], error: Exception) -> None:
        for _, future in requests:
            if not future.done():
                future.set_exception(error)

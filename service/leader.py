"""One active projector and watchdog across every process and host on a database.

Each ``serve`` process runs ``lead()``: it opens a connection of its own (not from the pool: a
session-level advisory lock belongs to one connection, and a pooled one may be reset) and tries
``pg_try_advisory_lock`` every ``retry_s`` seconds. The process that holds the lock runs the
work; when it dies, PostgreSQL ends its session and releases the lock, and the next try of
another process takes over, continuing from the checkpoints (which is what makes a brief
overlap harmless: the projector's batches lock the checkpoint rows, the watchdog appends with an
expected version). The holder checks its connection every ``retry_s`` too, and stops the work
when it is lost, because by then another process may hold the lock.

A session-level lock does not survive PgBouncer in transaction mode: point ``serve`` at
PostgreSQL itself (docs/operations.md).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
from collections.abc import Callable, Coroutine
from typing import Any

import asyncpg
import structlog

from events.errors import cancelling, is_unavailable

log = structlog.get_logger(component="leader")


async def _hold(conn: asyncpg.Connection[Any], retry_s: float) -> None:
    """Return when ``conn`` stops answering."""
    while True:
        await asyncio.sleep(retry_s)
        await conn.fetchval("SELECT 1", timeout=retry_s)


async def lead(
    dsn: str,
    lock_id: int,
    work: Callable[[], Coroutine[Any, Any, None]],
    *,
    retry_s: float = 2.0,
    on_change: Callable[[bool], None] | None = None,
) -> None:
    """Run ``work()`` whenever this process holds advisory lock ``lock_id``; run until cancelled."""
    while True:
        try:
            conn = await asyncpg.connect(
                dsn,
                timeout=retry_s * 2,
                # Operators (and tests) see which process leads in pg_stat_activity.
                server_settings={"application_name": f"jobtrail-leader-{os.getpid()}"},
            )
        except Exception as error:
            if cancelling() or not is_unavailable(error):
                raise
            await asyncio.sleep(retry_s)
            continue
        try:
            while True:  # polled, not waited for: pg_advisory_lock would hold a backend busy
                if await conn.fetchval("SELECT pg_try_advisory_lock($1)", lock_id):
                    break
                await asyncio.sleep(retry_s)
            log.info("leader.acquired", lock=lock_id)
            if on_change is not None:
                on_change(True)
            working = asyncio.create_task(work(), name="led-work")
            holding = asyncio.create_task(_hold(conn, retry_s), name="leader-hold")
            try:
                await asyncio.wait({working, holding}, return_when=asyncio.FIRST_COMPLETED)
            finally:
                for task in (working, holding):
                    task.cancel()
                await asyncio.gather(working, holding, return_exceptions=True)
            log.warning("leader.lost", lock=lock_id)
        except Exception as error:
            if cancelling() or not is_unavailable(error):
                raise
            log.warning("leader.connection_lost", error=type(error).__name__)
        finally:
            if on_change is not None:
                on_change(False)
            with contextlib.suppress(Exception):
                await conn.close(timeout=1)
        await asyncio.sleep(retry_s)

"""The watchdog: a live job silent for ``timeout_s`` gets one ``job.timed_out`` in its stream.

Silence is read from the ``job_status`` projection (``updated_at``, server clock), which may lag
the log. So each timeout is appended with the stream version the projection had seen as its
expected version: if anything reached the job's stream since (a heartbeat still in flight, a
terminal callback, another watchdog's ``job.timed_out``), the append is a conflict and nothing
is stored. That makes it exactly one timeout per silence with any number of watchdogs running,
without any coordination between them; a later event starts a new silence.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg
import structlog

from events.catalog import TIMED_OUT, job_stream
from events.errors import StorageUnavailable, cancelling
from events.models import NewEvent, format_timestamp
from events.store import append_batch, connect
from projections.sql import Q

log = structlog.get_logger(component="watchdog")

MAX_PER_ROUND = 500


async def time_out_silent_jobs(
    pool: asyncpg.Pool[Any], *, timeout_s: float, now: datetime | None = None
) -> list[str]:
    """Append ``job.timed_out`` for every live job silent since ``now - timeout_s``; return the
    jobs timed out by this call."""
    now = now or datetime.now(UTC)
    async with connect(pool) as conn:
        silent = await conn.fetch(
            Q["silent_jobs"], now - timedelta(seconds=timeout_s), MAX_PER_ROUND
        )
    if not silent:
        return []
    events = [
        NewEvent(
            stream_id=job_stream(row["job_id"]),
            type=TIMED_OUT,
            data={
                "job_id": row["job_id"],
                "status": "timed_out",
                "last_event_at": format_timestamp(row["updated_at"]),
                "timeout_s": timeout_s,
            },
            metadata={"scheme": "watchdog", "received_at": format_timestamp(now)},
            received_at=now,
            expected_version=row["event_count"],
        )
        for row in silent
    ]
    async with connect(pool) as conn, conn.transaction():
        results = await append_batch(conn, events)
    return [e.data["job_id"] for e, r in zip(events, results, strict=True) if not r.conflict]


class Watchdog:
    """Runs ``time_out_silent_jobs`` every ``interval_s``. Start ``run()`` as a task."""

    def __init__(
        self,
        pool: asyncpg.Pool[Any],
        *,
        timeout_s: float,
        interval_s: float | None = None,
        on_timeout: Callable[[list[str]], None] | None = None,
    ) -> None:
        self._pool = pool
        self._timeout_s = timeout_s
        # Often enough to act within a second or so of the deadline (SPEC: within 5 s).
        self._interval_s = interval_s if interval_s is not None else min(1.0, timeout_s / 2)
        self._on_timeout = on_timeout

    async def run(self) -> None:
        while True:
            try:
                timed_out = await time_out_silent_jobs(self._pool, timeout_s=self._timeout_s)
            except Exception as error:
                if cancelling():
                    raise asyncio.CancelledError from error
                if isinstance(error, StorageUnavailable):
                    log.warning("watchdog.storage_unavailable", error=str(error))
                else:  # nothing was stored (one transaction); the next round tries again
                    log.exception("watchdog.failed")
            else:
                if timed_out:
                    log.info("watchdog.timed_out", jobs=timed_out)
                    if self._on_timeout is not None:
                        self._on_timeout(timed_out)
            await asyncio.sleep(self._interval_s)

"""Queries over the read models, shared by the HTTP API and the CLI.

A job, as both show it, is its ``job_status`` row plus ``last_heartbeat_at``,
``heartbeat_count`` and ``stale``: a live job whose last heartbeat (or, without one, last event)
is older than the stale threshold.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

from events.catalog import TERMINAL
from events.store import Connection
from projections.sql import Q

Job = dict[str, Any]
PageKey = tuple[datetime, str]  # (created_at, job_id) of the last job of a page


def page_key(job: Job) -> PageKey:
    return job["created_at"], job["job_id"]


_TERMINAL = sorted(TERMINAL)


async def list_jobs(
    conn: Connection,
    *,
    now: datetime,
    stale_after_s: float,
    status: str | None = None,
    stale: bool | None = None,
    after: PageKey | None = None,
    limit: int = 50,
) -> list[Job]:
    """Jobs, newest first; the next page starts ``after`` the last job of this one.

    The order is by creation, which never changes: a walk through the pages sees every job
    that existed when it started exactly once, however the jobs change meanwhile.
    """
    threshold = now - timedelta(seconds=stale_after_s)
    created_at, job_id = after if after is not None else (None, None)
    rows = await conn.fetch(
        Q["list_jobs"], _TERMINAL, threshold, status, stale, created_at, job_id, limit
    )
    return [dict(r) for r in rows]


async def get_job(
    conn: Connection, job_id: str, *, now: datetime, stale_after_s: float
) -> Job | None:
    threshold = now - timedelta(seconds=stale_after_s)
    row = await conn.fetchrow(Q["get_job"], _TERMINAL, threshold, job_id)
    return dict(row) if row is not None else None


async def checkpoints(conn: Connection) -> dict[str, int]:
    """Each projection's checkpoint: the position of the last event it has applied."""
    return {r["name"]: r["position"] for r in await conn.fetch(Q["read_checkpoints"])}

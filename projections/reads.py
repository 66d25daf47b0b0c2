"""Queries over the read models, shared by the HTTP API and the CLI.

A job, as both show it, is its ``job_status`` row plus ``last_heartbeat_at``,
``heartbeat_count`` and ``stale``: a live job whose last heartbeat (or, without one, last event)
is older than the stale threshold.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any, NotRequired, TypedDict, Unpack

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


class JobQuery(TypedDict):
    """What ``list_jobs`` is asked, but the page."""

    now: datetime
    stale_after_s: float
    status: NotRequired[str | None]
    stale: NotRequired[bool | None]


async def all_jobs(conn: Connection, *, page: int = 1000, **query: Unpack[JobQuery]) -> list[Job]:
    """Every job ``list_jobs`` shows for ``query``, in its order, read a page at a time."""
    jobs: list[Job] = []
    after: PageKey | None = None
    while True:
        found = await list_jobs(conn, after=after, limit=page, **query)
        jobs.extend(found)
        if len(found) < page:
            return jobs
        after = page_key(found[-1])


async def get_job(
    conn: Connection, job_id: str, *, now: datetime, stale_after_s: float
) -> Job | None:
    threshold = now - timedelta(seconds=stale_after_s)
    row = await conn.fetchrow(Q["get_job"], _TERMINAL, threshold, job_id)
    return dict(row) if row is not None else None


async def checkpoints(conn: Connection) -> dict[str, int]:
    """Each projection's checkpoint: the position of the last event it has applied."""
    return {r["name"]: r["position"] for r in await conn.fetch(Q["read_checkpoints"])}


async def job_for_run(conn: Connection, run_id: int) -> str | None:
    """The job whose callbacks carried ``run_id`` (the first such job, if several did)."""
    job_id: str | None = await conn.fetchval(Q["job_for_run"], run_id)
    return job_id


async def jobs_changed_after(
    conn: Connection, position: int, *, now: datetime, stale_after_s: float, limit: int
) -> list[Job]:
    """Up to ``limit`` jobs whose last applied event is after ``position``, in that order.

    Walking on from the last job's ``last_position`` misses no change: a job that changes later
    gets a higher ``last_position`` than any visible now (see the query's comment).
    """
    threshold = now - timedelta(seconds=stale_after_s)
    rows = await conn.fetch(Q["jobs_changed_after"], _TERMINAL, threshold, position, limit)
    return [dict(r) for r in rows]


async def list_heartbeats(
    conn: Connection, *, now: datetime, stale_after_s: float, stale: bool | None = None
) -> list[dict[str, Any]]:
    """Each job's last heartbeat, most recent first, with its age in seconds at ``now``."""
    threshold = now - timedelta(seconds=stale_after_s)
    rows = await conn.fetch(Q["list_heartbeats"], _TERMINAL, threshold, stale)
    return [
        {**dict(r), "age_s": round(max(0.0, (now - r["last_heartbeat_at"]).total_seconds()), 3)}
        for r in rows
    ]


# A projection is "live" while its oldest unapplied event is at most this old, "catching_up"
# while its checkpoint keeps moving, and "stalled" when it has not moved for this long.
LIVE_WITHIN_S = 2.0
STALLED_AFTER_S = 30.0


async def projection_progress(conn: Connection, *, now: datetime) -> list[dict[str, Any]]:
    """Each projection's position, the head of the log, and how far behind it is."""
    progress = []
    for r in await conn.fetch(Q["projection_progress"]):
        oldest = r["oldest_unapplied_at"]
        lag_s = 0.0 if oldest is None else max(0.0, (now - oldest).total_seconds())
        if lag_s <= LIVE_WITHIN_S:
            state = "live"
        elif (now - r["updated_at"]).total_seconds() < STALLED_AFTER_S:
            state = "catching_up"
        else:
            state = "stalled"
        progress.append(
            {
                "name": r["name"],
                "position": r["position"],
                "head_position": r["head_position"],
                "lag_events": r["lag_events"],
                "lag_s": round(lag_s, 3),
                "state": state,
            }
        )
    return progress

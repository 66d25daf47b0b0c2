"""Realistic history for the dashboard's browser tests and screenshots.

Events are appended straight to the log with the receive times a real fleet would have given
them (heartbeats every minute for the last hour, a few long silences), which HTTP callbacks
sent now could not.
"""

from __future__ import annotations

import random
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg

from events.catalog import HEARTBEAT_RECORDED, STATUS_REPORTED, job_stream
from events.models import NewEvent, format_timestamp
from events.store import append_batch

REGIONS = ["eu-west-1", "us-east-2", "ap-south-1"]


def _event(job_id: str, status: str, at: datetime, **fields: Any) -> NewEvent:
    kind = HEARTBEAT_RECORDED if status == "heartbeat" else STATUS_REPORTED
    return NewEvent(
        stream_id=job_stream(job_id),
        type=kind,
        data={"job_id": job_id, "status": status, **fields},
        metadata={"scheme": "standard", "received_at": format_timestamp(at)},
        received_at=at,
    )


def fleet(now: datetime, jobs: int = 24, seed: int = 7) -> list[NewEvent]:
    """A morning of provisioning: finished, running, stale, failed and cancelled jobs."""
    rng = random.Random(seed)
    events: list[NewEvent] = []
    for i in range(jobs):
        job_id = f"vm-{1000 + i}"
        start = now - timedelta(minutes=rng.uniform(8, 58))
        identity = {
            "run_id": 9_100_000 + i * 7,
            "run_attempt": 1 + (i % 5 == 0),
            "agent_id": f"agent-{rng.randrange(1, 40)}",
            "region": rng.choice(REGIONS),
        }
        events.append(_event(job_id, "queued", start, **identity))
        at = start + timedelta(seconds=rng.uniform(5, 40))
        events.append(_event(job_id, "provisioning", at, message="booting image"))
        kind = rng.choice(["running", "running", "running", "succeeded", "failed", "stale"])
        beats = int((now - at).total_seconds() // 60) - (4 if kind == "stale" else 0)
        if kind in ("succeeded", "failed"):
            beats = min(beats, rng.randrange(3, 12))
        for n in range(max(beats, 0)):
            gap = 60 + rng.uniform(-4, 4)
            if n == beats // 2 and i % 4 in (1, 2):
                gap = 250  # a hiccup longer than the stale threshold
            at += timedelta(seconds=gap)
            if at >= now - timedelta(seconds=2):
                break
            events.append(_event(job_id, "heartbeat", at))
            if n == 1 and i % 5 != 3:  # most get past provisioning
                events.append(_event(job_id, "running", at, message="installing agent"))
        if kind == "succeeded":
            events.append(
                _event(job_id, "succeeded", at + timedelta(seconds=20), message="agent up")
            )
        elif kind == "failed":
            error = "cloud-init: disk /dev/sdb not found"
            events.append(_event(job_id, "failed", at + timedelta(seconds=15), error=error))
    events.append(_event("vm-0999", "cancelled", now - timedelta(minutes=3), message="superseded"))
    events += showcase(now)
    events.sort(key=lambda e: e.received_at)
    return events


def showcase(now: datetime, job_id: str = "vm-0042") -> list[NewEvent]:
    """A running job with a long history: a minute between heartbeats, one gap of four
    minutes halfway, and silent for the last four and a half (so stale now)."""
    at = now - timedelta(minutes=58)
    identity = {"run_id": 9_099_999, "run_attempt": 1, "agent_id": "agent-3", "region": "eu-west-1"}
    events = [_event(job_id, "provisioning", at, message="booting image", **identity)]
    for n in range(48):
        at += timedelta(seconds=240 if n == 24 else 60 + (n * 7) % 5)
        events.append(_event(job_id, "heartbeat", at))
        if n == 2:
            events.append(_event(job_id, "running", at, message="installing agent"))
    return events


async def seed(pool: asyncpg.Pool[Any], events: list[NewEvent]) -> None:
    async with pool.acquire() as conn, conn.transaction():
        for start in range(0, len(events), 1000):
            await append_batch(conn, events[start : start + 1000])


def many_jobs(count: int, now: datetime | None = None) -> list[NewEvent]:
    """``count`` queued jobs, one event each."""
    now = now or datetime.now(UTC)
    return [
        _event(f"bulk-{i:05d}", "queued", now - timedelta(seconds=count - i)) for i in range(count)
    ]

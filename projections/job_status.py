"""The ``job_status`` read model: every job's current status, identity and counters.

Rules, in the order they are checked for each event of a job's stream:
- Status only moves forward: queued < provisioning < running < terminal.
- The first *reported* terminal status (succeeded, failed, cancelled) stays. ``timed_out`` is the
  watchdog's inference and yields to a reported terminal status that arrives after it.
- Any other callback after a terminal status is late: counted in ``late_event_count``, otherwise
  ignored. Heartbeats count too.
- A heartbeat never changes the status, but creates an unknown job as ``running``.
- ``event_count`` counts every event of the stream; ``updated_at``/``last_position`` follow the
  last of them.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from datetime import datetime
from typing import Any

from events.catalog import (
    HEARTBEAT_RECORDED,
    JOB_EVENT_TYPES,
    REPORTED_TERMINAL,
    STATUS_REPORTED,
    TERMINAL,
    TIMED_OUT,
    normalise_status,
)
from events.models import RecordedEvent
from projections.base import Projection

_RANK = {"queued": 0, "provisioning": 1, "running": 2}


@dataclass(frozen=True, slots=True)
class JobStatus:
    job_id: str
    status: str
    created_at: datetime
    updated_at: datetime
    started_at: datetime | None
    finished_at: datetime | None
    run_id: int | None
    run_attempt: int | None
    agent_id: str | None
    region: str | None
    message: str | None
    error: str | None
    event_count: int
    last_position: int
    late_event_count: int


_IDENTITY = ("run_id", "run_attempt", "agent_id", "region", "message", "error")


def job_key(event: RecordedEvent) -> str | None:
    if event.type in JOB_EVENT_TYPES:
        job_id = event.data.get("job_id")
        return job_id if isinstance(job_id, str) else None
    return None


def _new(event: RecordedEvent, status: str) -> JobStatus:
    at = event.received_at
    return JobStatus(
        job_id=event.data["job_id"],
        status=status,
        created_at=at,
        updated_at=at,
        started_at=None,
        finished_at=None,
        run_id=None,
        run_attempt=None,
        agent_id=None,
        region=None,
        message=None,
        error=None,
        event_count=0,
        last_position=event.position,
        late_event_count=0,
    )


def _reported(event: RecordedEvent) -> dict[str, Any]:
    """The identity fields a callback carries, where present."""
    return {k: event.data[k] for k in _IDENTITY if event.data.get(k) is not None}


def apply(job: JobStatus | None, event: RecordedEvent) -> JobStatus:
    """Fold one event of the job's stream into its status row."""
    at = event.received_at
    if event.type == HEARTBEAT_RECORDED:
        status = "running"
    elif event.type == TIMED_OUT:
        status = "timed_out"
    elif event.type == STATUS_REPORTED:
        status = normalise_status(event.data["status"])
    else:
        raise ValueError(f"job_status does not take {event.type}")

    if job is None:
        # Born before its first event: that event then moves it like any other (a heartbeat
        # creates it running; a job first heard of when it ends is not late).
        job = _new(event, "running" if event.type == HEARTBEAT_RECORDED else "queued")
    job = replace(job, event_count=job.event_count + 1, last_position=event.position, updated_at=at)

    if job.status in TERMINAL:
        if job.status == "timed_out" and status in REPORTED_TERMINAL:
            return replace(job, status=status, finished_at=at, **_reported(event))
        if event.type != TIMED_OUT:
            job = replace(job, late_event_count=job.late_event_count + 1)
        return job

    if event.type == TIMED_OUT:
        return replace(job, status="timed_out", finished_at=at)
    changes = _reported(event)
    if event.type == HEARTBEAT_RECORDED:
        status = job.status
    elif status in TERMINAL:
        changes["finished_at"] = at
    elif _RANK[status] < _RANK[job.status]:
        status = job.status
    if status in ("provisioning", "running") and job.started_at is None:
        changes["started_at"] = at
    return replace(job, status=status, **changes)


PROJECTION = Projection("job_status", JobStatus, key_of=job_key, apply=apply)

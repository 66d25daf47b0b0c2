"""The ``job_heartbeat`` read model: when each job last said it was alive (server clock)."""

from __future__ import annotations

from dataclasses import dataclass, fields, replace
from datetime import datetime
from operator import attrgetter

import asyncpg

from events.catalog import HEARTBEAT_RECORDED
from events.models import RecordedEvent
from projections.base import Projection
from projections.sql import Q


@dataclass(frozen=True, slots=True)
class JobHeartbeat:
    job_id: str
    last_heartbeat_at: datetime
    heartbeat_count: int
    first_heartbeat_at: datetime


COLUMNS = tuple(f.name for f in fields(JobHeartbeat))


def heartbeat_key(event: RecordedEvent) -> str | None:
    if event.type == HEARTBEAT_RECORDED:
        job_id = event.data.get("job_id")
        return job_id if isinstance(job_id, str) else None
    return None


def apply(beat: JobHeartbeat | None, event: RecordedEvent) -> JobHeartbeat:
    """Fold one heartbeat. Late heartbeats (after the job ended) are recorded too: they are
    facts about the agent, and only live jobs are ever shown stale."""
    at = event.received_at
    if beat is None:
        return JobHeartbeat(event.data["job_id"], at, 1, at)
    return replace(beat, last_heartbeat_at=at, heartbeat_count=beat.heartbeat_count + 1)


def _from_row(row: asyncpg.Record) -> JobHeartbeat:
    return JobHeartbeat(**dict(row))


PROJECTION: Projection[JobHeartbeat] = Projection(
    name="job_heartbeat",
    columns=COLUMNS,
    key_of=heartbeat_key,
    apply=apply,
    to_row=attrgetter(*COLUMNS),
    from_row=_from_row,
    load_sql=Q["load_job_heartbeat"],
    upsert_sql=Q["upsert_job_heartbeat"],
)

"""The ``job_heartbeat`` read model: when each job last said it was alive (server clock)."""

from __future__ import annotations

from datetime import datetime
from typing import NamedTuple

from events.catalog import HEARTBEAT_RECORDED
from events.models import Foldable
from projections.base import Projection


class JobHeartbeat(NamedTuple):
    job_id: str
    last_heartbeat_at: datetime
    heartbeat_count: int
    first_heartbeat_at: datetime


def heartbeat_key(event: Foldable) -> str | None:
    if event.type == HEARTBEAT_RECORDED:
        job_id = event.data.get("job_id")
        return job_id if isinstance(job_id, str) else None
    return None


def apply(beat: JobHeartbeat | None, event: Foldable) -> JobHeartbeat:
    """Fold one heartbeat. Late heartbeats (after the job ended) are recorded too: they are
    facts about the agent, and only live jobs are ever shown stale."""
    at = event.received_at
    if beat is None:
        return JobHeartbeat(event.data["job_id"], at, 1, at)
    return JobHeartbeat(beat.job_id, at, beat.heartbeat_count + 1, beat.first_heartbeat_at)


PROJECTION = Projection(
    "job_heartbeat",
    JobHeartbeat,
    key_of=heartbeat_key,
    apply=apply,
    often_changed=("last_heartbeat_at", "heartbeat_count"),  # all but the first heartbeat's time
)

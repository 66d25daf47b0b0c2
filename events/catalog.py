"""The event types jobtrail records, the streams they go to, and the job statuses they carry.

Stream ids: ``job-<job_id>`` for workflow callbacks and the watchdog, ``github-run-<run id>`` for
native ``workflow_run``/``workflow_job`` deliveries, ``github-<event>`` for other native events.
"""

from __future__ import annotations

import re
from typing import Final

from events.models import StreamId

STATUS_REPORTED: Final = "job.status_reported"
HEARTBEAT_RECORDED: Final = "job.heartbeat_recorded"
TIMED_OUT: Final = "job.timed_out"
GITHUB_WORKFLOW_RUN: Final = "github.workflow_run"
GITHUB_WORKFLOW_JOB: Final = "github.workflow_job"
GITHUB_PING: Final = "github.ping"
GITHUB_OTHER: Final = "github.other"

JOB_EVENT_TYPES: Final = frozenset({STATUS_REPORTED, HEARTBEAT_RECORDED, TIMED_OUT})

# What a job id may be: it names a stream and appears in URLs and logs.
JOB_ID: Final = re.compile(r"[A-Za-z0-9._:-]{1,128}")

STATUSES: Final[frozenset[str]] = frozenset(
    {"queued", "provisioning", "running", "heartbeat", "succeeded", "failed", "cancelled"}
)
STATUS_ALIASES: Final[dict[str, str]] = {
    "completed": "succeeded",
    "success": "succeeded",
    "failure": "failed",
    "error": "failed",
}
REPORTED_TERMINAL: Final = frozenset({"succeeded", "failed", "cancelled"})
TERMINAL: Final = REPORTED_TERMINAL | {"timed_out"}
# Job statuses as a projection shows them: the reported ones but ``heartbeat``, plus timed_out.
JOB_STATUSES: Final = frozenset({"queued", "provisioning", "running"}) | TERMINAL


def normalise_status(reported: str) -> str:
    """The canonical status for a reported one (aliases resolved)."""
    return STATUS_ALIASES.get(reported, reported)


def job_stream(job_id: str) -> StreamId:
    return StreamId(f"job-{job_id}")


def github_stream(event_name: str, run_id: int | None) -> StreamId:
    if event_name in ("workflow_run", "workflow_job") and run_id is not None:
        return StreamId(f"github-run-{run_id}")
    return StreamId(f"github-{event_name}")

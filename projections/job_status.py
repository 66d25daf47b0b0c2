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

Native GitHub ``workflow_run``/``workflow_job`` deliveries live in their run's stream; ingest
records in their metadata which job they concern (``job_id``: the job whose callbacks carried
the run id, else the one their title names). For that job:
- A report about an older attempt than the job's latest is ignored (a re-run raises the attempt).
- ``completed`` with a conclusion of cancelled, failure, startup_failure or timed_out ends a job
  that is still live (``cancelled``, ``failed``, ``failed``, ``timed_out``), with the
  conclusion in ``error``; like ``timed_out``, a GitHub ``timed_out`` yields to a later reported
  terminal status. Other reports only record the run and attempt.
- A report creates a job it names that was never heard of (queued, or ended as above). It is not
  an event of the job's stream: ``event_count`` and ``late_event_count`` do not count it;
  ``updated_at`` and ``last_position`` follow it.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any, NamedTuple

from events.catalog import (
    GITHUB_WORKFLOW_JOB,
    GITHUB_WORKFLOW_RUN,
    HEARTBEAT_RECORDED,
    JOB_EVENT_TYPES,
    REPORTED_TERMINAL,
    STATUS_REPORTED,
    TERMINAL,
    TIMED_OUT,
    normalise_status,
)
from events.github import run_report
from events.models import Foldable
from projections.base import Projection, evolve

_RANK = {"queued": 0, "provisioning": 1, "running": 2}


class JobStatus(NamedTuple):
    job_id: str
    status: str
    created_at: datetime
    updated_at: datetime
    # What a job starts with (``_new``); every field is a column of the table, in its order.
    started_at: datetime | None = None
    finished_at: datetime | None = None
    run_id: int | None = None
    run_attempt: int | None = None
    agent_id: str | None = None
    region: str | None = None
    message: str | None = None
    error: str | None = None
    event_count: int = 0
    last_position: int = 0
    late_event_count: int = 0


_IDENTITY = ("run_id", "run_attempt", "agent_id", "region", "message", "error")


_GITHUB_RUN_TYPES = {GITHUB_WORKFLOW_RUN: "workflow_run", GITHUB_WORKFLOW_JOB: "workflow_job"}


def job_key(event: Foldable) -> str | None:
    if event.type in JOB_EVENT_TYPES:
        job_id = event.data.get("job_id")
    elif event.type in _GITHUB_RUN_TYPES:
        job_id = event.metadata.get("job_id")
    else:
        return None
    return job_id if isinstance(job_id, str) else None


def _new(job_id: str, event: Foldable, status: str) -> JobStatus:
    at = event.received_at
    return JobStatus(job_id, status, at, at, last_position=event.position)


def _reported(event: Foldable) -> dict[str, Any]:
    """The identity fields a callback carries, where present."""
    data = event.data
    return {k: v for k in _IDENTITY if (v := data.get(k)) is not None}


def apply(job: JobStatus | None, event: Foldable) -> JobStatus:
    """Fold one event of the job's stream into its status row."""
    at = event.received_at
    type_ = event.type
    if type_ in _GITHUB_RUN_TYPES:
        return _apply_github(job, event)
    if type_ == HEARTBEAT_RECORDED:
        status = "running"
    elif type_ == TIMED_OUT:
        status = "timed_out"
    elif type_ == STATUS_REPORTED:
        status = normalise_status(event.data["status"])
    else:
        raise ValueError(f"job_status does not take {type_}")

    if job is None:
        # Born before its first event: that event then moves it like any other (a heartbeat
        # creates it running; a job first heard of when it ends is not late).
        job = _new(
            event.data["job_id"], event, "running" if type_ == HEARTBEAT_RECORDED else "queued"
        )
    if job.status in TERMINAL or type_ == TIMED_OUT:
        return _apply_ending(job, event, status)

    # A callback about a live job: nearly every event of a log (heartbeats above all), so the
    # new row is built in one go, in JobStatus's field order, rather than through evolve's
    # keyword arguments.
    finished_at = job.finished_at
    if type_ == HEARTBEAT_RECORDED:
        status = job.status
    elif status in TERMINAL:
        finished_at = at
    elif _RANK[status] < _RANK[job.status]:
        status = job.status
    started_at = job.started_at
    if started_at is None and status in ("provisioning", "running"):
        started_at = at
    get = event.data.get
    # Each identity field the callback carries replaces the job's; one it leaves out (or sends
    # as null) keeps it. Spelled out field by field: four times a loop over _IDENTITY's speed.
    return tuple.__new__(
        JobStatus,
        (
            job.job_id,
            status,
            job.created_at,
            at,
            started_at,
            finished_at,
            job.run_id if (run_id := get("run_id")) is None else run_id,
            job.run_attempt if (run_attempt := get("run_attempt")) is None else run_attempt,
            job.agent_id if (agent_id := get("agent_id")) is None else agent_id,
            job.region if (region := get("region")) is None else region,
            job.message if (message := get("message")) is None else message,
            job.error if (error := get("error")) is None else error,
            job.event_count + 1,
            event.position,
            job.late_event_count,
        ),
    )


def _apply_ending(job: JobStatus, event: Foldable, status: str) -> JobStatus:
    """An event for a job that has ended, or the watchdog ending it."""
    at = event.received_at
    # Every event of the stream counts and moves the row's time and position.
    changes: dict[str, Any] = {
        "event_count": job.event_count + 1,
        "last_position": event.position,
        "updated_at": at,
    }
    if job.status in TERMINAL:
        if job.status == "timed_out" and status in REPORTED_TERMINAL:
            return evolve(job, status=status, finished_at=at, **changes, **_reported(event))
        if event.type != TIMED_OUT:
            changes["late_event_count"] = job.late_event_count + 1
        return evolve(job, **changes)
    return evolve(job, status="timed_out", finished_at=at, **changes)


def _apply_github(job: JobStatus | None, event: Foldable) -> JobStatus:
    report = run_report(_GITHUB_RUN_TYPES[event.type], event.data)
    if job is None:
        job = _new(event.metadata["job_id"], event, "queued")
    job = evolve(job, updated_at=event.received_at, last_position=event.position)
    if report is None:
        return job
    if job.run_attempt is not None and (report.run_attempt or 0) < job.run_attempt:
        return job  # news of an attempt that a re-run has replaced
    job = evolve(job, run_id=report.run_id, run_attempt=report.run_attempt or job.run_attempt)
    ending = report.ending_status
    if ending is None or (job.status in TERMINAL and job.status != "timed_out"):
        return job
    if job.status == "timed_out" and ending == "timed_out":
        return job
    return evolve(
        job,
        status=ending,
        finished_at=event.received_at,
        error=f"GitHub reported the workflow run {report.conclusion}",
    )


PROJECTION = Projection(
    "job_status",
    JobStatus,
    key_of=job_key,
    apply=apply,
    metadata_of=frozenset(_GITHUB_RUN_TYPES),  # the job ingest matched the run to
    often_changed=("updated_at", "event_count", "last_position"),  # what a heartbeat moves
)

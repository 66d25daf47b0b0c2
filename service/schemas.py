"""The JSON shapes of the HTTP API (SPEC sections 3 and 6) as pydantic models.

Handlers build plain dicts; these models describe them once, for ``/api/openapi.json``. They
forbid extra fields, so the schemathesis run in the tests fails the moment a response and its
model disagree, and ``tests/unit/test_schemas.py`` holds ``Job`` to the ``job_status`` columns.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal
from uuid import UUID

from pydantic import BaseModel, ConfigDict, Field

JobStatusName = Literal[
    "queued", "provisioning", "running", "succeeded", "failed", "cancelled", "timed_out"
]


class Shape(BaseModel):
    model_config = ConfigDict(extra="forbid")


class Job(Shape):
    """A job: its ``job_status`` row, its heartbeat, and whether it is stale (live, and its
    last heartbeat or, without one, its last event older than ``JOBTRAIL_STALE_AFTER_S``)."""

    job_id: str
    status: JobStatusName
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
    last_position: int = Field(description="global position of the last event applied")
    late_event_count: int
    last_heartbeat_at: datetime | None
    heartbeat_count: int
    stale: bool


class JobPage(Shape):
    jobs: list[Job]
    next_cursor: str | None = Field(description="pass back as `cursor`; null on the last page")


class Event(Shape):
    position: int
    stream_position: int
    event_id: UUID
    type: str
    version: int
    received_at: datetime
    data: dict[str, Any]
    metadata: dict[str, Any]


class EventList(Shape):
    events: list[Event]


class RawRequest(Shape):
    """The request an event was received as: the body byte for byte, its Content-Type, and
    the headers that authenticated it (lower-case names). Never a secret."""

    body_base64: str = Field(description="the request body exactly as received, in base64")
    content_type: str
    headers: dict[str, str]


class SignatureCheck(Shape):
    verified: bool = Field(
        description="the stored request's signature verifies with a configured secret now "
        "(the timestamp tolerance is not applied)"
    )
    key: Literal["primary", "rotated"] | None = Field(
        description="primary: GITHUB_CALLBACK_SECRET (GITHUB_WEBHOOK_SECRET for native GitHub "
        "deliveries); rotated: one of JOBTRAIL_CALLBACK_SECRETS; null when none verifies"
    )


class EventDetail(Event):
    """One event with its place in its stream's hash chain and the evidence it was kept with."""

    stream_id: str
    prev_hash: str = Field(pattern="^[0-9a-f]{64}$", description="hex")
    hash: str = Field(pattern="^[0-9a-f]{64}$", description="hex")
    digest_version: Literal[1, 2] = Field(
        description="1: canonical JSON of the event; 2: canonical envelope plus the raw body"
    )
    raw: RawRequest | None = Field(description="null for events the service derives itself")
    signature: SignatureCheck | None = Field(description="null when there is no raw request")


class Heartbeat(Shape):
    job_id: str
    last_heartbeat_at: datetime
    heartbeat_count: int
    age_s: float = Field(description="seconds since the last heartbeat")
    stale: bool


class HeartbeatList(Shape):
    heartbeats: list[Heartbeat]


class ProjectionProgress(Shape):
    name: str
    position: int = Field(description="the last position applied")
    head_position: int = Field(description="the last position in the log")
    lag_events: int = Field(description="events not applied yet")
    lag_s: float = Field(description="age of the oldest event not applied yet; 0 when caught up")
    state: Literal["live", "catching_up", "stalled"] = Field(
        description="live: lag_s at most 2 s; catching_up: the checkpoint moved in the last "
        "30 s; stalled: it did not"
    )


class ProjectionList(Shape):
    projections: list[ProjectionProgress]


DeliveryOutcome = Literal[
    "accepted",
    "duplicate",
    "invalid_signature",
    "invalid_payload",
    "timeout",
    "too_large",
    "unsupported_media_type",
    "unavailable",
    "error",
]


class Delivery(Shape):
    """One ingest attempt. Refused ones keep neither body nor signature."""

    received_at: datetime
    scheme: Literal["standard", "github", "legacy"] | None = Field(
        description="the scheme whose signature verified; null when none did"
    )
    outcome: DeliveryOutcome
    status_code: int
    reason: str | None = Field(description="why it was refused")
    job_id: str | None
    event_id: UUID | None = Field(description="the event stored (or, for a duplicate, the first)")


class DeliveryList(Shape):
    deliveries: list[Delivery]


class Accepted(Shape):
    status: Literal["accepted"]
    event_id: UUID
    position: int
    duplicate: bool = Field(description="the idempotency key was seen before; nothing stored")


class ErrorDetail(Shape):
    loc: list[str | int]
    msg: str
    type: str


class InvalidPayload(Shape):
    error: Literal["Invalid payload"]
    details: list[ErrorDetail]


class Error(Shape):
    error: str
    request_id: str | None = Field(None, description="on a 500: the request id to look up")


class Health(Shape):
    status: Literal["ok"]


class Readiness(Shape):
    status: Literal["ready", "unavailable"]
    reason: str | None = None

"""``POST /api/webhooks/github``: verify, validate, append, answer (SPEC section 3).

Order of work: size limit, signature on the raw body, content type, parse and validate, durable
append, response. A request that fails any step before the append leaves nothing behind, and
the 200 is sent only after the event's transaction committed.
"""

from __future__ import annotations

import asyncio
import time
from datetime import UTC, datetime
from typing import Any

import structlog
from aiohttp import web

from events.catalog import (
    GITHUB_OTHER,
    GITHUB_PING,
    GITHUB_WORKFLOW_JOB,
    GITHUB_WORKFLOW_RUN,
    HEARTBEAT_RECORDED,
    STATUS_REPORTED,
    github_stream,
    job_stream,
)
from events.github import run_report
from events.hashing import FORM, request_payload
from events.models import NewEvent, RawRequest, format_timestamp
from events.store import connect
from projections import reads
from service import deliveries
from service.errors import ApiError, json_response
from service.keys import appender_key, keyring_key, pool_key, request_id_key, settings_key
from service.payloads import PayloadError, parse_callback, parse_json
from service.signatures import SignatureError, Verified, signed_headers, verify_request

log = structlog.get_logger(component="ingest")

# Seconds a request body may take to arrive in full; then 408 and the connection is closed.
BODY_TIMEOUT_S = 10.0

_GITHUB_TYPES = {
    "workflow_run": GITHUB_WORKFLOW_RUN,
    "workflow_job": GITHUB_WORKFLOW_JOB,
    "ping": GITHUB_PING,
}


def _is_json(content_type: str) -> bool:
    return content_type == "application/json" or (
        content_type.startswith("application/") and content_type.endswith("+json")
    )


def _bind_job(job_id: str) -> None:
    """From here on, the request's log lines and its delivery record name the job."""
    structlog.contextvars.bind_contextvars(job_id=job_id)
    deliveries.note(job_id=job_id)


def _metadata(request: web.Request, verified: Verified, received_at: datetime) -> dict[str, Any]:
    return {
        "scheme": verified.scheme,
        "idempotency_key": verified.idempotency_key,
        "request_id": request.get(request_id_key),
        "remote_addr": request.remote,
        "received_at": format_timestamp(received_at),
    }


def _callback_event(
    request: web.Request, verified: Verified, raw: RawRequest, received_at: datetime
) -> NewEvent:
    document, callback = parse_callback(raw.body)
    _bind_job(callback.job_id)
    if verified.scheme == "legacy":
        verified = Verified("legacy", callback.delivery_id)
    heartbeat = callback.canonical_status == "heartbeat"
    return NewEvent(
        stream_id=job_stream(callback.job_id),
        type=HEARTBEAT_RECORDED if heartbeat else STATUS_REPORTED,
        data=document,
        metadata=_metadata(request, verified, received_at),
        received_at=received_at,
        idempotency_key=verified.idempotency_key,
        raw=raw,
    )


async def _github_event(
    request: web.Request, verified: Verified, raw: RawRequest, received_at: datetime
) -> NewEvent:
    event_name = verified.github_event or ""
    try:
        # The form's payload field, or the body itself: the same text verify checks data by.
        payload = request_payload(raw)
    except ValueError:  # more fields than a GitHub form has
        raise PayloadError(
            [{"loc": [], "msg": "too many form fields", "type": "value_error"}]
        ) from None
    document = parse_json(payload)
    if not isinstance(document, dict):
        raise PayloadError(
            [{"loc": [], "msg": "payload must be a JSON object", "type": "object_type"}]
        )
    metadata = {**_metadata(request, verified, received_at), "github_event": event_name}
    report = run_report(event_name, document)
    if report is not None:
        # Which job the run belongs to is decided once, here, and kept with the event: a replay
        # then maps it the same way whatever the projections looked like at the time.
        async with connect(request.app[pool_key]) as conn:
            job_id = await reads.job_for_run(conn, report.run_id)
        match = "run_id" if job_id is not None else "title"
        job_id = job_id or report.titled_job
        if job_id is not None:
            _bind_job(job_id)
            metadata |= {"job_id": job_id, "job_match": match}
    return NewEvent(
        stream_id=github_stream(event_name, report.run_id if report else None),
        type=_GITHUB_TYPES.get(event_name, GITHUB_OTHER),
        data=document,
        metadata=metadata,
        received_at=received_at,
        idempotency_key=verified.idempotency_key,
        raw=raw,
    )


async def _read_body(request: web.Request) -> bytes:
    if request.content.is_eof():  # arrived with the headers, as nearly every callback does
        return await request.read()
    try:
        # A body that trickles in (slow-loris) must not hold a connection forever; the app's
        # client_max_size refuses longer chunked bodies.
        async with asyncio.timeout(BODY_TIMEOUT_S):
            return await request.read()
    except TimeoutError:
        raise ApiError(408, "Request timeout", headers={"Connection": "close"}) from None


async def receive_webhook(request: web.Request) -> web.Response:
    settings = request.app[settings_key]
    if request.content_length is not None and request.content_length > settings.max_body_bytes:
        raise ApiError(413, "Payload too large")
    body = await _read_body(request)

    try:
        verified = verify_request(request.headers, body, request.app[keyring_key], time.time())
        headers = signed_headers(verified, request.headers)
    except SignatureError as error:
        log.info("ingest.refused", reason=error.reason)
        deliveries.note(reason=error.reason)
        raise ApiError(401, "Invalid signature") from None
    deliveries.note(scheme=verified.scheme)
    structlog.contextvars.bind_contextvars(scheme=verified.scheme)

    allowed_form = verified.scheme == "github"
    if not request.headers.get("Content-Type", "").isprintable() or not (
        _is_json(request.content_type) or (allowed_form and request.content_type == FORM)
    ):
        raise ApiError(415, "Unsupported Media Type: send application/json")

    # The evidence kept with the event: the body as received, and what authenticated it.
    raw = RawRequest(body, request.headers["Content-Type"], headers)
    received_at = datetime.now(UTC)
    try:
        if verified.scheme == "github":
            event = await _github_event(request, verified, raw, received_at)
        else:
            event = _callback_event(request, verified, raw, received_at)
    except PayloadError as error:
        log.info("ingest.invalid_payload", details=error.details)
        raise ApiError(400, "Invalid payload", details=error.details) from None

    # StorageUnavailable becomes a 503 with Retry-After in the error middleware.
    [result] = await request.app[appender_key].append([event])
    deliveries.note(
        event_id=str(result.event_id), outcome="duplicate" if result.duplicate else "accepted"
    )
    log.debug(
        "ingest.accepted",
        scheme=verified.scheme,
        event_type=event.type,
        position=result.position,
        duplicate=result.duplicate,
    )
    return json_response(
        {
            "status": "accepted",
            "event_id": str(result.event_id),
            "position": result.position,
            "duplicate": result.duplicate,
        }
    )

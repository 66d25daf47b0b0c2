"""The recent ingest attempts behind ``GET /api/deliveries``, accepted and refused.

A middleware around the ingest route records each attempt's outcome once it is known; ingest
itself only notes what the response cannot say (the scheme that verified, why a signature was
refused, the job once the payload named it) with ``note``. Nothing of a request is kept but
those facts: no body, no signature. The log is a ring of ``CAPACITY`` entries per process, so
a flood of refused requests costs a fixed amount of memory; several processes each keep their
own.
"""

from __future__ import annotations

import time
from collections import deque
from contextvars import ContextVar
from datetime import UTC, datetime
from itertools import islice
from typing import Any, NamedTuple

from aiohttp import web
from aiohttp.typedefs import Handler

from events.errors import StorageUnavailable
from service.errors import ApiError
from service.keys import deliveries_key, metrics_key

INGEST_PATH = "/api/webhooks/github"
CAPACITY = 1000
DEFAULT_LIMIT = 200
MAX_REASON = 300  # characters kept of a refusal's reason
# What ingest noted about the request in flight; set afresh by the middleware for each one.
_NOTES: ContextVar[dict[str, str | None] | None] = ContextVar("delivery_notes", default=None)
_OUTCOMES = {
    400: "invalid_payload",
    401: "invalid_signature",
    408: "timeout",
    413: "too_large",
    415: "unsupported_media_type",
    503: "unavailable",
}


class Delivery(NamedTuple):
    """One attempt as the ring keeps it: built on every request, so a tuple, with the time in
    seconds since the epoch (``DeliveryLog.newest`` turns it into the API's timestamp)."""

    received_at: float
    scheme: str | None
    outcome: str
    status_code: int
    reason: str | None
    job_id: str | None
    event_id: str | None


class DeliveryLog:
    """The last ``capacity`` deliveries of this process."""

    def __init__(self, capacity: int = CAPACITY) -> None:
        self._ring: deque[Delivery] = deque(maxlen=capacity)

    def record(self, delivery: Delivery) -> None:
        self._ring.append(delivery)

    def newest(self, limit: int) -> list[dict[str, Any]]:
        """The ``limit`` newest, newest first, as ``GET /api/deliveries`` shows them."""
        return [
            d._asdict() | {"received_at": datetime.fromtimestamp(d.received_at, UTC)}
            for d in islice(reversed(self._ring), limit)
        ]


def note(**facts: str | None) -> None:
    """Tell the delivery log something about the request in flight that its response will
    not show (outside the ingest route, nothing is recorded)."""
    notes = _NOTES.get()
    if notes is not None:
        notes.update(facts)


def _reason(error: ApiError) -> str:
    details = error.extra.get("details")
    if isinstance(details, list) and details and isinstance(details[0], dict):
        first = details[0]
        where = ".".join(str(part) for part in first.get("loc", []))
        return f"{where}: {first.get('msg')}" if where else str(first.get("msg"))
    return error.message


def _shorten(reason: str | None) -> str | None:
    return reason if reason is None or len(reason) <= MAX_REASON else reason[:MAX_REASON] + "…"


@web.middleware
async def record_deliveries(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Record each ``POST`` to the ingest route. Sits inside ``json_errors``, so it sees the
    errors themselves and leaves their rendering to it."""
    if request.path != INGEST_PATH or request.method != "POST":
        return await handler(request)
    received_at = time.time()
    notes: dict[str, str | None] = {}
    reset = _NOTES.set(notes)
    status, outcome = 500, "error"
    reason: str | None = "internal error"
    try:
        response = await handler(request)
        status = response.status
        if status == 200:  # ingest noted what it stored: no need to parse the answer again
            outcome = notes.get("outcome") or "accepted"
            reason = None
        return response
    except ApiError as error:
        status, reason = error.status, _reason(error)
        outcome = _OUTCOMES.get(status, "error")
        raise
    except StorageUnavailable:
        status, reason, outcome = 503, "storage unavailable", "unavailable"
        raise
    except web.HTTPException as error:
        status, reason = error.status, error.reason
        outcome = _OUTCOMES.get(status, "error")
        raise
    finally:
        _NOTES.reset(reset)
        request.app[metrics_key].count_ingest(notes.get("scheme") or "none", outcome)
        request.app[deliveries_key].record(
            Delivery(
                received_at,
                notes.get("scheme"),
                outcome,
                status,
                None if status == 200 else _shorten(notes.get("reason", reason)),
                notes.get("job_id"),
                notes.get("event_id") if status == 200 else None,
            )
        )

"""``GET /api/events/{event_id}``: one event with its evidence (SPEC sections 4 and 6).

The event as ``/api/jobs/{job_id}/events`` shows it, plus where it sits in its chain
(``stream_id``, ``prev_hash``, ``hash``, ``digest_version``), the request it was received as
(``raw``: the body in base64, its content type and the headers that authenticated it; null for
the events the service derives itself) and whether that request's signature re-verifies now
with the configured secrets, ignoring the timestamp tolerance (``signature``: which key, primary
or rotated, never the secret).
"""

from __future__ import annotations

from typing import Any
from uuid import UUID

from aiohttp import web

from events.models import RecordedEvent
from events.store import connect, read_event
from service.errors import ApiError, json_response
from service.keys import keyring_key, pool_key
from service.signatures import Keyring, check_signature


def signature_json(event: RecordedEvent, keyring: Keyring) -> dict[str, Any] | None:
    """``{"verified", "key"}`` for a received event; None for a derived one."""
    if event.raw is None:
        return None
    verified = check_signature(event.raw, keyring)
    if verified is None:
        return {"verified": False, "key": None}
    return {"verified": True, "key": "rotated" if verified.rotated else "primary"}


def event_detail(event: RecordedEvent, keyring: Keyring) -> dict[str, Any]:
    """The document ``GET /api/events/{event_id}`` answers (``schemas.EventDetail``)."""
    return {
        **event.to_json(),
        "stream_id": event.stream_id,
        "prev_hash": event.prev_hash.hex(),
        "hash": event.hash.hex(),
        "digest_version": event.digest_version,
        "raw": None if event.raw is None else event.raw.to_json(),
        "signature": signature_json(event, keyring),
    }


async def get_event(request: web.Request) -> web.Response:
    try:
        event_id = UUID(request.match_info["event_id"])
    except ValueError:
        raise ApiError(400, "event_id must be a UUID") from None
    async with connect(request.app[pool_key]) as conn:
        event = await read_event(conn, event_id)
    if event is None:
        raise ApiError(404, "Event not found")
    return json_response(event_detail(event, request.app[keyring_key]))

"""The per-stream hash chain that makes any edit of a stored event detectable.

Each event's hash is ``sha256(prev_hash || stream_position (8 bytes, big-endian) || digest)``,
where ``digest`` is the SHA-256 of the event's canonical JSON body (event id, stream, type, version,
data, metadata, received_at). The first event of a stream chains to 32 zero bytes. Global positions
are deliberately outside the hash: ``import`` assigns them anew.

Canonical JSON: keys sorted, no insignificant white space, UTF-8, numbers as Python writes
them. PostgreSQL's ``jsonb`` keeps numeric values but not always their spelling or type: a float
written with a positive exponent (``1e+300``) comes back as an integer (1 followed by 300
zeros), and ``-0.0`` comes back as ``0.0``. Those floats are written in the form they come back
in, so a round trip through the database never looks like tampering.
"""

from __future__ import annotations

import decimal
import hashlib
import json
from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import Any
from uuid import UUID

from events.models import NewEvent, RecordedEvent, format_timestamp

GENESIS_HASH = bytes(32)


def _settled(value: Any) -> Any:
    """``value`` with every float written as it reads back from ``jsonb``."""
    if isinstance(value, float):
        if value == 0:
            return 0.0
        if "e+" in repr(value):
            return int(decimal.Decimal(repr(value)))
        return value
    if isinstance(value, Mapping):
        return {k: _settled(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_settled(v) for v in value]
    return value


def canonical_json(value: Any) -> bytes:
    """The canonical UTF-8 encoding of a JSON value (see the module docstring)."""
    text = json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    # Only a float with a positive exponent or a negative zero needs settling, and either
    # leaves one of these marks in the text; most documents take the fast path.
    if "e+" in text or "-0.0" in text:
        text = json.dumps(
            _settled(value), sort_keys=True, separators=(",", ":"), ensure_ascii=False
        )
    return text.encode("utf-8")


def body_digest(
    *,
    event_id: UUID,
    stream_id: str,
    type: str,
    version: int,
    data: Mapping[str, Any],
    metadata: Mapping[str, Any],
    received_at: datetime,
) -> bytes:
    """SHA-256 of the canonical body: everything about an event except where it sits."""
    body = {
        "event_id": str(event_id),
        "stream_id": stream_id,
        "type": type,
        "version": version,
        "data": data,
        "metadata": metadata,
        "received_at": format_timestamp(received_at),
    }
    return hashlib.sha256(canonical_json(body)).digest()


def event_digest(event: NewEvent | RecordedEvent) -> bytes:
    """``body_digest`` of an event, new or recorded."""
    return body_digest(
        event_id=event.event_id,
        stream_id=event.stream_id,
        type=event.type,
        version=event.version,
        data=event.data,
        metadata=event.metadata,
        received_at=event.received_at,
    )


def chain_hash(prev_hash: bytes, stream_position: int, digest: bytes) -> bytes:
    """Link one event to its predecessor in the stream."""
    return hashlib.sha256(prev_hash + stream_position.to_bytes(8, "big") + digest).digest()


def broken_links(event: RecordedEvent, prev_hash: bytes, prev_position: int) -> list[str]:
    """The fields of ``event`` that do not follow from its predecessor in the stream (whose
    hash and stream position are given; ``GENESIS_HASH`` and 0 for a first event): any of
    ``stream_position``, ``prev_hash`` and ``hash`` (its body no longer matches its hash)."""
    broken = []
    if event.stream_position != prev_position + 1:
        broken.append("stream_position")
    if event.prev_hash != prev_hash:
        broken.append("prev_hash")
    if event.hash != chain_hash(event.prev_hash, event.stream_position, event_digest(event)):
        broken.append("hash")
    return broken


def check_chain(events: Sequence[RecordedEvent]) -> list[bool]:
    """For one stream's events in stream order, whether each one's hash checks out.

    An event is reported bad when its own body no longer matches its hash, when its prev_hash is
    not its predecessor's hash, or when its stream position does not follow its predecessor's.
    """
    ok: list[bool] = []
    prev_hash, prev_position = GENESIS_HASH, 0
    for event in events:
        ok.append(not broken_links(event, prev_hash, prev_position))
        prev_hash, prev_position = event.hash, event.stream_position
    return ok

"""The per-stream hash chain that makes any edit of a stored event detectable.

Each event's hash is ``sha256(prev_hash || stream_position (8 bytes, big-endian) || digest)``,
where ``digest`` is the SHA-256 of the event's canonical JSON body (event id, stream, type, version,
data, metadata, received_at). The first event of a stream chains to 32 zero bytes. Global positions
are deliberately outside the hash: ``import`` assigns them anew.

Canonical JSON: keys sorted, no insignificant white space, UTF-8, and every number written as its
normalised decimal value. PostgreSQL's ``jsonb`` keeps numeric values but not their spelling
(``1e300`` comes back as 1 followed by 300 zeros), so hashing the value rather than the text keeps a
round trip through the database from looking like tampering.
"""

from __future__ import annotations

import decimal
import hashlib
import json
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from typing import Any
from uuid import UUID

from events.models import RecordedEvent

GENESIS_HASH = bytes(32)

# Floats carry at most 17 significant digits and payload integers at most 16; the wide precision
# only guarantees that normalisation never rounds.
_DECIMAL = decimal.Context(prec=400, Emax=decimal.MAX_EMAX, Emin=decimal.MIN_EMIN)


def _number(value: int | float) -> str:
    as_decimal = _DECIMAL.create_decimal(value if isinstance(value, int) else repr(value))
    normalised = _DECIMAL.normalize(as_decimal)
    return "0" if normalised.is_zero() else str(normalised)


def _encode(value: Any, out: list[str]) -> None:
    if value is None or isinstance(value, bool | str):
        out.append(json.dumps(value, ensure_ascii=False))
    elif isinstance(value, int | float):
        out.append(_number(value))
    elif isinstance(value, Mapping):
        out.append("{")
        for i, key in enumerate(sorted(value)):
            if i:
                out.append(",")
            out.append(json.dumps(key, ensure_ascii=False))
            out.append(":")
            _encode(value[key], out)
        out.append("}")
    elif isinstance(value, list | tuple):
        out.append("[")
        for i, item in enumerate(value):
            if i:
                out.append(",")
            _encode(item, out)
        out.append("]")
    else:
        raise TypeError(f"not a JSON value: {type(value).__name__}")


def canonical_json(value: Any) -> bytes:
    """The canonical UTF-8 encoding of a JSON value (see the module docstring)."""
    out: list[str] = []
    _encode(value, out)
    return "".join(out).encode("utf-8")


def format_timestamp(moment: datetime) -> str:
    """A fixed-width UTC timestamp with microseconds, as hashed and as stored in metadata."""
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


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


def chain_hash(prev_hash: bytes, stream_position: int, digest: bytes) -> bytes:
    """Link one event to its predecessor in the stream."""
    return hashlib.sha256(prev_hash + stream_position.to_bytes(8, "big") + digest).digest()


def check_chain(events: Sequence[RecordedEvent]) -> list[bool]:
    """For one stream's events in stream order, whether each one's hash checks out.

    An event is reported bad when its own body no longer matches its hash, when its prev_hash is
    not its predecessor's hash, or when its stream position does not follow its predecessor's.
    """
    ok: list[bool] = []
    prev_hash, prev_position = GENESIS_HASH, 0
    for event in events:
        digest = body_digest(
            event_id=event.event_id,
            stream_id=event.stream_id,
            type=event.type,
            version=event.version,
            data=event.data,
            metadata=event.metadata,
            received_at=event.received_at,
        )
        ok.append(
            event.prev_hash == prev_hash
            and event.stream_position == prev_position + 1
            and event.hash == chain_hash(event.prev_hash, event.stream_position, digest)
        )
        prev_hash, prev_position = event.hash, event.stream_position
    return ok

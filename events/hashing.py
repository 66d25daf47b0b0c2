"""The per-stream hash chain that makes any edit of a stored event detectable.

Each event's hash is ``sha256(prev_hash || stream_position (8 bytes, big-endian) || digest)``.
The first event of a stream chains to 32 zero bytes. Global positions are deliberately outside
the hash: ``import`` assigns them anew. How ``digest`` is computed is recorded with each event
(``digest_version``), so a log keeps verifying across versions and nothing stored is rewritten:

- version 1, events without a raw request (the watchdog's, and every event stored before raw
  requests were kept): the SHA-256 of the event's canonical JSON body (event id, stream, type,
  version, data, metadata, received_at).
- version 2, events received over HTTP: ``sha256("jobtrail-digest-v2\n" || len(envelope) ||
  envelope || len(body) || body)``, lengths as 8 bytes big-endian, where ``envelope`` is the
  canonical JSON of event id, stream, type, version, received_at, metadata, content type and the
  signed headers (small, string-valued documents), and ``body`` the request body exactly as
  received. The payload is never re-serialised to be hashed; ``data``, its parsed copy, is
  checked against those bytes instead (``data_matches``): an edit of either is detected.

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
from urllib.parse import parse_qs
from uuid import UUID

import orjson

from events.models import NewEvent, RawRequest, RecordedEvent, format_timestamp

GENESIS_HASH = bytes(32)
DIGEST_VERSIONS = (1, 2)
_V2_TAG = b"jobtrail-digest-v2\n"
FORM = "application/x-www-form-urlencoded"


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


# The scalars orjson writes exactly as ``json`` does (exact types: a subclass takes the slow path).
_PLAIN_SCALARS = frozenset({str, int, bool, type(None)})


def _plain(value: Any, depth: int = 0) -> bool:
    """Whether ``value`` holds only strings, integers, booleans, null, and dicts and lists of
    them: what orjson writes exactly as ``json`` does (no floats, whose spelling differs).
    Checked on every event appended, hence exact type lookups rather than ``isinstance``."""
    kind = type(value)
    if kind in _PLAIN_SCALARS:
        return True
    if depth > 3:
        return False
    if kind is dict:
        for key, item in value.items():
            if type(key) is not str:
                return False
            if type(item) not in _PLAIN_SCALARS and not _plain(item, depth + 1):
                return False
        return True
    if kind is list:
        return all(_plain(item, depth + 1) for item in value)
    return False


def canonical_json(value: Any) -> bytes:
    """The canonical UTF-8 encoding of a JSON value (see the module docstring)."""
    if _plain(value):
        # The envelope of every received event: orjson writes it as json.dumps below would,
        # byte for byte (tests/unit/test_hashing.py compares them), several times faster. It
        # refuses what it cannot write the same way (a lone surrogate, an integer past 64 bits).
        try:
            return orjson.dumps(value, option=orjson.OPT_SORT_KEYS)
        except TypeError:
            pass
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


def raw_digest(
    *,
    event_id: UUID,
    stream_id: str,
    type: str,
    version: int,
    metadata: Mapping[str, Any],
    received_at: datetime,
    raw: RawRequest,
) -> bytes:
    """Digest version 2: the canonical envelope, then the body bytes as received."""
    envelope = canonical_json(
        {
            "event_id": str(event_id),
            "stream_id": stream_id,
            "type": type,
            "version": version,
            "received_at": format_timestamp(received_at),
            "metadata": metadata,
            "content_type": raw.content_type,
            "headers": raw.headers,
        }
    )
    digest = hashlib.sha256(_V2_TAG)
    for part in (envelope, raw.body):
        digest.update(len(part).to_bytes(8, "big"))
        digest.update(part)
    return digest.digest()


class DigestError(ValueError):
    """The event's digest cannot be computed: unknown version, or its raw request missing."""


def event_digest(event: NewEvent | RecordedEvent) -> bytes:
    """The digest of an event, new or recorded, by its digest version."""
    # What both versions cover besides the payload (data, or the raw request).
    covered: dict[str, Any] = {
        "event_id": event.event_id,
        "stream_id": event.stream_id,
        "type": event.type,
        "version": event.version,
        "metadata": event.metadata,
        "received_at": event.received_at,
    }
    if event.digest_version == 1:
        return body_digest(data=event.data, **covered)
    if event.digest_version != 2:
        raise DigestError(f"unknown digest version {event.digest_version}")
    if event.raw is None:
        raise DigestError("digest version 2 needs the raw request")
    return raw_digest(raw=event.raw, **covered)


def request_payload(raw: RawRequest) -> bytes:
    """The JSON text a request carries: its body, or the ``payload`` field of a form-encoded
    one (GitHub's other delivery format). Ingest parses this; ``data_matches`` checks it.
    Raises ``ValueError`` for a form with too many fields."""
    if raw.content_type.split(";", 1)[0].strip().lower() == FORM:
        form = parse_qs(raw.body.decode("utf-8", "replace"), max_num_fields=16)
        return form.get("payload", [""])[0].encode("utf-8")
    return raw.body


def parsed_payload(raw: RawRequest) -> Any:
    """The document in a raw request; ``ValueError`` when it is not UTF-8 JSON."""
    try:
        return json.loads(request_payload(raw).decode("utf-8"))
    except RecursionError:
        raise ValueError("nested too deeply") from None


def data_matches(data: Mapping[str, Any], raw: RawRequest) -> bool:
    """Whether ``data`` is the parse of the raw request, compared as ``jsonb`` keeps it (the
    canonical form: key order, white space, escapes and number spellings do not count)."""
    try:
        parsed = parsed_payload(raw)
    except ValueError:
        return False
    return canonical_json(parsed) == canonical_json(data)


def evidence_problems(event: RecordedEvent) -> list[str]:
    """``digest_version`` when it is not a known one; ``raw`` when the raw request is missing
    (version 2) or present but outside the chain (version 1). Either way the digest cannot be
    checked."""
    if event.digest_version not in DIGEST_VERSIONS:
        return ["digest_version"]
    if (event.raw is None) != (event.digest_version == 1):
        return ["raw"]
    return []


def chain_hash(prev_hash: bytes, stream_position: int, digest: bytes) -> bytes:
    """Link one event to its predecessor in the stream."""
    return hashlib.sha256(prev_hash + stream_position.to_bytes(8, "big") + digest).digest()


def broken_links(event: RecordedEvent, prev_hash: bytes, prev_position: int) -> list[str]:
    """The fields of ``event`` that do not follow from its predecessor in the stream (whose
    hash and stream position are given; ``GENESIS_HASH`` and 0 for a first event): any of
    ``stream_position``, ``prev_hash``, ``hash`` (its body or raw request no longer matches its
    hash), ``data`` (not the parse of its raw request), or ``evidence_problems``. A version-2
    event must have been read with its raw request."""
    broken = []
    if event.stream_position != prev_position + 1:
        broken.append("stream_position")
    if event.prev_hash != prev_hash:
        broken.append("prev_hash")
    if evidence := evidence_problems(event):
        return broken + evidence
    if event.hash != chain_hash(event.prev_hash, event.stream_position, event_digest(event)):
        broken.append("hash")
    if event.raw is not None and not data_matches(event.data, event.raw):
        broken.append("data")
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

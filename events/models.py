"""The records of the event log: what a writer hands in and what a reader gets back.

Events are immutable facts. ``NewEvent`` is built by the caller (the server clock's
``received_at`` included); the log assigns the global position, the stream position and the hash.
"""

from __future__ import annotations

import base64
import functools
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, NamedTuple, NewType, Protocol, TypeVar
from uuid import UUID, uuid4

StreamId = NewType("StreamId", str)
JsonObject = Mapping[str, Any]


@functools.lru_cache(maxsize=256)
def format_timestamp(moment: datetime) -> str:
    """A fixed-width UTC timestamp with microseconds: how every time is hashed, stored in
    metadata and shown (``2026-11-27T10:00:00.123456Z``). Memoised: an event's moment is
    written several times (its metadata, its digest, the API)."""
    if moment.tzinfo is not UTC:
        moment = moment.astimezone(UTC)
    if moment.year < 1000:  # isoformat pads the year to four digits, strftime does not
        return moment.strftime("%Y-%m-%dT%H:%M:%S.%fZ")
    return moment.isoformat(timespec="microseconds")[:-6] + "Z"  # it ends in +00:00


@dataclass(frozen=True, slots=True)
class RawRequest:
    """The evidence of an event received over HTTP: the request body exactly as it arrived, its
    ``Content-Type`` and the headers that authenticated it (lower-case names; signatures and
    ids, never a secret). The hash chain covers these bytes; ``data`` is their parsed copy."""

    body: bytes
    content_type: str
    headers: Mapping[str, str]

    def to_json(self) -> dict[str, Any]:
        """JSON-ready: the body in base64 (it need not be text)."""
        return {
            "body_base64": base64.b64encode(self.body).decode("ascii"),
            "content_type": self.content_type,
            "headers": dict(self.headers),
        }


@dataclass(frozen=True, slots=True)
class NewEvent:
    """An event not yet in the log.

    ``idempotency_key``: when set, a second event with the same key is not stored; the append
    answers with the first event's id and position instead.
    ``expected_version``: when set, the event is stored only if its stream then holds exactly
    that many events (0: the stream does not exist yet); otherwise the append answers with a
    conflict and stores nothing. It is how a decision taken on a read (the watchdog's "this job
    went silent") is dropped when the stream moved on meanwhile.
    """

    stream_id: StreamId
    type: str
    data: JsonObject
    metadata: JsonObject
    received_at: datetime
    version: int = 1
    idempotency_key: str | None = None
    expected_version: int | None = None
    event_id: UUID = field(default_factory=uuid4)
    raw: RawRequest | None = None

    @property
    def digest_version(self) -> int:
        """How the event is hashed (``events.hashing``): 2 with a raw request, else 1."""
        return 1 if self.raw is None else 2


@dataclass(frozen=True, slots=True)
class AppendResult:
    """Where an appended event landed; for a duplicate, where the first one landed.

    ``conflict``: not stored, because its stream was not at the expected version (position 0).
    """

    event_id: UUID
    position: int
    duplicate: bool
    conflict: bool = False


class RecordedEvent(NamedTuple):
    """An event as stored, with its place in the global order and in its stream.

    ``raw`` is the request it was received as, when it was and when the reader fetched it (the
    projector's reads leave it out); ``digest_version`` says how its hash was computed.

    A ``NamedTuple`` rather than a frozen dataclass: as immutable, and built several times
    faster, which counts where every event of the log is read (replay, verify, the projector).
    """

    position: int
    event_id: UUID
    stream_id: StreamId
    stream_position: int
    type: str
    version: int
    data: dict[str, Any]
    metadata: dict[str, Any]
    received_at: datetime
    prev_hash: bytes
    hash: bytes
    digest_version: int = 1
    raw: RawRequest | None = None

    def to_json(self) -> dict[str, Any]:
        """The event as the read API and the CLI show it (JSON-ready values only)."""
        return {
            "position": self.position,
            "stream_position": self.stream_position,
            "event_id": str(self.event_id),
            "type": self.type,
            "version": self.version,
            "received_at": format_timestamp(self.received_at),
            "data": self.data,
            "metadata": self.metadata,
        }


class FoldedEvent(NamedTuple):
    """What the folds read of an event: ``RecordedEvent``'s fields of the same names, without
    the ids, hashes and raw request that no fold reads. The readers that feed the folds (the
    projector, a replay, ``verify``'s replay, point-in-time reads) return these: decoding the
    other columns was about a sixth of the work of reading a row.
    """

    position: int
    stream_id: StreamId
    type: str
    version: int
    data: dict[str, Any]
    metadata: dict[str, Any]
    received_at: datetime


# Either kind of event a reader returns, where one function serves both (paging, upcasting).
AnyEvent = TypeVar("AnyEvent", FoldedEvent, RecordedEvent)


class Foldable(Protocol):
    """What a fold may read of an event; a ``RecordedEvent`` and a ``FoldedEvent`` both have
    it, so the folds run on either (``verify`` folds the events it reads whole)."""

    @property
    def position(self) -> int: ...
    @property
    def stream_id(self) -> StreamId: ...
    @property
    def type(self) -> str: ...
    @property
    def version(self) -> int: ...
    @property
    def data(self) -> dict[str, Any]: ...
    @property
    def metadata(self) -> dict[str, Any]: ...
    @property
    def received_at(self) -> datetime: ...

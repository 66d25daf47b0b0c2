"""Auditing the log: every stream's hash chain, and the stream heads, checked in one pass.

The log is read in global position order, which for every stream is also its stream order
(appends draw both under one lock, and ``import`` keeps it), so an auditor needs to remember
only the last event of each stream: memory grows with the number of streams, not events.

What an edit behind the database's back leaves (triggers disabled, ``session_replication_role
= replica``, a restored dump):
- a changed body (data, metadata, type, version, event id, received_at; for an event kept with
  its raw request, that request's body, content type or signed headers) or hash: ``hash``;
- a changed ``data`` of an event kept with its raw request (the chain covers the raw bytes,
  ``data`` is their parsed copy): ``data``;
- a removed raw request, or a digest version changed: ``raw`` or ``digest_version``;
- a removed event: the next one's ``stream_position`` and ``prev_hash``, or, for the last one,
  a stream head that names a later event;
- two events swapped (positions or bodies): ``stream_position`` and/or ``hash`` at both;
- a rewritten chain (every later hash recomputed): the head's ``last_hash`` no longer matches.

After ``jobtrail archive`` (``events.archive``) part of a stream may be in an archived month: the
auditor is given the archived ``Segment``s, and a stream that goes on past a gap follows the
chain across them (each must link to what came before), so the live log still verifies whole.
Checking files (``verify --file``), a stream's first event in a file may continue a chain held
by an earlier file: ``check(..., may_continue=True)`` notes it instead of reporting a break.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from typing import Any, NamedTuple

from events.hashing import (
    GENESIS_HASH,
    broken_links,
    chain_hash,
    event_digest,
    evidence_problems,
    parsed_payload,
)
from events.models import RecordedEvent
from events.partitions import Segment, format_month
from events.store import Connection, Q

_EVENT_DETAIL = {
    "stream_position": "does not follow the previous event of the stream: an event is missing"
    " or the stream's events are out of order",
    "prev_hash": "does not link to the previous event of the stream: an event was removed,"
    " inserted or reordered",
    "hash": "the stored event no longer matches its hash: its body (event_id, type, version,"
    " data, metadata or received_at), its raw request or its hash was changed",
    "data": "data is not the parse of the stored raw request: one of them was changed",
    "raw": "the raw request does not fit the digest version: it was removed or added",
    "digest_version": "the digest version is not one jobtrail writes",
}


@dataclasses.dataclass(frozen=True)
class Problem:
    """One difference found by an audit, precise enough to go and look.

    ``expected`` is what the evidence says (the chain, the stream head, a fresh replay),
    ``actual`` what is stored. ``extra`` adds kind-specific context (stream position, projection
    and key).
    """

    kind: str  # "event", "stream_head" or "projection"
    stream_id: str | None
    position: int | None
    field: str
    expected: Any = None
    actual: Any = None
    detail: str = ""
    extra: Mapping[str, Any] = dataclasses.field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        def shown(value: Any) -> Any:
            return value.hex() if isinstance(value, bytes) else value

        return {
            "kind": self.kind,
            "stream_id": self.stream_id,
            "position": self.position,
            "field": self.field,
            **self.extra,
            "expected": shown(self.expected),
            "actual": shown(self.actual),
            "detail": self.detail,
        }


class _Last(NamedTuple):
    stream_position: int
    hash: bytes
    position: int


class ChainAuditor:
    """Feed it every event in position order (``check``), then the stream heads.

    ``archived``: each stream's archived segments, in stream order (``events.partitions``).
    """

    def __init__(self, archived: Mapping[str, Sequence[Segment]] | None = None) -> None:
        self._last: dict[str, _Last] = {}
        self._archived = archived or {}
        self.events = 0
        self.continued: list[RecordedEvent] = []  # first events of chains held elsewhere

    @property
    def streams(self) -> int:
        return len(self._last)

    def check(self, event: RecordedEvent, *, may_continue: bool = False) -> list[Problem]:
        """The problems at ``event``, judged against the previous event of its stream (or the
        archived segment before it). With ``may_continue``, an event past a gap in its stream is
        taken as continuing a chain held elsewhere (listed in ``continued``): only its own hash
        and data are checked."""
        self.events += 1
        last = self._last.get(event.stream_id)
        prev_hash, prev_position = (last.hash, last.stream_position) if last else (GENESIS_HASH, 0)
        problems: list[Problem] = []
        detail = ""
        if event.stream_position > prev_position + 1:
            if may_continue:
                self.continued.append(event)
                prev_hash, prev_position = event.prev_hash, event.stream_position - 1
            else:
                crossed, problems = self._cross(event.stream_id, prev_hash, prev_position)
                if crossed is None and self._archived:
                    detail = f"; no archived month holds stream positions {prev_position + 1}.."
                    detail += f"{event.stream_position - 1} either"
                elif crossed is not None:
                    prev_position, prev_hash = crossed.stream_position, crossed.hash
        problems += [
            Problem(
                "event",
                event.stream_id,
                event.position,
                name,
                *_expected_and_actual(name, event, prev_hash, prev_position),
                detail=_EVENT_DETAIL[name] + (detail if name == "stream_position" else ""),
                extra={"stream_position": event.stream_position},
            )
            for name in broken_links(event, prev_hash, prev_position)
        ]
        # The next event is judged against this one's stored hash and the highest stream
        # position so far: one edit, one report; a swapped pair, reports at the pair only.
        highest = max(prev_position, event.stream_position)
        self._last[event.stream_id] = _Last(highest, event.hash, event.position)
        return problems

    def _cross(
        self, stream_id: str, prev_hash: bytes, prev_position: int
    ) -> tuple[_Last | None, list[Problem]]:
        """Follow the archived segments that go on from ``prev_position``: where the chain
        stands after them (None if none does), and each one that does not link."""
        problems: list[Problem] = []
        crossed = None
        for segment in self._archived.get(stream_id, ()):
            if segment.first != prev_position + 1:
                continue
            if segment.prev_hash != prev_hash:
                problems.append(_unlinked(segment, prev_hash))
            crossed = _Last(segment.last, segment.last_hash, segment.last_position)
            prev_position, prev_hash = segment.last, segment.last_hash
        return crossed, problems

    async def check_heads(self, conn: Connection) -> list[Problem]:
        """Compare the ``streams`` table with the last event seen of each stream. Run it in the
        same snapshot (REPEATABLE READ transaction) as the pass over the events."""
        problems: list[Problem] = []
        for stream_id in self._archived:  # the streams whose last events are archived
            last = self._last.get(stream_id, _Last(0, GENESIS_HASH, 0))
            crossed, unlinked = self._cross(stream_id, last.hash, last.stream_position)
            problems += unlinked
            if crossed is not None:
                self._last[stream_id] = crossed
        unseen = set(self._last)
        for row in await conn.fetch(Q["read_heads"]):
            stream_id = row["stream_id"]
            unseen.discard(stream_id)
            head = _Last(row["version"], bytes(row["last_hash"]), row["last_position"])
            last = self._last.get(stream_id, _Last(0, GENESIS_HASH, 0))
            for name, recorded, found in zip(_HEAD_FIELDS, head, last, strict=True):
                if recorded != found:
                    detail = "the head in streams is not the stream's last event"
                    if not last.position:
                        detail += ": the stream has no events"
                    problems.append(
                        Problem(
                            "stream_head",
                            stream_id,
                            last.position or head.position,
                            name,
                            recorded,
                            found,
                            detail=detail,
                        )
                    )
        for stream_id in sorted(unseen):
            last = self._last[stream_id]
            problems.append(
                Problem(
                    "stream_head",
                    stream_id,
                    last.position,
                    "version",
                    None,
                    last.stream_position,
                    detail="the stream has events but no head in streams",
                )
            )
        return problems


def _unlinked(segment: Segment, prev_hash: bytes) -> Problem:
    month = format_month(segment.month)
    return Problem(
        "archive",
        segment.stream_id,
        None,
        "prev_hash",
        prev_hash,
        segment.prev_hash,
        detail=f"the events of {month} archived in {segment.file} at stream positions"
        f" {segment.first}..{segment.last} do not link to the stream's previous event",
        extra={"stream_position": segment.first, "month": month, "file": segment.file},
    )


def _expected_and_actual(
    name: str, event: RecordedEvent, prev_hash: bytes, prev_position: int
) -> tuple[Any, Any]:
    """What the evidence says ``name`` should be at ``event``, and what is stored."""
    if name == "stream_position":
        return prev_position + 1, event.stream_position
    if name == "prev_hash":
        return prev_hash, event.prev_hash
    if name == "hash":
        return chain_hash(event.prev_hash, event.stream_position, event_digest(event)), event.hash
    if name == "data":
        assert event.raw is not None
        try:
            return parsed_payload(event.raw), event.data
        except ValueError as error:
            return f"a JSON payload (the raw body is not one: {error})", event.data
    if name == "raw":
        return ("absent", "present") if event.digest_version == 1 else ("present", "absent")
    assert evidence_problems(event) == ["digest_version"]
    return "1 or 2", event.digest_version


# The streams columns, in the order of ``_Last``'s fields.
_HEAD_FIELDS = ("version", "last_hash", "last_position")

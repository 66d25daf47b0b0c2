"""Moving events between databases: ``export`` as JSON Lines, ``import`` keeping everything.

An exported line is one stored event, whole: position (in the source), event id, stream, stream
position, type, version, data, metadata, received_at, prev_hash and hash (hex), its idempotency
key (null without one), its digest version and its raw request (``{"body_base64",
"content_type", "headers"}``, null for derived events). Lines without the last two (files of an
earlier release) are digest version 1 without a raw request. ``import`` appends lines to another
log keeping all of it but the global position, which the target assigns anew in file order.
Because the hash chain leaves global positions out, the imported chains verify in the target as
they did in the source.

An import is one transaction under the append lock (see ``events.store``): the file's chains
are checked as they are read, continuing from the target's stream heads, and any line that does
not verify, or that conflicts with what the target holds, rolls back the whole file. Events
whose id the target already holds (with the same hash) are skipped, so importing a file twice
adds nothing. Commit NOTIFYs the projectors like any append. The monthly partitions the file's
events go to are created first (``events.partitions``); an event of a month that is archived
refuses the file (it belongs in that month's archive, not beside it).
"""

from __future__ import annotations

import base64
import binascii
import json
from collections.abc import AsyncIterator, Iterable, Iterator
from dataclasses import dataclass
from datetime import date, datetime
from itertools import islice
from typing import Any
from uuid import UUID

import asyncpg

from events.errors import EventStoreError, is_unavailable
from events.hashing import GENESIS_HASH, broken_links
from events.locks import APPEND_LOCK, EVENTS_CHANNEL
from events.models import RawRequest, RecordedEvent, StreamId, format_timestamp
from events.partitions import Archived, archived_partitions, ensure_partitions, month_of
from events.store import MAX_POSITION, Connection, Q, Row, insert_rows, recorded


class ImportRefused(EventStoreError):
    """The file does not verify or conflicts with the target; nothing was written."""

    def __init__(self, line: int, reason: str) -> None:
        super().__init__(f"line {line}: {reason}")
        self.line = line
        self.reason = reason


def to_line(event: RecordedEvent, idempotency_key: str | None) -> dict[str, Any]:
    """One exported event (JSON-ready)."""
    return {
        "position": event.position,
        "event_id": str(event.event_id),
        "stream_id": event.stream_id,
        "stream_position": event.stream_position,
        "type": event.type,
        "version": event.version,
        "received_at": format_timestamp(event.received_at),
        "data": event.data,
        "metadata": event.metadata,
        "prev_hash": event.prev_hash.hex(),
        "hash": event.hash.hex(),
        "idempotency_key": idempotency_key,
        "digest_version": event.digest_version,
        "raw": None if event.raw is None else event.raw.to_json(),
    }


def encode_line(line: dict[str, Any]) -> str:
    """An exported line as written to a file (``export``, ``archive``): compact JSON, ASCII
    only (no U+2028 or the like that a line splitter could take for a newline), and a newline."""
    return json.dumps(line, separators=(",", ":")) + "\n"


async def export(
    conn: Connection, *, since: int = 0, until: int | None = None
) -> AsyncIterator[dict[str, Any]]:
    """The events with ``since`` < position <= ``until`` as exported lines, in position order.

    Runs a server-side cursor: call it inside a transaction (REPEATABLE READ gives a file that
    is one consistent snapshot of the log).
    """
    last = MAX_POSITION if until is None else until
    async for row in conn.cursor(Q["export_events"], since, last, prefetch=1000):
        yield to_line(recorded(row), row["idempotency_key"])


def _typed(document: dict[str, Any], name: str, kind: type) -> Any:
    value = document[name]
    if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
        raise ValueError(f"{name} must be a {kind.__name__}")
    return value


def _hash(document: dict[str, Any], name: str) -> bytes:
    value = bytes.fromhex(_typed(document, name, str))
    if len(value) != 32:
        raise ValueError(f"{name} must be 32 bytes of hex")
    return value


def _raw(document: dict[str, Any]) -> RawRequest | None:
    raw = document.get("raw")
    if raw is None:
        return None
    if not isinstance(raw, dict):
        raise ValueError("raw must be an object or null")
    headers = _typed(raw, "headers", dict)
    if not all(isinstance(v, str) for v in headers.values()):
        raise ValueError("raw.headers must map names to strings")
    try:
        body = base64.b64decode(_typed(raw, "body_base64", str), validate=True)
    except binascii.Error:
        raise ValueError("raw.body_base64 is not base64") from None
    return RawRequest(body, _typed(raw, "content_type", str), headers)


def _refuse_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def parse_line(number: int, text: str) -> tuple[RecordedEvent, str | None]:
    """An exported line back as the stored event and its idempotency key."""
    try:
        document = json.loads(text, parse_constant=_refuse_constant)
        if not isinstance(document, dict):
            raise ValueError("a line must be a JSON object")
        received_at = datetime.fromisoformat(_typed(document, "received_at", str))
        if received_at.tzinfo is None:
            raise ValueError("received_at needs a time zone")
        key = document.get("idempotency_key")
        if key is not None and not isinstance(key, str):
            raise ValueError("idempotency_key must be a string or null")
        event = RecordedEvent(
            position=document.get("position", 0),
            event_id=UUID(_typed(document, "event_id", str)),
            stream_id=StreamId(_typed(document, "stream_id", str)),
            stream_position=_typed(document, "stream_position", int),
            type=_typed(document, "type", str),
            version=_typed(document, "version", int),
            data=_typed(document, "data", dict),
            metadata=_typed(document, "metadata", dict),
            received_at=received_at,
            prev_hash=_hash(document, "prev_hash"),
            hash=_hash(document, "hash"),
            digest_version=document.get("digest_version", 1),
            raw=_raw(document),
        )
        if not isinstance(event.digest_version, int) or isinstance(event.digest_version, bool):
            raise ValueError("digest_version must be an int")
    except KeyError as error:
        raise ImportRefused(number, f"not an exported event: {error.args[0]} is missing") from None
    except (ValueError, TypeError) as error:
        raise ImportRefused(number, f"not an exported event: {error}") from None
    return event, key


Line = tuple[int, RecordedEvent, str | None]


def _parsed(lines: Iterable[str]) -> Iterator[Line]:
    for number, text in enumerate(lines, 1):
        if text.strip():
            yield (number, *parse_line(number, text))


@dataclass(frozen=True)
class Imported:
    imported: int
    skipped: int


async def import_lines(
    conn: Connection, lines: Iterable[str], *, batch_size: int = 1000
) -> Imported:
    """Append the exported ``lines`` to the log, all or nothing (see the module docstring).

    Raises ``ImportRefused`` naming the first line that does not verify or conflicts.
    """
    heads: dict[str, tuple[int, bytes]] = {}
    imported = skipped = 0
    async with conn.transaction():
        await conn.execute(Q["lock_appends"], APPEND_LOCK, EVENTS_CHANNEL)
        archived = {a.month: a for a in await archived_partitions(conn)}
        ready: set[date] = set()
        parsed = _parsed(lines)
        while batch := list(islice(parsed, batch_size)):
            await _make_room(conn, batch, archived, ready)
            rows = await _checked(conn, batch, heads)
            await insert_rows(conn, rows)
            imported += len(rows)
            skipped += len(batch) - len(rows)
    return Imported(imported, skipped)


async def _make_room(
    conn: Connection, batch: list[Line], archived: dict[date, Archived], ready: set[date]
) -> None:
    """Create the partitions of the months of ``batch`` not seen yet (``ready`` grows);
    refuse the file at its first event of an archived month."""
    for number, event, _ in batch:
        month = month_of(event.received_at)
        if month in ready:
            continue
        if month in archived:
            record = archived[month]
            raise ImportRefused(
                number,
                f"event {event.event_id} was received in {month:%Y-%m}, a month that is archived"
                f" (partition {record.partition}, file {record.file}): restore it first"
                f" (jobtrail archive --restore {month:%Y-%m})",
            )
        try:
            await ensure_partitions(conn, month, 0)
        except asyncpg.PostgresError as error:
            if is_unavailable(error):
                raise
            raise ImportRefused(number, f"no partition for {month:%Y-%m}: {error}") from None
        ready.add(month)


async def _checked(
    conn: Connection, batch: list[Line], heads: dict[str, tuple[int, bytes]]
) -> list[Row]:
    """The rows of ``batch`` to insert: its events not stored yet, each checked against its
    stream's head (the target's, then the file's own previous event). ``heads`` moves on."""
    stored = {
        r["event_id"]: bytes(r["hash"])
        for r in await conn.fetch(Q["hashes_by_id"], [event.event_id for _, event, _ in batch])
    }
    streams = list({event.stream_id for _, event, _ in batch} - heads.keys())
    keys = list({key for _, _, key in batch if key is not None})
    used: dict[str, UUID] = {}
    for row in await conn.fetch(Q["read_heads_and_keys"], streams, keys):
        if row["key"] is None:
            heads[row["stream_id"]] = (row["version"], bytes(row["last_hash"]))
        else:
            used[row["key"]] = row["event_id"]

    rows: list[Row] = []
    for number, event, key in batch:
        if event.event_id in stored:
            if stored[event.event_id] != event.hash:
                raise ImportRefused(number, f"event {event.event_id} is stored with another hash")
            continue  # imported before
        where = f"stream {event.stream_id} position {event.stream_position}"
        head_position, head_hash = heads.get(event.stream_id, (0, GENESIS_HASH))
        broken = broken_links(event, head_hash, head_position)
        if broken:
            raise ImportRefused(
                number,
                f"{where}: {', '.join(broken)} does not verify against the stream's head"
                f" (stream position {head_position})",
            )
        if key is not None and used.get(key, event.event_id) != event.event_id:
            raise ImportRefused(number, f"{where}: idempotency key {key!r} is already used")
        stored[event.event_id] = event.hash
        heads[event.stream_id] = (event.stream_position, event.hash)
        if key is not None:
            used[key] = event.event_id
        rows.append(Row(event, event.stream_position, event.prev_hash, event.hash, key))
    return rows

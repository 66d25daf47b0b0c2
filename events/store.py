"""Appending to and reading from the event log. Functions take a connection; callers own the
transaction.

Why appends are serialised
--------------------------
A sequence hands out positions when a row is inserted, but transactions commit in their own
order. A reader that remembers "the last position I saw" would silently skip an event whose
transaction drew a lower position and committed later (the bug Marten, Emmett, Eventuous and
others shipped). We take the cure that keeps readers trivially correct: every append
transaction first takes one transaction-scoped advisory lock, and only then draws positions.
PostgreSQL makes a transaction visible before it releases its locks, so the next appender draws
its positions only after every lower position is visible: commit order is position order, for
any number of processes and hosts, and ``position > checkpoint`` is a complete reader.

The cost is one writer at a time, which group commit (``events.appender``) pays back by putting
many callbacks in each transaction. The transaction-id horizon was the alternative; it lets a
long-running transaction anywhere in the cluster stall every reader, and a dump/restore resets
it. Gap detection with timeouts cannot tell a slow transaction from a rolled-back one.

Under the same lock, stream positions are the stream head plus one (gap-free per stream), and an
idempotency key seen before answers with the first event instead of a new one.

A batch is appended by one statement, the ``jobtrail_append`` function (migration 0007): lock,
heads, keys, chain links and insert next to the data, one round trip, which returns once the
batch's commit is on disk. Connections opened through ``init_connection`` never commit with
``synchronous_commit = off``, whatever the server's default, so a returned append is a durable
one.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncGenerator, AsyncIterator, Callable, Collection, Sequence
from typing import Any, NamedTuple, TypeAlias
from uuid import UUID

import asyncpg
import orjson
from asyncpg.pool import PoolConnectionProxy

from events.errors import translate
from events.hashing import event_digest
from events.locks import APPEND_LOCK, EVENTS_CHANNEL
from events.models import (
    AnyEvent,
    AppendResult,
    FoldedEvent,
    NewEvent,
    RawRequest,
    RecordedEvent,
    StreamId,
)
from events.sql import load_queries
from events.upcasters import UPCASTERS, Upcasters

Q = load_queries("events")

# What a function that "takes a connection" accepts: a plain one or one borrowed from a pool.
Connection: TypeAlias = "asyncpg.Connection[Any] | PoolConnectionProxy[Any]"


@contextlib.asynccontextmanager
async def connect(
    pool: asyncpg.Pool[Any], *, acquire_timeout: float | None = None
) -> AsyncIterator[Connection]:
    """Borrow a connection from ``pool`` for one unit of work.

    Errors that mean the database is unreachable, while acquiring or inside the block, leave as
    ``StorageUnavailable`` (see ``events.errors``); every reader goes through here.
    """
    with translate():
        async with pool.acquire(timeout=acquire_timeout) as conn:
            yield conn


_DIGITS_AS_NINES = bytes.maketrans(b"0123456789", b"9" * 10)
# orjson reads an integer past 64 bits, or below -2**63 (19 digits and a minus), as a float.
_LONG_DIGIT_RUN = b"9" * 19
# jsonb's binary format: a version byte, then the document as JSON text.
_JSONB_V1 = b"\x01"
_EMPTY_OBJECT = _JSONB_V1 + b"{}"


def _encode_json(value: Any) -> bytes:
    # orjson is several times faster than json here; but it writes NaN and infinities as null
    # where json writes what PostgreSQL refuses (never stored silently changed), and it refuses
    # integers past 64 bits. A document with a null takes the standard path to be sure.
    try:
        text = orjson.dumps(value)
    except TypeError:
        text = b""
    if not text or b"null" in text:
        text = json.dumps(value).encode()
    return _JSONB_V1 + text


def _decode_json(data: bytes) -> Any:
    if data == _EMPTY_OBJECT:  # the metadata the fold reads leave out (read_all, read_range)
        return {}
    if data[0] != _JSONB_V1[0]:
        raise ValueError(f"unknown jsonb format version {data[0]}")
    # jsonb holds integers of any size (1e300 comes back as 1 and 300 zeros), which orjson
    # would turn into floats: a run of 19 digits, in a number or not, takes the standard path.
    # (Every digit read as a 9, a run is a substring search: several times a regex's speed.)
    if _LONG_DIGIT_RUN in data.translate(_DIGITS_AS_NINES):
        return json.loads(data[1:])
    return orjson.loads(data[1:])


async def register_codecs(conn: asyncpg.Connection[Any]) -> None:
    """Map ``jsonb`` to Python values. The binary format spares a text conversion each way:
    what crosses the wire is the JSON text either way."""
    await conn.set_type_codec(
        "jsonb", encoder=_encode_json, decoder=_decode_json, schema="pg_catalog", format="binary"
    )


async def init_connection(conn: asyncpg.Connection[Any]) -> None:
    """Pass as the ``init`` of a pool that appends: the jsonb codecs, and commits that wait
    for the WAL flush.

    An append is acknowledged once its statement returns, so its commit must have reached the
    disk. A server, database or role whose ``synchronous_commit`` is ``off`` would make that
    a lie; such a connection commits with ``local`` instead (any other value already waits for
    the local flush, and may also wait for standbys, which is left as configured). The setting
    is the session's: the pool must not ``RESET ALL`` a returned connection."""
    await register_codecs(conn)
    await conn.execute(Q["durable_commits"])


async def append_batch(conn: Connection, batch: Sequence[NewEvent]) -> list[AppendResult]:
    """Append ``batch`` in order; one result per event.

    One statement (the ``jobtrail_append`` function, migration 0007): it takes the append lock,
    reads the stream heads and stored keys, links each event into its stream's chain and
    inserts. Outside a transaction it commits on its own, in one round trip; inside the
    caller's transaction the lock is held until that transaction ends. An event whose
    idempotency key was stored before, or appears earlier in the same batch, is not stored;
    its result repeats the first event's id and position with ``duplicate=True``. An event
    whose ``expected_version`` is not its stream's version is not stored either
    (``conflict=True``).
    """
    if not batch:
        return []
    columns = zip(
        *(
            (
                e.event_id,
                e.stream_id,
                e.type,
                e.version,
                e.data,
                e.metadata,
                e.received_at,
                event_digest(e),
                e.idempotency_key,
                e.expected_version,
                e.digest_version,
                *_raw_columns(e.raw),
            )
            for e in batch
        ),
        strict=True,
    )
    rows = await conn.fetch(Q["append"], APPEND_LOCK, EVENTS_CHANNEL, *map(list, columns))
    return [
        AppendResult(
            event_id,
            position,
            duplicate=outcome == _DUPLICATE,
            conflict=outcome == _CONFLICT,
        )
        for event_id, position, outcome in rows
    ]


# jobtrail_append's outcomes ("char" comes back as bytes); 'n' is stored.
_DUPLICATE, _CONFLICT = b"d", b"c"


class Row(NamedTuple):
    """An event as it is inserted: its body, its place in its stream and its links."""

    event: NewEvent | RecordedEvent
    stream_position: int
    prev_hash: bytes
    hash: bytes
    idempotency_key: str | None


async def insert_rows(conn: Connection, rows: Sequence[Row]) -> dict[UUID, int]:
    """Insert ``rows`` in order, with their streams' new heads and their idempotency keys, in
    one statement; return each event's new global position. The caller holds the append lock
    and has checked the links."""
    if not rows:
        return {}
    columns = zip(
        *(
            (
                r.event.event_id,
                r.event.stream_id,
                r.stream_position,
                r.event.type,
                r.event.version,
                r.event.data,
                r.event.metadata,
                r.event.received_at,
                r.prev_hash,
                r.hash,
                r.idempotency_key,
                r.event.digest_version,
                *_raw_columns(r.event.raw),
            )
            for r in rows
        ),
        strict=True,
    )
    inserted = await conn.fetch(Q["insert_events"], *map(list, columns))
    return {row["event_id"]: row["position"] for row in inserted}


def _raw_columns(raw: RawRequest | None) -> tuple[bytes | None, str | None, Any]:
    if raw is None:
        return None, None, None
    return raw.body, raw.content_type, dict(raw.headers)


def folded(row: asyncpg.Record) -> FoldedEvent:
    """A row of ``read_all`` or ``read_range``, whose columns are ``FoldedEvent``'s fields in
    order (tests/integration/test_event_log.py checks it): built straight from the row, without
    the NamedTuple's own ``__new__``, because this is the projector's and a replay's inner
    loop. A record iterates over its values: 0.3 µs an event, where ``row.values()`` took 0.5."""
    return tuple.__new__(FoldedEvent, row)


def recorded(row: asyncpg.Record) -> RecordedEvent:
    """A row of ``events`` as a ``RecordedEvent``; ``raw`` only if the query selected it."""
    body = row.get("raw_body")
    raw = None
    if body is not None:
        raw = RawRequest(bytes(body), row["raw_content_type"], row["raw_headers"])
    return RecordedEvent(
        position=row["position"],
        event_id=row["event_id"],
        stream_id=StreamId(row["stream_id"]),
        stream_position=row["stream_position"],
        type=row["type"],
        version=row["version"],
        data=row["data"],
        metadata=row["metadata"],
        received_at=row["received_at"],
        prev_hash=bytes(row["prev_hash"]),
        hash=bytes(row["hash"]),
        digest_version=row["digest_version"],
        raw=raw,
    )


def _types(types: Collection[str] | None) -> list[str] | None:
    return None if types is None else sorted(types)


async def read_all(
    conn: Connection,
    after_position: int,
    limit: int,
    *,
    upcasters: Upcasters = UPCASTERS,
    metadata_of: Collection[str] | None = None,
) -> list[FoldedEvent]:
    """What the folds read of up to ``limit`` events with position > ``after_position``, in
    position order, upcast (``events.upcasters``).

    ``metadata_of``: the event types whose metadata the caller reads; the others come with an
    empty ``metadata`` (default: every event's).

    Complete: no event with a lower position can become visible later (see module docstring).
    """
    rows = await conn.fetch(Q["read_all"], after_position, limit, _types(metadata_of))
    return upcasters.upcast_all([folded(r) for r in rows])


MAX_POSITION = 2**63 - 1


def scan(
    conn: Connection,
    *,
    after: int = 0,
    until: int | None = None,
    page: int = 10_000,
    upcasters: Upcasters = UPCASTERS,
    metadata_of: Collection[str] | None = None,
) -> AsyncGenerator[list[FoldedEvent], None]:
    """What the folds read of the events with ``after`` < position <= ``until`` (default: the
    head), upcast, in position order, a page at a time: one short keyset query per page, so
    memory stays flat however long the log, and no transaction is needed (run it inside one
    for a consistent snapshot). ``metadata_of`` is as for ``read_all``."""

    def build(rows: list[asyncpg.Record]) -> list[FoldedEvent]:
        return upcasters.upcast_all([folded(r) for r in rows])

    return _pages(conn, Q["read_range"], after, until, page, (_types(metadata_of),), build)


def scan_stored(
    conn: Connection, *, after: int = 0, until: int | None = None, page: int = 10_000
) -> AsyncGenerator[list[RecordedEvent], None]:
    """``scan``, but each event whole and as stored, raw request included: what the hash
    chains cover, which auditing them needs and folding does not."""

    def build(rows: list[asyncpg.Record]) -> list[RecordedEvent]:
        return [recorded(r) for r in rows]

    return _pages(conn, Q["read_range_raw"], after, until, page, (), build)


async def _pages(
    conn: Connection,
    query: str,
    after: int,
    until: int | None,
    page: int,
    more: tuple[Any, ...],
    build: Callable[[list[asyncpg.Record]], list[AnyEvent]],
) -> AsyncGenerator[list[AnyEvent], None]:
    end = MAX_POSITION if until is None else until
    rows = await conn.fetch(query, after, end, page, *more)
    while rows:
        # The next page is asked for before this one is handed over: PostgreSQL reads and sends
        # it while the caller works on this one (on another core), instead of in turn.
        last = rows[-1]["position"]
        ahead = asyncio.ensure_future(conn.fetch(query, last, end, page, *more))
        await asyncio.sleep(0)  # let it send the query before the caller takes the loop
        try:
            yield build(rows)
        except BaseException:
            # The caller stopped reading: the connection must be free again when we return.
            ahead.cancel()
            with contextlib.suppress(BaseException):
                await ahead
            raise
        rows = await ahead


async def read_stream(conn: Connection, stream_id: str, *, raw: bool = True) -> list[RecordedEvent]:
    """Every event of one stream, in stream order; with their raw requests unless ``raw`` is
    false (enough to show them, not to check their hashes)."""
    query = Q["read_stream_raw" if raw else "read_stream"]
    return [recorded(r) for r in await conn.fetch(query, stream_id)]


async def read_event(conn: Connection, event_id: UUID) -> RecordedEvent | None:
    """One event by its id, with its raw request; None if there is none."""
    row = await conn.fetchrow(Q["read_event"], event_id)
    return None if row is None else recorded(row)


async def head_position(conn: Connection) -> int:
    """The highest position committed so far (0 for an empty log)."""
    value = await conn.fetchval(Q["head_position"])
    return int(value)

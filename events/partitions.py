"""The log's monthly partitions: creating them ahead of time, listing them, and what is known of
the months that were archived (migration 0006).

``events`` is partitioned by ``received_at``, one partition per calendar month in UTC, named
``events_YYYY_MM``. An event can only be stored once its month's partition exists, so they are
created ahead: the current month and the next two at ``migrate`` and ``serve`` start, then
hourly by the leader (``keep_partitions``); the months of a file by ``import``. The work is done
by the SQL function ``jobtrail_ensure_event_partitions`` (``SECURITY DEFINER``: the service's
role cannot create tables), which creates nothing for an archived month.

A month that ``jobtrail archive`` detached (``events.archive``) has a row in
``archived_partitions``: its file, its position range, and for every stream the runs of stream
positions it held (``Segment``), which is what ``verify`` and ``history`` need to follow a hash
chain across the archived range. A replay needs every event, so any archived month with events
stops it (``ArchivedRange``).
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime
from typing import Any

import asyncpg
import structlog

from events.errors import EventStoreError, cancelling
from events.store import Connection, connect

log = structlog.get_logger(component="partitions")

_MONTH = re.compile(r"^(\d{4})-(\d{2})$")
_PARTITION = re.compile(r"^events_(\d{4})_(\d{2})$")


# -- months ------------------------------------------------------------------------------------


def parse_month(text: str) -> date:
    """``YYYY-MM`` as the first day of that month; ``ValueError`` otherwise."""
    match = _MONTH.match(text)
    if not match:
        raise ValueError(f"not a month (YYYY-MM): {text!r}")
    try:
        return date(int(match[1]), int(match[2]), 1)
    except ValueError:
        raise ValueError(f"not a month (YYYY-MM): {text!r}") from None


def format_month(month: date) -> str:
    return f"{month.year:04d}-{month.month:02d}"


def month_of(moment: datetime) -> date:
    """The month (UTC) whose partition holds an event received at ``moment``."""
    utc = moment.astimezone(UTC)
    return date(utc.year, utc.month, 1)


def current_month() -> date:
    return month_of(datetime.now(UTC))


def add_months(month: date, count: int) -> date:
    index = month.year * 12 + month.month - 1 + count
    return date(index // 12, index % 12 + 1, 1)


def partition_name(month: date) -> str:
    return f"events_{month.year:04d}_{month.month:02d}"


def partition_month(name: str) -> date | None:
    """The month of a partition named ``events_YYYY_MM``; None for any other name."""
    match = _PARTITION.match(name)
    return date(int(match[1]), int(match[2]), 1) if match else None


def month_start(month: date) -> datetime:
    """The partition's lower bound (inclusive); its upper bound is the next month's."""
    return datetime(month.year, month.month, 1, tzinfo=UTC)


# -- creating ahead ----------------------------------------------------------------------------


async def ensure_partitions(conn: Connection, month: date, ahead: int) -> list[str]:
    """Make sure ``month`` and the ``ahead`` months after it have partitions (archived months
    excepted); return the names of those created now.

    One query. When every partition exists it takes no lock and writes nothing, so it is cheap
    to call before any append. Otherwise partitions are created under ``PARTITION_LOCK`` (in the
    caller's transaction, if any): concurrent callers create each one once. Creating one
    takes a SHARE UPDATE EXCLUSIVE lock on ``events``, which appends and readers do not wait for.
    """
    created = await conn.fetchval(
        "SELECT jobtrail_ensure_event_partitions($1, $2)", month.replace(day=1), ahead + 1
    )
    return list(created)


async def keep_partitions(
    pool: asyncpg.Pool[Any], *, ahead: int = 2, every_s: float = 3600.0, retry_s: float = 60.0
) -> None:
    """Create the current month's partition and the next ``ahead`` now and every ``every_s``
    seconds, until cancelled (the leader runs it beside the projector). A failure is logged
    and retried after ``retry_s``; it never stops the tasks beside it."""
    while True:
        delay = every_s
        try:
            async with connect(pool) as conn:
                created = await ensure_partitions(conn, current_month(), ahead)
            if created:
                log.info("partitions.created", partitions=created)
        except Exception as error:
            if cancelling():
                raise
            log.warning("partitions.ensure_failed", error=f"{type(error).__name__}: {error}")
            delay = retry_s
        await asyncio.sleep(delay)


# -- what exists -------------------------------------------------------------------------------


@dataclass(frozen=True)
class Partition:
    """An attached monthly partition and what it holds now."""

    name: str
    month: date
    events: int
    first_position: int | None
    last_position: int | None

    def to_json(self) -> dict[str, Any]:
        return {
            "month": format_month(self.month),
            "partition": self.name,
            "from": month_start(self.month),
            "to": month_start(add_months(self.month, 1)),
            "events": self.events,
            "first_position": self.first_position,
            "last_position": self.last_position,
        }


async def attached_months(conn: Connection) -> dict[date, str]:
    """The months that have an attached partition, with its name."""
    rows = await conn.fetch(
        "SELECT c.relname FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid"
        " WHERE i.inhparent = 'events'::regclass"
    )
    named = ((partition_month(r["relname"]), r["relname"]) for r in rows)
    return {month: name for month, name in named if month is not None}


async def list_partitions(conn: Connection, *, before: date | None = None) -> list[Partition]:
    """The attached partitions (those of months before ``before``, if given), oldest first,
    each with its event count and position range (one scan of its primary key each)."""
    found = []
    for month, name in sorted((await attached_months(conn)).items()):
        if before is not None and month >= before:
            continue
        row = await conn.fetchrow(
            f'SELECT count(*) AS n, min(position) AS first, max(position) AS last FROM "{name}"'
        )
        assert row is not None
        found.append(Partition(name, month, row["n"], row["first"], row["last"]))
    return found


@dataclass(frozen=True)
class Segment:
    """Consecutive stream positions of one stream held by an archived month: where the run
    starts (and the hash it links to) and where it ends (its last hash and global position)."""

    stream_id: str
    first: int
    last: int
    prev_hash: bytes
    last_hash: bytes
    last_position: int
    month: date
    file: str

    def to_json(self) -> list[Any]:
        """As ``archived_partitions.streams`` keeps it (without the stream, month and file)."""
        return [
            self.first,
            self.last,
            self.prev_hash.hex(),
            self.last_hash.hex(),
            self.last_position,
        ]


@dataclass(frozen=True)
class Archived:
    """A month that ``jobtrail archive`` exported and detached (a row of archived_partitions)."""

    month: date
    partition: str
    file: str
    sha256: bytes
    events: int
    first_position: int | None
    last_position: int | None
    first_received_at: datetime | None
    last_received_at: datetime | None
    archived_at: datetime
    segments: tuple[Segment, ...] = ()

    def describe(self) -> str:
        where = f"positions {self.first_position}..{self.last_position}, " if self.events else ""
        return (
            f"{format_month(self.month)}: partition {self.partition}, {where}{self.events}"
            f" events, file {self.file}"
        )

    def to_json(self) -> dict[str, Any]:
        return {
            "month": format_month(self.month),
            "partition": self.partition,
            "file": self.file,
            "sha256": self.sha256.hex(),
            "events": self.events,
            "first_position": self.first_position,
            "last_position": self.last_position,
            "first_received_at": self.first_received_at,
            "last_received_at": self.last_received_at,
            "archived_at": self.archived_at,
        }


def segments_from_json(
    streams: Mapping[str, Sequence[Sequence[Any]]], month: date, file: str
) -> tuple[Segment, ...]:
    return tuple(
        Segment(stream_id, r[0], r[1], bytes.fromhex(r[2]), bytes.fromhex(r[3]), r[4], month, file)
        for stream_id, runs in streams.items()
        for r in runs
    )


_ARCHIVED = """
SELECT month, partition_name, file_name, sha256, event_count, first_position, last_position,
       first_received_at, last_received_at, archived_at, {streams} AS streams
  FROM archived_partitions {where}
 ORDER BY month
"""


def _archived(row: asyncpg.Record, segments: bool) -> Archived:
    streams = row["streams"] if segments else {}
    return Archived(
        row["month"],
        row["partition_name"],
        row["file_name"],
        bytes(row["sha256"]),
        row["event_count"],
        row["first_position"],
        row["last_position"],
        row["first_received_at"],
        row["last_received_at"],
        row["archived_at"],
        segments_from_json(streams or {}, row["month"], row["file_name"]),
    )


async def archived_partitions(conn: Connection, *, segments: bool = False) -> list[Archived]:
    """Every archived month, oldest first; with every stream's segments if ``segments``."""
    query = _ARCHIVED.format(streams="streams" if segments else "NULL::jsonb", where="")
    return [_archived(row, segments) for row in await conn.fetch(query)]


async def archived_of_stream(conn: Connection, stream_id: str) -> list[Segment]:
    """The segments of one stream that are archived, in stream order."""
    query = _ARCHIVED.format(
        streams="jsonb_build_object($1::text, streams -> $1::text)", where="WHERE streams ? $1"
    )
    rows = await conn.fetch(query, stream_id)
    return sorted((s for r in rows for s in _archived(r, True).segments), key=lambda s: s.first)


def by_stream(archived: Iterable[Archived]) -> dict[str, list[Segment]]:
    """Every archived segment, grouped by stream, in stream order."""
    grouped: dict[str, list[Segment]] = {}
    for record in archived:
        for segment in record.segments:
            grouped.setdefault(segment.stream_id, []).append(segment)
    for segments in grouped.values():
        segments.sort(key=lambda s: s.first)
    return grouped


class ArchivedRange(EventStoreError):
    """A replay needs every event, and some are in archived months (listed in the message)."""

    def __init__(self, archived: Sequence[Archived]) -> None:
        self.archived = [a for a in archived if a.events]
        super().__init__(describe_archived(self.archived))


def describe_archived(archived: Sequence[Archived]) -> str:
    """What a refused replay says: each archived month, and how to bring it back."""
    lines = ["these events are archived, and a replay needs every event of the log:"]
    lines += [f"  {a.describe()}" for a in archived]
    months = " ".join(format_month(a.month) for a in archived)
    lines.append(
        f"bring them back with `jobtrail archive --restore MONTH` (for {months}), which"
        " re-attaches each month's detached partition"
    )
    return "\n".join(lines)


async def refuse_if_archived(conn: Connection) -> None:
    """Raise ``ArchivedRange`` if any archived month holds events."""
    archived = [a for a in await archived_partitions(conn) if a.events]
    if archived:
        raise ArchivedRange(archived)

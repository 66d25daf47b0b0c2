"""Archiving whole months of the log to files, detaching their partitions, and bringing them
back (``jobtrail archive``).

A month is archived in two steps:

1. Its partition's events, in position order, are written to ``events_YYYY_MM.jsonl`` as
   ``jobtrail export`` writes them (``events.transfer``): to a temporary file, fsynced, renamed,
   and the directory fsynced, so a file by that name is always whole. Its SHA-256, event count
   and each stream's runs of stream positions (``Segment``) are noted on the way.
2. One transaction records the file in ``archived_partitions`` and detaches the partition. It
   takes the append lock (no append is in flight, and none can add to the month meanwhile),
   then ``PARTITION_LOCK`` (no partition is being created), checks that the partition still
   holds what was written (else the month is written again), runs the caller's check
   (the projections have applied the month), and ``DETACH PARTITION``, which locks ``events``
   ACCESS EXCLUSIVE until COMMIT: readers and appends wait for that moment. A plain DETACH, not
   CONCURRENTLY: that one cannot run in a transaction, so the record and the detach could
   part. While the detach waits for the readers already running, every new reader and append
   waits behind it, so ``lock_timeout`` keeps that wait short (``LOCK_TIMEOUT_S``); the
   transaction is retried a second later, up to ``ATTEMPTS`` times.

The detached table is kept, append-only (a trigger of its own: the one cloned from ``events``
goes with the detach), until the operator drops it. ``restore_month`` re-attaches it after
checking it still holds exactly what the file holds (the same lines, byte for byte).

The whole run holds ``REPLAY_LOCK``, so no replay folds the log while a month leaves it.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from datetime import date, datetime
from pathlib import Path
from typing import Any, BinaryIO

import asyncpg

from events.errors import EventStoreError
from events.locks import APPEND_LOCK, PARTITION_LOCK, REPLAY_LOCK
from events.models import RecordedEvent
from events.partitions import (
    Archived,
    Partition,
    add_months,
    archived_partitions,
    attached_months,
    format_month,
    month_start,
    partition_name,
)
from events.store import Connection, recorded
from events.transfer import encode_line, to_line

# A partition, or a detached one, by name (generated from its month, and quoted).
_READ_TABLE = """
SELECT e.position, e.event_id, e.stream_id, e.stream_position, e.type, e.version, e.data,
       e.metadata, e.received_at, e.prev_hash, e.hash, e.digest_version, e.raw_body,
       e.raw_content_type, e.raw_headers, k.key AS idempotency_key
  FROM "{table}" e
  LEFT JOIN idempotency_keys k ON k.event_id = e.event_id
 ORDER BY e.position
"""
_DETACHED_TRIGGER = "events_detached_append_only"
# The detach waits this long for the readers already running, while appends and new readers
# queue behind it: a short wait, retried, bounds the stall it can cause to that.
LOCK_TIMEOUT_S = 0.5
RETRY_AFTER_S = 1.0
ATTEMPTS = 30


class ArchiveError(EventStoreError):
    """An archive or restore could not be done; what was already done stays consistent."""


class RestoreRefused(ArchiveError):
    """The detached table is gone, or no longer holds what its archive file holds."""


def file_name(month: date) -> str:
    return f"{partition_name(month)}.jsonl"


@dataclass
class Runs:
    """The runs of consecutive stream positions of each stream, as events go by in position
    order: ``archived_partitions.streams``."""

    streams: dict[str, list[list[Any]]] = field(default_factory=dict)

    def add(self, event: RecordedEvent) -> None:
        runs = self.streams.setdefault(event.stream_id, [])
        if runs and runs[-1][1] + 1 == event.stream_position:
            runs[-1][1:] = [event.stream_position, runs[-1][2], event.hash.hex(), event.position]
        else:
            runs.append(
                [
                    event.stream_position,
                    event.stream_position,
                    event.prev_hash.hex(),
                    event.hash.hex(),
                    event.position,
                ]
            )


@dataclass
class Summary:
    """What a month's lines amount to: the file's SHA-256, its events, their ranges, runs."""

    sha256: Any = field(default_factory=hashlib.sha256)
    events: int = 0
    first_position: int | None = None
    last_position: int | None = None
    first_received_at: datetime | None = None
    last_received_at: datetime | None = None
    runs: Runs = field(default_factory=Runs)

    def add(self, event: RecordedEvent, line: bytes) -> None:
        self.sha256.update(line)
        self.events += 1
        if self.first_position is None:
            self.first_position = event.position
        self.last_position = event.position
        moment = event.received_at
        if self.first_received_at is None or moment < self.first_received_at:
            self.first_received_at = moment
        if self.last_received_at is None or moment > self.last_received_at:
            self.last_received_at = moment
        self.runs.add(event)

    def digest(self) -> bytes:
        digest: bytes = self.sha256.digest()
        return digest


async def _lines(conn: Connection, table: str) -> AsyncIterator[tuple[RecordedEvent, bytes]]:
    """The events of a partition (attached or not), in position order, each with its line.
    Runs a cursor: call it inside a transaction."""
    async for row in conn.cursor(_READ_TABLE.format(table=table), prefetch=1000):
        event = recorded(row)
        yield event, encode_line(to_line(event, row["idempotency_key"])).encode("ascii")


async def summarize(conn: Connection, table: str, out: BinaryIO | None = None) -> Summary:
    """Read ``table`` as its archive file would hold it (writing the lines to ``out``)."""
    summary = Summary()
    async for event, line in _lines(conn, table):
        if out is not None:
            out.write(line)
        summary.add(event, line)
    return summary


async def write_month(conn: Connection, partition: Partition, directory: Path) -> Summary:
    """Write the partition's events to ``directory/events_YYYY_MM.jsonl``, whole or not at all
    (temporary file, fsync, rename, fsync of the directory), from one snapshot."""
    target = directory / file_name(partition.month)
    temporary = directory / f".{target.name}.partial"
    try:
        with temporary.open("wb") as out:
            async with conn.transaction(isolation="repeatable_read", readonly=True):
                summary = await summarize(conn, partition.name, out)
            out.flush()
            os.fsync(out.fileno())
        temporary.replace(target)
    finally:
        temporary.unlink(missing_ok=True)
    handle = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(handle)
    finally:
        os.close(handle)
    return summary


class _Changed(Exception):
    """The partition gained events since it was written: write it again."""


# Called with the last position of the month before it is written, and again in the detach
# transaction; raises to refuse.
Check = Callable[[Connection, int], Awaitable[None]]


async def _lock(conn: Connection, timeout_s: float, *locks: int) -> None:
    await conn.execute(f"SET LOCAL lock_timeout = {int(timeout_s * 1000)}")
    for lock in locks:
        await conn.execute("SELECT pg_advisory_xact_lock($1)", lock)


async def _record_and_detach(
    conn: Connection, partition: Partition, summary: Summary, check: Check | None, timeout_s: float
) -> None:
    async with conn.transaction():
        await _lock(conn, timeout_s, APPEND_LOCK, PARTITION_LOCK)
        if (await attached_months(conn)).get(partition.month) != partition.name:
            raise ArchiveError(f"{partition.name} is no longer attached: archived meanwhile?")
        # Positions only grow, and nothing is deleted: the month gained no event if its
        # highest position is the one written (one step down its index, not a count).
        last = await conn.fetchval(f'SELECT max(position) FROM "{partition.name}"')
        if last != summary.last_position:
            raise _Changed
        if check is not None:
            await check(conn, summary.last_position or 0)
        await conn.execute(
            "INSERT INTO archived_partitions (month, partition_name, file_name, sha256,"
            " event_count, first_position, last_position, first_received_at, last_received_at,"
            " streams) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)",
            partition.month,
            partition.name,
            file_name(partition.month),
            summary.digest(),
            summary.events,
            summary.first_position,
            summary.last_position,
            summary.first_received_at,
            summary.last_received_at,
            summary.runs.streams,
        )
        await conn.execute(f'ALTER TABLE events DETACH PARTITION "{partition.name}"')
        await conn.execute(
            f'CREATE TRIGGER {_DETACHED_TRIGGER} BEFORE UPDATE OR DELETE ON "{partition.name}"'
            " FOR EACH ROW EXECUTE FUNCTION refuse_event_change()"
        )


async def archive_month(
    conn: Connection,
    partition: Partition,
    directory: Path,
    *,
    check: Check | None = None,
    timeout_s: float = LOCK_TIMEOUT_S,
    attempts: int = ATTEMPTS,
) -> Archived:
    """Archive one attached partition (see the module docstring); the caller holds
    ``REPLAY_LOCK`` (``hold_replay_lock``). ``check`` runs in the detach transaction and may
    raise to refuse. Returns the record."""
    if check is not None:  # before writing a file that would not be used
        await check(conn, partition.last_position or 0)
    summary = await write_month(conn, partition, directory)
    for _ in range(attempts):
        try:
            await _record_and_detach(conn, partition, summary, check, timeout_s)
        except _Changed:  # an import added to the month meanwhile: write it again
            summary = await write_month(conn, partition, directory)
            continue
        except asyncpg.LockNotAvailableError:  # a long reader: let the others through, retry
            await asyncio.sleep(RETRY_AFTER_S)
            continue
        record = next(a for a in await archived_partitions(conn) if a.month == partition.month)
        return record
    raise ArchiveError(
        f"could not detach {partition.name} in {attempts} attempts: it kept changing, or a"
        f" reader held the log each time (longer than {timeout_s:g} s)"
    )


async def hold_replay_lock(conn: Connection) -> None:
    """Take ``REPLAY_LOCK`` for the session of ``conn`` (released when it closes)."""
    if not await conn.fetchval("SELECT pg_try_advisory_lock($1)", REPLAY_LOCK):
        raise ArchiveError("a replay is running on this database: archive after it")


async def drop_detached(conn: Connection, record: Archived) -> None:
    await conn.execute(f'DROP TABLE "{record.partition}"')


async def restore_month(conn: Connection, month: date, *, timeout_s: float = 5.0) -> Archived:
    """Re-attach an archived month's detached partition and forget the archive record, in one
    transaction, after checking that the table holds exactly what the archive file holds."""
    async with conn.transaction():
        await _lock(conn, timeout_s, PARTITION_LOCK)
        record = next((a for a in await archived_partitions(conn) if a.month == month), None)
        if record is None:
            raise ArchiveError(f"{format_month(month)} is not archived")
        name = record.partition
        if await conn.fetchval("SELECT to_regclass($1)", f'"{name}"') is None:
            raise RestoreRefused(
                f"the detached table {name} no longer exists (dropped after archiving):"
                f" {record.file} is the only copy of {format_month(month)} left"
            )
        summary = await summarize(conn, name)
        if summary.digest() != record.sha256 or summary.events != record.events:
            raise RestoreRefused(
                f"{name} no longer holds what {record.file} holds ({summary.events} events,"
                f" sha256 {summary.digest().hex()}; the archive has {record.events} events,"
                f" sha256 {record.sha256.hex()}): not attached"
            )
        await conn.execute(f'DROP TRIGGER IF EXISTS {_DETACHED_TRIGGER} ON "{name}"')
        lower, upper = month_start(month).isoformat(), month_start(add_months(month, 1)).isoformat()
        await conn.execute(
            f'ALTER TABLE events ATTACH PARTITION "{name}"'
            f" FOR VALUES FROM ('{lower}') TO ('{upper}')"
        )
        await conn.execute("DELETE FROM archived_partitions WHERE month = $1", month)
    return record

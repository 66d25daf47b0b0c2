"""Checking the stored read models (and the log) against a fresh replay: ``verify`` and the
replay's dry run.

Both run in one REPEATABLE READ, read-only transaction, so the checkpoints, the log and the
projection rows are one snapshot and the check may run while the service is live: each read
model is replayed in memory up to its own checkpoint and compared, row by row, with its table.
``verify`` also re-checks every stream's hash chain and head in the same pass over the log.

After ``jobtrail archive`` the oldest events are in files, not in the log: a replay of what is
left would not be the read models, so the comparison is skipped (``Comparison.compared`` is
false, ``archived`` says what is missing) rather than reported as differences; the chains are
still checked, across the archived ranges (``events.audit``).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from events.audit import ChainAuditor, Problem
from events.models import RecordedEvent
from events.partitions import Archived, archived_partitions, by_stream
from events.store import Connection, head_position, scan_stored
from events.upcasters import UPCASTERS, Upcasters
from projections.base import AnyProjection
from projections.folding import Fold, Origin, Progress
from projections.registry import PROJECTIONS
from projections.sql import Q


@dataclass(frozen=True)
class RowDiff:
    """How one row of a live table differs from a fresh replay, as what a rebuild would do:
    ``added`` (the table lacks it), ``removed`` (the log does not produce it) or ``changed``."""

    projection: str
    key: str
    change: Literal["added", "removed", "changed"]
    fields: dict[str, tuple[Any, Any]] = field(default_factory=dict)  # name: (live, rebuilt)
    origin: Origin | None = None  # where the replayed state last changed

    def problems(self, checkpoint: int) -> list[Problem]:
        """The difference as ``verify`` reports it: one problem per field."""
        stream_id, position = self.origin if self.origin else (None, checkpoint)
        extra = {"projection": self.projection, "key": self.key}
        if self.change != "changed":
            found, replayed = (
                ("missing", "present") if self.change == "added" else ("present", "absent")
            )
            detail = f"{self.projection} row {self.key!r} is {found}; a replay has it {replayed}"
            return [
                Problem("projection", stream_id, position, "row", replayed, found, detail, extra)
            ]
        return [
            Problem(
                "projection",
                stream_id,
                position,
                name,
                rebuilt,
                live,
                f"{self.projection} row {self.key!r} differs from a replay of the log",
                extra,
            )
            for name, (live, rebuilt) in self.fields.items()
        ]

    def to_json(self) -> dict[str, Any]:
        return {
            "key": self.key,
            "fields": {n: {"live": a, "rebuilt": b} for n, (a, b) in self.fields.items()},
        }


@dataclass(frozen=True)
class Comparison:
    checkpoints: dict[str, int]
    diffs: list[RowDiff]
    events: int  # events read
    streams: int = 0  # streams whose chains were checked (verify only)
    problems: list[Problem] = field(default_factory=list)  # chain and head problems (verify)
    archived: list[Archived] = field(default_factory=list)  # archived months (with events)

    @property
    def compared(self) -> bool:
        """Whether the projections were compared (not when events are archived)."""
        return not self.archived

    def all_problems(self) -> list[Problem]:
        """Chain, head and projection problems, in that order."""
        rows = [p for d in self.diffs for p in d.problems(self.checkpoints[d.projection])]
        return [*self.problems, *rows]


async def compare(
    conn: Connection,
    projections: Sequence[AnyProjection] = PROJECTIONS,
    *,
    chains: bool = False,
    upcasters: Upcasters = UPCASTERS,
    page: int = 10_000,
    progress: Progress | None = None,
    inspect: Callable[[RecordedEvent], list[Problem]] | None = None,
) -> Comparison:
    """Replay ``projections`` up to their checkpoints and compare them with their tables; with
    ``chains``, also check every stream's hash chain and head, and each event's data against
    its raw request (the whole log: ``verify``), passing every stored event to ``inspect``
    too (``verify --signatures``), whose problems are reported with the chains'."""
    async with conn.transaction(isolation="repeatable_read", readonly=True):
        await conn.execute(Q["lock_log"])
        archived = await archived_partitions(conn, segments=chains)
        missing = [a for a in archived if a.events]
        stored = {r["name"]: r["position"] for r in await conn.fetch(Q["read_checkpoints"])}
        checkpoints = {p.name: stored.get(p.name, 0) for p in projections}
        fold = Fold(projections, limits=checkpoints, track_origins=True)
        auditor = ChainAuditor(by_stream(archived))
        problems: list[Problem] = []
        if chains:
            head = await head_position(conn)
            pages = scan_stored(conn, until=head, page=page)
            async with contextlib.aclosing(pages):  # scan reads ahead: free the connection
                async for events in pages:
                    for event in events:
                        problems += auditor.check(event)
                        if inspect is not None:
                            problems += inspect(event)
                        if not missing:
                            fold.apply(upcasters.upcast(event))
                    fold.position = events[-1].position
                    if progress is not None:
                        progress(fold.position, head)
            problems += await auditor.check_heads(conn)
        elif not missing:
            last = max(checkpoints.values(), default=0)
            await fold.run(conn, until=last, upcasters=upcasters, page=page, progress=progress)
        diffs = []
        if not missing:
            diffs = [d for p in fold.projections for d in await _diff_table(conn, p, fold)]
    read = auditor.events if chains else fold.events
    return Comparison(checkpoints, diffs, read, auditor.streams, problems, missing)


async def _diff_table(conn: Connection, projection: AnyProjection, fold: Fold) -> list[RowDiff]:
    """Walk the live table with a cursor (memory flat in its size) against the fold's states."""
    name = projection.name
    fresh, origin = fold.states[name], fold.origin[name]
    diffs: list[RowDiff] = []
    seen: set[str] = set()
    async for row in conn.cursor(projection.select_sql(name), prefetch=1000):
        live = projection.from_row(row)
        key = row[0]
        seen.add(key)
        rebuilt = fresh.get(key)
        if rebuilt is None:
            diffs.append(RowDiff(name, key, "removed"))
        elif rebuilt != live:
            fields = {
                column: (a, b)
                for column, a, b in zip(
                    projection.columns,
                    projection.to_row(live),
                    projection.to_row(rebuilt),
                    strict=True,
                )
                if a != b
            }
            diffs.append(RowDiff(name, key, "changed", fields, origin.get(key)))
    for key in sorted(fresh.keys() - seen):
        diffs.append(RowDiff(name, key, "added", origin=origin.get(key)))
    diffs.sort(key=lambda d: d.key)
    return diffs

"""Folding the log in memory: what replay, ``verify``, the dry run and point-in-time reads share.

The log is streamed in keyset pages (``events.store.scan``) and folded as it goes, so memory
holds the states (one per key and read model) and one page of events, however long the log.
Events reach the folds upcast (``events.upcasters``), like the live projector's.
"""

from __future__ import annotations

import contextlib
import gc
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from typing import Any, NamedTuple

from events.models import Foldable
from events.store import Connection, head_position, scan
from events.upcasters import UPCASTERS, Upcasters
from projections.base import AnyProjection, metadata_read_by

Progress = Callable[[int, int], None]  # (last position read, head position)
States = dict[str, dict[str, Any]]  # projection name -> key -> state
Origin = tuple[str, int]  # stream id and position of the last event folded into a state


class _Step(NamedTuple):
    """One projection's part in ``Fold.apply``."""

    key_of: Callable[[Foldable], str | None]
    apply: Callable[[Any, Foldable], Any]
    states: dict[str, Any]
    dirty: set[str]
    origin: dict[str, Origin]
    limit: int | None  # the last position it takes (None: no limit)


class Fold:
    """The states of ``projections``, built event by event.

    ``limits``: per projection, the last position it takes (verify and the dry run replay each
    read model up to its own checkpoint). ``dirty`` holds, per projection, the keys changed
    since the last ``clean()`` (``track_changes``: a replay's first pass changes every key and
    does not need them); ``origin``, when ``track_origins``, where each state last changed
    (what ``verify`` reports). What is not tracked costs neither time nor memory.
    """

    def __init__(
        self,
        projections: Sequence[AnyProjection],
        *,
        limits: Mapping[str, int] | None = None,
        track_origins: bool = False,
    ) -> None:
        self.projections = tuple(projections)
        self.states: States = {p.name: {} for p in self.projections}
        self.dirty: dict[str, set[str]] = {p.name: set() for p in self.projections}
        self.origin: dict[str, dict[str, Origin]] = {p.name: {} for p in self.projections}
        self.track_changes = True
        self.position = 0  # the last position read (taken or not)
        self.events = 0  # how many events were taken
        self._track_origins = track_origins
        # What apply needs of each projection, looked up once: it runs for every event of a
        # replay, times every projection.
        self._plan = tuple(
            _Step(
                p.key_of,
                p.apply,
                self.states[p.name],
                self.dirty[p.name],
                self.origin[p.name],
                None if limits is None else limits.get(p.name, 0),
            )
            for p in self.projections
        )
        self._limited = limits is not None
        self._untracked_plan = tuple((step.key_of, step.apply, step.states) for step in self._plan)

    def apply(self, event: Foldable) -> None:
        """Fold one (upcast) event into every projection it concerns."""
        position = event.position
        for key_of, fold, states, dirty, origin, limit in self._plan:
            if limit is not None and position > limit:
                continue
            key = key_of(event)
            if key is None:
                continue
            states[key] = fold(states.get(key), event)
            if self.track_changes:
                dirty.add(key)
            if self._track_origins:
                origin[key] = (event.stream_id, position)
        self.events += 1

    def _untracked(self) -> bool:
        return not (self.track_changes or self._track_origins or self._limited)

    def _apply_untracked(self, events: Sequence[Foldable]) -> None:
        """``apply`` for each of ``events`` when nothing is tracked or limited (a replay's
        first pass, most of its work): the same folds, without apply's checks per event."""
        plan = self._untracked_plan
        for event in events:
            for key_of, fold, states in plan:
                key = key_of(event)
                if key is not None:
                    states[key] = fold(states.get(key), event)
        self.events += len(events)

    def clean(self) -> None:
        for keys in self.dirty.values():
            keys.clear()

    def rows(
        self, projection: AnyProjection, keys: Iterable[str] | None = None
    ) -> Iterator[tuple[Any, ...]]:
        """Table rows of ``projection``'s states (of ``keys`` only, when given)."""
        states = self.states[projection.name]
        chosen = states.values() if keys is None else (states[k] for k in keys)
        return (projection.to_row(state) for state in chosen)

    async def run(
        self,
        conn: Connection,
        *,
        until: int | None = None,
        keep: Callable[[Foldable], bool] | None = None,
        upcasters: Upcasters = UPCASTERS,
        page: int = 10_000,
        progress: Progress | None = None,
    ) -> None:
        """Read on from ``position`` up to ``until`` (inclusive; default: the head), folding
        the events ``keep`` accepts (default: all)."""
        head = 0
        if progress is not None:
            head = await head_position(conn)
            head = head if until is None else min(head, until)
        # aclosing: a fold that fails mid-page must leave the connection free (scan reads ahead).
        pages = scan(
            conn,
            after=self.position,
            until=until,
            page=page,
            upcasters=upcasters,
            metadata_of=metadata_read_by(self.projections),
        )
        async with contextlib.aclosing(pages):
            async for events in pages:
                if keep is None and self._untracked():
                    self._apply_untracked(events)
                else:
                    for event in events:
                        if keep is None or keep(event):
                            self.apply(event)
                self.position = events[-1].position
                # The states only grow and live as long as the fold: without this, every full
                # collection of the cyclic GC walks all of them again (a third of a replay's
                # time at a million events). A page's events are freed by reference counting
                # all the same.
                gc.freeze()
                if progress is not None:
                    progress(self.position, max(head, self.position))

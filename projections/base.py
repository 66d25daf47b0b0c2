"""What the projector needs to know about a read model.

A read model is a pure fold, ``apply(state, event) -> state``, over the events that concern one
key (a job id), plus the SQL that loads and saves its rows. The live projector, the replay and
``verify`` run the same fold, which is what makes a rebuild equal to the live tables.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

import asyncpg

from events.models import RecordedEvent

S = TypeVar("S")


@dataclass(frozen=True)
class Projection(Generic[S]):
    """A read model: its name (also its table and checkpoint), fold and row mapping."""

    name: str
    columns: tuple[str, ...]
    key_of: Callable[[RecordedEvent], str | None]
    apply: Callable[[S | None, RecordedEvent], S]
    to_row: Callable[[S], tuple[Any, ...]]
    from_row: Callable[[asyncpg.Record], S]
    load_sql: str
    upsert_sql: str

    def fold(self, states: dict[str, S], event: RecordedEvent) -> str | None:
        """Apply ``event`` to the state it concerns, in ``states``; return that key, if any."""
        key = self.key_of(event)
        if key is not None:
            states[key] = self.apply(states.get(key), event)
        return key


AnyProjection = Projection[Any]

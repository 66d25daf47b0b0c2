"""Upcasting: reading an event stored under an older schema version as the current one.

Stored events never change (the hash chain covers them as stored). When a type gets a ``v2``,
register a step ``(type, 1) -> function(data) -> data`` that turns a v1 payload into a v2
payload; readers that feed folds (the projector, replay, verify's in-memory replay) apply the
steps in a chain (v1 -> v2 -> v3 ...) so the folds only ever see the latest version. What is
shown as history (``jobtrail history``, the events API, ``export``) and what is hashed is the
stored event.

The registry is an immutable value passed to the readers (defaulting to ``UPCASTERS``, the
production one), never module-level mutable state: a test or a tool builds its own with
``Upcasters().register(...)``.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from types import MappingProxyType
from typing import Any, Final

from events.models import AnyEvent

Upcaster = Callable[[dict[str, Any]], dict[str, Any]]


@dataclasses.dataclass(frozen=True)
class Upcasters:
    """Steps ``(type, from_version) -> upcaster`` giving the data of ``from_version + 1``."""

    steps: Mapping[tuple[str, int], Upcaster] = dataclasses.field(
        default_factory=lambda: MappingProxyType({})
    )

    def register(self, type: str, from_version: int, upcaster: Upcaster) -> Upcasters:
        """A registry with one more step; ``self`` is unchanged."""
        if (type, from_version) in self.steps:
            raise ValueError(f"an upcaster for {type} v{from_version} is already registered")
        return Upcasters(MappingProxyType({**self.steps, (type, from_version): upcaster}))

    def upcast_all(self, events: list[AnyEvent]) -> list[AnyEvent]:
        """``events``, each upcast (the list itself while no type has a second version)."""
        if not self.steps:
            return events
        return [self.upcast(e) for e in events]

    def upcast(self, event: AnyEvent) -> AnyEvent:
        """``event`` at the latest version its type has steps for (itself if none apply)."""
        while (step := self.steps.get((event.type, event.version))) is not None:
            # Each step gets its own copy: an upcaster may change the dict it is given.
            event = event._replace(data=step(dict(event.data)), version=event.version + 1)
        return event


# The production registry: no event type has a second version yet.
UPCASTERS: Final = Upcasters()

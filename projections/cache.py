"""The projector's memory of the rows it wrote: a batch loads from a read model's table only
the states it does not hold already.

A cached state is the row the projector's own last committed batch left in the table, and it
stays that only while nothing else writes the table. Whatever else does (another process's
projector after a change of leader, a rebuild's swap) moves the projection's checkpoint in the
same transaction as the rows, and a batch writes only if the checkpoint is still where it
folded from (``projections.runner``). So a batch folds onto cached states only if its
checkpoint is the position the cache was left at, and if the table has been written since,
its write fails and the next try, from the checkpoint as it now is, finds it different and
drops them.

A batch's states join the cache only once its write has committed (``commit``). A batch that
wrote nothing, or whose outcome is unknown, leaves the cache as it was: still right if the
checkpoint did not move, and found out if it did.
"""

from __future__ import annotations

from collections.abc import Mapping
from itertools import islice
from typing import Any

# States kept per read model, the most recently written ones: a fleet's live jobs. At about
# half a kilobyte a state, ~5 MB each for job_status and job_heartbeat at most.
DEFAULT_LIMIT = 10_000


class StateCache:
    """Per read model: the last written states, and the checkpoint they are the table at."""

    def __init__(self, limit: int = DEFAULT_LIMIT) -> None:
        self._limit = limit
        self._states: dict[str, dict[str, Any]] = {}
        self._at: dict[str, int] = {}
        self._staged: list[tuple[str, int, int, dict[str, Any]]] = []

    def begin(self) -> None:
        """A new batch: forget what an unfinished one staged."""
        self._staged.clear()

    def states_at(self, name: str, checkpoint: int) -> Mapping[str, Any]:
        """The cached states of ``name`` if the table is where they were left, else none."""
        if self._at.get(name) != checkpoint:
            self._states.pop(name, None)
            self._at.pop(name, None)
            return {}
        return self._states.get(name, {})

    def stage(self, name: str, checkpoint: int, position: int, states: dict[str, Any]) -> None:
        """What this batch wrote to ``name`` (``states``), which moves its checkpoint from
        ``checkpoint`` to ``position``; kept once ``commit`` says the batch committed."""
        self._staged.append((name, checkpoint, position, states))

    def commit(self) -> None:
        for name, checkpoint, position, states in self._staged:
            # Unless the cache was checked against this very checkpoint, it holds nothing
            # about this table that is known to be true.
            cached = self._states.get(name) if self._at.get(name) == checkpoint else None
            if cached is None:
                cached = self._states[name] = {}
            for key, state in states.items():
                cached.pop(key, None)  # to the end: the least recently written go first
                cached[key] = state
            excess = len(cached) - self._limit
            if excess > 0:
                for key in list(islice(cached, excess)):
                    del cached[key]
            self._at[name] = position
        self._staged.clear()

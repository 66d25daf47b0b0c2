"""``append_batch`` (the ``jobtrail_append`` function of migration 0007) against a model of
what it must do, on random batches that mix everything: repeated streams, keys stored before,
keys repeated within the batch, expected versions that hold and that do not.

The function has two paths (every event new and of its own stream: set-based; anything else:
event by event); both must answer like the model, link every stream's chain without gaps, and
leave exactly the stored events in the log.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any
from uuid import UUID

import asyncpg
import pytest

from events.catalog import STATUS_REPORTED, job_stream
from events.hashing import check_chain
from events.models import AppendResult, NewEvent
from events.store import append_batch, read_stream


@dataclass
class Model:
    """What the log must hold: each stream's version, each key's first event."""

    versions: dict[str, int] = field(default_factory=dict)
    keys: dict[str, tuple[UUID, int]] = field(default_factory=dict)  # key -> (event, global)
    stored: list[UUID] = field(default_factory=list)

    def append(self, batch: list[NewEvent]) -> list[tuple[UUID | None, bool, bool]]:
        """Per event: (the event answered, or None for "its own, position to be seen"),
        duplicate, conflict."""
        answers: list[tuple[UUID | None, bool, bool]] = []
        for event in batch:
            key = event.idempotency_key
            if key is not None and key in self.keys:
                answers.append((self.keys[key][0], True, False))
                continue
            version = self.versions.get(event.stream_id, 0)
            if event.expected_version is not None and event.expected_version != version:
                answers.append((event.event_id, False, True))
                continue
            self.versions[event.stream_id] = version + 1
            if key is not None:
                self.keys[key] = (event.event_id, -1)
            self.stored.append(event.event_id)
            answers.append((event.event_id, False, False))
        return answers


def random_batch(rng: random.Random, model: Model, keys_seen: list[str]) -> list[NewEvent]:
    batch = []
    for _ in range(rng.randint(1, 12)):
        job = f"job-{rng.randint(1, 6)}"
        roll = rng.random()
        if roll < 0.2 and keys_seen:
            key: str | None = rng.choice(keys_seen)  # stored before, or earlier in this batch
        elif roll < 0.3:
            key = None
        else:
            key = f"key-{len(keys_seen)}"
            keys_seen.append(key)
        expected = None
        if rng.random() < 0.2:
            version = model.versions.get(job_stream(job), 0)
            expected = version if rng.random() < 0.5 else version + rng.choice([-1, 1, 5])
        batch.append(
            NewEvent(
                stream_id=job_stream(job),
                type=STATUS_REPORTED,
                data={"job_id": job, "status": "running"},
                metadata={"scheme": "test"},
                received_at=datetime.now(UTC),
                idempotency_key=key,
                expected_version=expected,
            )
        )
    return batch


def fresh_batch(rng: random.Random, size: int) -> list[NewEvent]:
    """Every event new and each of its own stream: the set-based path."""
    jobs = rng.sample(range(1, 1000), size)
    return [
        NewEvent(
            stream_id=job_stream(f"fast-{j}"),
            type=STATUS_REPORTED,
            data={"job_id": f"fast-{j}", "status": "running"},
            metadata={"scheme": "test"},
            received_at=datetime.now(UTC),
            idempotency_key=f"fast-key-{rng.random()}",
        )
        for j in jobs
    ]


def check_against(
    model_answers: list[tuple[UUID | None, bool, bool]], results: list[AppendResult]
) -> None:
    assert len(results) == len(model_answers)
    for (event_id, duplicate, conflict), result in zip(model_answers, results, strict=True):
        assert (result.event_id, result.duplicate, result.conflict) == (
            event_id,
            duplicate,
            conflict,
        )
        assert (result.position == 0) == conflict


@pytest.mark.parametrize("seed", [1, 2, 3])
async def test_random_batches_append_as_the_model_says(pool: asyncpg.Pool[Any], seed: int) -> None:
    rng = random.Random(seed)
    model = Model()
    keys_seen: list[str] = []
    positions: dict[UUID, int] = {}
    async with pool.acquire() as conn:
        for round_ in range(40):
            batch = fresh_batch(rng, rng.randint(1, 8)) if round_ % 4 == 0 else []
            batch += random_batch(rng, model, keys_seen) if round_ % 4 else []
            answers = model.append(batch)
            results = await append_batch(conn, batch)
            check_against(answers, results)
            for result in results:
                if not result.conflict:
                    # A duplicate answers with the first event's position, as first stored.
                    assert positions.setdefault(result.event_id, result.position) == (
                        result.position
                    )

        stored = {
            r["event_id"]: r["position"]
            for r in await conn.fetch("SELECT event_id, position FROM events ORDER BY position")
        }
        assert list(stored) == model.stored  # exactly these, in this order
        assert all(positions[e] == p for e, p in stored.items())
        for stream_id, version in model.versions.items():
            events = await read_stream(conn, stream_id)
            assert [e.stream_position for e in events] == list(range(1, version + 1))
            assert all(check_chain(events))

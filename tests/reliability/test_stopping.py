"""Background loops stop when cancelled, even at the instant they are woken.

On Python 3.11 ``asyncio.wait_for`` swallows a cancellation that arrives together with the
completion of what it waits for; a loop waiting for its wake-up event that way missed the stop
whenever a commit woke it at that moment (under load: often), and ``jobtrail serve`` hung on
SIGTERM. Each case here wakes the loop and cancels it in the same event-loop iteration.
"""

from __future__ import annotations

import asyncio
from typing import Any

import asyncpg

from projections.runner import Applied, Projector
from service.stream import Broadcaster


async def stops_at_once(task: asyncio.Task[None]) -> None:
    done, _ = await asyncio.wait([task], timeout=3)
    assert done, "the loop went on after it was cancelled"


async def test_the_projector_stops_when_cancelled_as_it_is_woken(
    pool: asyncpg.Pool[Any],
) -> None:
    for _ in range(5):
        projector = Projector(pool, poll_interval=0.5)
        task = asyncio.create_task(projector.run())
        await asyncio.sleep(0.1)  # caught up, listening, waiting for a wake-up
        projector._notified()  # what a NOTIFY does
        task.cancel()
        await stops_at_once(task)


async def test_the_broadcaster_stops_when_cancelled_as_it_is_woken(
    pool: asyncpg.Pool[Any],
) -> None:
    for _ in range(5):
        broadcaster = Broadcaster(stale_after_s=180, poll_interval=0.5)
        await broadcaster.start(pool)
        task = asyncio.create_task(broadcaster.run(pool))
        await asyncio.sleep(0.1)
        broadcaster.subscribe()  # with someone listening, a projector commit wakes a round
        broadcaster.on_commit(Applied(1, {"job_status": {"vm-1"}}, {"job_status": 1}))
        task.cancel()
        await stops_at_once(task)

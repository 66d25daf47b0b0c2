"""Durability and idempotency under kill -9 (SPEC section 9), as a seeded random campaign.

A real ``jobtrail serve`` takes a few hundred concurrent signed callbacks (distinct keys, both
callback schemes) and is killed with SIGKILL at random moments, three times, and started again
each time; the client retries every callback that was not acknowledged, re-signed, with the
same key. Afterwards every 200 is in the log exactly once, where it said; no key is stored
twice; every stream is gap-free with an intact hash chain; the projections equal a replay.
"""

from __future__ import annotations

import asyncio
import random
from pathlib import Path
from typing import Any

import asyncpg
import pytest

from tests.conftest import ServeProcessFactory
from tests.helpers import free_port, wait_for_projection
from tests.reliability.harness import (
    Driver,
    campaign_seed,
    check_log,
    check_projections,
    run_verify,
    workload,
)

pytestmark = pytest.mark.slow

CALLBACKS = 300
KILLS = 3


async def test_nothing_acknowledged_is_lost_across_random_kill_9s(
    database_url: str, pool: asyncpg.Pool[Any], tmp_path: Path, serve_process: ServeProcessFactory
) -> None:
    seed = campaign_seed()
    rng = random.Random(seed)
    service = serve_process(database_url, tmp_path, free_port())
    driver = Driver(service.base, workload(rng, CALLBACKS, jobs=12, tag=f"k{seed}"))
    # Kill once this many callbacks are acknowledged, plus a random few milliseconds.
    thresholds = sorted(rng.sample(range(CALLBACKS // 10, CALLBACKS * 8 // 10), KILLS))

    await service.start()
    sending = asyncio.create_task(driver.run())
    try:
        for threshold in thresholds:
            await driver.wait_for_acks(threshold)
            await asyncio.sleep(rng.uniform(0, 0.03))
            await service.kill()  # requests in flight, a group commit perhaps mid-way
            await asyncio.sleep(rng.uniform(0, 0.3))  # meanwhile the client keeps retrying
            await service.start()
        await asyncio.wait_for(sending, 120)
    finally:
        sending.cancel()

    assert not driver.failures, (seed, driver.failures[:5])
    assert len(driver.acks) == CALLBACKS, seed
    retried = {a.outcome for a in driver.attempts} - {"200"}
    print(f"{len(driver.attempts)} attempts; other outcomes: {sorted(retried)}")
    print(f"retries answered as duplicates: {sum(a.duplicate for a in driver.acks.values())}")
    await wait_for_projection(pool, within_s=15)
    async with pool.acquire() as conn:
        await check_log(conn, driver.acks, seed)
        await check_projections(conn, seed)
    assert await service.stop() == 0
    await run_verify(database_url, tmp_path)

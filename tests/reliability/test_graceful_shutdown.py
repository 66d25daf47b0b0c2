"""SIGTERM under load (SPEC section 9): ``jobtrail serve`` stops accepting, answers what is in
flight, stops the projector at a checkpoint it fully applied, and exits 0 within 10 s.

Every request gets a 200 (after its COMMIT), a 503, or a connection error; a request that got
a connection error was not stored (so a retry stores it once), and after a restart the client's
retries of everything unanswered land exactly once.
"""

from __future__ import annotations

import asyncio
import random
import signal
import time
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
    workload,
)

pytestmark = pytest.mark.slow

EXIT_WITHIN_S = 10.0


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
async def test_a_signal_under_load_stops_cleanly_and_loses_nothing(
    database_url: str,
    pool: asyncpg.Pool[Any],
    tmp_path: Path,
    signum: int,
    serve_process: ServeProcessFactory,
) -> None:
    seed = campaign_seed()
    rng = random.Random(seed)
    service = serve_process(database_url, tmp_path, free_port())
    driver = Driver(service.base, workload(rng, 300, jobs=10, tag=f"g{seed}"))
    await service.start()
    sending = asyncio.create_task(driver.run())
    try:
        await driver.wait_for_acks(rng.randrange(30, 200))
        await asyncio.sleep(rng.uniform(0, 0.02))
        signalled = asyncio.get_running_loop().time()
        started = time.monotonic()
        code = await service.stop(signum)
        took = time.monotonic() - started
        assert code == 0, service.logs()[-3000:]
        assert took < EXIT_WITHIN_S, took

        # Stopped at a checkpoint: each projection equals a replay up to its checkpoint.
        async with pool.acquire() as conn:
            checkpoints = await check_projections(conn, seed)
            await check_log(conn, driver.acks, seed)
            # A request whose connection broke was not stored: no commit went unanswered.
            stored = {
                r["key"]
                for r in await conn.fetch("SELECT metadata->>'idempotency_key' AS key FROM events")
            }
        broken = {
            a.key
            for a in driver.attempts
            if a.outcome not in ("200", "503") and a.key not in driver.acks
        }
        assert not broken & stored, (seed, sorted(broken & stored)[:5])
        after = [a for a in driver.attempts if a.started > signalled]
        print(f"checkpoints {checkpoints}; {len(driver.acks)} acknowledged before the stop;")
        print(f"outcomes after the signal: {sorted({a.outcome for a in after})}")

        # Started again, the client's retries of everything unanswered land exactly once.
        await service.start()
        await asyncio.wait_for(sending, 60)
    finally:
        sending.cancel()
    assert not driver.failures, (seed, driver.failures[:5])
    assert len(driver.acks) == len(driver.callbacks)
    await wait_for_projection(pool, within_s=15)
    async with pool.acquire() as conn:
        await check_log(conn, driver.acks, seed)
        await check_projections(conn, seed)
    assert await service.stop() == 0

"""PostgreSQL stopped under load, then started again, under a running ``jobtrail serve``.

While it is down: every ingest gets a 503 with Retry-After within seconds (no request hangs, no
500, no dropped connection), ``/readyz`` says 503 and ``/healthz`` 200. Once it is back the
service recovers by itself, without a restart: the pool reconnects, retried callbacks land, the
projector listens again and catches up, and the watchdog still times out a silent job.
"""

from __future__ import annotations

import asyncio
import random
import time
from pathlib import Path
from typing import Any

import aiohttp
import asyncpg
import pytest

from devdb import EmbeddedPostgres
from events.store import register_codecs
from tests.conftest import ServeProcessFactory
from tests.helpers import (
    AUTH,
    body_of,
    free_port,
    standard_headers,
    wait_for_projection,
)
from tests.reliability.harness import (
    URL,
    Driver,
    campaign_seed,
    check_log,
    check_projections,
    workload,
)

pytestmark = pytest.mark.slow

MAX_RESPONSE_S = 5.0
TIMEOUT_AFTER_S = 1


async def timed_get(
    session: aiohttp.ClientSession, url: str, **kwargs: Any
) -> tuple[int, float, Any]:
    started = time.monotonic()
    async with session.get(url, **kwargs) as response:
        return response.status, time.monotonic() - started, await response.json()


async def test_service_rides_out_a_database_outage(
    own_server: EmbeddedPostgres, tmp_path: Path, serve_process: ServeProcessFactory
) -> None:
    seed = campaign_seed()
    rng = random.Random(seed)
    dsn = await asyncio.to_thread(own_server.start)
    service = serve_process(
        dsn, tmp_path, free_port(), JOBTRAIL_TIMEOUT_AFTER_S=str(TIMEOUT_AFTER_S)
    )
    await service.start()
    driver = Driver(service.base, workload(rng, 400, jobs=8, tag=f"o{seed}"), workers=8)
    sending = asyncio.create_task(driver.run(retry_pause_s=0.1))
    async with aiohttp.ClientSession() as session:
        try:
            await driver.wait_for_acks(rng.randrange(20, 80))
            await asyncio.to_thread(own_server.stop)
            stopped_at = asyncio.get_running_loop().time()
            down = [await timed_get(session, f"{service.base}/readyz") for _ in range(3)]
            down.append(await timed_get(session, f"{service.base}/api/jobs", headers=AUTH))
            health = await timed_get(session, f"{service.base}/healthz")
            await asyncio.sleep(rng.uniform(1.5, 3.0))  # the client keeps sending
            restarted_at = asyncio.get_running_loop().time()
            await asyncio.to_thread(own_server.start)
            await asyncio.wait_for(sending, 90)
        finally:
            sending.cancel()

        assert [(status, body) for status, _, body in down] == [
            *[(503, {"status": "unavailable", "reason": "database unreachable"})] * 3,
            (503, {"error": "Storage unavailable"}),
        ]
        assert health[0] == 200
        assert max(elapsed for _, elapsed, _ in down) < MAX_RESPONSE_S
        assert not driver.failures, (seed, driver.failures[:5])
        outcomes = {a.outcome for a in driver.attempts}
        assert outcomes == {"200", "503"}, (seed, outcomes)  # no 500, no dropped connection
        slowest = max(driver.attempts, key=lambda a: a.elapsed)
        assert slowest.elapsed < MAX_RESPONSE_S, (seed, slowest)
        during = [a for a in driver.attempts if stopped_at < a.started < restarted_at]
        assert during and {a.outcome for a in during} <= {"503"}, seed

        # The projection caught up with everything acknowledged (read-your-writes).
        last = max(driver.acks.values(), key=lambda a: a.position)
        job_id = next(c.job_id for c in driver.callbacks if driver.acks[c.key] == last)
        status, _, _ = await timed_get(
            session,
            f"{service.base}/api/jobs/{job_id}?after_position={last.position}",
            headers=AUTH,
        )
        assert status == 200, seed

        # The watchdog works again: a job that falls silent now is timed out.
        body = body_of({"job_id": "vm-silent", "status": "running"})
        async with session.post(service.base + URL, data=body, headers=standard_headers(body)):
            pass
        deadline = time.monotonic() + TIMEOUT_AFTER_S + 5 + 2
        while True:
            status, _, job = await timed_get(
                session, f"{service.base}/api/jobs/vm-silent", headers=AUTH
            )
            if status == 200 and job["status"] == "timed_out":
                break
            assert time.monotonic() < deadline, (seed, status, job)
            await asyncio.sleep(0.1)

    async with asyncpg.create_pool(dsn, init=register_codecs, min_size=1, max_size=2) as pool:
        async with pool.acquire() as conn:
            # The projector's wake-up channel is listened to again, by the same process.
            listening = await conn.fetchval(
                "SELECT count(*) FROM pg_stat_activity WHERE query ILIKE 'LISTEN %'"
            )
            assert listening >= 1, seed
        await wait_for_projection(pool, within_s=15)
        async with pool.acquire() as conn:
            await check_log(conn, driver.acks, seed)
            await check_projections(conn, seed)
    assert await service.stop() == 0

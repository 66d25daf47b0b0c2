"""The watchdog: one ``job.timed_out`` per silence, however many service instances run it."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg
from aiohttp import web
from aiohttp.test_utils import TestClient

from projections.watchdog import time_out_silent_jobs
from service.settings import Settings
from tests.conftest import AppClientFactory
from tests.helpers import AUTH, body_of, running, standard_headers, wait_for_projection

Client = TestClient[web.Request, web.Application]
URL = "/api/webhooks/github"


async def callback(client: Client, **payload: Any) -> None:
    body = body_of(payload)
    response = await client.post(URL, data=body, headers=standard_headers(body))
    assert response.status == 200, await response.text()


async def timeouts(pool: asyncpg.Pool[Any]) -> dict[str, int]:
    async with pool.acquire() as conn:
        rows = await conn.fetch(
            "SELECT data->>'job_id' AS job_id, count(*) AS n FROM events"
            " WHERE type = 'job.timed_out' GROUP BY 1"
        )
    return {r["job_id"]: r["n"] for r in rows}


async def test_two_instances_time_out_each_silent_job_exactly_once(
    app_client: AppClientFactory, settings: Settings, pool: asyncpg.Pool[Any]
) -> None:
    quick = settings.model_copy(update={"timeout_after_s": 1.0})
    first, second = await app_client(quick), await app_client(quick)
    for n in range(5):
        await callback(first, job_id=f"silent-{n}", status="provisioning")
    await callback(second, job_id="finished", status="running")
    await callback(second, job_id="finished", status="succeeded")

    async def heartbeats() -> None:
        while True:
            await callback(first, job_id="alive", status="heartbeat")
            await asyncio.sleep(0.3)

    async with running(heartbeats()):
        await asyncio.sleep(3.5)  # several watchdog rounds of both instances past the timeout
    await wait_for_projection(pool)
    assert await timeouts(pool) == {f"silent-{n}": 1 for n in range(5)}
    for client in (first, second):
        page = await (await client.get("/api/jobs?status=timed_out", headers=AUTH)).json()
        assert sorted(j["job_id"] for j in page["jobs"]) == [f"silent-{n}" for n in range(5)]
    finished = await (await first.get("/api/jobs/finished", headers=AUTH)).json()
    assert finished["status"] == "succeeded"

    # A reported terminal status after the timeout wins, and is not late.
    await callback(second, job_id="silent-0", status="failed", message="disk full")
    await wait_for_projection(pool)
    job = await (await first.get("/api/jobs/silent-0", headers=AUTH)).json()
    assert (job["status"], job["late_event_count"], job["event_count"]) == ("failed", 0, 3)


async def test_racing_watchdogs_and_a_late_heartbeat_store_at_most_one_timeout(
    pool: asyncpg.Pool[Any], client: Client
) -> None:
    await callback(client, job_id="racy", status="running")
    await wait_for_projection(pool)
    later = datetime.now(UTC) + timedelta(seconds=60)
    # Ten watchdogs decide at once on the same projected state: one append wins.
    results = await asyncio.gather(
        *(time_out_silent_jobs(pool, timeout_s=30, now=later) for _ in range(10))
    )
    assert sorted(len(r) for r in results) == [0] * 9 + [1]
    assert await timeouts(pool) == {"racy": 1}


async def test_an_event_the_projection_has_not_seen_cancels_the_timeout(
    pool: asyncpg.Pool[Any], settings: Settings, app_client: AppClientFactory
) -> None:
    client = await app_client(settings)
    await callback(client, job_id="slow-projector", status="running")
    await wait_for_projection(pool)
    # A heartbeat lands in the log while the projection still shows the old state (the app's
    # projector is paused by holding its checkpoint rows).
    async with pool.acquire() as holder, holder.transaction():
        await holder.execute("SELECT * FROM projection_checkpoints FOR UPDATE")
        await callback(client, job_id="slow-projector", status="heartbeat")
        later = datetime.now(UTC) + timedelta(seconds=60)
        assert await time_out_silent_jobs(pool, timeout_s=30, now=later) == []
    assert await timeouts(pool) == {}

"""Failure: PostgreSQL going away under a running service, and the service killed mid-load.

Nothing acknowledged is ever lost; nothing is acknowledged while the database is down.
"""

from __future__ import annotations

import asyncio
import os
import signal
import sys
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import aiohttp
import asyncpg
import pytest
from pydantic import SecretStr

from devdb import EmbeddedPostgres
from service.migrate import migrate
from service.settings import Settings
from tests.conftest import AppClientFactory
from tests.helpers import (
    AUTH,
    CALLBACK_SECRET,
    READ_TOKEN,
    body_of,
    free_port,
    standard_headers,
    wait_until_ready,
)

pytestmark = pytest.mark.slow
URL = "/api/webhooks/github"


@pytest.fixture
def own_server(tmp_path: Path) -> Iterator[EmbeddedPostgres]:
    """A PostgreSQL of this test's own, to stop and start at will."""
    server = EmbeddedPostgres(tmp_path / "pg", throwaway=True)
    try:
        yield server
    finally:
        server.destroy()


async def test_postgres_down_gives_503_and_the_service_recovers(
    own_server: EmbeddedPostgres, app_client: AppClientFactory, settings: Settings
) -> None:
    dsn = own_server.start()
    conn = await asyncpg.connect(dsn)
    await migrate(conn)
    await conn.close()
    client = await app_client(settings.model_copy(update={"database_url": SecretStr(dsn)}))

    body = body_of({"job_id": "vm-down", "status": "provisioning"})
    first = await client.post(URL, data=body, headers=standard_headers(body, msg_id="before"))
    assert first.status == 200

    own_server.stop()
    body = body_of({"job_id": "vm-down", "status": "running"})
    headers = standard_headers(body, msg_id="during")
    refused = await client.post(URL, data=body, headers=headers)
    assert refused.status == 503
    assert refused.headers["Retry-After"].isdigit()
    assert await refused.json() == {"error": "Storage unavailable"}
    assert (await client.get("/readyz")).status == 503
    reading = await client.get("/api/jobs/vm-down", headers=AUTH)
    assert reading.status == 503 and await reading.json() == {"error": "Storage unavailable"}
    assert (await client.get("/healthz")).status == 200

    own_server.start()
    retried = await client.post(URL, data=body, headers=standard_headers(body, msg_id="during"))
    assert retried.status == 200
    answer = await retried.json()
    assert answer["duplicate"] is False  # the refused attempt stored nothing
    job = await client.get(f"/api/jobs/vm-down?after_position={answer['position']}", headers=AUTH)
    assert job.status == 200
    assert (await job.json())["status"] == "running"
    assert (await client.get("/readyz")).status == 200


@pytest.fixture
async def service(database_url: str, tmp_path: Path) -> AsyncIterator[tuple[str, Any]]:
    """``jobtrail serve`` as its own process, to be killed."""
    port = free_port()
    env = {
        **os.environ,
        "DATABASE_URL": database_url,
        "JOBTRAIL_DATA_DIR": str(tmp_path / "data"),
        "GITHUB_CALLBACK_SECRET": CALLBACK_SECRET,
        "JOBTRAIL_READ_TOKENS": READ_TOKEN,
        "JOBTRAIL_LOG_FORMAT": "json",
    }
    jobtrail = str(Path(sys.executable).parent / "jobtrail")
    process = await asyncio.create_subprocess_exec(
        jobtrail,
        "serve",
        "--port",
        str(port),
        env=env,
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.DEVNULL,
    )
    base = f"http://127.0.0.1:{port}"
    await wait_until_ready(base)
    try:
        yield base, process
    finally:
        if process.returncode is None:
            process.kill()
        await process.wait()


async def test_every_acknowledged_event_survives_a_kill_9(
    service: tuple[str, Any], pool: asyncpg.Pool[Any]
) -> None:
    base, process = service
    acknowledged: list[str] = []
    enough = asyncio.Event()

    async def sender(session: aiohttp.ClientSession, worker: int) -> None:
        for i in range(10_000):
            body = body_of({"job_id": f"vm-{worker}", "status": "heartbeat", "message": str(i)})
            try:
                async with session.post(
                    base + URL, data=body, headers=standard_headers(body)
                ) as response:
                    if response.status == 200:
                        acknowledged.append((await response.json())["event_id"])
            except (aiohttp.ClientError, ConnectionError):
                return  # the server is gone: whatever was not answered was not promised
            if len(acknowledged) >= 300:
                enough.set()

    async with aiohttp.ClientSession() as session:
        senders = [asyncio.create_task(sender(session, w)) for w in range(16)]
        await asyncio.wait_for(enough.wait(), 60)
        process.send_signal(signal.SIGKILL)  # mid-load, with requests in flight
        await asyncio.gather(*senders)

    async with pool.acquire() as conn:
        stored = {
            str(r["event_id"])
            for r in await conn.fetch(
                "SELECT event_id FROM events WHERE event_id = any($1)", acknowledged
            )
        }
    assert len(acknowledged) >= 300
    assert stored == set(acknowledged)

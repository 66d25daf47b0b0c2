"""Failure: PostgreSQL going away under a running service (in-process, one request at a time).

Nothing is acknowledged while the database is down. The randomised campaigns (kill -9 under
load, an outage under load, SIGTERM under load) are in ``tests/reliability/``.
"""

from __future__ import annotations

import asyncpg
import pytest
from pydantic import SecretStr

from devdb import EmbeddedPostgres
from service.migrate import migrate
from service.settings import Settings
from tests.conftest import AppClientFactory
from tests.helpers import (
    AUTH,
    body_of,
    standard_headers,
)

pytestmark = pytest.mark.slow
URL = "/api/webhooks/github"


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

"""Native GitHub webhooks: real captured deliveries (with their published secret) are verified
and recorded in their streams; without GITHUB_WEBHOOK_SECRET every native delivery is refused."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import asyncpg
import pytest
from pydantic import SecretStr

from service.settings import Settings
from tests.conftest import AppClientFactory

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures"
SECRET = json.loads(
    (FIXTURES / "signing-vectors" / "github-captured-deliveries.vectors.json").read_text()
)["secret"]
URL = "/api/webhooks/github"
KEPT_HEADERS = ("content-type", "x-github-delivery", "x-github-event", "x-hub-signature-256")


def captured(name: str) -> tuple[dict[str, str], bytes]:
    delivery = json.loads((FIXTURES / "github-signed-deliveries" / name).read_text())
    headers = {k: v for k, v in delivery["headers"].items() if k in KEPT_HEADERS}
    return headers, base64.b64decode(delivery["body_raw_base64"])


@pytest.fixture
def github_settings(settings: Settings) -> Settings:
    return settings.model_copy(update={"webhook_secret": SecretStr(SECRET)})


async def stored(pool: asyncpg.Pool[Any]) -> list[asyncpg.Record]:
    async with pool.acquire() as conn:
        return list(await conn.fetch("SELECT * FROM events ORDER BY position"))


@pytest.mark.parametrize(
    ("name", "stream", "event_type"),
    [
        ("cogni-git-review__workflow_run.in_progress.json", "github-run-", "github.workflow_run"),
        ("cogni-git-review__check_suite.completed.json", "github-check_suite", "github.other"),
    ],
)
async def test_real_deliveries_are_verified_and_recorded(
    app_client: AppClientFactory,
    github_settings: Settings,
    pool: asyncpg.Pool[Any],
    name: str,
    stream: str,
    event_type: str,
) -> None:
    client = await app_client(github_settings)
    headers, body = captured(name)
    response = await client.post(URL, data=body, headers=headers)
    assert response.status == 200, await response.text()
    again = await client.post(URL, data=body, headers=headers)
    assert (await again.json())["duplicate"] is True
    [event] = await stored(pool)
    assert event["stream_id"].startswith(stream) and event["type"] == event_type
    assert event["data"] == json.loads(body)
    assert event["metadata"]["scheme"] == "github"
    assert event["metadata"]["idempotency_key"] == headers["x-github-delivery"]
    if event_type == "github.workflow_run":
        assert event["stream_id"] == f"github-run-{json.loads(body)['workflow_run']['id']}"


async def test_a_tampered_delivery_is_refused(
    app_client: AppClientFactory, github_settings: Settings, pool: asyncpg.Pool[Any]
) -> None:
    client = await app_client(github_settings)
    headers, body = captured("cogni-git-review__check_suite.rerequested.json")
    response = await client.post(
        URL, data=body.replace(b"rerequested", b"requested"), headers=headers
    )
    assert response.status == 401
    assert await stored(pool) == []


async def test_without_the_webhook_secret_native_deliveries_are_refused(
    client: Any, pool: asyncpg.Pool[Any]
) -> None:
    headers, body = captured("cogni-git-review__workflow_run.in_progress.json")
    response = await client.post(URL, data=body, headers=headers)
    assert response.status == 401
    assert await response.json() == {"error": "Invalid signature"}
    assert await stored(pool) == []


async def test_ping_and_form_encoded_deliveries(
    app_client: AppClientFactory, github_settings: Settings, pool: asyncpg.Pool[Any]
) -> None:
    client = await app_client(github_settings)
    payload = json.dumps({"zen": "Design for failure.", "hook_id": 1})
    body = urlencode({"payload": payload}).encode()
    signature = hmac.new(SECRET.encode(), body, hashlib.sha256).hexdigest()
    headers = {
        "Content-Type": "application/x-www-form-urlencoded",
        "X-GitHub-Event": "ping",
        "X-GitHub-Delivery": "ping-1",
        "X-Hub-Signature-256": f"sha256={signature}",
    }
    response = await client.post(URL, data=body, headers=headers)
    assert response.status == 200, await response.text()
    [event] = await stored(pool)
    assert (event["type"], event["stream_id"]) == ("github.ping", "github-ping")
    assert event["data"] == json.loads(payload)

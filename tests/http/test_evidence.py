"""Evidence kept with each received event (SPEC sections 4 and 6): the body byte for byte, its
content type and the headers that authenticated it, served back by ``GET /api/events/{id}``
with a fresh signature check, and never a secret anywhere."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import urlencode
from uuid import uuid4

import asyncpg
import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient
from pydantic import SecretStr
from standardwebhooks.webhooks import Webhook

from events.models import FoldedEvent
from events.store import read_all
from projections.watchdog import time_out_silent_jobs
from service.settings import Settings
from service.signatures import standard_key
from tests.conftest import AppClientFactory
from tests.helpers import (
    AUTH,
    CALLBACK_SECRET,
    READ_TOKEN,
    ROTATED_SECRET,
    standard_headers,
    wait_for_projection,
)
from tests.http.test_github_native import SECRET as GITHUB_SECRET
from tests.http.test_github_native import captured

Client = TestClient[web.Request, web.Application]
URL = "/api/webhooks/github"
CAPTURED = [
    "cogni-git-review__workflow_run.in_progress.json",
    "cogni-git-review__check_suite.completed.json",
    "cogni-git-review__check_suite.rerequested.json",
]
# Valid JSON a re-serialisation (or jsonb) would not give back as it was sent.
UNUSUAL_BODIES = [
    b'{\n  "job_id" : "vm-odd",\n\t"status":"provisioning" ,\r\n  "run_id": 12 }\n',
    b'{"status":"running","job_id":"vm-odd","details":{"price":1.50,"zero":-0.0,"hundred":1E+2,'
    b'"big":1e308,"tiny":5e-324}}',
    b'{"details":{"b":[1,{"z":null,"a":true}],"a":"caf\\u00e9 \\ud83d\\ude00 \\"q\\" \\/"},'
    b'"status":"heartbeat","job_id":"vm-odd"}',
    '{"job_id":"vm-odd","status":"succeeded","message":"fini — café ✓"}'.encode(),
]


@pytest.fixture
def evidence_settings(settings: Settings) -> Settings:
    return settings.model_copy(update={"webhook_secret": SecretStr(GITHUB_SECRET)})


@pytest.fixture
async def app(app_client: AppClientFactory, evidence_settings: Settings) -> Client:
    return await app_client(evidence_settings)


def legacy_headers(body: bytes, secret: str) -> dict[str, str]:
    digest = hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()
    return {"Content-Type": "application/json", "X-Signature": f"sha256={digest}"}


async def deliver(client: Client, body: bytes, headers: dict[str, str]) -> str:
    response = await client.post(URL, data=body, headers=headers)
    assert response.status == 200, await response.text()
    answer = await response.json()
    assert answer["duplicate"] is False
    return str(answer["event_id"])


async def event(client: Client, event_id: str, status: int = 200) -> Any:
    response = await client.get(f"/api/events/{event_id}", headers=AUTH)
    assert response.status == status, await response.text()
    assert response.content_type == "application/json"
    return await response.json()


def body_of(detail: dict[str, Any]) -> bytes:
    return base64.b64decode(detail["raw"]["body_base64"], validate=True)


async def test_unusual_json_comes_back_byte_for_byte_and_reverifies(app: Client) -> None:
    for body in UNUSUAL_BODIES:
        sent = standard_headers(body)
        event_id = await deliver(app, body, sent)
        detail = await event(app, event_id)
        assert body_of(detail) == body
        raw = detail["raw"]
        assert raw["content_type"] == "application/json"
        assert raw["headers"] == {k: v for k, v in sent.items() if k.startswith("webhook-")}
        # The reference implementation accepts the stored request (its own tolerance applies:
        # this runs right after sending).
        assert Webhook(CALLBACK_SECRET).verify(body, raw["headers"]) == json.loads(body)
        assert detail["signature"] == {"verified": True, "key": "primary"}
        assert detail["digest_version"] == 2
        assert detail["event_id"] == event_id
        assert detail["stream_id"] == "job-vm-odd"
        assert len(bytes.fromhex(detail["hash"])) == len(bytes.fromhex(detail["prev_hash"])) == 32
        assert detail["metadata"]["scheme"] == "standard"
        assert detail["data"]["job_id"] == "vm-odd"
    # The job's events are the same events, without the evidence.
    response = await app.get("/api/jobs/vm-odd/events", headers=AUTH)
    listed = (await response.json())["events"]
    assert len(listed) == len(UNUSUAL_BODIES)
    for item in listed:
        detail = await event(app, item["event_id"])
        assert {k: detail[k] for k in item} == item
        assert detail["stream_position"] == item["stream_position"]
    assert listed[1]["data"]["details"]["zero"] == 0  # data is the jsonb copy


async def test_captured_github_deliveries_come_back_byte_for_byte(app: Client) -> None:
    for name in CAPTURED:
        headers, body = captured(name)
        detail = await event(app, await deliver(app, body, headers))
        assert body_of(detail) == body
        assert detail["raw"]["content_type"] == headers["content-type"]
        assert detail["raw"]["headers"] == {
            k: headers[k] for k in ("x-hub-signature-256", "x-github-event", "x-github-delivery")
        }
        expected = hmac.new(GITHUB_SECRET.encode(), body, hashlib.sha256).hexdigest()
        assert detail["raw"]["headers"]["x-hub-signature-256"] == f"sha256={expected}"
        assert detail["signature"] == {"verified": True, "key": "primary"}


async def test_a_form_encoded_delivery_is_kept_as_received(app: Client) -> None:
    payload = '{"zen": "Keep it logically awesome.",  "hook_id": 1.50}'
    body = urlencode({"payload": payload}).encode()
    signature = hmac.new(GITHUB_SECRET.encode(), body, hashlib.sha256).hexdigest()
    headers = {
        "Content-Type": "application/x-www-form-urlencoded",
        "X-GitHub-Event": "ping",
        "X-GitHub-Delivery": "ping-form",
        "X-Hub-Signature-256": f"sha256={signature}",
    }
    detail = await event(app, await deliver(app, body, headers))
    assert body_of(detail) == body
    assert detail["raw"]["content_type"] == "application/x-www-form-urlencoded"
    assert detail["data"] == json.loads(payload)
    assert detail["signature"] == {"verified": True, "key": "primary"}


async def test_rotated_keys_are_named_and_unknown_ones_do_not_verify(
    app: Client, app_client: AppClientFactory, evidence_settings: Settings
) -> None:
    body = b'{"job_id":"vm-rot","status":"running"}'
    standard_rotated = await deliver(app, body, standard_headers(body, secret=ROTATED_SECRET))
    legacy_primary = await deliver(app, body, legacy_headers(body, CALLBACK_SECRET))
    legacy_rotated = await deliver(app, body, legacy_headers(body, ROTATED_SECRET))
    for event_id, key in (
        (standard_rotated, "rotated"),
        (legacy_primary, "primary"),
        (legacy_rotated, "rotated"),
    ):
        detail = await event(app, event_id)
        assert detail["signature"] == {"verified": True, "key": key}
        assert body_of(detail) == body
    assert (await event(app, legacy_primary))["raw"]["headers"] == {
        "x-signature": legacy_headers(body, CALLBACK_SECRET)["X-Signature"]
    }
    # Once the rotated secret is dropped, what it signed no longer verifies: the same log read
    # by an app configured without it.
    without = evidence_settings.model_copy(update={"callback_secrets": ()})
    other = await app_client(without)
    assert (await event(other, standard_rotated))["signature"] == {"verified": False, "key": None}
    assert (await event(other, legacy_primary))["signature"]["verified"] is True


async def test_a_derived_event_has_no_raw_request(app: Client, pool: asyncpg.Pool[Any]) -> None:
    body = b'{"job_id":"vm-silent","status":"running"}'
    await deliver(app, body, standard_headers(body))
    await wait_for_projection(pool)
    later = datetime.now(UTC) + timedelta(hours=1)
    assert await time_out_silent_jobs(pool, timeout_s=60, now=later) == ["vm-silent"]
    events = await (await app.get("/api/jobs/vm-silent/events", headers=AUTH)).json()
    timed_out = events["events"][-1]
    detail = await event(app, timed_out["event_id"])
    assert detail["type"] == "job.timed_out"
    assert (detail["raw"], detail["signature"], detail["digest_version"]) == (None, None, 1)


async def test_unknown_malformed_and_unauthorised_event_ids(app: Client) -> None:
    assert await event(app, str(uuid4()), 404) == {"error": "Event not found"}
    assert (await event(app, "not-a-uuid", 400))["error"] == "event_id must be a UUID"
    assert (await event(app, "1234", 400))["error"] == "event_id must be a UUID"
    response = await app.get(f"/api/events/{uuid4()}")
    assert response.status == 401


async def test_the_projector_reads_no_raw_bodies(app: Client, pool: asyncpg.Pool[Any]) -> None:
    body = UNUSUAL_BODIES[1]
    await deliver(app, body, standard_headers(body))
    async with pool.acquire() as conn:
        [read] = await read_all(conn, 0, 10)
    assert isinstance(read, FoldedEvent)  # data and metadata; no raw request, no hashes
    assert read.data["job_id"] == "vm-odd"


def _secret_forms() -> dict[str, str]:
    """Every spelling of a secret that could leak: as configured, its key bytes in hex (how a
    bytea column prints) and in base64."""
    forms = {}
    for name, secret in (
        ("callback secret", CALLBACK_SECRET),
        ("rotated secret", ROTATED_SECRET),
        ("webhook secret", GITHUB_SECRET),
        ("read token", READ_TOKEN),
    ):
        forms[name] = secret
        forms[f"{name} (hex)"] = secret.encode().hex()
    key = standard_key(CALLBACK_SECRET)
    forms["callback key (hex)"] = key.hex()
    forms["callback key (base64)"] = CALLBACK_SECRET.removeprefix("whsec_")
    return forms


async def test_no_secret_is_stored_or_answered(app: Client, pool: asyncpg.Pool[Any]) -> None:
    answers: list[str] = []

    async def post(body: bytes, headers: dict[str, str]) -> None:
        response = await app.post(URL, data=body, headers=headers)
        answers.append(await response.text())
        assert response.status == 200, answers[-1]

    # Every scheme, every key; and refused attempts, which must leave nothing either.
    for n, secret in enumerate((CALLBACK_SECRET, ROTATED_SECRET)):
        body = json.dumps({"job_id": f"vm-{n}", "status": "provisioning", "run_id": n}).encode()
        await post(body, standard_headers(body, secret=secret))
        heartbeat = json.dumps({"job_id": f"vm-{n}", "status": "heartbeat", "delivery_id": f"d{n}"})
        await post(heartbeat.encode(), legacy_headers(heartbeat.encode(), secret))
    for name in CAPTURED:
        headers, body = captured(name)
        await post(body, headers)
    body = b'{"job_id":"vm-0","status":"failed"}'
    refused = await app.post(URL, data=body, headers=legacy_headers(body, "wrong"))
    answers.append(await refused.text())
    await wait_for_projection(pool)

    async with pool.acquire() as conn:
        tables = [
            r["tablename"]
            for r in await conn.fetch(
                "SELECT tablename FROM pg_tables WHERE schemaname = current_schema()"
            )
        ]
        assert {"events", "streams", "idempotency_keys", "job_status"} <= set(tables)
        stored = {
            table: [r[0] for r in await conn.fetch(f'SELECT t::text FROM "{table}" t')]
            for table in tables
        }
    assert len(stored["events"]) == 7

    paths = ["/api/jobs", "/api/heartbeats", "/api/projections", "/api/deliveries"]
    paths += [f"/api/jobs/vm-{n}" for n in range(2)] + [
        f"/api/jobs/vm-{n}/events" for n in range(2)
    ]
    async with pool.acquire() as conn:
        paths += [f"/api/events/{r[0]}" for r in await conn.fetch("SELECT event_id FROM events")]
    for path in [*paths, "/api/openapi.json"]:
        response = await app.get(path, headers=AUTH)
        assert response.status == 200, path
        answers.append(await response.text())

    everything = "\n".join([*answers, *(row for rows in stored.values() for row in rows)])
    for name, form in _secret_forms().items():
        assert form not in everything, f"the {name} leaked"

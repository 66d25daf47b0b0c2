"""The webhook receiver over real HTTP against a real database: signatures, payload rules,
status codes, idempotency under concurrency."""

from __future__ import annotations

import asyncio
import json
import time
from typing import Any

import asyncpg
import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient

from service.keys import pool_key
from service.settings import Settings
from tests.conftest import AppClientFactory
from tests.helpers import (
    AUTH,
    CALLBACK_SECRET,
    ROTATED_SECRET,
    body_of,
    openssl_hmac_hex,
    standard_headers,
)

Client = TestClient[web.Request, web.Application]
URL = "/api/webhooks/github"


async def event_count(pool: asyncpg.Pool[Any]) -> int:
    async with pool.acquire() as conn:
        return int(await conn.fetchval("SELECT count(*) FROM events"))


async def test_standard_webhook_is_stored_and_acknowledged(
    client: Client, pool: asyncpg.Pool[Any]
) -> None:
    body = body_of({"job_id": "vm-1", "status": "provisioning", "run_id": 42, "extra": [1]})
    headers = standard_headers(body, msg_id="msg_one")
    response = await client.post(URL, data=body, headers=headers)
    assert response.status == 200
    answer = await response.json()
    assert answer["status"] == "accepted" and answer["duplicate"] is False
    async with pool.acquire() as conn:
        row = await conn.fetchrow("SELECT * FROM events WHERE position = $1", answer["position"])
    assert row is not None
    assert str(row["event_id"]) == answer["event_id"]
    assert row["stream_id"] == "job-vm-1" and row["stream_position"] == 1
    assert row["type"] == "job.status_reported"
    assert row["data"] == {"job_id": "vm-1", "status": "provisioning", "run_id": 42, "extra": [1]}
    metadata = row["metadata"]
    assert metadata["scheme"] == "standard" and metadata["idempotency_key"] == "msg_one"
    assert metadata["request_id"] == response.headers["X-Request-ID"]
    assert metadata["remote_addr"] == "127.0.0.1" and metadata["received_at"].endswith("Z")


async def test_rotated_secret_and_plain_secret_are_accepted(client: Client) -> None:
    body = body_of({"job_id": "vm-2", "status": "queued"})
    response = await client.post(
        URL, data=body, headers=standard_headers(body, secret=ROTATED_SECRET)
    )
    assert response.status == 200


async def test_mixed_case_headers_and_several_signatures(client: Client) -> None:
    body = body_of({"job_id": "vm-3", "status": "queued"})
    good = standard_headers(body)
    headers = {
        "Content-Type": "application/json",
        "Webhook-Id": good["webhook-id"],
        "WEBHOOK-TIMESTAMP": good["webhook-timestamp"],
        "webhook-SIGNATURE": "v1,Ceo5qEr07ixe2NLpvHk3FH9bwy/WavXrAFQ/9tdO6mc= "
        f"v2,Ceo5qEr07ixe2NLpvHk3FH9bwy/WavXrAFQ/9tdO6mc= {good['webhook-signature']}",
    }
    assert (await client.post(URL, data=body, headers=headers)).status == 200


def _tampered(headers: dict[str, str], **changes: str | None) -> dict[str, str]:
    result = dict(headers)
    for name, value in changes.items():
        name = name.replace("_", "-")
        if value is None:
            result.pop(name)
        else:
            result[name] = value
    return result


@pytest.mark.parametrize(
    "case",
    [
        "wrong_secret",
        "tampered_body",
        "missing_signature",
        "missing_id",
        "missing_timestamp",
        "malformed_signature",
        "partial_signature",
        "wrong_version",
        "too_old",
        "too_new",
        "bad_timestamp",
    ],
)
async def test_standard_webhook_refusals_store_nothing(
    client: Client, pool: asyncpg.Pool[Any], case: str
) -> None:
    body = body_of({"job_id": "vm-4", "status": "running"})
    headers = standard_headers(body)
    sent = body
    if case == "wrong_secret":
        headers = standard_headers(body, secret="whsec_" + "QUFBQUFBQUFBQUFBQUFBQUFBQUE=")
    elif case == "tampered_body":
        sent = body.replace(b"running", b"succeeded")
    elif case == "missing_signature":
        headers = _tampered(headers, webhook_signature=None)
    elif case == "missing_id":
        headers = _tampered(headers, webhook_id=None)
    elif case == "missing_timestamp":
        headers = _tampered(headers, webhook_timestamp=None)
    elif case == "malformed_signature":
        headers = _tampered(headers, webhook_signature="invalid_signature")
    elif case == "partial_signature":
        headers = _tampered(headers, webhook_signature="v1,")
    elif case == "wrong_version":
        headers = _tampered(
            headers, webhook_signature=headers["webhook-signature"].replace("v1,", "v2,")
        )
    elif case == "too_old":  # a few seconds past the 300 s tolerance: a slow run stays outside
        headers = standard_headers(body, timestamp=int(time.time()) - 305)
    elif case == "too_new":
        headers = standard_headers(body, timestamp=int(time.time()) + 305)
    elif case == "bad_timestamp":
        headers = _tampered(headers, webhook_timestamp="soon")
    response = await client.post(URL, data=sent, headers=headers)
    assert response.status == 401
    assert await response.json() == {"error": "Invalid signature"}
    assert await event_count(pool) == 0


async def test_legacy_signature_made_by_openssl_is_accepted(client: Client) -> None:
    body = body_of({"job_id": "vm-5", "status": "running", "delivery_id": "d-1"})
    for value in (
        openssl_hmac_hex(body, CALLBACK_SECRET),
        "sha256=" + openssl_hmac_hex(body, ROTATED_SECRET),
    ):
        headers = {"Content-Type": "application/json", "X-Signature": value}
        response = await client.post(URL, data=body, headers=headers)
        assert response.status == 200
    # Both carried delivery_id d-1: the second is a duplicate of the first.
    assert (await response.json())["duplicate"] is True


@pytest.mark.parametrize("case", ["wrong_secret", "tampered_body", "missing", "malformed"])
async def test_legacy_refusals_store_nothing(
    client: Client, pool: asyncpg.Pool[Any], case: str
) -> None:
    body = body_of({"job_id": "vm-6", "status": "running"})
    signature = openssl_hmac_hex(body, CALLBACK_SECRET)
    headers = {"Content-Type": "application/json", "X-Signature": signature}
    sent = body
    if case == "wrong_secret":
        headers["X-Signature"] = openssl_hmac_hex(body, "not-the-secret")
    elif case == "tampered_body":
        sent = body.replace(b"vm-6", b"vm-7")
    elif case == "missing":
        del headers["X-Signature"]
    elif case == "malformed":
        headers["X-Signature"] = "sha256=" + signature[:-2] + "zz"
    response = await client.post(URL, data=sent, headers=headers)
    assert response.status == 401
    assert await response.json() == {"error": "Invalid signature"}
    assert await event_count(pool) == 0


async def test_legacy_can_be_switched_off(app_client: AppClientFactory, settings: Settings) -> None:
    client = await app_client(settings.model_copy(update={"accept_legacy_signatures": False}))
    body = body_of({"job_id": "vm-8", "status": "running"})
    headers = {
        "Content-Type": "application/json",
        "X-Signature": openssl_hmac_hex(body, CALLBACK_SECRET),
    }
    assert (await client.post(URL, data=body, headers=headers)).status == 401


async def test_native_github_is_refused_without_its_secret(client: Client) -> None:
    body = body_of({"zen": "Keep it logically awesome."})
    headers = {
        "Content-Type": "application/json",
        "X-Hub-Signature-256": "sha256=" + "0" * 64,
        "X-GitHub-Event": "ping",
        "X-GitHub-Delivery": "abc",
    }
    assert (await client.post(URL, data=body, headers=headers)).status == 401


LONG = "x" * 129
INVALID_PAYLOADS: dict[str, bytes] = {
    "not_json": b"{not json",
    "empty": b"",
    "array": b"[1, 2]",
    "string": b'"hello"',
    "missing_job_id": body_of({"status": "running"}),
    "missing_status": body_of({"job_id": "vm-9"}),
    "empty_job_id": body_of({"job_id": "", "status": "running"}),
    "bad_job_id_chars": body_of({"job_id": "vm 9/../x", "status": "running"}),
    "long_job_id": body_of({"job_id": LONG, "status": "running"}),
    "job_id_not_string": body_of({"job_id": 9, "status": "running"}),
    "unknown_status": body_of({"job_id": "vm-9", "status": "exploded"}),
    "status_not_string": body_of({"job_id": "vm-9", "status": None}),
    "long_agent_id": body_of({"job_id": "vm-9", "status": "running", "agent_id": LONG}),
    "long_region": body_of({"job_id": "vm-9", "status": "running", "region": LONG}),
    "long_delivery_id": body_of({"job_id": "vm-9", "status": "running", "delivery_id": LONG}),
    "long_message": body_of({"job_id": "vm-9", "status": "running", "message": "m" * 4097}),
    "long_error": body_of({"job_id": "vm-9", "status": "failed", "error": "e" * 4097}),
    "run_id_string": body_of({"job_id": "vm-9", "status": "running", "run_id": "12"}),
    "run_id_negative": body_of({"job_id": "vm-9", "status": "running", "run_id": -1}),
    "run_id_too_big": body_of({"job_id": "vm-9", "status": "running", "run_id": 2**53}),
    "run_attempt_float": body_of({"job_id": "vm-9", "status": "running", "run_attempt": 1.5}),
    "run_attempt_bool": body_of({"job_id": "vm-9", "status": "running", "run_attempt": True}),
    "bad_timestamp": body_of({"job_id": "vm-9", "status": "running", "timestamp": "yesterday"}),
    "details_not_object": body_of({"job_id": "vm-9", "status": "running", "details": [1]}),
    "too_deep": b'{"job_id":"vm-9","status":"running","details":'
    + b'{"a":' * 32
    + b"1"
    + b"}" * 33,
    "duplicate_keys": b'{"job_id":"vm-9","status":"running","status":"failed"}',
    "nul_in_string": b'{"job_id":"vm-9","status":"running","message":"a\\u0000b"}',
    "nan": b'{"job_id":"vm-9","status":"running","details":{"x":NaN}}',
    "infinity": b'{"job_id":"vm-9","status":"running","details":{"x":-Infinity}}',
    "float_overflow": b'{"job_id":"vm-9","status":"running","details":{"x":1e999}}',
    "not_utf8": b'{"job_id":"vm-9","status":"running","message":"\xff\xfe"}',
    "lone_surrogate": b'{"job_id":"vm-9","status":"running","message":"\\ud800"}',
}


@pytest.mark.parametrize("case", sorted(INVALID_PAYLOADS))
async def test_invalid_payloads_get_400_with_details_and_store_nothing(
    client: Client, pool: asyncpg.Pool[Any], case: str
) -> None:
    body = INVALID_PAYLOADS[case]
    response = await client.post(URL, data=body, headers=standard_headers(body))
    assert response.status == 400, await response.text()
    answer = await response.json()
    assert answer["error"] == "Invalid payload"
    assert isinstance(answer["details"], list) and answer["details"]
    assert all({"loc", "msg"} <= set(d) for d in answer["details"])
    assert await event_count(pool) == 0


async def test_deepest_allowed_nesting_is_accepted(client: Client) -> None:
    # The payload object is level 1; details and 30 more objects make 32 levels in all.
    body = b'{"job_id":"vm-9","status":"running","details":' + b'{"a":' * 30 + b"1" + b"}" * 31
    response = await client.post(URL, data=body, headers=standard_headers(body))
    assert response.status == 200, await response.text()


async def test_aliases_unknown_fields_and_limits_are_accepted(client: Client) -> None:
    payload = {
        "job_id": "A.b_c:d-" + "9" * 120,
        "status": "success",
        "timestamp": "2026-11-27T10:00:00.5+01:00",
        "run_id": 2**53 - 1,
        "run_attempt": 0,
        "message": "m" * 4096,
        "details": {"nested": {"ok": True}},
        "something_new": {"kept": "yes"},
    }
    body = body_of(payload)
    response = await client.post(URL, data=body, headers=standard_headers(body))
    assert response.status == 200, await response.text()
    events = await client.get(f"/api/jobs/{payload['job_id']}/events", headers=AUTH)
    [stored] = (await events.json())["events"]
    assert stored["data"] == payload


async def test_body_over_the_limit_gets_413_json(client: Client, pool: asyncpg.Pool[Any]) -> None:
    body = body_of({"job_id": "vm-10", "status": "running", "message": "x" * 70_000})
    response = await client.post(URL, data=body, headers=standard_headers(body))
    assert response.status == 413
    assert "error" in await response.json()
    assert await event_count(pool) == 0


async def test_chunked_body_over_the_limit_gets_413(
    client: Client, pool: asyncpg.Pool[Any]
) -> None:
    body = body_of({"job_id": "vm-10", "status": "running", "message": "x" * 70_000})

    async def chunks() -> Any:
        for i in range(0, len(body), 8192):
            yield body[i : i + 8192]

    response = await client.post(URL, data=chunks(), headers=standard_headers(body))
    assert response.status == 413
    assert await event_count(pool) == 0


@pytest.mark.parametrize("content_type", [None, "text/plain", "application/x-www-form-urlencoded"])
async def test_wrong_content_type_gets_415(
    client: Client, pool: asyncpg.Pool[Any], content_type: str | None
) -> None:
    body = body_of({"job_id": "vm-11", "status": "running"})
    headers = standard_headers(body)
    del headers["Content-Type"]
    if content_type:
        headers["Content-Type"] = content_type
    response = await client.post(
        URL, data=body, headers=headers, skip_auto_headers={"Content-Type"}
    )
    assert response.status == 415
    assert "error" in await response.json()
    assert await event_count(pool) == 0


async def test_unknown_route_and_wrong_method_are_json(client: Client) -> None:
    response = await client.get("/api/nope", headers=AUTH)
    assert response.status == 404 and "error" in await response.json()
    response = await client.get(URL)
    assert response.status == 405 and "error" in await response.json()


async def test_fifty_concurrent_retries_store_one_event(
    client: Client, pool: asyncpg.Pool[Any]
) -> None:
    body = body_of({"job_id": "vm-12", "status": "running"})
    msg_id = "msg_retried"

    async def deliver() -> dict[str, Any]:
        # Each retry is re-signed with its own timestamp, as senders do.
        response = await client.post(URL, data=body, headers=standard_headers(body, msg_id=msg_id))
        assert response.status == 200
        return dict(await response.json())

    answers = await asyncio.gather(*(deliver() for _ in range(50)))
    assert await event_count(pool) == 1
    assert len({(a["event_id"], a["position"]) for a in answers}) == 1
    assert sum(not a["duplicate"] for a in answers) == 1


async def test_two_hundred_concurrent_callbacks_get_gap_free_stream_positions(
    client: Client, pool: asyncpg.Pool[Any]
) -> None:
    async def deliver(i: int) -> int:
        status = "heartbeat" if i % 2 else "running"
        body = body_of({"job_id": "vm-13", "status": status, "message": f"#{i}"})
        response = await client.post(URL, data=body, headers=standard_headers(body))
        assert response.status == 200
        return int((await response.json())["position"])

    positions = await asyncio.gather(*(deliver(i) for i in range(200)))
    assert len(set(positions)) == 200
    async with pool.acquire() as conn:
        rows = await conn.fetch(
            "SELECT stream_position FROM events WHERE stream_id = 'job-vm-13' ORDER BY position"
        )
    assert [r["stream_position"] for r in rows] == list(range(1, 201))


@pytest.mark.parametrize(("default", "used"), [("off", "local"), ("remote_apply", "remote_apply")])
async def test_appends_wait_for_the_wal_flush_whatever_the_database_default(
    app_client: AppClientFactory,
    settings: Settings,
    pool: asyncpg.Pool[Any],
    default: str,
    used: str,
) -> None:
    """A 200 means the event's commit is on disk: the service's connections never commit with
    synchronous_commit off (tests/reliability/test_postgres_crash.py shows what that loses),
    and a stricter setting the operator chose is kept."""
    async with pool.acquire() as conn:
        name = await conn.fetchval("SELECT current_database()")
        await conn.execute(f'ALTER DATABASE "{name}" SET synchronous_commit = {default}')
    client = await app_client(settings)
    body = body_of({"job_id": "vm-14", "status": "running"})
    response = await client.post(URL, data=body, headers=standard_headers(body))
    assert response.status == 200
    service_pool = client.app[pool_key]
    for _ in range(2):  # and still after the connection went back to the pool
        assert await service_pool.fetchval("SHOW synchronous_commit") == used


async def test_secrets_never_reach_responses_or_logs(
    client: Client, capsys: pytest.CaptureFixture[str]
) -> None:
    body = body_of({"job_id": "vm-14", "status": "running"})
    headers = standard_headers(body, secret="whsec_" + "QkJCQkJCQkJCQkJCQkJCQkJCQkI=")
    response = await client.post(URL, data=body, headers=headers)
    text = await response.text()
    captured = capsys.readouterr()
    for secret in (CALLBACK_SECRET, ROTATED_SECRET, headers["webhook-signature"]):
        assert secret not in text
        assert secret not in captured.out + captured.err
    assert json.loads(text) == {"error": "Invalid signature"}

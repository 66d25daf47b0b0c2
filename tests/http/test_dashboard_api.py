"""The dashboard's routes (SPEC section 6): heartbeats, projection lag, recent deliveries, and
the page and static files that answer without a token but carry no data."""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import time
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg
import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient

from events.catalog import STATUS_REPORTED, job_stream
from events.models import NewEvent
from events.store import append_batch
from service.settings import Settings
from tests.conftest import AppClientFactory
from tests.helpers import (
    AUTH,
    CALLBACK_SECRET,
    READ_TOKEN,
    body_of,
    standard_headers,
    wait_for_projection,
)

Client = TestClient[web.Request, web.Application]
URL = "/api/webhooks/github"
ROUTES = ["/api/heartbeats", "/api/projections", "/api/deliveries"]


async def send(
    client: Client, payload: dict[str, Any], msg_id: str | None = None
) -> dict[str, Any]:
    body = body_of(payload)
    response = await client.post(URL, data=body, headers=standard_headers(body, msg_id=msg_id))
    assert response.status == 200, await response.text()
    answer: dict[str, Any] = await response.json()
    return answer


async def get_json(client: Client, path: str, status: int = 200) -> Any:
    response = await client.get(path, headers=AUTH)
    assert response.status == status, await response.text()
    assert response.content_type == "application/json"
    return await response.json()


@pytest.mark.parametrize("path", ROUTES)
@pytest.mark.parametrize(
    "headers", [{}, {"Authorization": "Bearer nope"}, {"Authorization": READ_TOKEN}]
)
async def test_the_new_read_routes_need_the_token(
    client: Client, path: str, headers: dict[str, str]
) -> None:
    response = await client.get(path, headers=headers)
    assert response.status == 401
    assert response.headers["WWW-Authenticate"] == "Bearer"
    assert "error" in await response.json()


# --- heartbeats ----------------------------------------------------------------------------------


async def test_heartbeats(client: Client, pool: asyncpg.Pool[Any]) -> None:
    await send(client, {"job_id": "quiet", "status": "running"})  # no heartbeat: not listed
    for _ in range(3):
        await send(client, {"job_id": "beating", "status": "heartbeat"})
    await send(client, {"job_id": "ended", "status": "heartbeat"})
    await send(client, {"job_id": "ended", "status": "succeeded"})
    await wait_for_projection(pool)

    beats = (await get_json(client, "/api/heartbeats"))["heartbeats"]
    assert [b["job_id"] for b in beats] == ["ended", "beating"]  # most recent first
    events = (await get_json(client, "/api/jobs/beating/events"))["events"]
    beating = beats[1]
    assert set(beating) == {"job_id", "last_heartbeat_at", "heartbeat_count", "age_s", "stale"}
    assert beating["last_heartbeat_at"] == events[-1]["received_at"]
    assert beating["heartbeat_count"] == 3
    assert 0 <= beating["age_s"] < 60
    assert beating["stale"] is False
    assert (await get_json(client, "/api/heartbeats?stale=true"))["heartbeats"] == []
    assert len((await get_json(client, "/api/heartbeats?stale=false"))["heartbeats"]) == 2
    await get_json(client, "/api/heartbeats?stale=maybe", status=400)


async def test_stale_heartbeats(
    app_client: AppClientFactory, settings: Settings, pool: asyncpg.Pool[Any]
) -> None:
    client = await app_client(settings.model_copy(update={"stale_after_s": 0.3}))
    await send(client, {"job_id": "live", "status": "heartbeat"})
    await send(client, {"job_id": "over", "status": "heartbeat"})
    await send(client, {"job_id": "over", "status": "cancelled"})
    await wait_for_projection(pool)
    await asyncio.sleep(0.5)
    stale = (await get_json(client, "/api/heartbeats?stale=true"))["heartbeats"]
    # Only live jobs go stale, as in GET /api/jobs.
    assert [b["job_id"] for b in stale] == ["live"]
    assert stale[0]["age_s"] >= 0.3
    job = await get_json(client, "/api/jobs/live")
    assert job["stale"] is True


# --- projections ---------------------------------------------------------------------------------


async def test_projections_when_caught_up(client: Client, pool: asyncpg.Pool[Any]) -> None:
    empty = (await get_json(client, "/api/projections"))["projections"]
    assert [p["name"] for p in empty] == ["job_heartbeat", "job_status"]
    for p in empty:
        assert p == {
            "name": p["name"],
            "position": 0,
            "head_position": 0,
            "lag_events": 0,
            "lag_s": 0,
            "state": "live",
        }
    answer = await send(client, {"job_id": "p", "status": "queued"})
    await wait_for_projection(pool)
    for p in (await get_json(client, "/api/projections"))["projections"]:
        assert p["position"] == p["head_position"] == answer["position"]
        assert (p["lag_events"], p["lag_s"], p["state"]) == (0, 0, "live")


@pytest.mark.parametrize(("moved_s_ago", "state"), [(0, "catching_up"), (3600, "stalled")])
async def test_projections_behind(
    client: Client, pool: asyncpg.Pool[Any], moved_s_ago: int, state: str
) -> None:
    async with pool.acquire() as conn:
        await conn.execute(
            "UPDATE projection_checkpoints SET updated_at = now() - $1::interval",
            timedelta(seconds=moved_s_ago),
        )
    holder = await pool.acquire()
    try:
        # Hold the checkpoint rows as a rebuild would: the projector waits behind them.
        transaction = holder.transaction()
        await transaction.start()
        await holder.execute("SELECT * FROM projection_checkpoints FOR UPDATE")
        old = datetime.now(UTC) - timedelta(seconds=30)
        async with pool.acquire() as conn, conn.transaction():
            await append_batch(
                conn,
                [
                    NewEvent(
                        job_stream(f"j{i}"),
                        STATUS_REPORTED,
                        {"job_id": f"j{i}", "status": "queued"},
                        {},
                        old,
                    )
                    for i in range(3)
                ],
            )
        for p in (await get_json(client, "/api/projections"))["projections"]:
            assert (p["position"], p["head_position"], p["lag_events"]) == (0, 3, 3)
            assert 30 <= p["lag_s"] < 60
            assert p["state"] == state
        await transaction.rollback()
    finally:
        await pool.release(holder)
    await wait_for_projection(pool)
    for p in (await get_json(client, "/api/projections"))["projections"]:
        assert (p["lag_events"], p["state"]) == (0, "live")


# --- deliveries ----------------------------------------------------------------------------------

DELIVERY_FIELDS = {
    "received_at",
    "scheme",
    "outcome",
    "status_code",
    "reason",
    "job_id",
    "event_id",
}


async def test_deliveries_record_every_attempt(client: Client) -> None:
    started = datetime.now(UTC)
    accepted = await send(client, {"job_id": "d-1", "status": "queued"}, msg_id="msg_d1")
    duplicate = await send(client, {"job_id": "d-1", "status": "queued"}, msg_id="msg_d1")
    body = body_of({"job_id": "d-2", "status": "running"})
    headers = standard_headers(body)
    wrong = {**headers, "webhook-signature": "v1," + "A" * 43 + "="}
    assert (await client.post(URL, data=body, headers=wrong)).status == 401
    bad = body_of({"job_id": "d-3", "status": "sideways"})
    assert (await client.post(URL, data=bad, headers=standard_headers(bad))).status == 400
    plain = {**standard_headers(body), "Content-Type": "text/plain"}
    assert (await client.post(URL, data=body, headers=plain)).status == 415
    legacy_sig = hmac.new(CALLBACK_SECRET.encode(), body, hashlib.sha256).hexdigest()
    legacy = {"Content-Type": "application/json", "X-Signature": f"sha256={legacy_sig}"}
    legacy_answer = await (await client.post(URL, data=body, headers=legacy)).json()
    huge = b"{" + b" " * 70_000 + b"}"
    assert (await client.post(URL, data=huge, headers=standard_headers(huge))).status == 413

    deliveries = (await get_json(client, "/api/deliveries"))["deliveries"]
    assert all(set(d) == DELIVERY_FIELDS for d in deliveries)
    summary = [(d["scheme"], d["outcome"], d["status_code"], d["job_id"]) for d in deliveries]
    assert summary == [  # newest first
        (None, "too_large", 413, None),
        ("legacy", "accepted", 200, "d-2"),
        ("standard", "unsupported_media_type", 415, None),
        ("standard", "invalid_payload", 400, None),
        (None, "invalid_signature", 401, None),
        ("standard", "duplicate", 200, "d-1"),
        ("standard", "accepted", 200, "d-1"),
    ]
    by_outcome = {d["outcome"]: d for d in reversed(deliveries)}  # the newest of each
    assert by_outcome["accepted"]["event_id"] == legacy_answer["event_id"]
    assert deliveries[-1]["event_id"] == accepted["event_id"]
    assert by_outcome["duplicate"]["event_id"] == duplicate["event_id"] == accepted["event_id"]
    assert by_outcome["invalid_signature"]["reason"] == "signature mismatch"
    assert by_outcome["invalid_payload"]["reason"].startswith("status: ")
    assert by_outcome["accepted"]["reason"] is None
    for d in deliveries:
        moment = datetime.fromisoformat(d["received_at"].replace("Z", "+00:00"))
        assert started - timedelta(seconds=1) <= moment <= datetime.now(UTC)
    # Refused attempts keep no body and no signature.
    text = await (await client.get("/api/deliveries", headers=AUTH)).text()
    assert "A" * 43 not in text and legacy_sig not in text and "sideways" not in text


async def test_deliveries_limit(client: Client) -> None:
    for i in range(5):
        await send(client, {"job_id": f"l-{i}", "status": "queued"})
    two = (await get_json(client, "/api/deliveries?limit=2"))["deliveries"]
    assert [d["job_id"] for d in two] == ["l-4", "l-3"]
    for bad in ("0", "1001", "x"):
        await get_json(client, f"/api/deliveries?limit={bad}", status=400)
    # Reading the list, or anything but a POST to the ingest route, is not a delivery.
    await client.get(URL)
    assert len((await get_json(client, "/api/deliveries"))["deliveries"]) == 5


@pytest.mark.slow
async def test_a_flood_of_refused_deliveries_keeps_a_bounded_log(client: Client) -> None:
    started = time.monotonic()
    for _ in range(12):
        await asyncio.gather(*(client.post(URL, data=b"{}") for _i in range(100)))
    assert time.monotonic() - started < 60
    deliveries = (await get_json(client, "/api/deliveries?limit=1000"))["deliveries"]
    assert len(deliveries) == 1000
    assert {d["outcome"] for d in deliveries} == {"invalid_signature"}


# --- the page and its files ----------------------------------------------------------------------


async def test_the_dashboard_page_is_public_and_carries_no_data(client: Client) -> None:
    await send(client, {"job_id": "secret-job-name", "status": "queued"})
    response = await client.get("/")
    assert response.status == 200
    assert response.content_type == "text/html"
    page = await response.text()
    assert "secret-job-name" not in page
    assert '<meta name="jobtrail-stale-after-s" content="180"' in page
    csp = response.headers["Content-Security-Policy"]
    assert "script-src 'self'" in csp and "unsafe-inline" not in csp
    assert response.headers["X-Content-Type-Options"] == "nosniff"
    # Revalidation with the ETag.
    again = await client.get("/", headers={"If-None-Match": response.headers["ETag"]})
    assert again.status == 304


@pytest.mark.parametrize(
    ("name", "content_type"),
    [("main.js", "text/javascript"), ("style.css", "text/css"), ("icon.svg", "image/svg+xml")],
)
async def test_static_files_are_public(client: Client, name: str, content_type: str) -> None:
    response = await client.get(f"/static/{name}")
    assert response.status == 200
    assert response.content_type == content_type
    assert len(await response.read()) > 100


@pytest.mark.parametrize(
    "path",
    [
        "/static/nope.js",
        "/static/index.html",
        "/static/.hidden.js",
        "/static/a/b.js",
        "/static/../api/jobs",
        "/static/%2e%2e/api/jobs",
        "/static/..%2fapi%2fjobs",
    ],
)
async def test_nothing_else_is_public_under_static(client: Client, path: str) -> None:
    await send(client, {"job_id": "hidden", "status": "queued"})
    response = await client.get(path)
    assert response.status in (401, 404), path
    assert response.content_type == "application/json"
    assert "hidden" not in await response.text()

"""``jobtrail send`` (service.sender): signed, retried the right way, accepted by a live service."""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable
from typing import Any

import asyncpg
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from service.sender import send
from service.signatures import Keyring, verify_request
from tests.helpers import AUTH, CALLBACK_SECRET, wait_for_projection

Client = TestClient[web.Request, web.Application]
ServerFactory = Callable[[web.Application], Awaitable[TestServer]]


async def test_a_callback_sent_is_accepted_and_projected(
    client: Client, pool: asyncpg.Pool[Any]
) -> None:
    url = str(client.make_url("/api/webhooks/github"))
    payload = {"job_id": "vm-send", "status": "provisioning", "run_id": 9, "run_attempt": 2}
    delivery = await send(url, CALLBACK_SECRET, payload)
    assert delivery.ok and delivery.status == 200 and delivery.attempts == 1
    assert json.loads(delivery.body)["duplicate"] is False
    await wait_for_projection(pool)
    job = await (await client.get("/api/jobs/vm-send", headers=AUTH)).json()
    assert (job["status"], job["run_id"], job["run_attempt"]) == ("provisioning", 9, 2)


async def test_a_wrong_secret_is_tried_once(client: Client) -> None:
    url = str(client.make_url("/api/webhooks/github"))
    delivery = await send(url, "whsec_d3Jvbmc=", {"job_id": "vm-x", "status": "failed"})
    assert (delivery.ok, delivery.status, delivery.attempts) == (False, 401, 1)


async def test_retries_keep_the_id_and_are_signed_afresh(aiohttp_server: ServerFactory) -> None:
    seen: list[dict[str, str]] = []
    keyring = Keyring.from_secrets([CALLBACK_SECRET], None)

    async def flaky(request: web.Request) -> web.Response:
        body = await request.read()
        verify_request(
            request.headers, body, keyring, now=float(request.headers["webhook-timestamp"])
        )
        seen.append(dict(request.headers))
        if len(seen) < 3:
            return web.json_response({"error": "Storage unavailable"}, status=503)
        return web.json_response({"status": "accepted"})

    app = web.Application()
    app.router.add_post("/hook", flaky)
    server = await aiohttp_server(app)
    delivery = await send(
        str(server.make_url("/hook")),
        CALLBACK_SECRET,
        {"job_id": "a", "status": "running"},
        backoff_s=0.6,
    )
    assert (delivery.ok, delivery.attempts) == (True, 3)
    assert len({h["webhook-id"] for h in seen}) == 1
    stamps = [int(h["webhook-timestamp"]) for h in seen]
    assert stamps[-1] > stamps[0]  # re-signed, not replayed


async def test_nothing_listening_gives_up_after_the_attempts() -> None:
    attempts: list[int | None] = []
    delivery = await send(
        "http://127.0.0.1:9/hook",
        CALLBACK_SECRET,
        {"job_id": "a", "status": "running"},
        attempts=3,
        backoff_s=0.01,
        on_attempt=lambda _n, status: attempts.append(status),
    )
    assert (delivery.ok, delivery.status, attempts) == (False, None, [None, None, None])

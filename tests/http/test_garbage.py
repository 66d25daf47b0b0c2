"""Bad input never crashes the service: correctly signed garbage gets a 4xx, never a 500."""

from __future__ import annotations

import json
import random
from typing import Any

import asyncpg
import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient

from tests.helpers import AUTH, standard_headers

Client = TestClient[web.Request, web.Application]
URL = "/api/webhooks/github"
VALID = json.dumps(
    {
        "job_id": "vm-1",
        "status": "running",
        "run_id": 7,
        "message": "héllo",
        "details": {"a": [1, 2.5, None, True]},
    }
).encode()
SPICE = [b"\\u0000", b"\\ud800", b"\xff", b"\x00", b"{", b"]", b'"', b"\\", b"NaN", b"1e999",
         b"-1", b"9" * 30, b'"status":"x",', b"[" * 40, b"\xf0\x9f\x98", b",", b":"]  # fmt: skip


def mutate(rng: random.Random, body: bytes) -> bytes:
    data = bytearray(body)
    for _ in range(rng.randint(1, 4)):
        at = rng.randrange(len(data) + 1)
        choice = rng.random()
        if choice < 0.4:
            data[at:at] = rng.choice(SPICE)
        elif choice < 0.7 and data:
            del data[at : at + rng.randint(1, 5)]
        else:
            data[at:at] = bytes([rng.randrange(256)])
    return bytes(data)


async def test_signed_garbage_gets_200_or_400_and_never_breaks_anything(
    client: Client, pool: asyncpg.Pool[Any]
) -> None:
    rng = random.Random(20261127)
    accepted = 0
    for _ in range(300):
        body = mutate(rng, VALID)
        response = await client.post(URL, data=body, headers=standard_headers(body))
        assert response.status in (200, 400), (response.status, body)
        answer = await response.json()
        if response.status == 200:
            accepted += 1
            assert json.loads(body)["job_id"]  # only a valid document gets through
        else:
            assert answer["error"] == "Invalid payload" and answer["details"]
    async with pool.acquire() as conn:
        assert await conn.fetchval("SELECT count(*) FROM events") == accepted
    assert (await client.get("/healthz")).status == 200


async def test_a_key_that_utf8_cannot_carry_gets_a_json_400_at_its_object(
    client: Client, pool: asyncpg.Pool[Any]
) -> None:
    # A lone surrogate escaped in a key: valid JSON text, but no UTF-8 string can hold the key,
    # so echoing it in the error body would make the response itself unencodable.
    body = b'{"job_id":"vm-1","status":"running","details":{"\\udfff":1}}'
    response = await client.post(URL, data=body, headers=standard_headers(body))
    assert response.status == 400
    assert response.content_type == "application/json"
    answer = await response.json()
    assert answer["error"] == "Invalid payload"
    assert answer["details"] == [
        {"loc": ["details"], "msg": "lone surrogate in object key", "type": "value_error"}
    ]
    async with pool.acquire() as conn:
        assert await conn.fetchval("SELECT count(*) FROM events") == 0


@pytest.mark.parametrize(
    "path", ["/api/jobs/%00", "/api/jobs/%00/events", "/api/jobs/a%20b", f"/api/jobs/{'x' * 129}"]
)
async def test_a_job_id_that_cannot_exist_is_not_found_never_a_database_error(
    client: Client, path: str
) -> None:
    response = await client.get(path, headers=AUTH)
    assert response.status == 404
    assert await response.json() == {"error": "Job not found"}

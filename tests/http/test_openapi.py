"""``GET /api/openapi.json`` (SPEC section 6): public, OpenAPI 3.1, every route in it, and the
service answering as it says (schemathesis, against the real app on a real database)."""

from __future__ import annotations

import asyncio
from typing import Any

import asyncpg
import hypothesis
import pytest
import schemathesis
from aiohttp import web
from aiohttp.test_utils import TestClient
from hypothesis import HealthCheck, Phase
from schemathesis.core.result import Ok

from service import read_api
from tests.helpers import AUTH, body_of, standard_headers, wait_for_projection

Client = TestClient[web.Request, web.Application]
# Every operation gets this many generated requests (plus its explicit examples).
MAX_EXAMPLES = 15
# A stream never ends: schemathesis cannot wait for its response body.
NOT_FUZZED = {("GET", "/api/stream")}
# A cursor is only valid as the server issued it, which no schema can say: a made-up one is
# rightly refused (400), so "schema-valid requests are accepted" does not hold there.
OPAQUE_INPUT = {("GET", "/api/jobs")}
# 5xx answers the contract itself prescribes: read-your-writes gave up waiting.
DOCUMENTED_5XX = {("GET", "/api/jobs/{job_id}"): 504}


async def test_the_document_is_public_openapi_3_1(client: Client) -> None:
    response = await client.get("/api/openapi.json")
    assert response.status == 200
    assert response.content_type == "application/json"
    document = await response.json()
    assert document["openapi"] == "3.1.0"
    assert document["components"]["securitySchemes"]["bearer"]["scheme"] == "bearer"
    assert {
        "Job",
        "JobPage",
        "Event",
        "Heartbeat",
        "Delivery",
        "Accepted",
        "InvalidPayload",
    } <= set(document["components"]["schemas"])


async def test_every_route_is_documented_and_every_documented_route_exists(client: Client) -> None:
    document = await (await client.get("/api/openapi.json")).json()
    documented = {
        (method.upper(), path) for path, item in document["paths"].items() for method in item
    }
    registered = {
        (route.method, route.resource.canonical)
        for route in client.app.router.routes()
        if route.method != "HEAD" and route.resource is not None
    }
    assert registered == documented


async def test_public_operations_are_exactly_the_public_routes(client: Client) -> None:
    document = await (await client.get("/api/openapi.json")).json()
    for path, item in document["paths"].items():
        for method, operation in item.items():
            public = operation.get("security") == []
            url = path.replace("{job_id}", "x").replace("{name}", "main.js")
            response = await client.request(method.upper(), url)
            # The bearer check answers 401 with WWW-Authenticate (ingest's 401 is its own).
            challenged = "WWW-Authenticate" in response.headers
            assert challenged != public, (method, path, response.status)
            response.release()


FUZZ_SETTINGS = hypothesis.settings(
    max_examples=MAX_EXAMPLES,
    deadline=None,
    database=None,
    derandomize=True,
    phases=[Phase.explicit, Phase.generate],
    suppress_health_check=list(HealthCheck),
)


def _fuzz_operation(operation: Any, base_url: str) -> None:
    key = (operation.method.upper(), operation.path)
    excluded = [schemathesis.checks.not_a_server_error]
    if key in OPAQUE_INPUT:
        excluded.append(schemathesis.checks.positive_data_acceptance)

    @FUZZ_SETTINGS
    @hypothesis.given(case=operation.as_strategy())
    def check(case: Any) -> None:
        response = case.call(base_url=base_url, headers=AUTH, timeout=10)
        status = response.status_code
        assert status < 500 or DOCUMENTED_5XX.get(key) == status, case.as_curl_command()
        case.validate_response(response, excluded_checks=excluded, headers=AUTH)

    check()


def _fuzz(base_url: str) -> list[str]:
    """Run schemathesis over every operation; return the failures, described."""
    schema = schemathesis.openapi.from_url(f"{base_url}/api/openapi.json")
    failures: list[str] = []
    for result in schema.get_all_operations():
        if not isinstance(result, Ok):
            failures.append(f"schemathesis cannot read an operation: {result.err()}")
            continue
        operation = result.ok()
        if (operation.method.upper(), operation.path) in NOT_FUZZED:
            continue
        try:
            _fuzz_operation(operation, base_url)
        except Exception as error:  # every failure, not only the first operation's
            failures.append(f"{operation.method.upper()} {operation.path}: {error}")
    return failures


@pytest.mark.slow
async def test_schemathesis_finds_no_server_error_and_no_shape_mismatch(
    client: Client, pool: asyncpg.Pool[Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    # Generated after_position values are mostly beyond the log: wait briefly for them.
    monkeypatch.setattr(read_api, "READ_YOUR_WRITES_WAIT_S", 0.2)
    for payload in (
        {"job_id": "a", "status": "provisioning", "run_id": 1, "run_attempt": 1},
        {"job_id": "a", "status": "heartbeat"},
        {"job_id": "b", "status": "failed", "error": "<b>boom</b>"},
    ):
        body = body_of(payload)
        response = await client.post(
            "/api/webhooks/github", data=body, headers=standard_headers(body)
        )
        assert response.status == 200
    await client.post("/api/webhooks/github", data=b"{}")  # a refused delivery, too
    await wait_for_projection(pool)
    base_url = str(client.make_url("")).rstrip("/")
    # schemathesis is synchronous: it runs in a thread while this loop serves its requests.
    failures = await asyncio.to_thread(_fuzz, base_url)
    assert not failures, "\n\n".join(failures)

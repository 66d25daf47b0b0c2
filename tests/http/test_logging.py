"""Every log line of a request carries its request id (and the job id once known); no secret
ever reaches a log line."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import structlog
from aiohttp import web
from aiohttp.test_utils import TestClient
from structlog.testing import LogCapture

from service.logconfig import drop_secrets
from tests.helpers import CALLBACK_SECRET, body_of, standard_headers

Client = TestClient[web.Request, web.Application]


@pytest.fixture
def captured() -> Iterator[LogCapture]:
    capture = LogCapture()
    structlog.configure(
        processors=[structlog.contextvars.merge_contextvars, drop_secrets, capture],
        cache_logger_on_first_use=False,
    )
    try:
        yield capture
    finally:
        structlog.reset_defaults()


async def test_request_lines_carry_request_and_job_ids(
    client: Client, captured: LogCapture
) -> None:
    body = body_of({"job_id": "vm-log", "status": "running"})
    response = await client.post(
        "/api/webhooks/github",
        data=body,
        headers={**standard_headers(body), "X-Request-ID": "req-123"},
    )
    assert response.status == 200
    assert response.headers["X-Request-ID"] == "req-123"
    lines = [e for e in captured.entries if e.get("request_id") == "req-123"]
    assert {e["event"] for e in lines} >= {"request"}
    request_line = next(e for e in lines if e["event"] == "request")
    assert request_line["job_id"] == "vm-log" and request_line["status"] == 200


async def test_refusals_are_logged_with_a_reason_and_without_secrets(
    client: Client, captured: LogCapture
) -> None:
    body = body_of({"job_id": "vm-log", "status": "running"})
    headers = standard_headers(body, secret="whsec_" + "Q0NDQ0NDQ0NDQ0NDQ0NDQ0NDQ0M=")
    response = await client.post("/api/webhooks/github", data=body, headers=headers)
    assert response.status == 401
    refused = [e for e in captured.entries if e["event"] == "ingest.refused"]
    assert refused and refused[0]["reason"] == "signature mismatch"
    text = repr(captured.entries)
    assert CALLBACK_SECRET not in text
    assert headers["webhook-signature"] not in text


def test_drop_secrets_masks_credential_like_keys() -> None:
    event = {"event": "x", "callback_secret": "s", "Authorization": "Bearer t", "job_id": "j"}
    assert drop_secrets(None, "info", event) == {
        "event": "x",
        "callback_secret": "[redacted]",
        "Authorization": "[redacted]",
        "job_id": "j",
    }

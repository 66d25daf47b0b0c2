"""Hostile input over a raw socket (SPEC section 9): every malformed request gets its documented
4xx with a JSON body that echoes nothing, nothing is stored, and the service keeps serving.

The server is ``jobtrail serve``'s own runner (``service.server``), started in-process: requests
that aiohttp's HTTP parser refuses never reach the application, so only that runner shows how
they are answered.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import asyncpg
import pytest
import structlog
from structlog.testing import LogCapture

from service.settings import Settings
from service.signatures import sign_standard, standard_key
from tests.helpers import CALLBACK_SECRET, body_of, standard_headers
from tests.rawhttp import Header, RawResponse, exchange, raw_request, served

VALID = body_of({"job_id": "vm-hostile", "status": "running"})
LONG_HEADER = "v1," + "A" * 10_240  # over aiohttp's 8190-byte field limit


def signed(body: bytes, **overrides: str | None) -> list[Header]:
    """Standard Webhooks headers for ``body``; an override of None drops a header."""
    headers: dict[str, str | None] = {**standard_headers(body), **overrides}
    return [(name, value) for name, value in headers.items() if value is not None]


def signed_request(body: bytes, **overrides: str | None) -> bytes:
    return raw_request(signed(body, **overrides), body)


def chunked(body: bytes, size: int = 8192) -> bytes:
    pieces = [body[i : i + size] for i in range(0, len(body), size)]
    return b"".join(f"{len(p):x}\r\n".encode() + p + b"\r\n" for p in pieces) + b"0\r\n\r\n"


@dataclass(frozen=True)
class Case:
    name: str
    request: Callable[[], bytes]
    status: int
    error: str
    absent: tuple[bytes, ...] = field(default=())  # must not come back in the response


def payload(name: str, body: bytes) -> Case:
    return Case(name, lambda: signed_request(body), 400, "Invalid payload")


def bad_request(name: str, request: Callable[[], bytes], *absent: bytes) -> Case:
    return Case(name, request, 400, "Bad request", absent)


def header_line(line: bytes) -> Callable[[], bytes]:
    """A signed request with one raw header line added after the others."""
    return lambda: raw_request([*signed(VALID), (line, b"")], VALID).replace(line + b": ", line)


OVER_LIMIT = body_of({"job_id": "vm-hostile", "status": "running", "message": "x" * 70_000})
CASES = [
    payload("not_utf8", b'{"job_id":"vm-1","status":"running","message":"\xff\xfe"}'),
    payload("truncated_json", VALID[:-7]),
    payload("empty_body", b""),
    payload("not_an_object", b'["vm-1","running"]'),
    payload(
        "nested_40_deep",
        b'{"job_id":"vm-1","status":"running","details":' + b'{"a":' * 40 + b"1" + b"}" * 41,
    ),
    payload("nested_30000_deep", b"[" * 30_000 + b"]" * 30_000),
    payload(
        "integer_5000_digits",
        b'{"job_id":"vm-1","status":"running","run_id":1' + b"0" * 5000 + b"}",
    ),
    payload("integer_2_pow_53", b'{"job_id":"vm-1","status":"running","run_id":9007199254740992}'),
    payload("negative_integer", b'{"job_id":"vm-1","status":"running","run_id":-1}'),
    payload("float_overflow", b'{"job_id":"vm-1","status":"running","x":1e999}'),
    payload("nan", b'{"job_id":"vm-1","status":"running","x":NaN}'),
    payload("duplicate_keys", b'{"job_id":"vm-1","status":"running","status":"succeeded"}'),
    payload("escaped_nul", b'{"job_id":"vm-1","status":"running","message":"a\\u0000b"}'),
    payload("raw_nul", b'{"job_id":"vm-1","status":"running","message":"a\x00b"}'),
    payload("lone_surrogate", b'{"job_id":"vm-1","status":"running","message":"\\ud800"}'),
    payload("job_id_with_newline", b'{"job_id":"vm-1\\nX-Injected: 1","status":"running"}'),
    Case(
        "text_plain",
        lambda: signed_request(VALID, **{"Content-Type": "text/plain"}),
        415,
        "Unsupported Media Type: send application/json",
    ),
    Case(
        "no_content_type",
        lambda: signed_request(VALID, **{"Content-Type": None}),
        415,
        "Unsupported Media Type: send application/json",
    ),
    Case(
        "declared_too_large",
        lambda: raw_request(
            [*signed(VALID), ("Content-Length", "9999999")], VALID, content_length=False
        ),
        413,
        "Payload too large",
    ),
    Case(
        "chunked_over_limit",
        lambda: raw_request(
            [*signed(OVER_LIMIT), ("Transfer-Encoding", "chunked")],
            chunked(OVER_LIMIT),
            content_length=False,
        ),
        413,
        "Payload too large",
    ),
    Case(
        "no_signature",
        lambda: raw_request([("Content-Type", "application/json")], VALID),
        401,
        "Invalid signature",
    ),
    Case(
        "short_standard_signature",
        lambda: signed_request(VALID, **{"webhook-signature": "v1,AAAAAAAAAAAAAAAAAAAAAA=="}),
        401,
        "Invalid signature",
    ),
    Case(
        "long_standard_signature",
        lambda: signed_request(VALID, **{"webhook-signature": "v1," + "A" * 88}),
        401,
        "Invalid signature",
    ),
    Case(
        "short_legacy_signature",
        lambda: raw_request(
            [("Content-Type", "application/json"), ("X-Signature", "sha256=" + "ab" * 31)], VALID
        ),
        401,
        "Invalid signature",
    ),
    Case(
        "long_legacy_signature",
        lambda: raw_request(
            [("Content-Type", "application/json"), ("X-Signature", "ab" * 33)], VALID
        ),
        401,
        "Invalid signature",
    ),
    Case(
        "short_github_signature",
        lambda: raw_request(
            [
                ("Content-Type", "application/json"),
                ("X-Hub-Signature-256", "sha256=abc"),
                ("X-GitHub-Event", "ping"),
                ("X-GitHub-Delivery", "d-1"),
            ],
            VALID,
        ),
        401,
        "Invalid signature",
    ),
    Case(
        "webhook_id_not_utf8",
        lambda: signed_request(VALID, **{"webhook-id": "msg_\xff"}),
        401,
        "Invalid signature",
    ),
    bad_request(
        "webhook_id_control_character",
        lambda: signed_request(VALID, **{"webhook-id": "msg_\x7f"}),
    ),
    Case(
        "signature_not_ascii",
        lambda: signed_request(VALID, **{"webhook-signature": "v1,\xc3\xa9 v1,\xff"}),
        401,
        "Invalid signature",
    ),
    Case(
        "github_delivery_not_utf8",
        lambda: raw_request(
            [
                ("Content-Type", "application/json"),
                ("X-Hub-Signature-256", "sha256=" + "ab" * 32),
                ("X-GitHub-Event", "ping"),
                ("X-GitHub-Delivery", "d-\xff"),
            ],
            VALID,
        ),
        401,
        "Invalid signature",
    ),
    bad_request(
        "signature_header_10kb",
        lambda: signed_request(VALID, **{"webhook-signature": LONG_HEADER}),
        b"AAAA",
    ),
    bad_request(
        "path_10kb",
        lambda: raw_request(signed(VALID), VALID, path="/api/webhooks/github?" + "q" * 10_240),
        b"qqqq",
    ),
    bad_request(
        "bare_cr_in_header_value",
        lambda: signed_request(VALID, **{"webhook-id": "msg_1\rX-Injected: yes"}),
        b"Injected",
    ),
    bad_request(
        "nul_in_header_value",
        lambda: signed_request(VALID, **{"webhook-id": "msg_1\x00X-Injected: yes"}),
        b"Injected",
    ),
    bad_request("obsolete_line_folding", header_line(b" X-Injected: yes"), b"Injected"),
    bad_request("header_without_colon", header_line(b"X-Injected yes"), b"Injected"),
    bad_request("space_before_colon", header_line(b"X-Injected : yes"), b"Injected"),
    bad_request(
        "content_length_not_a_number",
        lambda: raw_request(
            [*signed(VALID), ("Content-Length", "12abc")], VALID, content_length=False
        ),
    ),
    bad_request(
        "content_length_and_chunked",
        lambda: raw_request(
            [*signed(VALID), ("Content-Length", str(len(VALID))), ("Transfer-Encoding", "chunked")],
            chunked(VALID),
            content_length=False,
        ),
    ),
    bad_request(
        "broken_chunk_size",
        lambda: raw_request(
            [*signed(VALID), ("Transfer-Encoding", "chunked")],
            b"zz\r\n" + VALID + b"\r\n0\r\n\r\n",
            content_length=False,
        ),
    ),
    bad_request("tls_hello_on_plain_http", lambda: b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03"),
    bad_request("not_http", lambda: b"HELLO THERE\r\n\r\n"),
]


@pytest.fixture
async def port(settings: Settings) -> AsyncIterator[int]:
    async with served(settings) as bound:
        yield bound


@pytest.fixture
def logs(caplog: pytest.LogCaptureFixture) -> Iterator[LogCapture]:
    """Our structlog lines (captured) and the standard library's (``caplog``) of the test."""
    capture = LogCapture()
    structlog.configure(processors=[capture], cache_logger_on_first_use=False)
    caplog.set_level(logging.DEBUG)
    try:
        yield capture
    finally:
        structlog.reset_defaults()


async def stored(pool: asyncpg.Pool[Any]) -> int:
    async with pool.acquire() as conn:
        return int(await conn.fetchval("SELECT count(*) FROM events"))


async def still_serving(port: int) -> None:
    health = await exchange(port, raw_request([], method="GET", path="/healthz"))
    assert health is not None and health.status == 200
    accepted = await exchange(port, raw_request(signed_with(CALLBACK_SECRET), VALID))
    assert accepted is not None and accepted.status == 200, accepted


def check_answer(case: Case, response: RawResponse | None) -> None:
    assert response is not None, f"{case.name}: the connection closed without an answer"
    content_type = response.headers.get("content-type", "").partition(";")[0]
    assert (response.status, content_type) == (case.status, "application/json"), (
        case.name,
        response.raw[:300],
    )
    assert response.json()["error"] == case.error, case.name
    for text in case.absent:
        assert text not in response.raw, f"{case.name}: the response echoes {text!r}"


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
async def test_hostile_request_gets_its_json_4xx_and_stores_nothing(
    case: Case,
    port: int,
    pool: asyncpg.Pool[Any],
    logs: LogCapture,
    caplog: pytest.LogCaptureFixture,
) -> None:
    check_answer(case, await exchange(port, case.request()))
    assert await stored(pool) == 0
    # Nothing the client sent is logged, and nothing is logged as a server error.
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR], caplog.text
    logged = repr(logs.entries) + caplog.text
    for text in (*case.absent, LONG_HEADER[:64].encode()):
        assert text.decode() not in logged
    await still_serving(port)


async def test_a_body_cut_short_stores_nothing(port: int, pool: asyncpg.Pool[Any]) -> None:
    request = raw_request(signed(VALID), VALID)
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(request[: -len(VALID) // 2])  # the headers promise more than ever comes
    writer.write_eof()
    answer = await asyncio.wait_for(reader.read(), 15)
    writer.close()
    assert answer == b"" or b"Invalid" not in answer  # dropped, or refused; never accepted
    assert await stored(pool) == 0
    await still_serving(port)


async def test_a_body_that_trickles_in_times_out_while_others_are_served(
    settings: Settings, pool: asyncpg.Pool[Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("service.ingest.BODY_TIMEOUT_S", 1.0)
    request = signed_request(VALID)
    head = request[: -len(VALID)]
    trickle = [head, *(VALID[i : i + 1] for i in range(len(VALID)))]  # one byte every 0.2 s
    async with served(settings) as bound:
        started = time.monotonic()
        slow = asyncio.create_task(exchange(bound, trickle, pause_s=0.2))
        for _ in range(3):
            await asyncio.sleep(0.2)
            await still_serving(bound)  # meanwhile, others are answered at once
        response = await slow
        elapsed = time.monotonic() - started
    assert response is not None and response.status == 408, response
    assert response.json() == {"error": "Request timeout"}
    assert response.headers.get("connection") == "close"
    assert elapsed < 5, elapsed
    assert await stored(pool) == 3  # the three quick ones only


async def test_an_empty_secret_list_accepts_only_the_configured_secret(
    settings: Settings, pool: asyncpg.Pool[Any]
) -> None:
    configured = settings.model_copy(
        update={"callback_secrets": Settings(callback_secrets=",").callback_secrets}
    )
    assert configured.callback_secrets == ()
    async with served(configured) as bound:
        for secret in ("", " ", ","):
            headers = [("Content-Type", "application/json"), ("webhook-id", "msg_empty")]
            stamp = int(time.time())
            mac = sign_standard(standard_key(secret), "msg_empty", stamp, VALID)
            headers += [("webhook-timestamp", str(stamp)), ("webhook-signature", mac)]
            check_answer(
                Case("empty_secret", bytes, 401, "Invalid signature"),
                await exchange(bound, raw_request(headers, VALID)),
            )
        check_answer(
            Case("rotated_secret_dropped", bytes, 401, "Invalid signature"),
            await exchange(bound, raw_request(signed_with("an-older-plain-secret"), VALID)),
        )
        assert await stored(pool) == 0
        accepted = await exchange(bound, raw_request(signed_with(CALLBACK_SECRET), VALID))
        assert accepted is not None and accepted.status == 200


def signed_with(secret: str) -> list[Header]:
    return [(k, v) for k, v in standard_headers(VALID, secret=secret).items()]

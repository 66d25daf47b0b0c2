"""Secrets, tokens and signatures never reach a log line (SPEC sections 2 and 9).

A real ``jobtrail serve`` with two callback secrets at once (rotation), a GitHub webhook secret
and two read tokens takes a workload of every kind: callbacks of all three schemes signed with
each secret, wrong signatures of each scheme, reads with good, bad and missing tokens, and a
10 KB signature header. Its whole stderr (JSON logs) holds none of the secrets, tokens,
signature header values or MACs (base64 or hex) it saw.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import os
import stat
import uuid
from pathlib import Path

import aiohttp
import pytest

from service.credentials import ensure_credentials
from service.settings import Settings
from tests.conftest import ServeProcessFactory
from tests.helpers import (
    CALLBACK_SECRET,
    READ_TOKEN,
    ROTATED_SECRET,
    body_of,
    free_port,
)
from tests.helpers import standard_headers as signed
from tests.rawhttp import exchange, raw_request
from tests.reliability.harness import URL

pytestmark = pytest.mark.slow

WEBHOOK_SECRET = "gh-webhook-secret-do-not-log"
SECOND_TOKEN = "second-read-token-do-not-log"
WRONG_SECRET = "whsec_" + base64.b64encode(b"w" * 24).decode()
WRONG_TOKEN = "wrong-token-do-not-log"


def hex_mac(secret: str, body: bytes) -> str:
    return hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


def legacy(secret: str, body: bytes) -> dict[str, str]:
    return {"Content-Type": "application/json", "X-Signature": f"sha256={hex_mac(secret, body)}"}


def github(secret: str, body: bytes) -> dict[str, str]:
    return {
        "Content-Type": "application/json",
        "X-Hub-Signature-256": f"sha256={hex_mac(secret, body)}",
        "X-GitHub-Event": "ping",
        "X-GitHub-Delivery": str(uuid.uuid4()),
    }


async def test_no_secret_token_or_signature_is_ever_logged(
    database_url: str, tmp_path: Path, serve_process: ServeProcessFactory
) -> None:
    service = serve_process(
        database_url, tmp_path, free_port(), GITHUB_WEBHOOK_SECRET=WEBHOOK_SECRET
    )
    service.env["JOBTRAIL_READ_TOKENS"] = f"{READ_TOKEN},{SECOND_TOKEN}"
    sent: list[dict[str, str]] = []
    expected: list[tuple[str, int, int]] = []  # (what, expected status, got)

    async def post(what: str, body: bytes, headers: dict[str, str], status: int) -> None:
        sent.append(headers)
        async with session.post(service.base + URL, data=body, headers=headers) as response:
            expected.append((what, status, response.status))

    async def read(what: str, headers: dict[str, str], status: int) -> None:
        sent.append(headers)
        async with session.get(f"{service.base}/api/jobs", headers=headers) as response:
            expected.append((what, status, response.status))
            assert response.content_type == "application/json"

    await service.start()
    try:
        async with aiohttp.ClientSession() as session:
            for n, secret in enumerate((CALLBACK_SECRET, ROTATED_SECRET)):
                body = body_of({"job_id": f"vm-s{n}", "status": "running", "delivery_id": f"d{n}"})
                await post(f"standard {n}", body, signed(body, secret=secret), 200)
                queued = body.replace(b"running", b"queued")
                await post(f"legacy {n}", queued, legacy(secret, queued), 200)
            ping = body_of({"zen": "Design for failure.", "hook_id": 1})
            await post("github", ping, github(WEBHOOK_SECRET, ping), 200)
            body = body_of({"job_id": "vm-wrong", "status": "running"})
            await post("standard wrong", body, signed(body, secret=WRONG_SECRET), 401)
            await post("legacy wrong", body, legacy(WRONG_SECRET, body), 401)
            await post("legacy as github", body, github(CALLBACK_SECRET, body), 401)
            await post("github wrong", ping, github(WRONG_SECRET, ping), 401)
            for token in (READ_TOKEN, SECOND_TOKEN):
                await read("good token", {"Authorization": f"Bearer {token}"}, 200)
            for header in (f"Bearer {WRONG_TOKEN}", f"Basic {READ_TOKEN}", f"{READ_TOKEN}"):
                await read("bad token", {"Authorization": header}, 401)
            await read("no token", {}, 401)
        long_signature = "v1," + base64.b64encode(os.urandom(7680)).decode()  # 10 KB
        huge = {**signed(body), "webhook-signature": long_signature}
        sent.append(huge)
        answer = await exchange(service.port, raw_request(list(huge.items()), body))
        assert (
            answer is not None
            and answer.status == 400
            and answer.json() == {"error": "Bad request"}
        )
        assert long_signature[:40].encode() not in answer.raw
    finally:
        assert await service.stop() == 0
    assert [(what, want) for what, want, _ in expected] == [(w, g) for w, _, g in expected]

    logs = service.logs()
    lines = [line for line in logs.splitlines() if line.startswith("{")]
    assert lines and all(json.loads(line) for line in lines)
    assert not [line for line in lines if json.loads(line).get("level") == "error"], logs
    forbidden = {CALLBACK_SECRET, CALLBACK_SECRET.removeprefix("whsec_"), ROTATED_SECRET}
    forbidden |= {WEBHOOK_SECRET, READ_TOKEN, SECOND_TOKEN, WRONG_TOKEN, WRONG_SECRET}
    for headers in sent:
        for name, value in headers.items():
            if name.lower() in ("authorization", "webhook-signature", "x-signature"):
                forbidden |= {value, value.partition(" ")[2], value.partition(",")[2]}
            if name.lower() in ("x-signature", "x-hub-signature-256"):
                forbidden |= {value, value.removeprefix("sha256=")}
    forbidden |= {long_signature[3:43]}
    leaked = sorted(secret for secret in forbidden - {""} if secret in logs)
    assert not leaked, leaked


def test_generated_secrets_are_kept_in_a_0600_file(tmp_path: Path) -> None:
    previous = os.umask(0)  # even with the most permissive umask
    try:
        credentials = ensure_credentials(
            Settings(
                database_url="postgresql:///x",
                data_dir=tmp_path / "data",
                callback_secret=None,
                read_tokens=(),
            )
        )
    finally:
        os.umask(previous)
    assert credentials.path is not None
    assert stat.S_IMODE(credentials.path.stat().st_mode) == 0o600
    assert stat.S_IMODE(credentials.path.parent.stat().st_mode) == 0o700
    assert set(credentials.generated) == {"callback_secret", "read_token"}

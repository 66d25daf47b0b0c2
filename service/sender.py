"""``jobtrail send``: one signed callback (Standard Webhooks), delivered with bounded retries.

The Python twin of ``.github/scripts/callback.sh``, for CI systems other than GitHub Actions.
Every attempt keeps the same ``webhook-id`` (the receiver's idempotency key) and is signed
afresh with the current time: a resent old signature would age past the receiver's tolerance.
Only what may succeed later is retried (connection errors, timeouts, 408, 429, 5xx); a 401 or
any other refusal is final at once, so a wrong secret is reported, not hidden behind retries.
"""

from __future__ import annotations

import asyncio
import json
import secrets
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import aiohttp

from service.signatures import sign_standard, standard_key

RETRYABLE_STATUSES = frozenset({408, 429}) | frozenset(range(500, 600))


@dataclass(frozen=True)
class Delivery:
    """How a send ended: the last HTTP status (None if no answer ever came) and body."""

    ok: bool
    status: int | None
    body: str
    attempts: int


def signed_headers(secret: str, msg_id: str, body: bytes) -> dict[str, str]:
    timestamp = int(time.time())
    return {
        "Content-Type": "application/json",
        "webhook-id": msg_id,
        "webhook-timestamp": str(timestamp),
        "webhook-signature": sign_standard(standard_key(secret), msg_id, timestamp, body),
    }


async def send(
    url: str,
    secret: str,
    payload: Mapping[str, Any],
    *,
    attempts: int = 5,
    timeout_s: float = 10.0,
    backoff_s: float = 1.0,
    msg_id: str | None = None,
    on_attempt: Callable[[int, int | None], None] | None = None,
) -> Delivery:
    """POST ``payload`` to ``url`` until it is accepted, refused, or ``attempts`` run out."""
    body = json.dumps(payload, separators=(",", ":"), ensure_ascii=False).encode()
    msg_id = msg_id or f"msg_{secrets.token_hex(16)}"
    status: int | None = None
    text = ""
    timeout = aiohttp.ClientTimeout(total=timeout_s)
    async with aiohttp.ClientSession(timeout=timeout) as session:
        for attempt in range(1, attempts + 1):
            try:
                headers = signed_headers(secret, msg_id, body)
                async with session.post(url, data=body, headers=headers) as response:
                    status, text = response.status, await response.text()
            except (aiohttp.ClientError, TimeoutError) as error:
                status, text = None, f"{type(error).__name__}: {error}"
            if on_attempt is not None:
                on_attempt(attempt, status)
            if status is not None and 200 <= status < 300:
                return Delivery(True, status, text, attempt)
            if status is not None and status not in RETRYABLE_STATUSES:
                return Delivery(False, status, text, attempt)
            if attempt < attempts:
                await asyncio.sleep(min(backoff_s * 2 ** (attempt - 1), 30.0))
    return Delivery(False, status, text, attempts)

"""Reference servers the benchmark measures jobtrail against, on the same machine and database.

- ``ceiling``: an aiohttp handler that only answers 200: the framework's own limit.
- ``naive``: the same signature check and validation as jobtrail, then one INSERT and COMMIT
  per request: what an ingest without group commit achieves.
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import AsyncIterator
from typing import Any

import asyncpg
from aiohttp import web

from service.payloads import PayloadError, parse_callback
from service.signatures import Keyring, SignatureError, verify_request

pool_key: web.AppKey[asyncpg.Pool[Any]] = web.AppKey("pool")
keyring_key = web.AppKey("keyring", Keyring)

NAIVE_TABLE = """
CREATE TABLE IF NOT EXISTS naive_events (
    position bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    idempotency_key text UNIQUE,
    data jsonb NOT NULL,
    received_at timestamptz NOT NULL DEFAULT now()
)"""


async def ceiling(_request: web.Request) -> web.Response:
    return web.json_response({"status": "accepted"})


async def naive(request: web.Request) -> web.Response:
    body = await request.read()
    try:
        verified = verify_request(request.headers, body, request.app[keyring_key], time.time())
        document, _ = parse_callback(body)
    except (SignatureError, PayloadError):
        return web.json_response({"error": "refused"}, status=400)
    position = await request.app[pool_key].fetchval(
        "INSERT INTO naive_events (idempotency_key, data) VALUES ($1, $2::jsonb)"
        " ON CONFLICT (idempotency_key) DO NOTHING RETURNING position",
        verified.idempotency_key,
        json.dumps(document),
    )
    return web.json_response({"status": "accepted", "position": position})


def build(kind: str, dsn: str | None, secret: str) -> web.Application:
    app = web.Application()
    if kind == "ceiling":
        app.router.add_post("/api/webhooks/github", ceiling)
        return app

    async def database(app: web.Application) -> AsyncIterator[None]:
        assert dsn is not None
        async with asyncpg.create_pool(dsn, min_size=10, max_size=10) as pool:
            await pool.execute(NAIVE_TABLE)
            app[pool_key] = pool
            yield

    app[keyring_key] = Keyring.from_secrets([secret], None)
    app.cleanup_ctx.append(database)
    app.router.add_post("/api/webhooks/github", naive)
    return app


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("kind", choices=["ceiling", "naive"])
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--dsn")
    parser.add_argument("--secret", required=True)
    args = parser.parse_args()
    web.run_app(
        build(args.kind, args.dsn, args.secret),
        host="127.0.0.1",
        port=args.port,
        print=None,
        access_log=None,
    )


if __name__ == "__main__":
    main()

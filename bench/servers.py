"""Reference servers the benchmark measures jobtrail against, on the same machine and database.

- ``ceiling``: an aiohttp handler that only answers 200: the framework's own limit (on uvloop
  when it is installed).
- ``naive``: the same signature check and validation as jobtrail, then one INSERT and COMMIT
  per request: what an ingest without group commit achieves.
- ``eventsourcing``: the same check and validation, then one append through the
  ``eventsourcing`` library in its default PostgreSQL mode (``bench.es_server``).

``python -m bench.servers KIND --port N [--dsn DSN] --secret S`` serves one of them.
"""

from __future__ import annotations

import argparse
import asyncio
import importlib.util
import json
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import asyncpg
from aiohttp import web

from service.payloads import PayloadError, parse_callback
from service.signatures import Keyring, SignatureError, Verified, verify_request

WEBHOOK_PATH = "/api/webhooks/github"
POOL_SIZE = 10  # database connections of the naive and eventsourcing servers

pool_key: web.AppKey[asyncpg.Pool[Any]] = web.AppKey("pool")
keyring_key = web.AppKey("keyring", Keyring)

NAIVE_TABLE = """
CREATE TABLE IF NOT EXISTS naive_events (
    position bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    idempotency_key text UNIQUE,
    data jsonb NOT NULL,
    received_at timestamptz NOT NULL DEFAULT now()
)"""

# What a verified, validated callback is stored as: (idempotency key, document) -> answer.
Store = Callable[[web.Request, str, dict[str, Any]], Awaitable[web.Response]]


def has_uvloop() -> bool:
    return importlib.util.find_spec("uvloop") is not None


async def ceiling(_request: web.Request) -> web.Response:
    return web.json_response({"status": "accepted"})


def verified_handler(store: Store) -> Callable[[web.Request], Awaitable[web.Response]]:
    """A webhook handler: jobtrail's signature check and payload validation, then ``store``."""

    async def handler(request: web.Request) -> web.Response:
        body = await request.read()
        try:
            verified: Verified = verify_request(
                request.headers, body, request.app[keyring_key], time.time()
            )
            document, _ = parse_callback(body)
        except (SignatureError, PayloadError):
            return web.json_response({"error": "refused"}, status=400)
        return await store(request, verified.idempotency_key or "", document)

    return handler


async def naive_store(request: web.Request, key: str, document: dict[str, Any]) -> web.Response:
    position = await request.app[pool_key].fetchval(
        "INSERT INTO naive_events (idempotency_key, data) VALUES ($1, $2::jsonb)"
        " ON CONFLICT (idempotency_key) DO NOTHING RETURNING position",
        key,
        json.dumps(document),
    )
    return web.json_response({"status": "accepted", "position": position})


def build(kind: str, dsn: str | None, secret: str) -> web.Application:
    app = web.Application()
    if kind == "ceiling":
        app.router.add_post(WEBHOOK_PATH, ceiling)
        return app
    assert dsn is not None, "--dsn is required"
    app[keyring_key] = Keyring.from_secrets([secret], None)
    if kind == "eventsourcing":
        from bench.es_server import attach  # needs the bench extra

        app.router.add_post(WEBHOOK_PATH, verified_handler(attach(app, dsn, POOL_SIZE)))
        return app

    async def database(app: web.Application) -> AsyncIterator[None]:
        async with asyncpg.create_pool(dsn, min_size=POOL_SIZE, max_size=POOL_SIZE) as pool:
            await pool.execute(NAIVE_TABLE)
            app[pool_key] = pool
            yield

    app.cleanup_ctx.append(database)
    app.router.add_post(WEBHOOK_PATH, verified_handler(naive_store))
    return app


def event_loop(kind: str) -> asyncio.AbstractEventLoop:
    if kind == "ceiling" and has_uvloop():
        import uvloop

        loop: asyncio.AbstractEventLoop = uvloop.new_event_loop()
        return loop
    return asyncio.new_event_loop()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("kind", choices=["ceiling", "naive", "eventsourcing"])
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
        loop=event_loop(args.kind),
    )


if __name__ == "__main__":
    main()

"""The ``eventsourcing`` target: each verified callback saved through the library's Application.

Every callback becomes one aggregate ``Callback`` whose id is derived from its idempotency key
(``webhook-id``): saving it appends one event (version 1) to the application's recorder in the
library's default PostgreSQL mode (``PERSISTENCE_MODULE=eventsourcing.postgres``: psycopg 3, a
connection pool, and for each append ``LOCK TABLE ... IN EXCLUSIVE MODE``, ``NOTIFY``, the
INSERT and a COMMIT, so notification ids are gap-free in commit order). A second delivery with
the same key collides on the primary key and answers as a duplicate. No stream is read before
writing: the library's cheapest write path, a best case for it.

The library's API is synchronous; it runs in a thread pool with as many threads as its
connection pool has connections, so the aiohttp loop is never blocked.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit
from uuid import NAMESPACE_URL, UUID, uuid5

from aiohttp import web
from eventsourcing.application import Application
from eventsourcing.domain import Aggregate
from eventsourcing.persistence import IntegrityError

from bench.servers import Store


class Callback(Aggregate):
    """One verified callback, as its own aggregate."""

    def __init__(self, key: str, document: dict[str, Any]) -> None:
        self.key = key
        self.document = document

    @staticmethod
    def create_id(key: str) -> UUID:
        return uuid5(NAMESPACE_URL, key)


class BenchCallbacks(Application[UUID]):
    """The application whose recorder stores the callbacks (table ``benchcallbacks_events``)."""


def postgres_env(dsn: str, pool_size: int) -> dict[str, str]:
    """The library's PostgreSQL settings for ``dsn`` (a libpq URL, maybe with ``?host=``)."""
    url = urlsplit(dsn)
    query = {k: v[-1] for k, v in parse_qs(url.query).items()}
    return {
        "PERSISTENCE_MODULE": "eventsourcing.postgres",
        "POSTGRES_DBNAME": unquote(url.path.lstrip("/")),
        "POSTGRES_HOST": query.get("host") or url.hostname or "localhost",
        "POSTGRES_PORT": query.get("port") or str(url.port or 5432),
        "POSTGRES_USER": unquote(url.username or ""),
        "POSTGRES_PASSWORD": unquote(url.password or ""),
        "POSTGRES_POOL_SIZE": str(pool_size),
        "POSTGRES_MAX_OVERFLOW": "0",
    }


def record(app: BenchCallbacks, key: str, document: dict[str, Any]) -> tuple[int | None, bool]:
    """Save one callback; (notification id, duplicate)."""
    try:
        [recording] = app.save(Callback(key=key, document=document))
    except IntegrityError:
        return None, True
    return recording.notification.id, False


def attach(web_app: web.Application, dsn: str, pool_size: int) -> Store:
    """Open the application with ``web_app`` (closed with it); return the store function."""
    app_key = web.AppKey("eventsourcing", BenchCallbacks)
    executor = ThreadPoolExecutor(max_workers=pool_size, thread_name_prefix="eventsourcing")

    async def lifetime(web_app: web.Application) -> AsyncIterator[None]:
        loop = asyncio.get_running_loop()
        web_app[app_key] = await loop.run_in_executor(
            executor, lambda: BenchCallbacks(env=postgres_env(dsn, pool_size))
        )
        yield
        web_app[app_key].close()
        executor.shutdown()

    async def store(request: web.Request, key: str, document: dict[str, Any]) -> web.Response:
        loop = asyncio.get_running_loop()
        position, duplicate = await loop.run_in_executor(
            executor, record, request.app[app_key], key, document
        )
        return web.json_response(
            {"status": "accepted", "position": position, "duplicate": duplicate}
        )

    web_app.cleanup_ctx.append(lifetime)
    return store

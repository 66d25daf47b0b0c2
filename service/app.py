"""The application factory: routes, middlewares, and the resources each app owns.

The pool, the group-commit appender, the projector and the watchdog are opened by
``cleanup_ctx`` and closed in reverse order, so background tasks stop before the pool they use
is closed; the projector and the watchdog run only in the process that holds the leader lock
(``service.leader``). The runner (``service.server``) runs that clean-up only after requests in
flight have finished, so their appends are answered by a still-running appender; each step of
the clean-up is bounded, so a stuck task cannot keep the process from exiting. The leader also
creates the log's partitions for the months ahead (``events.partitions``).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import asyncpg
from aiohttp import web

from events.appender import Appender
from events.locks import LEADER_LOCK
from events.partitions import keep_partitions
from events.store import init_connection
from projections.runner import Projector
from projections.watchdog import Watchdog
from service import dashboard, evidence, ingest, openapi, read_api, stream
from service.deliveries import DeliveryLog, record_deliveries
from service.keys import (
    appender_key,
    assets_key,
    broadcaster_key,
    deliveries_key,
    keyring_key,
    metrics_key,
    openapi_key,
    pool_key,
    projector_key,
    read_tokens_key,
    settings_key,
    tasks_key,
)
from service.leader import lead
from service.metrics import Metrics
from service.middlewares import bearer_auth, json_errors, request_context
from service.settings import Settings
from service.signatures import keyring_for

POOL_SIZE = 10
COMMAND_TIMEOUT_S = 30.0
# Opening a connection gives up after this long: while PostgreSQL is unreachable a request
# gets its 503 within seconds instead of hanging on a connect (asyncpg's default is 60 s).
CONNECT_TIMEOUT_S = 5.0
SHUTDOWN_TIMEOUT_S = 3.0


async def _rollback_only(_conn: asyncpg.Connection[Any]) -> None:
    """Resetting a returned connection: asyncpg rolls back an open transaction before calling
    this, and that is all the service needs. The default reset (unlock every advisory lock,
    UNLISTEN, RESET ALL) is a round trip on every release; no pool connection of the service
    holds session state (the leader's lock has a connection of its own, the projector
    unlistens itself, settings are SET LOCAL) but the durable commits ``init_connection`` set
    up for the connection's whole life."""


async def _database(app: web.Application) -> AsyncIterator[None]:
    settings = app[settings_key]
    assert settings.database_url is not None
    pool = await asyncpg.create_pool(
        settings.database_url.get_secret_value(),
        init=init_connection,
        min_size=2,
        max_size=POOL_SIZE,
        timeout=CONNECT_TIMEOUT_S,
        command_timeout=COMMAND_TIMEOUT_S,
        # Server-side settings for every connection: an abandoned transaction must not hold the
        # append lock or the checkpoint rows for long.
        server_settings={"idle_in_transaction_session_timeout": "60000"},
        reset=_rollback_only,
    )
    app[pool_key] = pool
    yield
    # Graceful close waits for borrowed connections; a stuck one must not keep the process up.
    try:
        await asyncio.wait_for(pool.close(), SHUTDOWN_TIMEOUT_S)
    except TimeoutError:
        pool.terminate()


async def _background(app: web.Application) -> AsyncIterator[None]:
    pool, metrics = app[pool_key], app[metrics_key]
    settings = app[settings_key]
    app[appender_key] = Appender(pool, on_batch=metrics.observe_batch)
    app[projector_key] = Projector(pool, on_commit=app[broadcaster_key].on_commit)
    watchdog = Watchdog(
        pool,
        timeout_s=settings.timeout_after_s,
        on_timeout=lambda jobs: metrics.watchdog_timeouts.inc(len(jobs)),
    )

    async def projector_and_watchdog() -> None:
        async with asyncio.TaskGroup() as group:
            group.create_task(app[projector_key].run(), name="projector")
            group.create_task(watchdog.run(), name="watchdog")
            # Next months' partitions of the log, on election and then hourly.
            group.create_task(keep_partitions(pool), name="partitions")

    assert settings.database_url is not None
    app[tasks_key] = [
        asyncio.create_task(app[appender_key].run(), name="appender"),
        # One process of all that share the database runs these (service.leader).
        asyncio.create_task(
            lead(settings.database_url.get_secret_value(), LEADER_LOCK, projector_and_watchdog),
            name="leader",
        ),
    ]
    yield
    tasks: list[asyncio.Task[None]] = app[tasks_key]
    for task in tasks:
        task.cancel()
    # Bounded: a task stuck in clean-up must not keep the process from exiting.
    await asyncio.wait(tasks, timeout=SHUTDOWN_TIMEOUT_S)


def create_app(settings: Settings) -> web.Application:
    """Build the application. ``settings`` must carry the database URL, a callback secret and
    read tokens (the CLI fills in generated ones)."""
    if settings.database_url is None or settings.callback_secret is None:
        raise ValueError("create_app needs database_url and callback_secret")
    if not settings.read_tokens:
        raise ValueError("create_app needs at least one read token")
    app = web.Application(
        middlewares=[request_context, json_errors, record_deliveries, bearer_auth],
        client_max_size=settings.max_body_bytes,
    )
    app[settings_key] = settings
    app[keyring_key] = keyring_for(settings)
    app[read_tokens_key] = tuple(t.get_secret_value().encode() for t in settings.read_tokens)
    app[deliveries_key] = DeliveryLog()
    app[metrics_key] = Metrics()
    app[broadcaster_key] = stream.Broadcaster(stale_after_s=settings.stale_after_s)
    app[assets_key] = dashboard.load_assets(settings.stale_after_s)
    app[openapi_key] = openapi.document_bytes()
    app.cleanup_ctx.append(_database)
    app.cleanup_ctx.append(_background)
    app.cleanup_ctx.append(stream.broadcasting)
    app.on_shutdown.append(stream.close_streams)
    app.router.add_post("/api/webhooks/github", ingest.receive_webhook)
    app.router.add_get("/api/jobs", read_api.list_jobs)
    app.router.add_get("/api/jobs/{job_id}", read_api.get_job)
    app.router.add_get("/api/jobs/{job_id}/events", read_api.job_events)
    app.router.add_get("/api/events/{event_id}", evidence.get_event)
    app.router.add_get("/api/heartbeats", read_api.list_heartbeats)
    app.router.add_get("/api/projections", read_api.list_projections)
    app.router.add_get("/api/deliveries", read_api.list_deliveries)
    app.router.add_get("/api/stream", stream.stream)
    app.router.add_get("/api/openapi.json", openapi.openapi_json)
    app.router.add_get("/", dashboard.index)
    app.router.add_get("/static/{name}", dashboard.static_file)
    app.router.add_get("/healthz", read_api.healthz)
    app.router.add_get("/readyz", read_api.readyz)
    app.router.add_get("/metrics", read_api.metrics)
    return app

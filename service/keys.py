"""Typed keys for everything the application holds (no module-level state)."""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, Any

import asyncpg
from aiohttp import web

from events.appender import Appender
from projections.runner import Projector
from service.metrics import Metrics
from service.settings import Settings
from service.signatures import Keyring

if TYPE_CHECKING:  # these modules use their keys: a runtime import would be circular
    from service.dashboard import Assets
    from service.deliveries import DeliveryLog
    from service.stream import Broadcaster

settings_key = web.AppKey("settings", Settings)
keyring_key = web.AppKey("keyring", Keyring)
read_tokens_key: web.AppKey[tuple[bytes, ...]] = web.AppKey("read_tokens")
pool_key: web.AppKey[asyncpg.Pool[Any]] = web.AppKey("pool")
appender_key = web.AppKey("appender", Appender)
projector_key = web.AppKey("projector", Projector)
tasks_key: web.AppKey[list[asyncio.Task[None]]] = web.AppKey("tasks")
deliveries_key: web.AppKey[DeliveryLog] = web.AppKey("deliveries")
broadcaster_key: web.AppKey[Broadcaster] = web.AppKey("broadcaster")
assets_key: web.AppKey[Assets] = web.AppKey("assets")
openapi_key: web.AppKey[bytes] = web.AppKey("openapi")
metrics_key = web.AppKey("metrics", Metrics)

# Per request: the id the request context middleware gave it (also in every log line).
request_id_key = web.RequestKey("request_id", str)

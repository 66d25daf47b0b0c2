"""Typed keys for everything the application holds (no module-level state)."""

from __future__ import annotations

import asyncio
from typing import Any

import asyncpg
from aiohttp import web

from events.appender import Appender
from projections.runner import Projector
from service.settings import Settings
from service.signatures import Keyring

settings_key = web.AppKey("settings", Settings)
keyring_key = web.AppKey("keyring", Keyring)
read_tokens_key: web.AppKey[tuple[bytes, ...]] = web.AppKey("read_tokens")
pool_key: web.AppKey[asyncpg.Pool[Any]] = web.AppKey("pool")
appender_key = web.AppKey("appender", Appender)
projector_key = web.AppKey("projector", Projector)
tasks_key: web.AppKey[list[asyncio.Task[None]]] = web.AppKey("tasks")

"""Test fixtures: one real PostgreSQL server per session, a fresh database per test.

``TEST_DATABASE_URL`` names a server to use; without it a throw-away embedded server is started
for the session. The schema is migrated once into a template database, and every test gets its
own copy (``CREATE DATABASE ... TEMPLATE``), so tests never see each other's events.
"""

from __future__ import annotations

import asyncio
import os
import signal
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import asyncpg
import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient

from devdb import EmbeddedPostgres
from events.store import register_codecs
from service.app import create_app
from service.migrate import migrate
from service.settings import Settings
from tests.helpers import (
    CALLBACK_SECRET,
    READ_TOKEN,
    ROTATED_SECRET,
    ServeProcess,
    with_database,
)

AiohttpClient = Callable[[web.Application], Awaitable[TestClient[web.Request, web.Application]]]

# A run started in the background of a non-interactive shell (`make test &`) inherits SIGINT
# ignored, and so would every process the tests start: a Ctrl-C test would then see its
# `jobtrail` or script carry on. Give the session, and so its children, the default back.
if signal.getsignal(signal.SIGINT) == signal.SIG_IGN:
    signal.signal(signal.SIGINT, signal.default_int_handler)


@pytest.fixture(scope="session")
def server_dsn(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    configured = os.environ.get("TEST_DATABASE_URL")
    if configured:
        yield configured
        return
    server = EmbeddedPostgres(tmp_path_factory.mktemp("embedded-pg"), throwaway=True)
    dsn = server.start()
    try:
        yield dsn
    finally:
        server.destroy()


async def _admin(dsn: str, *statements: str) -> None:
    conn = await asyncpg.connect(dsn)
    try:
        for statement in statements:
            # A test must fail rather than hang CI if something still holds its database.
            await conn.execute(statement, timeout=30)
    finally:
        await conn.close()


@pytest.fixture
def own_server(tmp_path: Path) -> Iterator[EmbeddedPostgres]:
    """A PostgreSQL of the test's own, to stop and start at will (not migrated)."""
    server = EmbeddedPostgres(tmp_path / "pg", throwaway=True)
    try:
        yield server
    finally:
        server.destroy()


@pytest.fixture(scope="session")
def template_name(server_dsn: str) -> Iterator[str]:
    name = f"jobtrail_template_{uuid.uuid4().hex[:12]}"

    async def create() -> None:
        await _admin(server_dsn, f'CREATE DATABASE "{name}"')
        conn = await asyncpg.connect(with_database(server_dsn, name))
        try:
            await migrate(conn)
        finally:
            await conn.close()

    asyncio.run(create())
    yield name
    asyncio.run(_admin(server_dsn, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))


@pytest.fixture
async def database_url(server_dsn: str, template_name: str) -> AsyncIterator[str]:
    name = f"jobtrail_test_{uuid.uuid4().hex[:12]}"
    await _admin(server_dsn, f'CREATE DATABASE "{name}" TEMPLATE "{template_name}"')
    yield with_database(server_dsn, name)
    await _admin(server_dsn, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture
async def pool(database_url: str) -> AsyncIterator[asyncpg.Pool[Any]]:
    async with asyncpg.create_pool(
        database_url, init=register_codecs, min_size=1, max_size=20
    ) as pool:
        yield pool


@pytest.fixture
def settings(database_url: str, tmp_path: Path) -> Settings:
    return Settings(
        database_url=database_url,
        data_dir=tmp_path / "data",
        callback_secret=CALLBACK_SECRET,
        callback_secrets=ROTATED_SECRET,
        read_tokens=READ_TOKEN,
        stale_after_s=180,
    )


AppClientFactory = Callable[[Settings], Awaitable[TestClient[web.Request, web.Application]]]


@pytest.fixture
async def app_client(
    aiohttp_client: AiohttpClient, database_url: str
) -> AsyncIterator[AppClientFactory]:
    """Build clients for apps with other settings; they are stopped before the database goes."""
    clients: list[TestClient[web.Request, web.Application]] = []

    async def make(settings: Settings) -> TestClient[web.Request, web.Application]:
        clients.append(await aiohttp_client(create_app(settings)))
        return clients[-1]

    yield make
    for test_client in clients:
        await test_client.close()


@pytest.fixture
async def client(
    aiohttp_client: AiohttpClient, settings: Settings
) -> AsyncIterator[TestClient[web.Request, web.Application]]:
    test_client = await aiohttp_client(create_app(settings))
    yield test_client
    # Stop the app (its projector and pool) before its database is dropped.
    await test_client.close()


ServeProcessFactory = Callable[..., ServeProcess]


@pytest.fixture
async def serve_process() -> AsyncIterator[ServeProcessFactory]:
    """Make ``ServeProcess``es (same arguments) that are killed when the test ends, if still
    running: a test that fails half-way must not leave a ``jobtrail serve`` behind."""
    made: list[ServeProcess] = []

    def make(database_url: str, workdir: Path, port: int, **env: str) -> ServeProcess:
        made.append(ServeProcess(database_url, workdir, port, **env))
        return made[-1]

    yield make
    for service in made:
        if service.process is not None and service.process.returncode is None:
            await service.kill()

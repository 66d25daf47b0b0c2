"""Migrations: numbered files applied once each, in order, even by several starting workers."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator

import asyncpg
import pytest

from service.migrate import migrate, migrations, pending_migrations
from tests.helpers import with_database


@pytest.fixture
async def empty_database(server_dsn: str) -> AsyncIterator[str]:
    name = f"jobtrail_empty_{uuid.uuid4().hex[:12]}"
    admin = await asyncpg.connect(server_dsn)
    await admin.execute(f'CREATE DATABASE "{name}"')
    try:
        yield with_database(server_dsn, name)
    finally:
        await admin.execute(f'DROP DATABASE "{name}" WITH (FORCE)')
        await admin.close()


async def test_concurrent_migrators_apply_each_migration_once(empty_database: str) -> None:
    connections = [await asyncpg.connect(empty_database) for _ in range(4)]
    try:
        applied = await asyncio.gather(*(migrate(conn) for conn in connections))
        assert sorted(m.version for batch in applied for m in batch) == [
            m.version for m in migrations()
        ]
        rows = await connections[0].fetch("SELECT version, name FROM schema_migrations")
        assert sorted((r["version"], r["name"]) for r in rows) == [
            (m.version, m.name) for m in migrations()
        ]
        assert await pending_migrations(connections[0]) == []
        assert await migrate(connections[0]) == []
    finally:
        for conn in connections:
            await conn.close()


async def test_an_empty_database_reports_every_migration_pending(empty_database: str) -> None:
    conn = await asyncpg.connect(empty_database)
    try:
        assert [m.version for m in await pending_migrations(conn)] == [
            m.version for m in migrations()
        ]
    finally:
        await conn.close()

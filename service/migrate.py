"""Schema migrations: numbered ``.sql`` files in ``service/migrations``, each applied once, in
order, in its own transaction, recorded in ``schema_migrations``. Concurrent migrators (several
workers starting together) serialise on an advisory lock; the second finds nothing to do.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from importlib import resources

import asyncpg
import structlog

from events.store import Connection

log = structlog.get_logger(component="migrate")

_FILE = re.compile(r"^(?P<version>\d{4})_(?P<name>[a-z0-9_]+)\.sql$")
_LOCK = "SELECT pg_advisory_xact_lock(7413690202)"
_TABLE = """
CREATE TABLE IF NOT EXISTS schema_migrations (
    version    integer     PRIMARY KEY,
    name       text        NOT NULL,
    applied_at timestamptz NOT NULL DEFAULT now()
)"""


@dataclass(frozen=True)
class Migration:
    version: int
    name: str
    sql: str


def migrations() -> list[Migration]:
    found = []
    for entry in resources.files("service.migrations").iterdir():
        match = _FILE.match(entry.name)
        if match:
            found.append(
                Migration(int(match["version"]), match["name"], entry.read_text(encoding="utf-8"))
            )
    found.sort(key=lambda m: m.version)
    if [m.version for m in found] != list(range(1, len(found) + 1)):
        raise RuntimeError("migration numbers must run 1, 2, 3... without gaps")
    return found


async def pending_migrations(conn: Connection) -> list[Migration]:
    try:
        applied = {r["version"] for r in await conn.fetch("SELECT version FROM schema_migrations")}
    except asyncpg.UndefinedTableError:
        applied = set()
    return [m for m in migrations() if m.version not in applied]


async def migrate(conn: Connection) -> list[Migration]:
    """Apply every pending migration; return those applied now.

    With nothing pending this only reads ``schema_migrations``, so ``serve`` can start as a
    role that may not create tables (``jobtrail_writer``, migration 0004)."""
    if not await pending_migrations(conn):
        return []
    applied = []
    for migration in migrations():
        async with conn.transaction():
            await conn.execute(_LOCK)
            await conn.execute(_TABLE)
            done = await conn.fetchval(
                "SELECT true FROM schema_migrations WHERE version = $1", migration.version
            )
            if done:
                continue
            await conn.execute(migration.sql)
            await conn.execute(
                "INSERT INTO schema_migrations (version, name) VALUES ($1, $2)",
                migration.version,
                migration.name,
            )
            log.info("migration.applied", version=migration.version, name=migration.name)
            applied.append(migration)
    return applied

"""Logs for the operator-tool tests: written straight through ``append_batch`` (fast: 100k events
in a few seconds), shaped like what ingest stores, and the helpers that compare databases."""

from __future__ import annotations

import asyncio
import json
import os
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import asyncpg

from events.catalog import HEARTBEAT_RECORDED, STATUS_REPORTED, job_stream
from events.models import NewEvent
from events.store import append_batch

JOBTRAIL = Path(sys.executable).parent / "jobtrail"
CLI_TIMEOUT_S = 120.0
_CONFIG_PREFIXES = ("DATABASE_URL", "TEST_DATABASE_URL", "JOBTRAIL_", "GITHUB_")
TABLES = ("job_status", "job_heartbeat")


def callback(
    job_id: str, status: str, at: datetime, *, key: str | None = None, **fields: Any
) -> NewEvent:
    """An event as ingest stores a Standard Webhooks callback."""
    kind = HEARTBEAT_RECORDED if status == "heartbeat" else STATUS_REPORTED
    return NewEvent(
        stream_id=job_stream(job_id),
        type=kind,
        data={"job_id": job_id, "status": status, **fields},
        metadata={
            "scheme": "standard",
            "idempotency_key": key,
            "request_id": None,
            "remote_addr": "127.0.0.1",
            "received_at": at.strftime("%Y-%m-%dT%H:%M:%S.%fZ"),
        },
        received_at=at,
        idempotency_key=key,
    )


def lifecycle(
    jobs: int, per_job: int, *, start: datetime | None = None, keys: str = "msg"
) -> list[NewEvent]:
    """``jobs`` jobs, interleaved, ``per_job`` events each, one millisecond apart (ending about
    now by default): provisioning, heartbeats, running half way, and every other job ending
    (succeeded or failed) with its last event. Idempotency keys start with ``keys``."""
    span = timedelta(milliseconds=jobs * per_job)
    start = start or datetime.now(UTC) - span - timedelta(seconds=1)
    events = []
    for step in range(per_job):
        for j in range(jobs):
            job_id = f"vm-{j:05d}"
            at = start + timedelta(milliseconds=step * jobs + j)
            key = f"{keys}_{job_id}_{step}"
            if step == 0:
                events.append(callback(job_id, "provisioning", at, key=key, run_id=j + 1))
            elif step == per_job - 1 and j % 2 == 0:
                status = "succeeded" if j % 4 == 0 else "failed"
                events.append(callback(job_id, status, at, key=key, message=f"done {j}"))
            elif step == per_job // 2:
                events.append(callback(job_id, "running", at, key=key, agent_id=f"agent-{j % 7}"))
            else:
                events.append(callback(job_id, "heartbeat", at, key=key))
    return events


async def append(pool: asyncpg.Pool[Any], events: Sequence[NewEvent], batch: int = 10_000) -> None:
    for start in range(0, len(events), batch):
        async with pool.acquire() as conn, conn.transaction():
            await append_batch(conn, events[start : start + batch])


async def snapshot(pool: asyncpg.Pool[Any]) -> dict[str, Any]:
    """Every projection row and checkpoint."""
    async with pool.acquire() as conn:
        tables = {
            t: [dict(r) for r in await conn.fetch(f"SELECT * FROM {t} ORDER BY job_id")]
            for t in TABLES
        }
        marks = await conn.fetch("SELECT name, position FROM projection_checkpoints")
    return {**tables, "checkpoints": {r["name"]: r["position"] for r in marks}}


async def head(pool: asyncpg.Pool[Any]) -> int:
    async with pool.acquire() as conn:
        value: int = await conn.fetchval("SELECT coalesce(max(position), 0) FROM events")
        return value


async def aside_tables(pool: asyncpg.Pool[Any]) -> list[str]:
    async with pool.acquire() as conn:
        rows = await conn.fetch(
            "SELECT tablename FROM pg_tables WHERE tablename LIKE '%\\_rebuild' ORDER BY 1"
        )
    return [r["tablename"] for r in rows]


@dataclass(frozen=True)
class Result:
    code: int
    stdout: str
    stderr: str

    def json(self) -> Any:
        return json.loads(self.stdout)


def cli_env(database_url: str, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(_CONFIG_PREFIXES)}
    env.update(JOBTRAIL_LOG_FORMAT="json", DATABASE_URL=database_url, **extra)
    return env


async def jobtrail(
    *args: str, database_url: str, cwd: Path, stdin: bytes | None = None, **env: str
) -> Result:
    """Run the real ``jobtrail`` console script against ``database_url``."""
    proc = await asyncio.create_subprocess_exec(
        str(JOBTRAIL),
        *args,
        stdin=asyncio.subprocess.PIPE if stdin is not None else asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env=cli_env(database_url, **env),
        cwd=cwd,
    )
    try:
        out, err = await asyncio.wait_for(proc.communicate(stdin), CLI_TIMEOUT_S)
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    assert proc.returncode is not None
    return Result(proc.returncode, out.decode(), err.decode())


def without(rows: Mapping[str, Any], *names: str) -> dict[str, Any]:
    return {k: v for k, v in rows.items() if k not in names}

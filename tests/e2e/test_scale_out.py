"""Scale-out: several serve processes on one database, one leader, metrics across workers."""

from __future__ import annotations

import asyncio
import sys
import time
from pathlib import Path
from typing import Any

import aiohttp
import asyncpg
import pytest
from prometheus_client.parser import text_string_to_metric_families

from events.locks import LEADER_LOCK
from tests.conftest import ServeProcessFactory
from tests.helpers import body_of, free_port, standard_headers, wait_for_projection

pytestmark = pytest.mark.slow
URL = "/api/webhooks/github"
JOBTRAIL = str(Path(sys.executable).parent / "jobtrail")


async def leader_pid(pool: asyncpg.Pool[Any]) -> int | None:
    """The OS pid of the serve process holding the leader lock (from its application_name)."""
    async with pool.acquire() as conn:
        name = await conn.fetchval(
            """SELECT a.application_name FROM pg_locks l JOIN pg_stat_activity a USING (pid)
                WHERE l.locktype = 'advisory' AND l.granted
                  AND l.classid::bigint = $1 AND l.objid::bigint = $2""",
            LEADER_LOCK >> 32,
            LEADER_LOCK & 0xFFFFFFFF,
        )
    return int(name.rsplit("-", 1)[1]) if name else None


async def post(session: aiohttp.ClientSession, base: str, **payload: Any) -> int:
    body = body_of(payload)
    async with session.post(base + URL, data=body, headers=standard_headers(body)) as response:
        return response.status


async def test_another_process_takes_over_when_the_leader_dies(
    database_url: str, pool: asyncpg.Pool[Any], tmp_path: Path, serve_process: ServeProcessFactory
) -> None:
    env = {"JOBTRAIL_TIMEOUT_AFTER_S": "3"}
    first = serve_process(database_url, tmp_path, free_port(), **env)
    second = serve_process(database_url, tmp_path, free_port(), **env)
    await asyncio.gather(first.start(), second.start())
    deadline = time.monotonic() + 10
    while (holder := await leader_pid(pool)) is None:
        assert time.monotonic() < deadline, "nobody took the leader lock"
        await asyncio.sleep(0.1)
    pids = {first.process.pid: first, second.process.pid: second}  # type: ignore[union-attr]
    leader = pids[holder]
    survivor = second if leader is first else first
    async with aiohttp.ClientSession() as session:
        for n in range(40):
            target = leader if n % 2 else survivor
            assert await post(session, target.base, job_id=f"job-{n}", status="running") == 200
        await leader.kill()
        killed_at = time.monotonic()
        sent = 40
        while (holder := await leader_pid(pool)) != survivor.process.pid:  # type: ignore[union-attr]
            assert time.monotonic() - killed_at < 10, f"no takeover (lock held by {holder})"
            await post(session, survivor.base, job_id=f"job-{sent}", status="running")
            sent += 1
            await asyncio.sleep(0.2)
        print(f"takeover after {time.monotonic() - killed_at:.1f} s")
    await wait_for_projection(pool, within_s=15)
    # Every job goes silent: exactly one timeout each, from whichever process led.
    await asyncio.sleep(3 + 3)
    await wait_for_projection(pool, within_s=15)
    async with pool.acquire() as conn:
        timeouts = await conn.fetch(
            "SELECT data->>'job_id' AS job, count(*) AS n FROM events"
            " WHERE type = 'job.timed_out' GROUP BY 1"
        )
    assert {r["job"] for r in timeouts} == {f"job-{n}" for n in range(sent)}
    assert {r["n"] for r in timeouts} == {1}
    verify = await asyncio.create_subprocess_exec(
        JOBTRAIL, "verify", "--database-url", database_url,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
    )  # fmt: skip
    report, _ = await verify.communicate()
    assert verify.returncode == 0, report.decode()
    await survivor.stop()


def alive(pid: int) -> bool:
    return Path(f"/proc/{pid}").exists()


def children_of(pid: int) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(fields[1]) == pid:
                found.append(int(entry.name))
    return found


async def test_workers_share_one_port_and_metrics_add_up(
    database_url: str, tmp_path: Path, serve_process: ServeProcessFactory
) -> None:
    served = serve_process(database_url, tmp_path, free_port(), JOBTRAIL_WORKERS="2")
    await served.start()
    assert served.process is not None
    workers = children_of(served.process.pid)
    assert len(workers) == 2
    for n in range(40):  # a connection each, so that the kernel spreads them over both workers
        async with aiohttp.ClientSession() as session:
            assert await post(session, served.base, job_id=f"w-{n}", status="queued") == 200
    for _ in range(4):  # whichever worker answers the scrape, it reports both
        async with aiohttp.ClientSession() as session, session.get(served.base + "/metrics") as r:
            text = await r.text()
        samples = {
            (s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text)
            for s in family.samples
        }
        accepted = ("jobtrail_ingest_total", (("outcome", "accepted"), ("scheme", "standard")))
        assert samples[accepted] == 40
        requests = ("jobtrail_http_requests_total", (("code", "200"), ("route", URL)))
        assert samples[requests] == 40
    assert await served.stop() == 0
    assert not any(alive(pid) for pid in workers)

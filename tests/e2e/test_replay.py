"""``jobtrail replay`` as operators run it: a real process against a real PostgreSQL, while a
live app serves dashboards from the same database."""

from __future__ import annotations

import asyncio
import json
import os
import pty
import signal
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import asyncpg
import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient

from events.store import append_batch
from projections.registry import PROJECTIONS
from projections.replay import fold_log, rebuild
from service.settings import Settings
from tests.conftest import AppClientFactory
from tests.helpers import AUTH, wait_for_projection
from tests.workload import (
    JOBTRAIL,
    append,
    aside_tables,
    callback,
    cli_env,
    head,
    jobtrail,
    lifecycle,
    snapshot,
)

Client = TestClient[web.Request, web.Application]


async def folded(pool: asyncpg.Pool[Any]) -> dict[str, list[dict[str, Any]]]:
    """What a fresh in-memory replay of the whole log gives, as table rows."""
    async with pool.acquire() as conn:
        states, _ = await fold_log(conn)
    return {
        p.name: [
            dict(zip(p.columns, p.to_row(states[p.name][key]), strict=True))
            for key in sorted(states[p.name])
        ]
        for p in PROJECTIONS
    }


async def read_jobs(client: Client) -> dict[str, int]:
    """One dashboard read: every job (one page) and its event count."""
    response = await client.get("/api/jobs?limit=500", headers=AUTH)
    assert response.status == 200, await response.text()
    document = await response.json()
    assert document["next_cursor"] is None
    return {job["job_id"]: job["event_count"] for job in document["jobs"]}


@pytest.mark.slow
async def test_a_replay_of_100k_events_never_shows_a_dashboard_a_partial_table(
    pool: asyncpg.Pool[Any],
    settings: Settings,
    app_client: AppClientFactory,
    database_url: str,
    tmp_path: Path,
) -> None:
    await append(pool, lifecycle(jobs=400, per_job=250))
    assert await head(pool) == 100_000
    await rebuild(pool)  # the live projections start at the head
    client = await app_client(settings)
    before = await read_jobs(client)
    assert len(before) == 400

    reads: list[dict[str, int]] = []
    appended = 0
    done = asyncio.Event()

    async def dashboard() -> None:
        while not done.is_set():
            reads.append(await read_jobs(client))

    async def ingest() -> None:  # the log keeps growing during the replay
        nonlocal appended
        while not done.is_set() and appended < 60:
            job_id = f"vm-{appended % 400:05d}" if appended % 3 else f"late-{appended}"
            event = callback(job_id, "heartbeat", datetime.now(UTC))
            async with pool.acquire() as conn, conn.transaction():
                await append_batch(conn, [event])
            appended += 1
            await asyncio.sleep(0.05)

    tasks = [asyncio.create_task(dashboard()), asyncio.create_task(ingest())]
    started = time.monotonic()
    try:
        result = await jobtrail("replay", "--json", database_url=database_url, cwd=tmp_path)
    finally:
        done.set()
        await asyncio.gather(*tasks)
    elapsed = time.monotonic() - started
    assert result.code == 0, result
    summary = result.json()
    assert summary["projections"] == ["job_status", "job_heartbeat"]
    assert summary["events"] >= 100_000 and summary["position"] >= 100_000
    assert summary["seconds"] > 0

    assert len(reads) >= 10, (len(reads), elapsed)
    previous = before
    for jobs in reads:  # complete and consistent: nothing vanishes, nothing goes backwards
        assert before.keys() <= jobs.keys()
        assert len(jobs) >= len(previous)
        assert all(jobs[job] >= count for job, count in previous.items())
        previous = jobs

    await wait_for_projection(pool)
    state = await snapshot(pool)
    assert {t: state[t] for t in ("job_status", "job_heartbeat")} == await folded(pool)
    assert set(state["checkpoints"].values()) == {await head(pool)}
    assert await aside_tables(pool) == []


async def test_replay_of_one_projection_and_unknown_names(
    pool: asyncpg.Pool[Any], database_url: str, tmp_path: Path
) -> None:
    await append(pool, lifecycle(jobs=5, per_job=4))
    await rebuild(pool)
    async with pool.acquire() as conn:
        await conn.execute("UPDATE job_status SET status = 'queued'")
        await conn.execute("UPDATE job_heartbeat SET heartbeat_count = 0")
        await conn.execute("UPDATE projection_checkpoints SET position = 7")
    await append(pool, [callback("vm-00001", "heartbeat", datetime.now(UTC))])

    only = await jobtrail(
        "replay", "--projection", "job_status", database_url=database_url, cwd=tmp_path
    )
    assert only.code == 0, only
    assert "rebuilt job_status up to position 21 (21 events) in" in only.stdout
    state, fresh = await snapshot(pool), await folded(pool)
    assert state["job_status"] == fresh["job_status"]
    assert state["job_heartbeat"] != fresh["job_heartbeat"]  # not asked for: untouched
    assert state["checkpoints"] == {"job_status": 21, "job_heartbeat": 7}

    unknown = await jobtrail(
        "replay", "--projection", "job_status", "--projection", "nope",
        database_url=database_url, cwd=tmp_path,
    )  # fmt: skip
    assert unknown.code == 2, unknown
    assert "unknown projection nope" in unknown.stderr
    assert "job_status, job_heartbeat" in unknown.stderr
    assert "Traceback" not in unknown.stderr
    for args in (
        ("--until-position", "3", "--dry-run"),
        ("--until-position", "3", "--until", "2026-01-01T00:00:00Z"),
        ("--until", "yesterday"),
        ("--until", "2026-01-01T00:00:00"),  # no time zone
        ("--until-position", "-1"),
    ):
        refused = await jobtrail("replay", *args, database_url=database_url, cwd=tmp_path)
        assert refused.code == 2, (args, refused)
        assert "Traceback" not in refused.stderr
    assert await snapshot(pool) == state


async def test_the_state_until_a_position_or_time_is_the_live_state_then(
    pool: asyncpg.Pool[Any],
    settings: Settings,
    app_client: AppClientFactory,
    database_url: str,
    tmp_path: Path,
) -> None:
    await append(pool, lifecycle(jobs=6, per_job=5))
    client = await app_client(settings)
    await wait_for_projection(pool)
    position = await head(pool)
    live_cli = await jobtrail("jobs", "--json", database_url=database_url, cwd=tmp_path)
    response = await client.get("/api/jobs?limit=500", headers=AUTH)
    live_api = (await response.json())["jobs"]
    assert live_cli.code == 0, live_cli
    captured = live_cli.json()
    assert captured["jobs"] == live_api and len(live_api) == 6

    # The log moves on ten minutes later: the same jobs go on or end, new ones start.
    later = datetime.now(UTC) + timedelta(minutes=10)
    await append(pool, lifecycle(jobs=9, per_job=6, start=later, keys="later"))
    await wait_for_projection(pool)
    live_now = await snapshot(pool)
    async with pool.acquire() as conn:
        moment = await conn.fetchval("SELECT received_at FROM events WHERE position = $1", position)

    by_position, by_time, text = await asyncio.gather(
        jobtrail("replay", "--until-position", str(position), "--json",
                 database_url=database_url, cwd=tmp_path),
        jobtrail("replay", "--until", moment.isoformat(), "--json",
                 database_url=database_url, cwd=tmp_path),
        jobtrail("replay", "--until-position", str(position),
                 database_url=database_url, cwd=tmp_path),
    )  # fmt: skip
    for result in (by_position, by_time, text):
        assert result.code == 0, result
    assert by_position.json() == captured
    assert by_time.json() == captured
    _, *rows = text.stdout.splitlines()
    assert sorted(row.split()[0] for row in rows) == sorted(j["job_id"] for j in live_api)
    assert await snapshot(pool) == live_now  # the live projections are untouched

    # Stale is judged as of that moment: fresh then, the live ones silent 5 minutes later.
    old = await jobtrail(
        "replay", "--until", (moment + timedelta(minutes=5)).isoformat(), "--json",
        database_url=database_url, cwd=tmp_path,
    )  # fmt: skip
    stale = {j["job_id"]: j["stale"] for j in old.json()["jobs"]}
    assert stale == {j["job_id"]: j["status"] not in ("succeeded", "failed") for j in live_api}
    assert any(stale.values()) and not all(stale.values())


async def test_a_dry_run_reports_what_a_replay_would_change_and_writes_nothing(
    pool: asyncpg.Pool[Any], database_url: str, tmp_path: Path
) -> None:
    await append(pool, lifecycle(jobs=4, per_job=4))
    await rebuild(pool)
    clean = await jobtrail("replay", "--dry-run", "--json", database_url=database_url, cwd=tmp_path)
    assert clean.code == 0, clean
    assert clean.json() == {
        "dry_run": True,
        "events": 16,
        "projections": [
            {"name": name, "position": 16, "added": [], "removed": [], "changed": []}
            for name in ("job_status", "job_heartbeat")
        ],
    }

    async with pool.acquire() as conn:
        await conn.execute("UPDATE job_status SET status = 'failed', message = 'hand edit'"
                           " WHERE job_id = 'vm-00001'")  # fmt: skip
        await conn.execute("DELETE FROM job_heartbeat WHERE job_id = 'vm-00002'")
        await conn.execute(
            "INSERT INTO job_status SELECT 'ghost', status, created_at, updated_at, started_at,"
            " finished_at, run_id, run_attempt, agent_id, region, message, error, event_count,"
            " last_position, late_event_count FROM job_status WHERE job_id = 'vm-00000'"
        )
    before = await snapshot(pool)
    result, text = await asyncio.gather(
        jobtrail("replay", "--dry-run", "--json", database_url=database_url, cwd=tmp_path),
        jobtrail("replay", "--dry-run", database_url=database_url, cwd=tmp_path),
    )
    assert result.code == 0, result
    status, heartbeat = result.json()["projections"]
    assert status["removed"] == ["ghost"] and status["added"] == []
    assert status["changed"] == [
        {
            "key": "vm-00001",
            "fields": {
                "status": {"live": "failed", "rebuilt": "running"},
                "message": {"live": "hand edit", "rebuilt": None},
            },
        }
    ]
    assert heartbeat["added"] == ["vm-00002"]
    assert heartbeat["removed"] == heartbeat["changed"] == []
    assert "job_status (replayed to its checkpoint, position 16): 0 added, 1 removed" in text.stdout
    assert "~ vm-00001: status: failed -> running" in text.stdout
    assert await snapshot(pool) == before


@pytest.mark.slow
@pytest.mark.parametrize("how", [signal.SIGKILL, signal.SIGINT], ids=["kill-9", "ctrl-c"])
async def test_an_interrupted_replay_changes_nothing_and_the_next_one_cleans_up(
    pool: asyncpg.Pool[Any], database_url: str, tmp_path: Path, how: signal.Signals
) -> None:
    await append(pool, lifecycle(jobs=200, per_job=250))
    await rebuild(pool)
    async with pool.acquire() as conn:  # the live tables lag, so a finished swap would show
        await conn.execute("UPDATE projection_checkpoints SET position = 40000")
        await conn.execute("UPDATE job_status SET message = 'live'")
    before = await snapshot(pool)

    # The checkpoint rows held, as a busy projector would: the replay cannot reach its swap, so
    # the signal lands before its COMMIT however fast it folds (building, or waiting to swap).
    holder = await pool.acquire()
    hold = holder.transaction()
    await hold.start()
    await holder.execute("SELECT position FROM projection_checkpoints FOR UPDATE")
    proc = await asyncio.create_subprocess_exec(
        str(JOBTRAIL),
        "replay",
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env=cli_env(database_url),
        cwd=tmp_path,
    )
    try:
        deadline = time.monotonic() + 30
        while await aside_tables(pool) != ["job_heartbeat_rebuild", "job_status_rebuild"]:
            assert proc.returncode is None, await proc.communicate()
            assert time.monotonic() < deadline, "the replay never started building"
            await asyncio.sleep(0.005)
        proc.send_signal(how)  # mid-build, or waiting for the held rows to swap
        _, err = await asyncio.wait_for(proc.communicate(), 30)
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
        await hold.rollback()
        await pool.release(holder)
    if how == signal.SIGINT:
        assert proc.returncode == 2, err
        assert b"interrupted" in err and b"Traceback" not in err, err
    else:
        assert proc.returncode == -signal.SIGKILL
        assert await aside_tables(pool), "a killed replay leaves its aside tables"
    assert await snapshot(pool) == before

    again = await jobtrail("replay", "--json", database_url=database_url, cwd=tmp_path)
    assert again.code == 0, again
    assert await aside_tables(pool) == []
    state = await snapshot(pool)
    assert {t: state[t] for t in ("job_status", "job_heartbeat")} == await folded(pool)
    assert set(state["checkpoints"].values()) == {50_000}


async def test_replay_shows_a_progress_bar_on_a_terminal(
    pool: asyncpg.Pool[Any], database_url: str, tmp_path: Path
) -> None:
    await append(pool, lifecycle(jobs=50, per_job=200))
    leader, follower = pty.openpty()
    screen = asyncio.create_task(asyncio.to_thread(_read_until_closed, leader))
    try:
        proc = await asyncio.create_subprocess_exec(
            str(JOBTRAIL),
            "replay",
            "--json",
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=follower,
            env=cli_env(database_url, TERM="xterm", COLUMNS="120"),
            cwd=tmp_path,
        )
        out, _ = await asyncio.wait_for(proc.communicate(), 60)
    finally:
        os.close(follower)  # the terminal's last writer: the reader now sees its end
        shown = await screen
        os.close(leader)
    assert proc.returncode == 0, shown
    assert b"replaying" in shown and b"events/s" in shown, shown
    assert b"10000/10000" in shown, shown
    assert json.loads(out)["events"] == 10_000  # stdout keeps its one JSON document


def _read_until_closed(fd: int) -> bytes:
    data = b""
    while True:
        try:
            chunk = os.read(fd, 65536)
        except OSError:  # EIO: every writer of the terminal has closed it
            return data
        if not chunk:
            return data
        data += chunk

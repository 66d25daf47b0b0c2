"""The ``jobtrail`` console script, run as a real subprocess against a real PostgreSQL.

The log is filled through the real HTTP path (the app served in-process by the ``client``
fixture, signed callbacks), then the CLI reads, checks and rebuilds it. ``serve`` and ``db`` are
exercised end to end on real sockets and a real embedded PostgreSQL.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import signal
import socket
import stat
import sys
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import IO, Any

import aiohttp
import asyncpg
import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient

from devdb import EmbeddedPostgres
from tests.helpers import AUTH, body_of, free_port, standard_headers, wait_for_projection
from tests.workload import Result

Client = TestClient[web.Request, web.Application]
JOBTRAIL = Path(sys.executable).parent / "jobtrail"
WEBHOOK = "/api/webhooks/github"
CLI_TIMEOUT_S = 60.0

# Anything that would configure the CLI behind the test's back.
_CONFIG_PREFIXES = ("DATABASE_URL", "TEST_DATABASE_URL", "JOBTRAIL_", "GITHUB_")


def cli_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(_CONFIG_PREFIXES)}
    env["JOBTRAIL_LOG_FORMAT"] = "json"
    env.update(extra)
    return env


async def run_cli(*args: str, env: Mapping[str, str], cwd: Path) -> Result:
    proc = await asyncio.create_subprocess_exec(
        str(JOBTRAIL),
        *args,
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env=dict(env),
        cwd=cwd,
    )
    try:
        out, err = await asyncio.wait_for(proc.communicate(), CLI_TIMEOUT_S)
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    assert proc.returncode is not None
    return Result(proc.returncode, out.decode(), err.decode())


def assert_clean_error(result: Result) -> None:
    """Exit 2 with a one-line style message on stderr, no traceback, nothing on stdout."""
    assert result.code == 2, result
    assert result.stderr.strip(), result
    assert "Traceback" not in result.stderr, result.stderr
    assert result.stdout == "", result


async def post(client: Client, payload: dict[str, Any], msg_id: str | None = None) -> int:
    body = body_of(payload)
    response = await client.post(WEBHOOK, data=body, headers=standard_headers(body, msg_id=msg_id))
    assert response.status == 200, await response.text()
    answer = await response.json()
    return int(answer["position"])


async def api(client: Client, path: str) -> Any:
    response = await client.get(path, headers=AUTH)
    assert response.status == 200, await response.text()
    return await response.json()


def table_rows(text: str) -> list[list[str]]:
    return [line.split() for line in text.splitlines() if line.strip()]


# -- migrate -----------------------------------------------------------------------------------


async def test_migrate_on_a_migrated_database_is_up_to_date(
    database_url: str, tmp_path: Path
) -> None:
    result = await run_cli("migrate", env=cli_env(DATABASE_URL=database_url), cwd=tmp_path)
    assert result.code == 0, result
    assert "up to date" in result.stdout
    assert "Traceback" not in result.stderr


# -- history -----------------------------------------------------------------------------------


async def test_history_json_and_text_then_detects_a_tampered_event(
    client: Client, pool: asyncpg.Pool[Any], database_url: str, tmp_path: Path
) -> None:
    env = cli_env(DATABASE_URL=database_url)
    await post(client, {"job_id": "other", "status": "queued"})
    await post(client, {"job_id": "vm-a", "status": "queued", "run_id": 7, "run_attempt": 1})
    await post(client, {"job_id": "vm-a", "status": "provisioning", "message": "booting"})
    await post(client, {"job_id": "vm-a", "status": "heartbeat"})
    await post(client, {"job_id": "vm-a", "status": "success"})
    await wait_for_projection(pool)
    api_events = (await api(client, "/api/jobs/vm-a/events"))["events"]
    assert len(api_events) == 4

    result, text, unknown_json, unknown_text = await asyncio.gather(
        run_cli("history", "vm-a", "--json", env=env, cwd=tmp_path),
        run_cli("history", "vm-a", env=env, cwd=tmp_path),
        run_cli("history", "no-such-job", "--json", env=env, cwd=tmp_path),
        run_cli("history", "no-such-job", env=env, cwd=tmp_path),
    )
    assert result.code == 0, result
    document = result.json()
    assert set(document) == {"job_id", "events", "archived"}
    assert document["archived"] == []  # nothing archived (tests/e2e/test_archive.py)
    assert document["job_id"] == "vm-a"
    events = document["events"]
    required = {"position", "stream_position", "type", "version", "received_at", "data"}
    for event in events:
        assert required | {"metadata", "hash_ok"} <= set(event)
        assert event["hash_ok"] is True
    assert [e["stream_position"] for e in events] == [1, 2, 3, 4]
    positions = [e["position"] for e in events]
    assert positions == sorted(positions)
    assert [e["data"]["status"] for e in events] == [
        "queued",
        "provisioning",
        "heartbeat",
        "success",
    ]
    assert events == [{**e, "hash_ok": True} for e in api_events]  # "as the API's events"

    assert text.code == 0, text
    header, *rows = table_rows(text.stdout)
    for column in ("POSITION", "RECEIVED_AT", "TYPE", "STATUS", "SCHEME", "HASH"):
        assert column in header
    assert len(rows) == 4
    for row, event in zip(rows, events, strict=True):
        assert row[0] == str(event["position"])
        assert event["type"] in row
        assert row[-1] == "ok"
    assert "MISMATCH" not in text.stdout

    for unknown in (unknown_json, unknown_text):
        assert unknown.code == 1, unknown
        assert "Traceback" not in unknown.stderr
    assert unknown_json.json() == {"job_id": "no-such-job", "events": [], "archived": []}

    # An edit behind the database's back (as superuser, triggers off) must show.
    async with pool.acquire() as conn, conn.transaction():
        await conn.execute("ALTER TABLE events DISABLE TRIGGER events_append_only")
        await conn.execute(
            """UPDATE events SET data = jsonb_set(data, '{status}', '"failed"')
               WHERE stream_id = 'job-vm-a' AND stream_position = 2"""
        )
        await conn.execute("ALTER TABLE events ENABLE TRIGGER events_append_only")

    tampered, tampered_text, untouched = await asyncio.gather(
        run_cli("history", "vm-a", "--json", env=env, cwd=tmp_path),
        run_cli("history", "vm-a", env=env, cwd=tmp_path),
        run_cli("history", "other", "--json", env=env, cwd=tmp_path),
    )
    assert tampered.code == 1, tampered
    after = tampered.json()["events"]
    assert [e["hash_ok"] for e in after] == [True, False, True, True]
    assert after[1]["data"]["status"] == "failed"

    assert tampered_text.code == 1, tampered_text
    _, *rows = table_rows(tampered_text.stdout)
    assert [row[-1] for row in rows] == ["ok", "MISMATCH", "ok", "ok"]

    assert untouched.code == 0, untouched


# -- jobs --------------------------------------------------------------------------------------


async def test_jobs_prints_what_the_api_returns_and_filters(
    client: Client, pool: asyncpg.Pool[Any], database_url: str, tmp_path: Path
) -> None:
    env = cli_env(DATABASE_URL=database_url)
    await post(client, {"job_id": "q-1", "status": "queued"})
    await post(client, {"job_id": "r-1", "status": "running", "agent_id": "a1"})
    await post(client, {"job_id": "hb-1", "status": "heartbeat"})
    for job in ("s-1", "s-2"):
        await post(client, {"job_id": job, "status": "provisioning"})
        await post(client, {"job_id": job, "status": "completed"})
    await post(client, {"job_id": "f-1", "status": "error", "error": "disk full"})
    await wait_for_projection(pool)

    api_jobs = (await api(client, "/api/jobs?limit=500"))["jobs"]
    api_succeeded = (await api(client, "/api/jobs?status=succeeded&limit=500"))["jobs"]
    # Independent invocations run side by side; the sleep lets every job age past 1 s.
    result, succeeded, text, invalid, not_stale, _ = await asyncio.gather(
        run_cli("jobs", "--json", env=env, cwd=tmp_path),
        run_cli("jobs", "--status", "succeeded", "--json", env=env, cwd=tmp_path),
        run_cli("jobs", "--status", "succeeded", env=env, cwd=tmp_path),
        run_cli("jobs", "--status", "bogus", env=env, cwd=tmp_path),
        run_cli("jobs", "--stale", "--json", env=env, cwd=tmp_path),
        asyncio.sleep(1.2),
    )
    assert result.code == 0, result
    document = result.json()
    assert set(document) == {"jobs"}
    cli_jobs = document["jobs"]

    def summary(jobs: Sequence[dict[str, Any]]) -> list[tuple[str, str, int]]:
        return sorted((j["job_id"], j["status"], j["event_count"]) for j in jobs)

    assert summary(cli_jobs) == summary(api_jobs)
    assert summary(cli_jobs) == [
        ("f-1", "failed", 1),
        ("hb-1", "running", 1),
        ("q-1", "queued", 1),
        ("r-1", "running", 1),
        ("s-1", "succeeded", 2),
        ("s-2", "succeeded", 2),
    ]
    assert cli_jobs == api_jobs  # "as the API": same objects, same order

    assert succeeded.code == 0, succeeded
    assert sorted(j["job_id"] for j in succeeded.json()["jobs"]) == ["s-1", "s-2"]
    assert succeeded.json()["jobs"] == api_succeeded

    assert text.code == 0, text
    header, *rows = table_rows(text.stdout)
    assert "JOB_ID" in header and "STATUS" in header
    assert sorted(row[0] for row in rows) == ["s-1", "s-2"]
    assert all("succeeded" in row for row in rows)

    assert_clean_error(invalid)
    assert "status" in invalid.stderr

    # Nothing is stale after 180 s (the default), everything live is after a short threshold.
    assert not_stale.code == 0, not_stale
    assert not_stale.json()["jobs"] == []

    short = cli_env(DATABASE_URL=database_url, JOBTRAIL_STALE_AFTER_S="1")
    stale, stale_running, stale_text = await asyncio.gather(
        run_cli("jobs", "--stale", "--json", env=short, cwd=tmp_path),
        run_cli("jobs", "--stale", "--status", "running", "--json", env=short, cwd=tmp_path),
        run_cli("jobs", "--stale", env=short, cwd=tmp_path),
    )
    assert stale.code == 0, stale
    stale_jobs = stale.json()["jobs"]
    assert sorted(j["job_id"] for j in stale_jobs) == ["hb-1", "q-1", "r-1"]
    assert all(j["stale"] is True for j in stale_jobs)

    assert stale_running.code == 0, stale_running
    assert sorted(j["job_id"] for j in stale_running.json()["jobs"]) == ["hb-1", "r-1"]

    assert stale_text.code == 0, stale_text
    _, *rows = table_rows(stale_text.stdout)
    assert sorted(row[0] for row in rows) == ["hb-1", "q-1", "r-1"]
    assert all("stale" in row for row in rows)


# -- replay ------------------------------------------------------------------------------------


async def _snapshot(pool: asyncpg.Pool[Any]) -> dict[str, list[dict[str, Any]]]:
    async with pool.acquire() as conn:
        return {
            table: [dict(r) for r in await conn.fetch(f"SELECT * FROM {table} ORDER BY job_id")]
            for table in ("job_status", "job_heartbeat")
        }


async def test_replay_after_a_mixed_workload_rebuilds_identical_projections(
    client: Client, pool: asyncpg.Pool[Any], database_url: str, tmp_path: Path
) -> None:
    # job a: the normal life, with heartbeats and a late heartbeat and callback after the end
    await post(client, {"job_id": "a", "status": "queued", "run_id": 1, "run_attempt": 1})
    await post(client, {"job_id": "a", "status": "provisioning", "region": "eu"})
    await post(client, {"job_id": "a", "status": "heartbeat"})
    await post(client, {"job_id": "a", "status": "running", "agent_id": "agent-1"})
    await post(client, {"job_id": "a", "status": "heartbeat"})
    await post(client, {"job_id": "a", "status": "success", "message": "done"})
    await post(client, {"job_id": "a", "status": "heartbeat"})  # late
    await post(client, {"job_id": "a", "status": "failure"})  # late, terminal stays
    # job b: out of order (running before queued), then an alias for failed
    await post(client, {"job_id": "b", "status": "running"})
    await post(client, {"job_id": "b", "status": "queued"})
    await post(client, {"job_id": "b", "status": "provisioning"})
    await post(client, {"job_id": "b", "status": "error", "error": "quota"})
    # job c: created by a heartbeat, retried deliveries stored once
    await post(client, {"job_id": "c", "status": "heartbeat"}, msg_id="msg_c_hb")
    await post(client, {"job_id": "c", "status": "heartbeat"}, msg_id="msg_c_hb")
    await post(client, {"job_id": "c", "status": "completed"}, msg_id="msg_c_done")
    await post(client, {"job_id": "c", "status": "completed"}, msg_id="msg_c_done")
    # job d: cancelled, then a late success
    await post(client, {"job_id": "d", "status": "provisioning"})
    await post(client, {"job_id": "d", "status": "cancelled"})
    await post(client, {"job_id": "d", "status": "completed"})
    # job e: still live, heartbeating
    for _ in range(3):
        await post(client, {"job_id": "e", "status": "heartbeat"})
    await wait_for_projection(pool)

    before = await _snapshot(pool)
    statuses = {row["job_id"]: row["status"] for row in before["job_status"]}
    assert statuses == {
        "a": "succeeded",
        "b": "failed",
        "c": "succeeded",
        "d": "cancelled",
        "e": "running",
    }
    assert {r["job_id"] for r in before["job_heartbeat"]} == {"a", "c", "e"}

    result = await run_cli("replay", env=cli_env(DATABASE_URL=database_url), cwd=tmp_path)
    assert result.code == 0, result
    assert "Traceback" not in result.stderr

    after = await _snapshot(pool)
    assert after == before
    async with pool.acquire() as conn:
        head = await conn.fetchval("SELECT max(position) FROM events")
        checkpoints = await conn.fetch("SELECT name, position FROM projection_checkpoints")
    assert {r["name"] for r in checkpoints} == {"job_status", "job_heartbeat"}
    assert all(r["position"] == head for r in checkpoints), (head, checkpoints)

    # The live service keeps projecting on top of the rebuilt tables.
    await post(client, {"job_id": "e", "status": "succeeded"})
    await wait_for_projection(pool)
    job = await api(client, "/api/jobs/e")
    assert job["status"] == "succeeded" and job["event_count"] == 4


# -- errors and usage --------------------------------------------------------------------------


@pytest.mark.parametrize(
    "args", [("jobs",), ("jobs", "--json"), ("history", "x"), ("migrate",), ("replay",)]
)
async def test_an_unreachable_database_is_a_clean_exit_2(
    args: tuple[str, ...], tmp_path: Path
) -> None:
    env = cli_env(DATABASE_URL="postgresql://postgres@127.0.0.1:1/x")
    result = await run_cli(*args, env=env, cwd=tmp_path)
    assert_clean_error(result)
    assert "connect" in result.stderr.lower()
    assert len(result.stderr.strip().splitlines()) <= 3, result.stderr


@pytest.mark.parametrize(
    "args", [(), ("frobnicate",), ("history",), ("jobs", "--bogus"), ("db", "explode")]
)
async def test_usage_errors_exit_2(args: tuple[str, ...], tmp_path: Path) -> None:
    result = await run_cli(*args, env=cli_env(), cwd=tmp_path)
    assert result.code == 2, result
    assert "usage" in result.stderr.lower()
    assert "Traceback" not in result.stderr


async def test_db_refuses_to_manage_an_external_database(tmp_path: Path) -> None:
    env = cli_env(DATABASE_URL="postgresql://postgres@127.0.0.1:1/x")
    assert_clean_error(await run_cli("db", "start", env=env, cwd=tmp_path))


# -- db ----------------------------------------------------------------------------------------


async def _connects(dsn: str) -> bool:
    try:
        conn = await asyncpg.connect(dsn, timeout=5)
    except (OSError, asyncpg.PostgresError):
        return False
    await conn.close()
    return True


async def _execute(dsn: str, statement: str) -> Any:
    conn = await asyncpg.connect(dsn, timeout=5)
    try:
        if ";" in statement:
            return await conn.execute(statement)
        return await conn.fetchval(statement)
    finally:
        await conn.close()


@pytest.mark.slow
async def test_db_start_url_stop_and_restart_keeps_the_data(tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    env = cli_env(JOBTRAIL_DATA_DIR=str(data_dir))
    try:
        assert_clean_error(await run_cli("db", "url", env=env, cwd=tmp_path))  # nothing yet

        started = await run_cli("db", "start", env=env, cwd=tmp_path)
        assert started.code == 0, started
        dsn = started.stdout.strip()
        assert dsn.startswith("postgresql://"), started
        assert await _execute(dsn, "SELECT 1") == 1
        await _execute(dsn, "CREATE TABLE survivor (name text); INSERT INTO survivor VALUES ('x')")

        url = await run_cli("db", "url", env=env, cwd=tmp_path)
        assert url.code == 0, url
        assert url.stdout.strip() == dsn

        again = await run_cli("db", "start", env=env, cwd=tmp_path)  # already running: reuse
        assert again.code == 0, again
        assert again.stdout.strip() == dsn

        stopped = await run_cli("db", "stop", env=env, cwd=tmp_path)
        assert stopped.code == 0, stopped
        assert not await _connects(dsn)
        assert not EmbeddedPostgres(data_dir).is_running()

        restarted = await run_cli("db", "start", env=env, cwd=tmp_path)
        assert restarted.code == 0, restarted
        assert restarted.stdout.strip() == dsn
        assert await _execute(dsn, "SELECT name FROM survivor") == "x"
    finally:
        await asyncio.to_thread(EmbeddedPostgres(data_dir).destroy)
    assert not EmbeddedPostgres(data_dir).is_running()


# -- serve -------------------------------------------------------------------------------------


class Serve:
    """``jobtrail serve`` as a subprocess: stdout captured line by line, stderr to a file."""

    def __init__(self, env: Mapping[str, str], port: int, cwd: Path, log: Path) -> None:
        self.env, self.port, self.cwd, self.log_path = dict(env), port, cwd, log
        self.base = f"http://127.0.0.1:{port}"
        self.lines: list[str] = []
        self.proc: asyncio.subprocess.Process | None = None
        self._log: IO[bytes] | None = None

    async def start(self) -> None:
        self._log = self.log_path.open("ab")
        self.proc = await asyncio.create_subprocess_exec(
            str(JOBTRAIL),
            "serve",
            "--port",
            str(self.port),
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=self._log,
            env=self.env,
            cwd=self.cwd,
        )

    async def read_until(self, pattern: str, within_s: float = 60.0) -> re.Match[str]:
        """Read stdout lines until one matches ``pattern``."""
        assert self.proc is not None and self.proc.stdout is not None
        deadline = time.monotonic() + within_s
        regex = re.compile(pattern)
        for line in self.lines:
            if found := regex.search(line):
                return found
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise AssertionError(f"no {pattern!r} on stdout: {self.lines} {self.stderr()}")
            raw = await asyncio.wait_for(self.proc.stdout.readline(), remaining)
            if not raw:
                raise AssertionError(f"stdout closed: {self.lines} {self.stderr()}")
            line = raw.decode().rstrip("\n")
            self.lines.append(line)
            if found := regex.search(line):
                return found

    async def wait_healthy(self, session: aiohttp.ClientSession, within_s: float = 30.0) -> None:
        deadline = time.monotonic() + within_s
        while time.monotonic() < deadline:
            assert self.proc is not None
            if self.proc.returncode is not None:
                raise AssertionError(f"serve exited {self.proc.returncode}: {self.stderr()}")
            try:
                async with session.get(f"{self.base}/healthz") as response:
                    if response.status == 200:
                        return
            except aiohttp.ClientError:
                pass
            await asyncio.sleep(0.1)
        raise AssertionError(f"serve never became healthy: {self.lines} {self.stderr()}")

    async def interrupt(self, within_s: float = 10.0) -> int:
        """SIGINT, as Ctrl-C would; returns the exit code; collects the rest of stdout."""
        assert self.proc is not None and self.proc.stdout is not None
        self.proc.send_signal(signal.SIGINT)
        rest, _ = await asyncio.wait_for(self.proc.communicate(), within_s)
        self.lines.extend(rest.decode().splitlines())
        assert self.proc.returncode is not None
        return self.proc.returncode

    async def close(self) -> None:
        if self.proc is not None and self.proc.returncode is None:
            self.proc.kill()
            await self.proc.communicate()
        if self._log is not None:
            self._log.close()
            self._log = None

    def stdout(self) -> str:
        return "\n".join(self.lines)

    def stderr(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""


async def _send_and_read_back(
    session: aiohttp.ClientSession, base: str, secret: str, token: str, job_id: str
) -> None:
    body = body_of({"job_id": job_id, "status": "provisioning", "run_id": 5, "run_attempt": 1})
    headers = standard_headers(body, secret=secret)
    async with session.post(f"{base}{WEBHOOK}", data=body, headers=headers) as response:
        assert response.status == 200, await response.text()
        position = (await response.json())["position"]
    auth = {"Authorization": f"Bearer {token}"}
    url = f"{base}/api/jobs/{job_id}?after_position={position}"
    async with session.get(url, headers=auth) as response:
        assert response.status == 200, await response.text()
        job = await response.json()
    assert job["job_id"] == job_id and job["status"] == "provisioning"
    async with session.get(f"{base}/api/jobs/{job_id}") as response:
        assert response.status == 401


@pytest.mark.slow
async def test_serve_generates_secrets_once_and_stops_on_ctrl_c(
    database_url: str, tmp_path: Path
) -> None:
    data_dir = tmp_path / "data"
    env = cli_env(DATABASE_URL=database_url, JOBTRAIL_DATA_DIR=str(data_dir))
    port = free_port()
    async with aiohttp.ClientSession() as session:
        first = Serve(env, port, tmp_path, tmp_path / "serve-1.log")
        try:
            await first.start()
            await first.read_until(re.escape(f"http://127.0.0.1:{port}"))
            token = (await first.read_until(r"(?i)read token:\s*(\S+)")).group(1)
            secret = (await first.read_until(r"(?i)callback secret:\s*(\S+)")).group(1)
            assert token != secret

            secrets_file = data_dir / "secrets.json"
            assert secrets_file.is_file()
            assert stat.S_IMODE(secrets_file.stat().st_mode) == 0o600
            stored = json.loads(secrets_file.read_text())
            assert token in stored.values() and secret in stored.values()

            await first.wait_healthy(session)
            await _send_and_read_back(session, first.base, secret, token, "served-1")
            assert await first.interrupt() == 0, first.stderr()
        finally:
            await first.close()
        logs = first.stderr()
        assert "Traceback" not in logs
        assert token not in logs and secret not in logs  # never logged

        second = Serve(env, port, tmp_path, tmp_path / "serve-2.log")
        try:
            await second.start()
            await second.read_until(re.escape(f"http://127.0.0.1:{port}"))
            await second.wait_healthy(session)
            await _send_and_read_back(session, second.base, secret, token, "served-2")
            assert await second.interrupt() == 0, second.stderr()
        finally:
            await second.close()
        printed = second.stdout()
        assert token not in printed and secret not in printed, printed
        assert str(data_dir / "secrets.json") in printed or "secrets.json" in printed, printed
        assert json.loads((data_dir / "secrets.json").read_text()) == stored
        logs = second.stderr()
        assert token not in logs and secret not in logs


@pytest.mark.slow
async def test_serve_with_embedded_postgres_stops_it_on_ctrl_c(tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    env = cli_env(JOBTRAIL_DATA_DIR=str(data_dir))
    port = free_port()
    serve = Serve(env, port, tmp_path, tmp_path / "serve.log")
    try:
        async with aiohttp.ClientSession() as session:
            await serve.start()
            await serve.read_until(re.escape(f"http://127.0.0.1:{port}"))
            token = (await serve.read_until(r"(?i)read token:\s*(\S+)")).group(1)
            secret = (await serve.read_until(r"(?i)callback secret:\s*(\S+)")).group(1)
            await serve.wait_healthy(session)
            assert EmbeddedPostgres(data_dir).is_running()
            async with session.get(f"{serve.base}/readyz") as response:
                assert response.status == 200
            await _send_and_read_back(session, serve.base, secret, token, "embedded-1")
            assert await serve.interrupt() == 0, serve.stderr()
        assert not EmbeddedPostgres(data_dir).is_running(), "serve left its PostgreSQL running"
        assert "Traceback" not in serve.stderr()
    finally:
        await serve.close()
        await asyncio.to_thread(EmbeddedPostgres(data_dir).destroy)


@pytest.mark.slow
async def test_serve_with_configured_secrets_generates_and_prints_none(
    database_url: str, tmp_path: Path
) -> None:
    data_dir = tmp_path / "data"
    secret, token = "whsec_c2VjcmV0LWZvci10aGUtY2xpLXRlc3Q=", "configured-read-token"
    env = cli_env(
        DATABASE_URL=database_url,
        JOBTRAIL_DATA_DIR=str(data_dir),
        GITHUB_CALLBACK_SECRET=secret,
        JOBTRAIL_READ_TOKENS=f"other-token,{token}",
    )
    port = free_port()
    serve = Serve(env, port, tmp_path, tmp_path / "serve.log")
    try:
        async with aiohttp.ClientSession() as session:
            await serve.start()
            await serve.read_until(re.escape(f"http://127.0.0.1:{port}"))
            await serve.wait_healthy(session)
            await _send_and_read_back(session, serve.base, secret, token, "configured-1")
            assert await serve.interrupt() == 0, serve.stderr()
    finally:
        await serve.close()
    printed = serve.stdout()
    assert secret not in printed and token not in printed, printed
    assert not (data_dir / "secrets.json").exists()
    assert secret not in serve.stderr() and token not in serve.stderr()


async def test_serve_on_a_port_in_use_is_a_clean_exit_2(database_url: str, tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        env = cli_env(
            DATABASE_URL=database_url,
            JOBTRAIL_DATA_DIR=str(tmp_path / "data"),
            GITHUB_CALLBACK_SECRET="s",
            JOBTRAIL_READ_TOKENS="t",
        )
        result = await run_cli("serve", "--port", str(port), env=env, cwd=tmp_path)
    assert result.code == 2, result
    assert "Traceback" not in result.stderr
    assert f"cannot listen on 127.0.0.1:{port}" in result.stderr
    assert "serving" not in result.stdout  # no banner for a server that never listened

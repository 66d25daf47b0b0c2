"""What the benchmark's parts share: the database server, signed callbacks, server processes."""

from __future__ import annotations

import json
import math
import os
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import Any

import asyncpg

from devdb import EmbeddedPostgres
from tests.helpers import free_port, standard_headers, with_database

HERE = Path(__file__).resolve().parent
SECRET = "whsec_" + "YmVuY2htYXJrLXNlY3JldC1ieXRlcy0xMjM0NTY3OA=="
TOKEN = "bench-token"
PYTHON = sys.executable
JOBTRAIL = str(Path(PYTHON).parent / "jobtrail")
# ``jobtrail serve --workers N`` for the ingest and lag runs: one process per core measured
# best on 2 cores (bench/README.md); BENCH_JOBTRAIL_WORKERS=1 measures the single process.
JOBTRAIL_WORKERS = int(os.environ.get("BENCH_JOBTRAIL_WORKERS", "2"))


@contextmanager
def database_server() -> Iterator[str]:
    """``BENCH_DATABASE_URL``, or a fresh embedded PostgreSQL (fsync on) for this run."""
    configured = os.environ.get("BENCH_DATABASE_URL")
    if configured:
        yield configured
        return
    with tempfile.TemporaryDirectory(prefix="jobtrail-bench-") as data_dir:
        server = EmbeddedPostgres(Path(data_dir) / "pg")  # not throw-away: fsync stays on
        try:
            yield server.start()
        finally:
            server.destroy()


async def drop_database(dsn: str, name: str) -> None:
    """Drop database ``name`` once its measurement is done: autovacuum would otherwise visit
    its tables during the next measurement."""
    conn = await asyncpg.connect(dsn)
    try:
        await conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    finally:
        await conn.close()


async def fresh_database(dsn: str, name: str) -> str:
    """Drop and create database ``name`` on the server of ``dsn``; return its DSN.

    Then a CHECKPOINT, where the role may take one: what the previous measurement left in
    shared buffers and the WAL is written out now, not in the middle of the next one (a
    checkpoint there shows up as seconds of p99 in whichever target it lands on)."""
    conn = await asyncpg.connect(dsn)
    try:
        await conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        await conn.execute(f'CREATE DATABASE "{name}"')
        with suppress(asyncpg.InsufficientPrivilegeError):
            await conn.execute("CHECKPOINT")
    finally:
        await conn.close()
    return with_database(dsn, name)


# The first heartbeat's time: any fixed second, so that the bodies are the same in every run.
HEARTBEATS_FROM = 1_780_000_000


def callback_body(job: int, status: str, at: int) -> bytes:
    """A workflow callback's body, as the workflow script sends it: the job's run id (the same
    for all of its callbacks) and the time it was sent (``at``, Unix seconds)."""
    document = {
        "job_id": f"bench-{job}",
        "status": status,
        "run_id": 9_000_000 + job,
        "run_attempt": 1,
        "timestamp": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(at)),
    }
    return json.dumps(document).encode()


def signed(body: bytes, now: int | None = None) -> dict[str, str]:
    """Standard Webhooks headers for ``body``, with a fresh ``webhook-id``."""
    return standard_headers(body, secret=SECRET, timestamp=now)


def heartbeat_body(i: int) -> bytes:
    """The ``i``-th distinct heartbeat of the load: 5000 jobs, each heartbeating once a minute
    (session 16 and earlier gave each heartbeat a new ``run_id`` instead, which no workflow
    does; bench/README.md)."""
    return callback_body(i % 5000, "heartbeat", HEARTBEATS_FROM + 60 * (i // 5000))


def base_env() -> dict[str, str]:
    """This process's environment without anything that would configure jobtrail."""
    return {k: v for k, v in os.environ.items() if not k.startswith(("JOBTRAIL_", "GITHUB_"))}


def jobtrail_env(dsn: str, data_dir: Path) -> dict[str, str]:
    """The environment of a ``jobtrail`` command on database ``dsn``."""
    return {
        **base_env(),
        "DATABASE_URL": dsn,
        "JOBTRAIL_DATA_DIR": str(data_dir),
        "GITHUB_CALLBACK_SECRET": SECRET,
        "JOBTRAIL_READ_TOKENS": TOKEN,
        "JOBTRAIL_LOG_FORMAT": "json",
    }


def wait_for_port(port: int, process: subprocess.Popen[bytes], within_s: float = 60) -> None:
    deadline = time.monotonic() + within_s
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"server exited with {process.returncode}")
        with socket.socket() as sock:
            if sock.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.05)
    raise RuntimeError("server did not start")


def peak_rss_mb(pid: int) -> float:
    """Peak resident set (VmHWM) of a running process, MiB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return 0.0


def _children(pid: int) -> list[int]:
    found = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        text = (task / "children").read_text()
        found += [int(child) for child in text.split()]
    return found


def tree_pss_mb(pid: int) -> float:
    """Memory of a process and its descendants now: the sum of their proportional set sizes
    (shared pages counted once across them, unlike a sum of RSS), MiB."""
    total_kb, pending = 0, [pid]
    while pending:
        current = pending.pop()
        try:
            for line in Path(f"/proc/{current}/smaps_rollup").read_text().splitlines():
                if line.startswith("Pss:"):
                    total_kb += int(line.split()[1])
                    break
            pending += _children(current)
        except (FileNotFoundError, ProcessLookupError):
            continue  # ended meanwhile
    return total_kb / 1024


@contextmanager
def sampling_memory(pid: int, every_s: float = 0.25) -> Iterator[list[float]]:
    """Sample ``tree_pss_mb(pid)`` in a thread while the block runs; the list holds the
    samples when it ends."""
    samples: list[float] = []
    done = threading.Event()

    def sample() -> None:
        while True:
            samples.append(tree_pss_mb(pid))
            if done.wait(every_s):
                return

    thread = threading.Thread(target=sample, daemon=True)
    thread.start()
    try:
        yield samples
    finally:
        done.set()
        thread.join()


@contextmanager
def server(
    command: list[str], env: Mapping[str, str], log: Path
) -> Iterator[tuple[int, subprocess.Popen[bytes]]]:
    """A server process listening on a free 127.0.0.1 port (``--port`` is appended);
    terminated (SIGTERM) at the end of the block. Its output goes to ``log``."""
    port = free_port()
    with log.open("ab") as out:
        process = subprocess.Popen(
            [*command, "--port", str(port)], env=dict(env), stdout=out, stderr=out
        )
    try:
        wait_for_port(port, process)
        yield port, process
    finally:
        process.terminate()
        try:
            process.wait(30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def median(values: list[float]) -> float:
    ordered = sorted(values)
    middle = len(ordered) // 2
    if len(ordered) % 2:
        return ordered[middle]
    return (ordered[middle - 1] + ordered[middle]) / 2


def percentile(values: list[float], share: float) -> float:
    """Nearest-rank percentile (``share`` in 0..100) of a non-empty list."""
    ordered = sorted(values)
    rank = min(max(1, math.ceil(share / 100 * len(ordered))), len(ordered))
    return ordered[rank - 1]


def summary(values: list[float], digits: int = 1) -> dict[str, Any]:
    return {
        "median": round(median(values), digits),
        "min": round(min(values), digits),
        "max": round(max(values), digits),
    }

"""Signing and waiting helpers shared by the tests."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator, Coroutine, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import aiohttp
import asyncpg

from service.signatures import sign_standard, standard_key

CALLBACK_SECRET = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
ROTATED_SECRET = "an-older-plain-secret"
READ_TOKEN = "test-read-token"
AUTH = {"Authorization": f"Bearer {READ_TOKEN}"}


def body_of(payload: dict[str, Any]) -> bytes:
    return json.dumps(payload).encode()


def standard_headers(
    body: bytes,
    *,
    secret: str = CALLBACK_SECRET,
    msg_id: str | None = None,
    timestamp: int | None = None,
) -> dict[str, str]:
    msg_id = msg_id or f"msg_{uuid.uuid4().hex}"
    timestamp = int(time.time()) if timestamp is None else timestamp
    return {
        "Content-Type": "application/json",
        "webhook-id": msg_id,
        "webhook-timestamp": str(timestamp),
        "webhook-signature": sign_standard(standard_key(secret), msg_id, timestamp, body),
    }


def openssl_hmac_hex(body: bytes, secret: str) -> str:
    """The legacy signature exactly as the original workflow made it, with real openssl."""
    result = subprocess.run(
        ["bash", "-c", 'printf "%s" "$BODY" | openssl dgst -sha256 -hmac "$SECRET"'],
        env={"BODY": body.decode(), "SECRET": secret, "PATH": "/usr/bin:/bin"},
        capture_output=True,
        text=True,
        check=True,
    )
    return result.stdout.strip().split()[-1]


async def wait_for_projection(pool: asyncpg.Pool[Any], within_s: float = 10.0) -> None:
    """Wait until every projection checkpoint has reached the head of the log."""
    deadline = time.monotonic() + within_s
    while True:
        async with pool.acquire() as conn:
            head = await conn.fetchval("SELECT coalesce(max(position), 0) FROM events")
            low = await conn.fetchval("SELECT min(position) FROM projection_checkpoints")
        if low >= head:
            return
        if time.monotonic() > deadline:
            raise AssertionError(f"projection stuck at {low}, head {head}")
        await asyncio.sleep(0.02)


async def run_bounded(
    *argv: str,
    timeout_s: float,
    env: Mapping[str, str],
    cwd: Path | None = None,
    merge_stderr: bool = False,
) -> tuple[int, str, str]:
    """Run a command to completion (killed past ``timeout_s``): exit code, stdout, stderr."""
    proc = await asyncio.create_subprocess_exec(
        *argv,
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT if merge_stderr else asyncio.subprocess.PIPE,
        env=dict(env),
        cwd=cwd,
    )
    try:
        out, err = await asyncio.wait_for(proc.communicate(), timeout_s)
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    assert proc.returncode is not None
    return proc.returncode, out.decode(errors="replace"), (err or b"").decode(errors="replace")


def with_database(dsn: str, name: str) -> str:
    """The same server, another database."""
    return urlunsplit(urlsplit(dsn)._replace(path="/" + name))


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


async def wait_until_ready(base_url: str, within_s: float = 30.0) -> None:
    """Wait for a served jobtrail's /readyz to answer 200."""
    deadline = time.monotonic() + within_s
    async with aiohttp.ClientSession() as session:
        while time.monotonic() < deadline:
            with contextlib.suppress(aiohttp.ClientConnectionError):
                async with session.get(f"{base_url}/readyz") as response:
                    if response.status == 200:
                        return
            await asyncio.sleep(0.05)
    raise AssertionError(f"{base_url} never became ready")


@contextlib.asynccontextmanager
async def running(*coroutines: Coroutine[Any, Any, None]) -> AsyncIterator[None]:
    """Run background loops (appenders, projectors) for the duration of a block."""
    tasks = [asyncio.create_task(c) for c in coroutines]
    try:
        yield
    finally:
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task


# Environment that would configure a served jobtrail behind a test's back.
_SERVE_CONFIG_PREFIXES = ("DATABASE_URL", "TEST_DATABASE_URL", "JOBTRAIL_", "GITHUB_")
JOBTRAIL = str(Path(sys.executable).parent / "jobtrail")


def clean_env(**env: str) -> dict[str, str]:
    """This process's environment without jobtrail's configuration, plus ``env``."""
    kept = {k: v for k, v in os.environ.items() if not k.startswith(_SERVE_CONFIG_PREFIXES)}
    return {**kept, **env}


class ServeProcess:
    """``jobtrail serve`` on a fixed 127.0.0.1 port, on ``database_url``, to be started, killed
    and started again. Configured with ``CALLBACK_SECRET`` (plus ``ROTATED_SECRET``) and
    ``READ_TOKEN`` unless ``env`` says otherwise; its stdout and stderr go to ``log``. Tests
    make one with the ``serve_process`` fixture, which kills it if the test fails first."""

    def __init__(self, database_url: str, workdir: Path, port: int, **env: str) -> None:
        self.base = f"http://127.0.0.1:{port}"
        self.port = port
        self.log = workdir / f"serve-{port}.log"
        defaults = {
            "DATABASE_URL": database_url,
            "JOBTRAIL_DATA_DIR": str(workdir / "jobtrail-data"),
            "GITHUB_CALLBACK_SECRET": CALLBACK_SECRET,
            "JOBTRAIL_CALLBACK_SECRETS": ROTATED_SECRET,
            "JOBTRAIL_READ_TOKENS": READ_TOKEN,
            "JOBTRAIL_LOG_FORMAT": "json",
        }
        self.env = clean_env(**{**defaults, **env})
        self.workdir = workdir
        self.process: asyncio.subprocess.Process | None = None

    async def start(self, within_s: float = 60.0) -> None:
        """Start it and wait until ``/readyz`` answers 200."""
        assert self.process is None or self.process.returncode is not None
        with self.log.open("ab") as log:
            self.process = await asyncio.create_subprocess_exec(
                JOBTRAIL,
                "serve",
                "--port",
                str(self.port),
                stdin=asyncio.subprocess.DEVNULL,
                stdout=log,
                stderr=log,
                env=self.env,
                cwd=self.workdir,
            )
        deadline = time.monotonic() + within_s
        async with aiohttp.ClientSession() as session:
            while True:
                if self.process.returncode is not None:
                    raise AssertionError(f"serve exited {self.process.returncode}: {self.logs()}")
                if time.monotonic() > deadline:
                    raise AssertionError(f"serve never became ready: {self.logs()}")
                with contextlib.suppress(aiohttp.ClientConnectionError):
                    async with session.get(f"{self.base}/readyz") as response:
                        if response.status == 200:
                            return
                await asyncio.sleep(0.05)

    async def kill(self) -> None:
        assert self.process is not None
        self.process.send_signal(signal.SIGKILL)
        await self.process.wait()

    async def stop(self, signum: int = signal.SIGTERM, within_s: float = 30.0) -> int:
        """Send ``signum`` and return the exit status; killed (and AssertionError) if it is
        still running after ``within_s``."""
        assert self.process is not None
        if self.process.returncode is None:
            self.process.send_signal(signum)
        try:
            return await asyncio.wait_for(self.process.wait(), within_s)
        except TimeoutError:
            self.process.kill()
            await self.process.wait()
            raise AssertionError(f"serve ignored signal {signum}: {self.logs()}") from None

    def logs(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""


@dataclass(frozen=True)
class Served:
    """A running ``jobtrail serve``: its base URL and log file."""

    base: str
    port: int
    log: Path

    def logs(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""


@contextlib.asynccontextmanager
async def serve_jobtrail(
    database_url: str, workdir: Path, *, env: Mapping[str, str] | None = None
) -> AsyncIterator[Served]:
    """A real ``jobtrail serve`` subprocess on a free 127.0.0.1 port, on ``database_url``
    (configured as ``ServeProcess`` is); ready (``/readyz`` 200) when the block starts; stopped
    with SIGINT, as Ctrl-C would, when it ends (killed if that takes over 10 s)."""
    service = ServeProcess(database_url, workdir, free_port(), **(env or {}))
    await service.start()
    try:
        yield Served(service.base, service.port, service.log)
    finally:
        with contextlib.suppress(AssertionError):
            await service.stop(signal.SIGINT, within_s=10)

"""``jobtrail serve --workers N``: N processes serving one port, under a small supervisor.

The parent prepares what must happen once (the embedded database, migrations, generated
credentials), then starts N ``jobtrail serve`` children that each bind the port with
``SO_REUSEPORT`` (the kernel spreads connections over them) and each open their own pool. They
share nothing else: the leader lock in PostgreSQL picks the one that runs the projector and the
watchdog (``service.leader``). Metrics use prometheus-client's multiprocess mode: every child
writes to files in a directory of the parent's, and a scrape of any child sums all of them.

The parent restarts a child that dies, forwards SIGINT/SIGTERM to all of them, and exits 0 once
they have stopped.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import sys
import tempfile
from collections.abc import Mapping

import structlog
from prometheus_client import multiprocess as prometheus_multiprocess

from service.metrics import MULTIPROC_ENV

log = structlog.get_logger(component="workers")

STOP_TIMEOUT_S = 15.0
RESTART_DELAY_S = 1.0


async def _child(argv: list[str], env: Mapping[str, str]) -> asyncio.subprocess.Process:
    return await asyncio.create_subprocess_exec(
        sys.executable, "-m", "service", *argv, env=dict(env), stdin=asyncio.subprocess.DEVNULL
    )


async def _ready(host: str, port: int, within_s: float = 60.0) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + within_s
    while loop.time() < deadline:
        with contextlib.suppress(OSError):
            _, writer = await asyncio.open_connection(host, port)
            writer.close()
            return
        await asyncio.sleep(0.1)


async def _supervise(
    count: int, argv: list[str], env: Mapping[str, str], host: str, port: int, banner: str
) -> None:
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop.set)
    children = [await _child(argv, env) for _ in range(count)]
    await _ready(host, port)
    print(banner, flush=True)
    while not stop.is_set():
        waits = {asyncio.ensure_future(c.wait()): i for i, c in enumerate(children)}
        stopping = asyncio.ensure_future(stop.wait())
        done, _ = await asyncio.wait([*waits, stopping], return_when=asyncio.FIRST_COMPLETED)
        for future in waits:
            if future not in done:
                future.cancel()
        for future in done:
            if future is stopping:
                continue
            dead = children[waits[future]]
            prometheus_multiprocess.mark_process_dead(dead.pid)  # type: ignore[no-untyped-call]
            if not stop.is_set():
                log.warning("worker.died", pid=dead.pid, code=dead.returncode)
                await asyncio.sleep(RESTART_DELAY_S)
                children[waits[future]] = await _child(argv, env)
        stopping.cancel()
    for child in children:
        if child.returncode is None:
            child.send_signal(signal.SIGTERM)
    try:
        await asyncio.wait_for(asyncio.gather(*(c.wait() for c in children)), STOP_TIMEOUT_S)
    except TimeoutError:
        for child in children:
            if child.returncode is None:
                child.kill()


def run_workers(count: int, *, host: str, port: int, env: Mapping[str, str], banner: str) -> None:
    """Serve with ``count`` child processes until SIGINT/SIGTERM. ``env`` configures them
    (database URL and credentials included: they must not generate their own)."""
    with tempfile.TemporaryDirectory(prefix="jobtrail-metrics-") as metrics_dir:
        argv = ["serve", "--workers", "1", "--reuse-port", "--host", host, "--port", str(port)]
        child_env = {**os.environ, **env, MULTIPROC_ENV: metrics_dir}
        with contextlib.suppress(KeyboardInterrupt):
            asyncio.run(_supervise(count, argv, child_env, host, port, banner))

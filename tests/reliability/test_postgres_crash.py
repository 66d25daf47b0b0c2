"""PostgreSQL killed with SIGKILL under load: nothing acknowledged is lost (SPEC section 9).

The appender answers a batch's callers once its commit returned, and its connections commit
waiting for the WAL flush (``events.store.init_connection``). Here the server's own default is
``synchronous_commit = off``, the setting that acknowledges commits still in PostgreSQL's WAL
buffers: killing every server process loses those, so an acknowledgement sent before the
flush would show as a missing event. (Without ``init_connection``'s guard the campaign fails.)

The read models, too, must come out of the crashes as the fold of the log up to their
checkpoints, and catch up with it.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import random
import signal
from pathlib import Path

import asyncpg
import pytest

from devdb import EmbeddedPostgres
from events.store import register_codecs
from tests.conftest import ServeProcessFactory
from tests.helpers import free_port, wait_for_projection
from tests.reliability.harness import (
    Driver,
    campaign_seed,
    check_log,
    check_projections,
    workload,
)

pytestmark = pytest.mark.slow

CALLBACKS = 400
CRASHES = 2


def kill_postgres(server: EmbeddedPostgres) -> None:
    """SIGKILL the postmaster and every process it started: a crash, not a shutdown."""
    assert server.pgdata is not None
    postmaster = int((server.pgdata / "postmaster.pid").read_text().split()[0])
    children = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                stat = Path(f"/proc/{entry}/stat").read_text()
            except OSError:
                continue
            if int(stat.rsplit(")", 1)[1].split()[1]) == postmaster:
                children.append(int(entry))
    for pid in [postmaster, *children]:
        with contextlib.suppress(ProcessLookupError):  # gone already
            os.kill(pid, signal.SIGKILL)


async def test_nothing_acknowledged_is_lost_when_postgres_is_killed(
    own_server: EmbeddedPostgres, tmp_path: Path, serve_process: ServeProcessFactory
) -> None:
    seed = campaign_seed()
    rng = random.Random(seed)
    dsn = await asyncio.to_thread(own_server.start)
    admin = await asyncpg.connect(dsn)
    try:
        await admin.execute("ALTER SYSTEM SET synchronous_commit = off")
        await admin.execute("SELECT pg_reload_conf()")
    finally:
        await admin.close()
    service = serve_process(dsn, tmp_path, free_port())
    await service.start()
    driver = Driver(service.base, workload(rng, CALLBACKS, jobs=16, tag=f"p{seed}"), workers=32)
    thresholds = sorted(rng.sample(range(CALLBACKS // 10, CALLBACKS * 7 // 10), CRASHES))
    sending = asyncio.create_task(driver.run(retry_pause_s=0.1))
    try:
        for threshold in thresholds:
            await driver.wait_for_acks(threshold)
            await asyncio.sleep(rng.uniform(0, 0.02))
            kill_postgres(own_server)
            await asyncio.sleep(rng.uniform(0.2, 0.8))  # the client keeps sending: 503s
            await asyncio.to_thread(own_server.start)  # crash recovery replays the WAL
        await asyncio.wait_for(sending, 120)
    finally:
        sending.cancel()

    assert not driver.failures, (seed, driver.failures[:5])
    assert len(driver.acks) == CALLBACKS, seed
    async with asyncpg.create_pool(dsn, init=register_codecs, min_size=1, max_size=2) as pool:
        await wait_for_projection(pool, within_s=20)
        async with pool.acquire() as conn:
            await check_log(conn, driver.acks, seed)
            await check_projections(conn, seed)
    assert await service.stop() == 0

"""Projection lag at a fixed load: from an event's 200 (committed) to its visibility in
``job_status``.

A sender process (``python -m bench.lag URL RATE SECONDS``) sends distinct signed callbacks
open-loop at a fixed rate (the n-th request leaves at start + n/RATE whether or not earlier
ones were answered) and reports, per accepted event, its position and the CLOCK_MONOTONIC time
its 200 arrived. Meanwhile a watcher here polls the ``job_status`` checkpoint
(``projection_checkpoints``) on a dedicated connection about every millisecond and stamps
when each value became visible. An event's lag is the first stamp at which the checkpoint
reached its position, minus its 200; the projector may apply an event before the 200 reaches
the client, which counts as 0.
"""

from __future__ import annotations

import argparse
import asyncio
import bisect
import contextlib
import gc
import json
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiohttp
import asyncpg

from bench.common import (
    PYTHON,
    drop_database,
    fresh_database,
    heartbeat_body,
    percentile,
    server,
    signed,
)
from bench.ingest import TARGET_SPECS
from bench.servers import WEBHOOK_PATH

CHECKPOINT = "SELECT position FROM projection_checkpoints WHERE name = 'job_status'"
POLL_S = 0.001
SETTLE_S = 30.0  # how long the projector may take to catch up once the sender is done


async def send(url: str, rate: float, seconds: float) -> dict[str, Any]:
    """Open-loop sender: (position, ack time) per accepted callback, and the errors."""
    count = max(1, int(rate * seconds))
    prepared = []
    for i in range(count):
        body = heartbeat_body(1_000_000 + i)
        prepared.append((signed(body), body))
    acked: list[tuple[int, float]] = []
    errors = 0

    async def one(session: aiohttp.ClientSession, headers: dict[str, str], body: bytes) -> None:
        nonlocal errors
        try:
            async with session.post(url, data=body, headers=headers) as response:
                answer = await response.json() if response.status == 200 else None
        except aiohttp.ClientError:
            answer = None
        if answer is None:
            errors += 1
        else:
            acked.append((int(answer["position"]), time.monotonic()))

    loop = asyncio.get_running_loop()
    connector = aiohttp.TCPConnector(limit=256)
    async with aiohttp.ClientSession(connector=connector) as session:
        start = loop.time() + 0.05
        tasks = []
        for i, (headers, body) in enumerate(prepared):
            delay = start + i / rate - loop.time()
            if delay > 0:
                await asyncio.sleep(delay)
            tasks.append(asyncio.create_task(one(session, headers, body)))
        sent_s = loop.time() - start
        await asyncio.gather(*tasks)
    return {"acked": acked, "errors": errors, "sent": count, "sent_rate": count / sent_s}


async def watch(dsn: str, head: asyncio.Future[int]) -> list[tuple[int, float]]:
    """(checkpoint, first time seen) for each new checkpoint value, until it reaches ``head``
    once that is known (or SETTLE_S after)."""
    conn = await asyncpg.connect(dsn)
    stamps: list[tuple[int, float]] = []
    settle_until: float | None = None
    try:
        last = -1
        while True:
            position = await conn.fetchval(CHECKPOINT)
            now = time.monotonic()
            if position != last:
                stamps.append((position, now))
                last = position
            if head.done():
                settle_until = settle_until or now + SETTLE_S
                if position >= head.result() or now > settle_until:
                    return stamps
            await asyncio.sleep(POLL_S)
    finally:
        await conn.close()


async def observe(dsn: str, url: str, rate: float, seconds: float) -> dict[str, Any]:
    head: asyncio.Future[int] = asyncio.get_running_loop().create_future()
    watcher = asyncio.create_task(watch(dsn, head))
    sender = await asyncio.create_subprocess_exec(
        PYTHON, "-m", "bench.lag", url, str(rate), str(seconds), stdout=subprocess.PIPE
    )
    output, _ = await sender.communicate()
    if sender.returncode != 0:
        head.set_result(0)
        await watcher
        raise RuntimeError(f"lag sender exited with {sender.returncode}")
    sent = json.loads(output)
    head.set_result(max((p for p, _ in sent["acked"]), default=0))
    return {**sent, "stamps": await watcher}


@contextlib.contextmanager
def paused_gc() -> Iterator[None]:
    """No cyclic garbage collection in this process while it takes the stamps (nor in the
    sender, ``main``): a full pass over a benchmark's heap took 20-90 ms, during which no stamp
    is taken and no request sent or answer read, and the pause was counted as the projector's
    lag. Reference counting still frees nearly everything; the rest waits for the end."""
    gc.disable()
    try:
        yield
    finally:
        gc.enable()


def lags_ms(acked: list[tuple[int, float]], stamps: list[tuple[int, float]]) -> list[float]:
    """Per acknowledged event: ms from its 200 to the first stamp covering its position."""
    positions = [p for p, _ in stamps]
    lags = []
    for position, ack in acked:
        index = bisect.bisect_left(positions, position)
        if index == len(stamps):
            continue  # never became visible within the settle time (counted as missing)
        lags.append(max(0.0, stamps[index][1] - ack) * 1000)
    return lags


def run(server_dsn: str, scratch: Path, rate: float, seconds: float) -> dict[str, Any]:
    """Serve jobtrail on a fresh database and measure the lag at ``rate`` callbacks/s."""
    print(f"lag: open-loop {rate:.0f} callbacks/s for {seconds:.0f}s", flush=True)
    dsn = asyncio.run(fresh_database(server_dsn, "bench_lag"))
    command, env = TARGET_SPECS["jobtrail"].launch(dsn, scratch)
    with server(command, env, scratch / "jobtrail-lag.log") as (port, _process), paused_gc():
        url = f"http://127.0.0.1:{port}{WEBHOOK_PATH}"
        observed = asyncio.run(observe(dsn, url, rate, seconds))
    asyncio.run(drop_database(server_dsn, "bench_lag"))
    lags = lags_ms(observed["acked"], observed["stamps"])
    result: dict[str, Any] = {
        "rate": round(rate, 1),
        "sent_rate": round(observed["sent_rate"], 1),
        "events": len(lags),
        "missing": len(observed["acked"]) - len(lags),
        "errors": observed["errors"],
        "checkpoint_moves": len(observed["stamps"]),
    }
    if lags:
        result |= {
            "p50_ms": round(percentile(lags, 50), 2),
            "p99_ms": round(percentile(lags, 99), 2),
            "max_ms": round(max(lags), 2),
        }
    print(
        f"  lag p50 {result.get('p50_ms', 'n/a')} ms   p99 {result.get('p99_ms', 'n/a')} ms"
        f"   ({result['events']} events, sent at {result['sent_rate']:.0f}/s,"
        f" errors {result['errors']}, missing {result['missing']})",
        flush=True,
    )
    return result


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.lag", description="the lag sender")
    parser.add_argument("url")
    parser.add_argument("rate", type=float)
    parser.add_argument("seconds", type=float)
    args = parser.parse_args()
    with paused_gc():
        json.dump(asyncio.run(send(args.url, args.rate, args.seconds)), sys.stdout)


if __name__ == "__main__":
    main()

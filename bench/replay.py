"""Replay: ``jobtrail replay`` of a large log against a raw ordered read of the same events.

The log is generated straight into a fresh database through ``events.store.append_batch`` (the
appender's own code: hash chain, stream heads, idempotency keys), 10,000 events a transaction:
realistic callbacks of ~N/10 jobs, about 1,000 of them live at a time, each with
``provisioning``, heartbeats and a terminal status. Then, each in its own process, timed by
wall clock from its start to its exit:

- raw read: ``SELECT * FROM events ORDER BY position`` streamed through an asyncpg cursor, rows
  decoded and dropped (``python -m bench.replay raw-read DSN``): the floor of reading the log;
- ``jobtrail replay``: rebuilds every projection from position 0; its peak RSS is that child's
  ``ru_maxrss`` from ``wait4``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import random
import re
import subprocess
import sys
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import asyncpg
import structlog

from bench.common import JOBTRAIL, PYTHON, fresh_database, jobtrail_env, median
from events.catalog import HEARTBEAT_RECORDED, STATUS_REPORTED, job_stream
from events.models import NewEvent, format_timestamp
from events.partitions import ensure_partitions, month_of
from events.store import append_batch, register_codecs
from service.migrate import migrate

BATCH = 10_000
EVENTS_PER_JOB = 10  # provisioning, 8 heartbeats, a terminal status
LIVE_JOBS = 1_000
TERMINAL = ("succeeded",) * 16 + ("failed",) * 3 + ("cancelled",)
REGIONS = ("eu-west-1", "us-east-1", "ap-south-1")
START = datetime(2026, 1, 1, tzinfo=UTC)
GENERATED_MONTHS = 2  # a group of LIVE_JOBS jobs spans 10 minutes: 1M events about 17 hours


def callbacks(count: int, seed: int = 10) -> Iterator[NewEvent]:
    """``count`` callbacks: groups of LIVE_JOBS jobs, each group step by step, a minute apart."""
    rng = random.Random(seed)
    start = START
    emitted = 0
    group = 0
    while emitted < count:
        jobs = range(group * LIVE_JOBS, (group + 1) * LIVE_JOBS)
        for step in range(EVENTS_PER_JOB):
            for job in jobs:
                if emitted == count:
                    return
                if step == 0:
                    status = "provisioning"
                elif step == EVENTS_PER_JOB - 1:
                    status = rng.choice(TERMINAL)
                else:
                    status = "heartbeat"
                at = start + timedelta(minutes=group * EVENTS_PER_JOB + step, seconds=job % 60)
                key = f"msg_bench_{job}_{step}"
                job_id = f"vm-{job}"
                data = {
                    "job_id": job_id,
                    "status": status,
                    "run_id": 10_000_000 + job,
                    "run_attempt": 1,
                    "agent_id": f"agent-{job % 97}",
                    "region": REGIONS[job % len(REGIONS)],
                }
                metadata = {
                    "scheme": "standard",
                    "idempotency_key": key,
                    "request_id": None,
                    "remote_addr": "127.0.0.1",
                    "received_at": format_timestamp(at),
                }
                yield NewEvent(
                    stream_id=job_stream(job_id),
                    type=HEARTBEAT_RECORDED if status == "heartbeat" else STATUS_REPORTED,
                    data=data,
                    metadata=metadata,
                    received_at=at,
                    idempotency_key=key,
                )
                emitted += 1
        group += 1


async def generate(dsn: str, count: int) -> None:
    # Quiet the migrations' info lines in the benchmark's output.
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.WARNING))
    conn = await asyncpg.connect(dsn)
    try:
        await register_codecs(conn)
        await migrate(conn)
        # The log is partitioned by month: the generated events' months need their partitions.
        await ensure_partitions(conn, month_of(START), GENERATED_MONTHS)
        batch: list[NewEvent] = []
        for event in callbacks(count):
            batch.append(event)
            if len(batch) == BATCH:
                async with conn.transaction():
                    await append_batch(conn, batch)
                batch = []
        if batch:
            async with conn.transaction():
                await append_batch(conn, batch)
        await conn.execute("VACUUM ANALYZE events")
    finally:
        await conn.close()


async def raw_read(dsn: str) -> int:
    """Stream every event in position order; return how many."""
    conn = await asyncpg.connect(dsn)
    rows = 0
    try:
        async with conn.transaction():
            query = "SELECT * FROM events ORDER BY position"
            async for _row in conn.cursor(query, prefetch=BATCH):
                rows += 1
    finally:
        await conn.close()
    return rows


def timed_child(command: list[str], env: dict[str, str]) -> tuple[float, float, str]:
    """Run ``command`` to its end: (wall seconds, its peak RSS in MiB, its stdout)."""
    started = time.perf_counter()
    process = subprocess.Popen(command, env=env, stdout=subprocess.PIPE)
    assert process.stdout is not None
    output = process.stdout.read().decode()
    _pid, status, usage = os.wait4(process.pid, 0)
    seconds = time.perf_counter() - started
    process.returncode = os.waitstatus_to_exitcode(status)
    if process.returncode != 0:
        raise RuntimeError(f"{command[0]} exited with {process.returncode}: {output}")
    return seconds, usage.ru_maxrss / 1024, output


def run(server_dsn: str, scratch: Path, count: int, rounds_count: int = 3) -> dict[str, Any]:
    print(f"replay: generating {count} events", flush=True)
    dsn = asyncio.run(fresh_database(server_dsn, "bench_replay"))
    started = time.perf_counter()
    asyncio.run(generate(dsn, count))
    generated_s = time.perf_counter() - started
    print(f"  generated in {generated_s:.1f}s ({count / generated_s:.0f} events/s)", flush=True)

    env = jobtrail_env(dsn, scratch / "jobtrail-replay")
    # Interleaved rounds, medians reported: on a shared machine one read or replay alone can be
    # off by a third either way.
    rounds: list[dict[str, Any]] = []
    for _ in range(max(1, rounds_count)):
        raw_s, raw_rss, raw_out = timed_child([PYTHON, "-m", "bench.replay", "raw-read", dsn], env)
        if json.loads(raw_out)["rows"] != count:
            raise RuntimeError(f"raw read saw {raw_out}, expected {count} rows")
        replay_s, replay_rss, replay_out = timed_child([JOBTRAIL, "replay"], env)
        reported = re.search(r"in ([0-9.]+)s", replay_out)
        rounds.append(
            {
                "events_per_s": round(count / replay_s),
                "raw_read_per_s": round(count / raw_s),
                "seconds": round(replay_s, 2),
                "reported_seconds": float(reported.group(1)) if reported else None,
                "raw_read_seconds": round(raw_s, 2),
                "rss_mb": round(replay_rss, 1),
                "raw_read_rss_mb": round(raw_rss, 1),
            }
        )
        print(
            f"  replay {count / replay_s:.0f} events/s ({replay_s:.1f}s, peak RSS"
            f" {replay_rss:.0f} MiB)   raw read {count / raw_s:.0f} events/s ({raw_s:.1f}s)",
            flush=True,
        )

    def middle(key: str) -> Any:
        return median([r[key] for r in rounds])

    def spread(key: str) -> list[Any]:
        return [min(r[key] for r in rounds), max(r[key] for r in rounds)]

    return {
        "events": count,
        "events_per_s": round(middle("events_per_s")),
        "raw_read_per_s": round(middle("raw_read_per_s")),
        "events_per_s_min_max": spread("events_per_s"),
        "raw_read_per_s_min_max": spread("raw_read_per_s"),
        "seconds": middle("seconds"),
        "raw_read_seconds": middle("raw_read_seconds"),
        "rss_mb": max(r["rss_mb"] for r in rounds),
        "raw_read_rss_mb": max(r["raw_read_rss_mb"] for r in rounds),
        "generate_seconds": round(generated_s, 1),
        "rounds": rounds,
    }


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.replay")
    parser.add_argument("action", choices=["raw-read"])
    parser.add_argument("dsn")
    args = parser.parse_args()
    json.dump({"rows": asyncio.run(raw_read(args.dsn))}, sys.stdout)


if __name__ == "__main__":
    main()

"""Ingest throughput: each target a separate server process, driven by wrk, rounds interleaved.

Every round signs a fresh file of distinct callbacks (shared by the round's targets, each on a
fresh database, so none is a duplicate where it lands) and runs the targets one after another:
ceiling, naive, eventsourcing, jobtrail, then the next round. Interleaving spreads slow
moments of a busy machine over all the targets instead of one.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench.common import (
    HERE,
    JOBTRAIL,
    JOBTRAIL_WORKERS,
    PYTHON,
    SECRET,
    base_env,
    drop_database,
    fresh_database,
    heartbeat_body,
    jobtrail_env,
    peak_rss_mb,
    sampling_memory,
    server,
    signed,
    summary,
)
from bench.servers import WEBHOOK_PATH

TARGETS = ("ceiling", "naive", "eventsourcing", "jobtrail")


@dataclass(frozen=True)
class Target:
    name: str
    needs_database: bool
    # (database DSN or "", scratch dir) -> (command without --port, environment)
    launch: Callable[[str, Path], tuple[list[str], dict[str, str]]]


def _reference(kind: str) -> Callable[[str, Path], tuple[list[str], dict[str, str]]]:
    def launch(dsn: str, _scratch: Path) -> tuple[list[str], dict[str, str]]:
        command = [PYTHON, "-m", "bench.servers", kind, "--secret", SECRET]
        return [*command, "--dsn", dsn] if dsn else command, base_env()

    return launch


def _jobtrail(dsn: str, scratch: Path) -> tuple[list[str], dict[str, str]]:
    command = [JOBTRAIL, "serve", "--workers", str(JOBTRAIL_WORKERS)]
    return command, jobtrail_env(dsn, scratch / "jobtrail-data")


TARGET_SPECS = {
    "ceiling": Target("ceiling", False, _reference("ceiling")),
    "naive": Target("naive", True, _reference("naive")),
    "eventsourcing": Target("eventsourcing", True, _reference("eventsourcing")),
    "jobtrail": Target("jobtrail", True, _jobtrail),
}


def write_requests(path: Path, count: int) -> None:
    """``count`` distinct signed callbacks, one a line: webhook-id, timestamp, signature, body."""
    now = int(time.time())
    with path.open("w", encoding="utf-8") as out:
        for i in range(count):
            body = heartbeat_body(i)
            headers = signed(body, now)
            out.write(
                f"{headers['webhook-id']}\t{now}\t{headers['webhook-signature']}\t{body.decode()}\n"
            )


def run_wrk(port: int, requests: Path, args: argparse.Namespace) -> dict[str, float]:
    env = {**os.environ, "BENCH_REQUESTS": str(requests), "BENCH_THREADS": str(args.threads)}
    result = subprocess.run(
        [
            "wrk",
            f"-t{args.threads}",
            f"-c{args.connections}",
            f"-d{args.duration}s",
            "--timeout",
            "10s",
            "-s",
            str(HERE / "wrk_requests.lua"),
            f"http://127.0.0.1:{port}{WEBHOOK_PATH}",
        ],
        env=env,
        capture_output=True,
        text=True,
        check=True,
    )
    line = next(x for x in result.stdout.splitlines() if x.startswith("JSON "))
    raw = json.loads(line[5:])
    return {
        "rps": round(raw["requests"] / (raw["duration_us"] / 1e6), 1),
        "p50_ms": raw["p50_us"] / 1000,
        "p99_ms": raw["p99_us"] / 1000,
        "requests": raw["requests"],
        "errors": raw["errors"] + raw["non2xx"],
    }


def measure_once(
    target: Target, server_dsn: str, requests: Path, scratch: Path, args: argparse.Namespace
) -> dict[str, float]:
    """One wrk run against a fresh server process (and a fresh database) of ``target``."""
    dsn, database = "", f"bench_{target.name}"
    if target.needs_database:
        dsn = asyncio.run(fresh_database(server_dsn, database))
    command, env = target.launch(dsn, scratch)
    with server(command, env, scratch / f"{target.name}.log") as (port, process):
        # The memory of every process the server runs (jobtrail's workers and their parent).
        with sampling_memory(process.pid) as samples:
            result = run_wrk(port, requests, args)
        result["rss_mb"] = round(max(samples), 1)
        result["peak_rss_process_mb"] = round(peak_rss_mb(process.pid), 1)
    if target.needs_database:
        asyncio.run(drop_database(server_dsn, database))
    return result


def aggregate(rounds: list[dict[str, float]]) -> dict[str, Any]:
    """Median of the rounds, with their min and max."""
    rps = summary([r["rps"] for r in rounds])
    p99 = summary([r["p99_ms"] for r in rounds], 3)
    p50 = summary([r["p50_ms"] for r in rounds], 3)
    return {
        "rps": rps["median"],
        "p50_ms": p50["median"],
        "p99_ms": p99["median"],
        "min": {"rps": rps["min"], "p50_ms": p50["min"], "p99_ms": p99["min"]},
        "max": {"rps": rps["max"], "p50_ms": p50["max"], "p99_ms": p99["max"]},
        "errors": sum(r["errors"] for r in rounds),
        "rss_mb": max(r["rss_mb"] for r in rounds),
        "rounds": rounds,
    }


def run(
    server_dsn: str, scratch: Path, args: argparse.Namespace, names: tuple[str, ...] = TARGETS
) -> dict[str, Any]:
    """``args.rounds`` interleaved rounds over ``names``; per target, its aggregate."""
    print(
        f"ingest: wrk -t{args.threads} -c{args.connections} -d{args.duration}s,"
        f" {args.rounds} rounds interleaved",
        flush=True,
    )
    rounds: dict[str, list[dict[str, float]]] = {name: [] for name in names}
    for number in range(1, args.rounds + 1):
        requests = scratch / "requests.tsv"
        write_requests(requests, args.requests)  # signed now: the timestamps stay fresh
        for name in names:
            result = measure_once(TARGET_SPECS[name], server_dsn, requests, scratch, args)
            rounds[name].append(result)
            print(
                f"  round {number}  {name:<13} {result['rps']:>9.0f} req/s"
                f"   p50 {result['p50_ms']:7.2f} ms   p99 {result['p99_ms']:7.2f} ms"
                f"   errors {result['errors']:.0f}",
                flush=True,
            )
    return {name: aggregate(results) for name, results in rounds.items()}

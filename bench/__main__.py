"""``make bench``: ingest throughput of jobtrail against its ceilings, on this machine.

Each target is a separate server process on loopback, driven by wrk (2 threads, 64
connections) with distinct pre-signed Standard Webhooks callbacks:

- ``ceiling``: an aiohttp handler that only answers 200;
- ``naive``: signature check and validation, then one INSERT + COMMIT per request;
- ``jobtrail``: ``jobtrail serve`` (group commit, projector running).

The database is ``BENCH_DATABASE_URL`` or a fresh embedded PostgreSQL with fsync on. Results are
printed and written to ``bench/results.json``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import asyncpg

from devdb import EmbeddedPostgres
from service.signatures import sign_standard, standard_key
from tests.helpers import free_port, with_database

HERE = Path(__file__).resolve().parent
SECRET = "whsec_" + "YmVuY2htYXJrLXNlY3JldC1ieXRlcy0xMjM0NTY3OA=="
TOKEN = "bench-token"


@contextmanager
def database() -> Iterator[str]:
    configured = os.environ.get("BENCH_DATABASE_URL")
    if configured:
        yield configured
        return
    with tempfile.TemporaryDirectory(prefix="jobtrail-bench-") as data_dir:
        server = EmbeddedPostgres(Path(data_dir) / "pg")
        try:
            yield server.start()
        finally:
            server.destroy()


async def create_database(dsn: str, name: str) -> str:
    conn = await asyncpg.connect(dsn)
    try:
        await conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        await conn.execute(f'CREATE DATABASE "{name}"')
    finally:
        await conn.close()
    return with_database(dsn, name)


def write_requests(path: Path, count: int) -> None:
    key = standard_key(SECRET)
    now = int(time.time())
    with path.open("w", encoding="utf-8") as out:
        for i in range(count):
            body = json.dumps(
                {
                    "job_id": f"bench-{i % 5000}",
                    "status": "heartbeat",
                    "run_id": i,
                    "run_attempt": 1,
                }
            ).encode()
            msg_id = f"msg_{uuid.uuid4().hex}"
            signature = sign_standard(key, msg_id, now, body)
            out.write(f"{msg_id}\t{now}\t{signature}\t{body.decode()}\n")


def wait_for_port(port: int, process: subprocess.Popen[bytes], within_s: float = 30) -> None:
    deadline = time.monotonic() + within_s
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"server exited with {process.returncode}")
        with socket.socket() as sock:
            if sock.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.1)
    raise RuntimeError("server did not start")


def peak_rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return 0.0


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
            f"http://127.0.0.1:{port}/api/webhooks/github",
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
        "errors": raw["errors"] + raw["non2xx"],
    }


def measure(
    name: str, command: list[str], env: dict[str, str], port: int, args: argparse.Namespace
) -> dict[str, float]:
    with tempfile.TemporaryDirectory() as scratch:
        requests = Path(scratch) / "requests.tsv"
        write_requests(requests, args.requests)
        process = subprocess.Popen(
            command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        try:
            wait_for_port(port, process)
            result = run_wrk(port, requests, args)
            result["rss_mb"] = round(peak_rss_mb(process.pid), 1)
        finally:
            process.terminate()
            process.wait(30)
    print(
        f"  {name:<10} {result['rps']:>10.0f} req/s   p50 {result['p50_ms']:.2f} ms"
        f"   p99 {result['p99_ms']:.2f} ms   errors {result['errors']:.0f}",
        flush=True,
    )
    return result


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    parser.add_argument("--duration", type=int, default=10, help="seconds per wrk run")
    parser.add_argument("--connections", type=int, default=64)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--requests", type=int, default=150_000, help="distinct bodies")
    args = parser.parse_args()
    if shutil.which("wrk") is None:
        sys.exit("wrk is not installed: apt-get install wrk")
    python = sys.executable
    jobtrail = str(Path(python).parent / "jobtrail")
    results: dict[str, Any] = {"ingest": {}}
    print(f"ingest, wrk -t{args.threads} -c{args.connections} -d{args.duration}s:")
    with database() as dsn:
        env = {k: v for k, v in os.environ.items() if not k.startswith(("JOBTRAIL_", "GITHUB_"))}
        port = free_port()
        results["ingest"]["ceiling"] = measure(
            "ceiling",
            [python, "-m", "bench.servers", "ceiling", "--port", str(port), "--secret", SECRET],
            env,
            port,
            args,
        )
        naive_dsn = asyncio.run(create_database(dsn, "bench_naive"))
        port = free_port()
        results["ingest"]["naive"] = measure(
            "naive",
            [
                python,
                "-m",
                "bench.servers",
                "naive",
                "--port",
                str(port),
                "--dsn",
                naive_dsn,
                "--secret",
                SECRET,
            ],
            env,
            port,
            args,
        )
        jobtrail_dsn = asyncio.run(create_database(dsn, "bench_jobtrail"))
        port = free_port()
        results["ingest"]["jobtrail"] = measure(
            "jobtrail",
            [jobtrail, "serve", "--port", str(port)],
            {
                **env,
                "DATABASE_URL": jobtrail_dsn,
                "GITHUB_CALLBACK_SECRET": SECRET,
                "JOBTRAIL_READ_TOKENS": TOKEN,
                "JOBTRAIL_LOG_FORMAT": "json",
            },
            port,
            args,
        )
    ingest = results["ingest"]
    results["rss"] = {"service_mb": ingest["jobtrail"]["rss_mb"]}
    results["ratios"] = {
        "jobtrail_vs_naive": round(ingest["jobtrail"]["rps"] / ingest["naive"]["rps"], 2),
        "jobtrail_vs_ceiling": round(ingest["jobtrail"]["rps"] / ingest["ceiling"]["rps"], 2),
    }
    print(f"  ratios: {results['ratios']}")
    (HERE / "results.json").write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()

"""The machine the figures come from, the printed table and ``bench/results.json``."""

from __future__ import annotations

import asyncio
import os
import platform
import subprocess
from pathlib import Path
from typing import Any

import asyncpg

from bench.common import JOBTRAIL_WORKERS
from bench.servers import has_uvloop


def _cpu_model() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.processor() or "unknown"


def _memory_gb() -> float:
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemTotal:"):
            return round(int(line.split()[1]) / 1024 / 1024, 1)
    return 0.0


async def _postgres(dsn: str) -> dict[str, str]:
    conn = await asyncpg.connect(dsn)
    try:
        return {
            "postgres": await conn.fetchval("SHOW server_version"),
            "fsync": await conn.fetchval("SHOW fsync"),
            "synchronous_commit": await conn.fetchval("SHOW synchronous_commit"),
            "shared_buffers": await conn.fetchval("SHOW shared_buffers"),
        }
    finally:
        await conn.close()


def _wrk_version() -> str:
    try:
        result = subprocess.run(["wrk", "-v"], capture_output=True, text=True, check=False)
    except OSError:
        return "not installed"
    return (result.stdout or result.stderr).strip().splitlines()[0]


def machine(dsn: str) -> dict[str, Any]:
    return {
        "cpu": _cpu_model(),
        "cores": os.cpu_count(),
        "memory_gb": _memory_gb(),
        "load_avg_1m": round(os.getloadavg()[0], 2),
        **asyncio.run(_postgres(dsn)),
        "python": platform.python_version(),
        "wrk": _wrk_version(),
        "ceiling_event_loop": "uvloop" if has_uvloop() else "asyncio",
        "jobtrail_workers": JOBTRAIL_WORKERS,
    }


def _ratio(numerator: float | None, denominator: float | None) -> float | None:
    if not numerator or not denominator:
        return None
    return round(numerator / denominator, 3)


def _get(results: dict[str, Any], *path: str) -> Any:
    value: Any = results
    for key in path:
        if not isinstance(value, dict) or key not in value:
            return None
        value = value[key]
    return value


def ratios(results: dict[str, Any]) -> dict[str, float | None]:
    jobtrail = _get(results, "ingest", "jobtrail", "rps")
    return {
        "jobtrail_vs_naive": _ratio(jobtrail, _get(results, "ingest", "naive", "rps")),
        "jobtrail_vs_ceiling": _ratio(jobtrail, _get(results, "ingest", "ceiling", "rps")),
        "jobtrail_vs_eventsourcing": _ratio(
            jobtrail, _get(results, "ingest", "eventsourcing", "rps")
        ),
        "replay_vs_raw_read": _ratio(
            _get(results, "replay", "events_per_s"), _get(results, "replay", "raw_read_per_s")
        ),
    }


def _fmt(value: Any, digits: int = 0) -> str:
    if value is None:
        return "-"
    return f"{value:,.{digits}f}" if isinstance(value, int | float) else str(value)


def _span(low_high: list[Any] | None) -> str:
    """`` (min-max a-b)`` when the rounds differed."""
    if not low_high or low_high[0] == low_high[1]:
        return ""
    return f" (min-max {_fmt(low_high[0])}-{_fmt(low_high[1])})"


def table(results: dict[str, Any]) -> str:
    m = results["machine"]
    lines = [
        "",
        f"{m['cpu']}, {m['cores']} cores, {m['memory_gb']} GB; PostgreSQL {m['postgres']}"
        f" (fsync={m['fsync']}, synchronous_commit={m['synchronous_commit']});"
        f" Python {m['python']}; ceiling on {m['ceiling_event_loop']}",
        "",
        f"{'ingest':<14}{'req/s median':>14}{'min-max':>20}{'p99 ms':>10}"
        f"{'p99 min-max':>18}{'errors':>8}{'RSS MiB':>9}",
    ]
    for name, r in results.get("ingest", {}).items():
        lines.append(
            f"{name:<14}{_fmt(r['rps']):>14}"
            f"{_fmt(r['min']['rps']) + '-' + _fmt(r['max']['rps']):>20}"
            f"{_fmt(r['p99_ms'], 1):>10}"
            f"{_fmt(r['min']['p99_ms'], 1) + '-' + _fmt(r['max']['p99_ms'], 1):>18}"
            f"{_fmt(r['errors']):>8}{_fmt(r['rss_mb'], 1):>9}"
        )
    lag = results.get("lag")
    if lag:
        lines.append(
            f"\nlag at {_fmt(lag['rate'])}/s: p50 {_fmt(lag.get('p50_ms'), 2)} ms,"
            f" p99 {_fmt(lag.get('p99_ms'), 2)} ms, max {_fmt(lag.get('max_ms'), 2)} ms"
        )
    replay = results.get("replay")
    if replay:
        lines.append(
            f"replay of {_fmt(replay['events'])} events: {_fmt(replay['events_per_s'])} events/s"
            f"{_span(replay.get('events_per_s_min_max'))}"
            f" (peak RSS {_fmt(replay['rss_mb'], 1)} MiB);"
            f" raw ordered read {_fmt(replay['raw_read_per_s'])} events/s"
            f"{_span(replay.get('raw_read_per_s_min_max'))}"
        )
    lines.append(
        "ratios: " + ", ".join(f"{k} {_fmt(v, 3)}" for k, v in results.get("ratios", {}).items())
    )
    return "\n".join(lines)

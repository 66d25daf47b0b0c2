"""``make bench``: jobtrail's ingest, projection lag and replay against their references.

All on this machine and one PostgreSQL server (``BENCH_DATABASE_URL``, or a fresh embedded one
with fsync on), each target on a fresh database of its own:

1. ingest (``bench.ingest``): ``ceiling``, ``naive``, ``eventsourcing`` and ``jobtrail``, each a
   separate server process on 127.0.0.1 driven by wrk with distinct pre-signed callbacks,
   rounds interleaved; median and min-max of req/s and p99;
2. lag (``bench.lag``): from an event's 200 to its visibility in ``job_status``, at half of
   jobtrail's median ingest rate;
3. replay (``bench.replay``): ``jobtrail replay`` of a generated log against a raw ordered
   read of the same events, and the replay's peak RSS.

Prints a table and writes ``bench/results.json`` (SPEC section 11).
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from bench import ingest, lag, replay, report
from bench.common import HERE, database_server

PARTS = ("ingest", "lag", "replay")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m bench",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--duration", type=int, default=10, help="seconds per wrk run (10)")
    parser.add_argument("--rounds", type=int, default=3, help="interleaved ingest rounds (3)")
    parser.add_argument("--connections", type=int, default=64, help="wrk connections (64)")
    parser.add_argument("--threads", type=int, default=2, help="wrk threads (2)")
    parser.add_argument(
        "--requests", type=int, default=150_000, help="distinct signed bodies per round"
    )
    parser.add_argument("--lag-seconds", type=float, default=10.0, help="lag run length (10)")
    parser.add_argument(
        "--lag-rate", type=float, help="callbacks/s for the lag run (default: half of jobtrail's)"
    )
    parser.add_argument(
        "--replay-events", type=int, default=1_000_000, help="events in the replayed log (1M)"
    )
    parser.add_argument(
        "--replay-rounds", type=int, default=3, help="interleaved raw read/replay rounds (3)"
    )
    parser.add_argument(
        "--only", default=",".join(PARTS), help="comma-separated parts: ingest,lag,replay"
    )
    parser.add_argument("--output", type=Path, default=HERE / "results.json")
    args = parser.parse_args(argv)
    args.parts = [p.strip() for p in args.only.split(",") if p.strip()]
    unknown = set(args.parts) - set(PARTS)
    if unknown or not args.parts:
        parser.error(f"--only takes some of {','.join(PARTS)}, not {args.only!r}")
    return args


def lag_rate(args: argparse.Namespace, dsn: str, scratch: Path, results: dict[str, Any]) -> float:
    if args.lag_rate:
        return float(args.lag_rate)
    if "jobtrail" not in results.get("ingest", {}):
        print("lag: measuring jobtrail's ingest rate first (one round)", flush=True)
        once = argparse.Namespace(**{**vars(args), "rounds": 1})
        results.setdefault("ingest", {}).update(ingest.run(dsn, scratch, once, ("jobtrail",)))
    return float(results["ingest"]["jobtrail"]["rps"]) / 2


def main() -> None:
    args = parse_args()
    if shutil.which("wrk") is None and {"ingest", "lag"} & set(args.parts):
        sys.exit("wrk is not installed: make bench installs it (apt-get install wrk)")
    started = time.monotonic()
    results: dict[str, Any] = {}
    with database_server() as dsn, tempfile.TemporaryDirectory(prefix="bench-") as tmp:
        scratch = Path(tmp)
        results["machine"] = report.machine(dsn)
        m = results["machine"]
        print(
            f"PostgreSQL {m['postgres']}, fsync={m['fsync']},"
            f" synchronous_commit={m['synchronous_commit']}; ceiling on {m['ceiling_event_loop']};"
            f" jobtrail serve --workers {m['jobtrail_workers']}",
            flush=True,
        )
        if m["fsync"] != "on":
            print("WARNING: fsync is off on this server: commits are not durable", flush=True)
        if "ingest" in args.parts:
            results["ingest"] = ingest.run(dsn, scratch, args)
        if "lag" in args.parts:
            rate = lag_rate(args, dsn, scratch, results)
            results["lag"] = lag.run(dsn, scratch, rate, args.lag_seconds)
        if "replay" in args.parts:
            results["replay"] = replay.run(dsn, scratch, args.replay_events, args.replay_rounds)
    results["rss"] = {
        "service_mb": results.get("ingest", {}).get("jobtrail", {}).get("rss_mb"),
        "replay_mb": results.get("replay", {}).get("rss_mb"),
    }
    results["ratios"] = report.ratios(results)
    results["settings"] = {
        k: getattr(args, k)
        for k in (
            "duration",
            "rounds",
            "connections",
            "threads",
            "requests",
            "replay_events",
            "replay_rounds",
        )
    } | {"parts": args.parts, "lag_seconds": args.lag_seconds, "total_seconds": 0.0}
    results["settings"]["total_seconds"] = round(time.monotonic() - started, 1)
    print(report.table(results), flush=True)
    args.output.write_text(json.dumps(results, indent=2) + "\n")
    print(f"\nwrote {args.output} in {results['settings']['total_seconds']:.0f}s", flush=True)


if __name__ == "__main__":
    main()

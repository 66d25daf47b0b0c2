"""``jobtrail history`` (one job's timeline, each event's hash checked) and ``jobtrail verify``
(every chain and stream head, and every projection against a replay: ``projections.audit``)."""

from __future__ import annotations

import argparse
import sys
from typing import Any

from events.audit import Problem
from events.catalog import job_stream
from events.hashing import check_chain
from events.store import connect, read_stream
from projections.audit import Comparison, compare
from service.commands import common
from service.settings import Settings


def register(commands: common.Subcommands) -> None:
    history = common.add_command(
        commands,
        "history",
        cmd_history,
        help="a job's events in order, with hash checks",
        json=True,
    )
    history.add_argument("job_id")
    verify_help = "re-check every hash chain and every projection against a replay"
    common.add_command(commands, "verify", cmd_verify, help=verify_help, json=True)


# -- history -----------------------------------------------------------------------------------


def cmd_history(args: argparse.Namespace) -> int:
    async def work(pool: common.Pool, _settings: Settings) -> list[dict[str, Any]]:
        async with connect(pool) as conn:
            events = await read_stream(conn, job_stream(args.job_id))
        return [
            {**event.to_json(), "hash_ok": ok}
            for event, ok in zip(events, check_chain(events), strict=True)
        ]

    events = common.run(args, work)
    if args.json:
        common.print_json({"job_id": args.job_id, "events": events})
    elif not events:
        print(f"no events for job {args.job_id}", file=sys.stderr)
    else:
        rows = [
            (
                str(e["position"]),
                str(e["stream_position"]),
                e["received_at"],
                e["type"],
                str(e["data"].get("status") or "-"),
                str(e["metadata"].get("scheme") or "-"),
                str(e["metadata"].get("idempotency_key") or "-"),
                "ok" if e["hash_ok"] else "MISMATCH",
            )
            for e in events
        ]
        header = ("POSITION", "STREAM_POS", "RECEIVED_AT", "TYPE", "STATUS", "SCHEME")
        common.show_table((*header, "IDEMPOTENCY_KEY", "HASH"), rows)
    if not events or not all(e["hash_ok"] for e in events):
        return common.EXIT_FOUND
    return common.EXIT_OK


# -- verify ------------------------------------------------------------------------------------


def _describe(problem: Problem) -> str:
    where = f"{problem.stream_id or '-'} position {problem.position}"
    detail = f": {problem.detail}"
    if problem.kind == "projection":
        where = f"{problem.extra['projection']} key {problem.extra['key']!r} ({where})"
        detail = ""  # the field says it all
    elif "stream_position" in problem.extra:
        where += f" (stream position {problem.extra['stream_position']})"
    return (
        f"{problem.kind}: {where}: {problem.field}: expected {common.shown(problem.expected)},"
        f" found {common.shown(problem.actual)}{detail}"
    )


def cmd_verify(args: argparse.Namespace) -> int:
    """Re-compute every stream's hash chain and head, and compare a fresh in-memory replay up
    to each projection's checkpoint with the stored projection, all in one snapshot (safe
    while the service runs). Exit 1 naming the stream, position and field of any difference."""

    async def work(pool: common.Pool, _settings: Settings) -> Comparison:
        with common.progress_bar("verifying") as progress:
            async with connect(pool) as conn:
                return await compare(conn, chains=True, progress=progress)

    result = common.run(args, work)
    problems = result.all_problems()
    if args.json:
        common.print_json(
            {
                "ok": not problems,
                "problems": [p.to_json() for p in problems],
                "streams": result.streams,
                "events": result.events,
                "projections": result.checkpoints,
            }
        )
    else:
        for problem in problems:
            print(_describe(problem))
        checked = ", ".join(f"{name} at {at}" for name, at in result.checkpoints.items())
        summary = f"{result.events} events in {result.streams} streams; projections {checked}"
        print(f"{len(problems)} problems: {summary}" if problems else f"ok: {summary}")
    return common.EXIT_FOUND if problems else common.EXIT_OK

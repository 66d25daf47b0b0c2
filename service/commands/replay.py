"""``jobtrail replay``: rebuild projections aside and swap them in (``projections.replay``);
with ``--until-position``/``--until``, the jobs as they were then (``projections.asof``); with
``--dry-run``, what a rebuild would change (``projections.audit``).

Every mode folds the log from its first event, so none runs while months are archived
(``jobtrail archive``): exit 1, naming each archived month and how to restore it."""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Sequence
from datetime import datetime
from typing import Any

from events.partitions import ArchivedRange, refuse_if_archived
from events.store import connect
from projections.asof import fold_until, jobs_of
from projections.audit import compare
from projections.base import AnyProjection
from projections.registry import PROJECTIONS
from projections.replay import ReplayError, rebuild
from service.commands import common
from service.commands.jobs import print_jobs
from service.settings import Settings


def _position(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = -1
    if value < 0:
        raise argparse.ArgumentTypeError(f"not a position: {text!r}")
    return value


def _moment(text: str) -> datetime:
    try:
        value = datetime.fromisoformat(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an RFC 3339 time: {text!r}") from None
    if value.tzinfo is None:
        raise argparse.ArgumentTypeError(f"needs a time zone (Z or +HH:MM): {text!r}")
    return value


def register(commands: common.Subcommands) -> None:
    help = "rebuild projections from the log, aside, and swap them in"
    replay = common.add_command(commands, "replay", cmd_replay, help=help, json=True)
    replay.add_argument(
        "--projection",
        dest="projections",
        action="append",
        metavar="NAME",
        help=f"only this projection (repeatable; default all: {_known()})",
    )
    until = replay.add_mutually_exclusive_group()
    until.add_argument(
        "--until-position", type=_position, metavar="N", help="the state after event N"
    )
    until.add_argument("--until", type=_moment, metavar="TIME", help="the state at TIME (RFC 3339)")
    replay.add_argument("--dry-run", action="store_true", help="show what would change")


def _known() -> str:
    return ", ".join(p.name for p in PROJECTIONS)


def _selected(names: Sequence[str] | None) -> tuple[AnyProjection, ...]:
    if not names:
        return PROJECTIONS
    by_name = {p.name: p for p in PROJECTIONS}
    unknown = [n for n in names if n not in by_name]
    if unknown:
        raise common.CliError(f"unknown projection {', '.join(unknown)}; known: {_known()}")
    return tuple(by_name[n] for n in dict.fromkeys(names))


def cmd_replay(args: argparse.Namespace) -> int:
    """Rebuild projections from the log into tables beside the live ones and swap them in
    atomically. With --until-position or --until, print the jobs as they were then instead
    (the live projections untouched); with --dry-run, what a rebuild would change. Every mode
    needs the whole log: while months are archived (jobtrail archive) it exits 1, naming them."""
    projections = _selected(args.projections)
    point_in_time = args.until_position is not None or args.until is not None
    if point_in_time and args.dry_run:
        raise common.CliError("--dry-run does not go with --until-position or --until")
    if point_in_time and args.projections:
        raise common.CliError("--until-position and --until show whole jobs: no --projection")
    try:
        if point_in_time:
            return _as_of(args)
        if args.dry_run:
            return _dry_run(args, projections)
        return _rebuild(args, projections)
    except ArchivedRange as error:
        print(f"jobtrail: replay refused: {error}", file=sys.stderr)
        return common.EXIT_FOUND
    except ReplayError as error:
        raise common.CliError(str(error)) from None
    except KeyboardInterrupt:
        print("jobtrail: replay interrupted; the live projections are unchanged", file=sys.stderr)
        return common.EXIT_USAGE


def _rebuild(args: argparse.Namespace, projections: Sequence[AnyProjection]) -> int:
    async def work(pool: common.Pool, _settings: Settings) -> dict[str, Any]:
        started = time.perf_counter()
        with common.progress_bar("replaying") as progress:
            rebuilt = await rebuild(pool, projections, progress=progress)
        return {
            "projections": list(rebuilt.projections),
            "position": rebuilt.position,
            "events": rebuilt.events,
            "seconds": round(time.perf_counter() - started, 3),
        }

    summary = common.run(args, work)
    if args.json:
        common.print_json(summary)
    else:
        print(
            f"rebuilt {', '.join(summary['projections'])} up to position {summary['position']}"
            f" ({summary['events']} events) in {summary['seconds']:.2f}s"
        )
    return common.EXIT_OK


def _as_of(args: argparse.Namespace) -> int:
    async def work(pool: common.Pool, settings: Settings) -> tuple[list[dict[str, Any]], datetime]:
        async with connect(pool) as conn:
            await refuse_if_archived(conn)
            with common.progress_bar("folding") as progress:
                fold, moment = await fold_until(
                    conn, position=args.until_position, moment=args.until, progress=progress
                )
            await refuse_if_archived(conn)  # a month archived meanwhile is missing from the fold
            jobs = await jobs_of(conn, fold, now=moment, stale_after_s=settings.stale_after_s)
        return jobs, moment

    jobs, moment = common.run(args, work)
    if args.json:
        common.print_json({"jobs": jobs})
    else:
        print_jobs(jobs, moment)
    return common.EXIT_OK


def _dry_run(args: argparse.Namespace, projections: Sequence[AnyProjection]) -> int:
    async def work(pool: common.Pool, _settings: Settings) -> dict[str, Any]:
        with common.progress_bar("comparing") as progress:
            async with connect(pool) as conn:
                result = await compare(conn, projections, progress=progress)
        if not result.compared:
            raise ArchivedRange(result.archived)
        return {
            "dry_run": True,
            "events": result.events,
            "projections": [
                {
                    "name": name,
                    "position": position,
                    **{
                        change: [
                            d.to_json() if change == "changed" else d.key
                            for d in result.diffs
                            if d.projection == name and d.change == change
                        ]
                        for change in ("added", "removed", "changed")
                    },
                }
                for name, position in result.checkpoints.items()
            ],
        }

    report = common.run(args, work)
    if args.json:
        common.print_json(report)
        return common.EXIT_OK
    for projection in report["projections"]:
        added, removed, changed = (projection[c] for c in ("added", "removed", "changed"))
        print(
            f"{projection['name']} (replayed to its checkpoint, position"
            f" {projection['position']}): {len(added)} added, {len(removed)} removed,"
            f" {len(changed)} changed"
        )
        for key in added:
            print(f"  + {key}")
        for key in removed:
            print(f"  - {key}")
        for row in changed:
            for field, values in row["fields"].items():
                live, rebuilt = common.shown(values["live"]), common.shown(values["rebuilt"])
                print(f"  ~ {row['key']}: {field}: {live} -> {rebuilt}")
    return common.EXIT_OK

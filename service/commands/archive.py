"""``jobtrail archive``: old months of the log to JSON Lines files, their partitions detached
(``events.archive``); ``--restore`` brings a month back, ``--list`` shows what is where. The
files are checked by ``jobtrail verify --file`` (``service.commands.audit``).

Archiving changes the log's tables: it runs as the owner (the role that ran the migrations), as
``migrate`` and ``replay`` do, never as ``jobtrail_writer``.
"""

from __future__ import annotations

import argparse
import os
import sys
from datetime import date
from pathlib import Path
from typing import Any

import asyncpg

from events.archive import (
    ArchiveError,
    RestoreRefused,
    archive_month,
    drop_detached,
    hold_replay_lock,
    restore_month,
)
from events.locks import REPLAY_LOCK
from events.partitions import (
    Archived,
    archived_partitions,
    attached_months,
    current_month,
    format_month,
    list_partitions,
    parse_month,
)
from events.store import Connection, connect
from projections.sql import Q
from service.commands import common
from service.settings import Settings


def _month(text: str) -> date:
    try:
        return parse_month(text)
    except ValueError as error:
        raise argparse.ArgumentTypeError(str(error)) from None


def register(commands: common.Subcommands) -> None:
    help = "export old months of the log to files and detach them; --restore brings one back"
    archive = common.add_command(commands, "archive", cmd_archive, help=help, json=True)
    what = archive.add_mutually_exclusive_group(required=True)
    what.add_argument(
        "--before", type=_month, metavar="YYYY-MM", help="archive every month before this one"
    )
    what.add_argument(
        "--restore", type=_month, metavar="YYYY-MM", help="re-attach an archived month"
    )
    what.add_argument("--list", action="store_true", help="the partitions and archived months")
    archive.add_argument(
        "--dir", type=Path, default=Path("."), help="where the files go (default: .)"
    )
    archive.add_argument(
        "--drop", action="store_true", help="drop each detached partition once its file is safe"
    )


def cmd_archive(args: argparse.Namespace) -> int:
    """With --before YYYY-MM, archive every month before that one, oldest first: write its
    events to DIR/events_YYYY_MM.jsonl (the format of export; verify it with verify --file),
    record the file and detach the month's partition, which is kept (--drop drops it) until you
    drop it. Only past months, once the projections have applied them. With --restore YYYY-MM,
    attach a month's detached partition again, checked against its archive first. Runs as the
    owner of the log. Exit 1 when a month cannot be restored."""
    try:
        if args.list:
            return _list(args)
        if args.restore is not None:
            return _restore(args)
        return _archive(args)
    except asyncpg.InsufficientPrivilegeError as error:
        raise common.CliError(
            f"archive must run as the owner of the log (the role that ran the migrations): {error}"
        ) from None


# -- archive -----------------------------------------------------------------------------------


def _usable(directory: Path) -> None:
    if not directory.is_dir():
        raise common.CliError(f"--dir {directory}: not a directory")
    if not os.access(directory, os.W_OK | os.X_OK):
        raise common.CliError(f"--dir {directory}: not writable")


async def _caught_up(conn: Connection, last: int) -> None:
    """Refuse to archive events a projection has not applied: it would never see them."""
    for row in await conn.fetch(Q["read_checkpoints"]):
        if row["position"] < last:
            raise common.CliError(
                f"projection {row['name']} has applied the log up to position {row['position']},"
                f" and the month's last event is at position {last}: archive once the"
                " projections have caught up (is jobtrail serve running?)"
            )


def _archive(args: argparse.Namespace) -> int:
    before, now = args.before, current_month()
    if before > now:
        raise common.CliError(
            f"--before {format_month(before)} would archive {format_month(now)}, the current"
            " month: only past months can be archived"
        )
    _usable(args.dir)

    async def work(pool: common.Pool, _settings: Settings) -> tuple[list[dict[str, Any]], str]:
        done: list[dict[str, Any]] = []
        async with connect(pool) as conn:
            await hold_replay_lock(conn)
            try:
                for partition in await list_partitions(conn, before=before):
                    record = await archive_month(conn, partition, args.dir, check=_caught_up)
                    if args.drop:
                        await drop_detached(conn, record)
                    done.append(
                        {
                            **record.to_json(),
                            "path": str(args.dir / record.file),
                            "dropped": args.drop,
                            "drop": f"DROP TABLE {record.partition};",
                        }
                    )
            except (ArchiveError, OSError, common.CliError) as error:
                return done, str(error)  # the months before it stay archived: say which
            finally:
                await conn.execute("SELECT pg_advisory_unlock($1)", REPLAY_LOCK)
        return done, ""

    try:
        done, stopped = common.run(args, work)
    except ArchiveError as error:  # a replay is running
        raise common.CliError(str(error)) from None
    if args.json:
        common.print_json({"before": format_month(before), "archived": done})
    elif not done and not stopped:
        print(f"nothing to archive before {format_month(before)}")
    for month in [] if args.json else done:
        where = f"positions {month['first_position']}..{month['last_position']}, "
        print(
            f"archived {month['month']}: {month['events']} events"
            f" ({where if month['events'] else ''}sha256 {month['sha256']}) to {month['path']}"
        )
        if month["dropped"]:
            print(f"  partition {month['partition']} detached and dropped")
        else:
            print(
                f"  partition {month['partition']} detached and kept; once the file is stored"
                f" safely, drop it: {month['drop']}"
            )
    if stopped:
        print(f"jobtrail: archive stopped: {stopped}", file=sys.stderr)
        return common.EXIT_USAGE
    return common.EXIT_OK


# -- restore and list --------------------------------------------------------------------------


def _restore(args: argparse.Namespace) -> int:
    month = args.restore

    async def work(pool: common.Pool, _settings: Settings) -> tuple[Archived | None, str | None]:
        async with connect(pool) as conn:
            attached = (await attached_months(conn)).get(month)
            if attached is not None:
                return None, attached
            return await restore_month(conn, month), None

    try:
        restored, attached = common.run(args, work)
    except RestoreRefused as error:
        print(f"jobtrail: {format_month(month)} not restored: {error}", file=sys.stderr)
        return common.EXIT_FOUND
    except ArchiveError as error:
        raise common.CliError(str(error)) from None
    if args.json:
        common.print_json({"restored": None if restored is None else restored.to_json()})
    elif restored is None:
        print(f"{format_month(month)} is not archived: its partition {attached} is attached")
    else:
        print(f"restored {restored.describe()}: the partition is attached again")
    return common.EXIT_OK


def _list(args: argparse.Namespace) -> int:
    async def work(pool: common.Pool, _settings: Settings) -> dict[str, Any]:
        async with connect(pool) as conn:
            partitions = await list_partitions(conn)
            archived = await archived_partitions(conn)
        return {
            "partitions": [p.to_json() for p in partitions],
            "archived": [a.to_json() for a in archived],
        }

    listed = common.run(args, work)
    if args.json:
        common.print_json(listed)
        return common.EXIT_OK
    rows = [
        (p["month"], p["partition"], "attached", str(p["events"]), _range(p), "-")
        for p in listed["partitions"]
    ]
    rows += [
        (a["month"], a["partition"], "archived", str(a["events"]), _range(a), a["file"])
        for a in listed["archived"]
    ]
    header = ("MONTH", "PARTITION", "STATE", "EVENTS", "POSITIONS", "FILE")
    common.show_table(header, sorted(rows))
    return common.EXIT_OK


def _range(month: dict[str, Any]) -> str:
    first, last = month["first_position"], month["last_position"]
    return "-" if first is None else f"{first}..{last}"

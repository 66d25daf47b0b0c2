"""``jobtrail export`` (events as JSON Lines on stdout) and ``jobtrail import FILE|-``
(``events.transfer``: ids, streams, stream positions, payloads and hashes kept; all or
nothing; importing twice adds nothing)."""

from __future__ import annotations

import argparse
import contextlib
import sys
from collections.abc import Iterator
from typing import IO

from events.partitions import Archived, archived_partitions
from events.store import MAX_POSITION, connect
from events.transfer import Imported, ImportRefused, encode_line, export, import_lines
from service.commands import common
from service.settings import Settings


def _position(text: str) -> int:
    if not text.isdigit():
        raise argparse.ArgumentTypeError(f"not a position: {text!r}")
    return int(text)


def register(commands: common.Subcommands) -> None:
    export_ = common.add_command(
        commands, "export", cmd_export, help="events as JSON Lines on stdout"
    )
    export_.add_argument("--since-position", type=_position, default=0, metavar="N")
    export_.add_argument("--until-position", type=_position, metavar="M")
    import_help = "append exported events (a file, or - for stdin)"
    import_ = common.add_command(commands, "import", cmd_import, help=import_help, json=True)
    import_.add_argument("file", metavar="FILE|-")


class _StdoutClosed(Exception):
    """The reader of stdout went away (``| head``): not a database error, which an OSError
    raised inside ``connect`` would be taken for."""


def _write(text: str) -> None:
    try:
        sys.stdout.write(text)
    except BrokenPipeError:
        raise _StdoutClosed from None


def cmd_export(args: argparse.Namespace) -> int:
    """Write the events with N < position <= M to stdout, one JSON object a line, with
    everything import needs: one consistent snapshot of the log."""

    async def work(pool: common.Pool, _settings: Settings) -> list[Archived]:
        async with connect(pool) as conn:
            snapshot = conn.transaction(isolation="repeatable_read", readonly=True)
            async with snapshot:
                archived = await archived_partitions(conn)
                lines = export(conn, since=args.since_position, until=args.until_position)
                async for line in lines:
                    _write(encode_line(line))
        return archived

    try:
        archived = common.run(args, work)
    except _StdoutClosed:
        raise BrokenPipeError from None  # main's to handle, like any command's
    until = MAX_POSITION if args.until_position is None else args.until_position
    for month in archived:  # a backup must not lose them silently
        first, last = month.first_position, month.last_position
        if first is not None and last is not None and last > args.since_position and first <= until:
            print(f"jobtrail: not exported, archived: {month.describe()}", file=sys.stderr)
    return common.EXIT_OK


@contextlib.contextmanager
def _opened(name: str) -> Iterator[IO[str]]:
    if name == "-":
        yield sys.stdin
        return
    try:
        file = open(name, encoding="utf-8")  # noqa: SIM115 - closed below
    except OSError as error:
        raise common.CliError(f"cannot read {name}: {error.strerror}") from None
    with file:
        yield file


def cmd_import(args: argparse.Namespace) -> int:
    """Append the events of an export, keeping their ids, streams, stream positions, payloads,
    metadata and hashes (global positions are assigned anew, in file order). Events already
    present are skipped; a file whose chains do not verify against this log is refused whole
    (exit 1, nothing written)."""

    async def work(pool: common.Pool, _settings: Settings) -> Imported:
        with _opened(args.file) as file:
            async with connect(pool) as conn:
                return await import_lines(conn, file)

    try:
        result = common.run(args, work)
    except ImportRefused as error:
        print(f"jobtrail: import refused, nothing written: {error}", file=sys.stderr)
        return common.EXIT_FOUND
    except UnicodeDecodeError:
        print("jobtrail: import refused, nothing written: not UTF-8", file=sys.stderr)
        return common.EXIT_FOUND
    if args.json:
        common.print_json({"imported": result.imported, "skipped": result.skipped})
    else:
        print(f"imported {result.imported} events; skipped {result.skipped} already present")
    return common.EXIT_OK

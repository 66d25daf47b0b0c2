"""The ``jobtrail`` command: its parser, the list of subcommands, and ``main``.

Each subcommand lives in a module of ``service.commands`` with a ``register(commands)``
function; ``COMMANDS`` lists them in the order ``--help`` shows them. To add a command, write
its module and add its ``register`` to ``COMMANDS``.

Exit codes: 0 success, 1 a failure was found (a broken hash chain, an unknown job, a refused
import), 2 usage or connection error. ``--json`` prints exactly one JSON document on stdout.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable, Sequence

import asyncpg

from events.errors import StorageUnavailable
from service.commands import archive, audit, db, jobs, replay, send, serve, transfer
from service.commands.common import EXIT_OK, EXIT_USAGE, CliError, Subcommands

COMMANDS: tuple[Callable[[Subcommands], None], ...] = (
    serve.register,  # serve, migrate
    replay.register,
    audit.register,  # history, verify
    jobs.register,
    transfer.register,  # export, import
    archive.register,
    send.register,
    db.register,
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="jobtrail",
        description="Verified CI job callbacks in an append-only PostgreSQL event log.",
        epilog="Exit codes: 0 success, 1 a failure found, 2 usage or connection error.",
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for register in COMMANDS:
        register(commands)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        code: int = args.handler(args)
    except CliError as error:
        print(f"jobtrail: {error}", file=sys.stderr)
        return EXIT_USAGE
    except StorageUnavailable as error:
        print(f"jobtrail: lost the connection to PostgreSQL ({error})", file=sys.stderr)
        return EXIT_USAGE
    except asyncpg.UndefinedTableError as error:
        print(f"jobtrail: {error}: run 'jobtrail migrate' first", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        return EXIT_OK
    except BrokenPipeError:
        # The reader of stdout went away (`| head`): stop without a trace, and without a second
        # error when Python flushes stdout at exit.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return EXIT_USAGE
    return code


if __name__ == "__main__":
    sys.exit(main())

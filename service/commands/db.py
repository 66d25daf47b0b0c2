"""``jobtrail db start|stop|url``: the embedded PostgreSQL."""

from __future__ import annotations

import argparse

from devdb import EmbeddedPostgres, EmbeddedPostgresError
from service.commands.common import EXIT_OK, CliError, Subcommands, load_settings


def register(commands: Subcommands) -> None:
    db = commands.add_parser("db", help="manage the embedded PostgreSQL")
    db.add_argument("action", choices=["start", "stop", "url"])
    db.set_defaults(handler=cmd_db)


def cmd_db(args: argparse.Namespace) -> int:
    settings = load_settings(args)
    if settings.database_url is not None:
        raise CliError("DATABASE_URL is set: jobtrail db manages only the embedded PostgreSQL")
    server = EmbeddedPostgres(settings.data_dir)
    try:
        if args.action == "start":
            settings.data_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
            print(server.start())
        elif args.action == "stop":
            server.stop()
        else:
            url = server.url()
            if url is None:
                raise CliError(
                    f"no embedded PostgreSQL in {settings.data_dir} yet: run 'jobtrail db start'"
                )
            print(url)
    except EmbeddedPostgresError as error:
        raise CliError(str(error)) from None
    return EXIT_OK

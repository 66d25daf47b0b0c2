"""``jobtrail serve`` (the HTTP service and the projector) and ``jobtrail migrate``."""

from __future__ import annotations

import argparse
import asyncio
import logging
from typing import Any

from pydantic import SecretStr

from events.partitions import current_month, ensure_partitions
from events.store import connect
from service.commands.common import (
    EXIT_OK,
    CliError,
    Subcommands,
    add_command,
    database,
    load_settings,
    open_pool,
)
from service.credentials import ensure_credentials
from service.logconfig import configure_logging
from service.migrate import migrate
from service.settings import Settings, serve_flags
from service.workers import run_workers


def register(commands: Subcommands) -> None:
    serve = commands.add_parser("serve", help="run the HTTP service and the projector")
    for flag in serve_flags():
        serve.add_argument(flag.flag, dest=flag.field, type=flag.type, help=flag.help)
    # Set by ``--workers`` for its children: bind the port with SO_REUSEPORT.
    serve.add_argument("--reuse-port", action="store_true", help=argparse.SUPPRESS)
    serve.set_defaults(handler=cmd_serve)

    add_command(commands, "migrate", cmd_migrate, help="apply pending schema migrations")


def _banner(settings: Settings, generated: dict[str, str], secrets_path: Any) -> str:
    base = f"http://{settings.host}:{settings.port}"
    lines = [f"jobtrail is serving on {base}", f"  dashboard:        {base}/"]
    lines.append(f"  callback URL:     {base}/api/webhooks/github")
    if "read_token" in generated:
        lines.append(f"  read token:       {generated['read_token']}")
    if "callback_secret" in generated:
        lines.append(f"  callback secret:  {generated['callback_secret']}")
    if generated:
        lines.append(f"  (generated once; kept in {secrets_path}, mode 0600)")
    elif secrets_path is not None:
        lines.append(f"  generated read token and callback secret: {secrets_path}")
    return "\n".join(lines)


def cmd_serve(args: argparse.Namespace) -> int:
    settings = load_settings(args)
    configure_logging(settings.log_format, logging.getLevelName(settings.log_level.upper()))
    if settings.workers > 1 and settings.port == 0:
        raise CliError("--workers needs a fixed --port")
    settings.data_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    with database(settings) as dsn:
        asyncio.run(_migrate(dsn))
        credentials = ensure_credentials(
            settings.model_copy(update={"database_url": SecretStr(dsn)})
        )
        banner = _banner(settings, credentials.generated, credentials.path)
        if settings.workers > 1:
            env = _environment(credentials.settings)
            run_workers(
                settings.workers, host=settings.host, port=settings.port, env=env, banner=banner
            )
            return EXIT_OK
        # Here, not at the top: the operator commands need none of the HTTP side, and neither
        # does the supervisor of --workers above (aiohttp is a sixth of a CLI process's memory).
        from service.app import create_app
        from service.server import serve

        try:
            # JSON answers to malformed HTTP, and a graceful stop on SIGTERM (service.server).
            serve(
                create_app(credentials.settings),
                host=settings.host,
                port=settings.port,
                # Printed once the socket is bound: only then is the banner true.
                on_bound=lambda: None if args.reuse_port else print(banner, flush=True),
                reuse_port=args.reuse_port,
            )
        except OSError as error:
            raise CliError(
                f"cannot listen on {settings.host}:{settings.port}: {error.strerror}"
            ) from None
    return EXIT_OK


def _environment(settings: Settings) -> dict[str, str]:
    """``settings`` as the environment variables that reproduce them (for ``--workers``)."""
    env: dict[str, str] = {}
    for flag in serve_flags():
        value: Any = getattr(settings, flag.field)
        if isinstance(value, SecretStr):
            value = value.get_secret_value()
        elif isinstance(value, tuple):
            value = ",".join(v.get_secret_value() for v in value)
        elif isinstance(value, bool):
            value = "true" if value else "false"
        if value is not None:
            env[flag.env] = str(value)
    return env


async def _migrate(dsn: str) -> list[str]:
    """Apply pending migrations, then create the log's partitions for this month and the next
    two (``events.partitions``; the leader keeps doing so hourly)."""
    async with open_pool(dsn) as pool, connect(pool) as conn:
        applied = [f"{m.version:04d}_{m.name}" for m in await migrate(conn)]
        await ensure_partitions(conn, current_month(), 2)
        return applied


def cmd_migrate(args: argparse.Namespace) -> int:
    settings = load_settings(args)
    with database(settings) as dsn:
        applied = asyncio.run(_migrate(dsn))
    print("\n".join(f"applied {name}" for name in applied) or "schema is up to date")
    return EXIT_OK

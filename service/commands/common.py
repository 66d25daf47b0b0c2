"""What the ``jobtrail`` commands share: settings, the database, exit codes and output.

Exit codes: 0 success, 1 a failure was found (a broken hash chain, an unknown job, a refused
import), 2 usage or connection error (``CliError``). ``--json`` prints exactly one JSON
document on stdout; progress and errors go to stderr.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import inspect
import sys
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Sequence
from typing import Any, TypeAlias, TypeVar

import asyncpg
import rich.progress
from pydantic import ValidationError
from rich import box
from rich.console import Console
from rich.table import Table
from rich.text import Text

from devdb import EmbeddedPostgres, EmbeddedPostgresError
from events.errors import StorageUnavailable, translate
from events.store import register_codecs
from service.jsonio import dumps
from service.logconfig import configure_logging
from service.settings import Settings, serve_flags

EXIT_OK, EXIT_FOUND, EXIT_USAGE = 0, 1, 2

Subcommands: TypeAlias = "argparse._SubParsersAction[argparse.ArgumentParser]"
Pool: TypeAlias = "asyncpg.Pool[Any]"
T = TypeVar("T")


class CliError(Exception):
    """A usage or connection problem: printed without a trace, exit 2."""


def load_settings(args: argparse.Namespace) -> Settings:
    """The environment's settings, overridden by the flags named like them (``--port``,
    ``--database-url``)."""
    overrides = {
        flag.field: getattr(args, flag.field)
        for flag in serve_flags()
        if getattr(args, flag.field, None) is not None
    }
    try:
        return Settings(**overrides)
    except ValidationError as error:
        problems = "; ".join(
            f"{'.'.join(map(str, e['loc']))}: {e['msg']}"
            for e in error.errors(include_input=False, include_url=False)
        )
        raise CliError(f"invalid configuration: {problems}") from None


@contextlib.contextmanager
def database(settings: Settings) -> Iterator[str]:
    """Yield a DSN: DATABASE_URL, or the embedded server (started if needed, and then stopped
    again afterwards if this command started it)."""
    if settings.database_url is not None:
        yield settings.database_url.get_secret_value()
        return
    server = EmbeddedPostgres(settings.data_dir)
    was_running = server.is_running()
    try:
        dsn = server.start()
    except EmbeddedPostgresError as error:
        raise CliError(f"could not start the embedded PostgreSQL: {error}") from None
    try:
        yield dsn
    finally:
        if not was_running:
            server.stop()


@contextlib.asynccontextmanager
async def open_pool(dsn: str) -> AsyncIterator[Pool]:
    try:
        with translate():
            pool = await asyncpg.create_pool(dsn, init=register_codecs, min_size=1, max_size=4)
    except (StorageUnavailable, asyncpg.PostgresError) as error:
        cause = error.__cause__ or error
        raise CliError(f"cannot connect to PostgreSQL: {type(cause).__name__}: {cause}") from None
    try:
        yield pool
    finally:
        await pool.close()


def run(args: argparse.Namespace, work: Callable[[Pool, Settings], Awaitable[T]]) -> T:
    """Run ``work`` on a pool of the configured database; return what it returns. Logs go to
    stderr: stdout is the command's output."""
    settings = load_settings(args)
    configure_logging(settings.log_format)

    async def main(dsn: str) -> T:
        async with open_pool(dsn) as pool:
            return await work(pool, settings)

    with database(settings) as dsn:
        return asyncio.run(main(dsn))


def add_command(
    commands: Subcommands,
    name: str,
    handler: Callable[[argparse.Namespace], int],
    *,
    help: str,
    json: bool = False,
) -> argparse.ArgumentParser:
    """A subcommand that talks to the database (``--database-url``), with ``--json`` if it
    prints a document; the caller adds its own arguments to what this returns. ``help`` is its
    line in ``jobtrail --help``; the handler's docstring, if any, its ``--help`` description."""
    description = inspect.getdoc(handler) or help
    parser = commands.add_parser(name, help=help, description=description)
    if json:
        parser.add_argument("--json", action="store_true", help="print one JSON document")
    parser.add_argument(
        "--database-url", metavar="DSN", help="libpq DSN (default: DATABASE_URL, else embedded)"
    )
    parser.set_defaults(handler=handler)
    return parser


def print_json(document: Any) -> None:
    print(dumps(document))


def shown(value: Any) -> str:
    """A value in one line of text: JSON as jobtrail writes it, hashes shortened."""
    if isinstance(value, bytes):
        return value.hex()[:16] + "…"
    return value if isinstance(value, str) else dumps(value).strip('"')


def print_table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> None:
    """Columns padded with spaces: for pipes, scripts and tests."""
    widths = [max(len(str(c)) for c in column) for column in zip(header, *rows, strict=False)]
    for row in (header, *rows):
        print("  ".join(str(c).ljust(w) for c, w in zip(row, widths, strict=True)).rstrip())


def show_table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> None:
    """A rich table on a terminal, else ``print_table``."""
    if not sys.stdout.isatty():
        print_table(header, rows)
        return
    table = Table(box=box.SIMPLE_HEAD, header_style="bold")
    for name, *cells in zip(header, *rows, strict=False):
        width = max(len(str(c)) for c in (name, *cells))
        if width <= 12:  # short columns stay whole; on a narrow terminal long ones wrap
            table.add_column(name, no_wrap=True, min_width=width)
        else:
            table.add_column(name, overflow="fold")
    for row in rows:
        table.add_row(*(Text(str(cell)) for cell in row))  # payload text is never markup
    Console().print(table)


class _Rate(rich.progress.ProgressColumn):
    def render(self, task: rich.progress.Task) -> Text:
        speed = task.speed
        return Text(f"{speed:,.0f} events/s" if speed else "- events/s", style="cyan")


@contextlib.contextmanager
def progress_bar(description: str) -> Iterator[Callable[[int, int], None] | None]:
    """On a terminal (stderr), a progress bar fed with (position, head); else nothing."""
    if not sys.stderr.isatty():
        yield None
        return
    columns = (
        rich.progress.TextColumn(description),
        rich.progress.BarColumn(),
        rich.progress.MofNCompleteColumn(),
        _Rate(),
        rich.progress.TimeRemainingColumn(),
    )
    with rich.progress.Progress(*columns, console=Console(stderr=True)) as bar:
        task = bar.add_task(description, total=None)

        def update(position: int, head: int) -> None:
            bar.update(task, completed=position, total=head)

        yield update

"""The ``jobtrail`` command: ``serve``, ``migrate``, ``history``, ``jobs``, ``replay``, ``db``.

Exit codes: 0 success, 1 a failure was found (a broken hash chain, an unknown job), 2 usage or
connection error. ``--json`` prints exactly one JSON document on stdout.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import sys
import time
from collections.abc import AsyncIterator, Iterator, Sequence
from datetime import UTC, datetime
from typing import Any

import asyncpg
from aiohttp import web
from pydantic import SecretStr, ValidationError

from devdb import EmbeddedPostgres, EmbeddedPostgresError
from events.catalog import JOB_STATUSES, job_stream
from events.errors import StorageUnavailable, translate
from events.hashing import check_chain
from events.store import connect, read_stream, register_codecs
from projections import reads
from projections.registry import PROJECTIONS
from projections.replay import rebuild
from service.app import create_app
from service.credentials import ensure_credentials
from service.jsonio import dumps
from service.logconfig import configure_logging
from service.migrate import migrate
from service.settings import Settings, serve_flags

EXIT_OK, EXIT_FOUND, EXIT_USAGE = 0, 1, 2


class CliError(Exception):
    """A usage or connection problem: printed without a trace, exit 2."""


def _load_settings(args: argparse.Namespace) -> Settings:
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
def _database(settings: Settings) -> Iterator[str]:
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
async def _pool(dsn: str) -> AsyncIterator[asyncpg.Pool[Any]]:
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


# -- serve -------------------------------------------------------------------------------------


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
    settings = _load_settings(args)
    configure_logging(settings.log_format)
    settings.data_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    with _database(settings) as dsn:
        asyncio.run(_migrate(dsn))
        credentials = ensure_credentials(
            settings.model_copy(update={"database_url": SecretStr(dsn)})
        )
        banner = _banner(settings, credentials.generated, credentials.path)
        try:
            web.run_app(
                create_app(credentials.settings),
                host=settings.host,
                port=settings.port,
                # run_app "prints" once the socket is bound: only then is the banner true.
                print=lambda _bound: print(banner, flush=True),
                access_log=None,
            )
        except OSError as error:
            raise CliError(
                f"cannot listen on {settings.host}:{settings.port}: {error.strerror}"
            ) from None
    return EXIT_OK


# -- migrate -----------------------------------------------------------------------------------


async def _migrate(dsn: str) -> list[str]:
    async with _pool(dsn) as pool, connect(pool) as conn:
        return [f"{m.version:04d}_{m.name}" for m in await migrate(conn)]


def cmd_migrate(args: argparse.Namespace) -> int:
    settings = _load_settings(args)
    with _database(settings) as dsn:
        applied = asyncio.run(_migrate(dsn))
    print("\n".join(f"applied {name}" for name in applied) or "schema is up to date")
    return EXIT_OK


# -- history -----------------------------------------------------------------------------------


async def _history(dsn: str, job_id: str) -> list[dict[str, Any]]:
    async with _pool(dsn) as pool, connect(pool) as conn:
        events = await read_stream(conn, job_stream(job_id))
    return [
        {**event.to_json(), "hash_ok": ok}
        for event, ok in zip(events, check_chain(events), strict=True)
    ]


def cmd_history(args: argparse.Namespace) -> int:
    settings = _load_settings(args)
    with _database(settings) as dsn:
        events = asyncio.run(_history(dsn, args.job_id))
    if args.json:
        print(dumps({"job_id": args.job_id, "events": events}))
    elif not events:
        print(f"no events for job {args.job_id}", file=sys.stderr)
    else:
        rows = [
            (
                str(e["position"]),
                e["received_at"],
                e["type"],
                str(e["data"].get("status", "")),
                str(e["metadata"].get("scheme", "")),
                "ok" if e["hash_ok"] else "MISMATCH",
            )
            for e in events
        ]
        _print_table(("POSITION", "RECEIVED_AT", "TYPE", "STATUS", "SCHEME", "HASH"), rows)
    if not events or not all(e["hash_ok"] for e in events):
        return EXIT_FOUND
    return EXIT_OK


# -- jobs --------------------------------------------------------------------------------------


async def _jobs(dsn: str, settings: Settings, status: str | None, stale: bool) -> list[Any]:
    now = datetime.now(UTC)
    jobs: list[Any] = []
    async with _pool(dsn) as pool, connect(pool) as conn:
        after = None
        while True:
            page = await reads.list_jobs(
                conn,
                now=now,
                stale_after_s=settings.stale_after_s,
                status=status,
                stale=True if stale else None,
                after=after,
                limit=1000,
            )
            jobs.extend(page)
            if len(page) < 1000:
                return jobs
            after = reads.page_key(page[-1])


def _age(moment: datetime | None, now: datetime) -> str:
    return "-" if moment is None else f"{(now - moment).total_seconds():.0f}s"


def cmd_jobs(args: argparse.Namespace) -> int:
    settings = _load_settings(args)
    if args.status is not None and args.status not in JOB_STATUSES:
        raise CliError(f"--status must be one of {', '.join(sorted(JOB_STATUSES))}")
    with _database(settings) as dsn:
        jobs = asyncio.run(_jobs(dsn, settings, args.status, args.stale))
    if args.json:
        print(dumps({"jobs": jobs}))
        return EXIT_OK
    now = datetime.now(UTC)
    rows = [
        (
            j["job_id"],
            j["status"],
            "stale" if j["stale"] else "",
            _age(j["last_heartbeat_at"], now),
            str(j["event_count"]),
            dumps(j["updated_at"]).strip('"'),
        )
        for j in jobs
    ]
    _print_table(("JOB_ID", "STATUS", "STALE", "HEARTBEAT_AGE", "EVENTS", "UPDATED_AT"), rows)
    return EXIT_OK


# -- replay ------------------------------------------------------------------------------------


async def _replay(dsn: str) -> tuple[int, float]:
    started = time.perf_counter()
    show = sys.stderr.isatty()

    def progress(position: int, head: int) -> None:
        if show:
            share = position / head if head else 1.0
            bar = "#" * int(share * 30)
            print(f"\rreplaying [{bar:<30}] {position}/{head}", end="", file=sys.stderr)

    async with _pool(dsn) as pool:
        last = await rebuild(pool, PROJECTIONS, progress=progress)
    if show:
        print(file=sys.stderr)
    return last, time.perf_counter() - started


def cmd_replay(args: argparse.Namespace) -> int:
    settings = _load_settings(args)
    with _database(settings) as dsn:
        last, seconds = asyncio.run(_replay(dsn))
    names = ", ".join(p.name for p in PROJECTIONS)
    print(f"rebuilt {names} up to position {last} in {seconds:.2f}s")
    return EXIT_OK


# -- db ----------------------------------------------------------------------------------------


def cmd_db(args: argparse.Namespace) -> int:
    settings = _load_settings(args)
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


# -- plumbing ----------------------------------------------------------------------------------


def _print_table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> None:
    widths = [max(len(str(c)) for c in column) for column in zip(header, *rows, strict=False)]
    for row in (header, *rows):
        print("  ".join(str(c).ljust(w) for c, w in zip(row, widths, strict=True)).rstrip())


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="jobtrail",
        description="Verified CI job callbacks in an append-only PostgreSQL event log.",
        epilog="Exit codes: 0 success, 1 a failure found, 2 usage or connection error.",
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    serve = commands.add_parser("serve", help="run the HTTP service and the projector")
    for flag in serve_flags():
        serve.add_argument(flag.flag, dest=flag.field, type=flag.type, help=flag.help)
    serve.set_defaults(handler=cmd_serve)

    commands.add_parser("migrate", help="apply pending schema migrations").set_defaults(
        handler=cmd_migrate
    )

    history = commands.add_parser("history", help="a job's events in order, with hash checks")
    history.add_argument("job_id")
    history.add_argument("--json", action="store_true")
    history.set_defaults(handler=cmd_history)

    jobs = commands.add_parser("jobs", help="the job_status projection")
    jobs.add_argument("--status")
    jobs.add_argument("--stale", action="store_true")
    jobs.add_argument("--json", action="store_true")
    jobs.set_defaults(handler=cmd_jobs)

    replay = commands.add_parser("replay", help="rebuild the projections from the log")
    replay.set_defaults(handler=cmd_replay)

    db = commands.add_parser("db", help="manage the embedded PostgreSQL")
    db.add_argument("action", choices=["start", "stop", "url"])
    db.set_defaults(handler=cmd_db)
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
    except KeyboardInterrupt:
        return EXIT_OK
    return code


if __name__ == "__main__":
    sys.exit(main())

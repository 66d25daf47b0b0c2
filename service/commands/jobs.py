"""``jobtrail jobs``: the job_status projection, as the API shows it."""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

from events.catalog import JOB_STATUSES
from events.store import connect
from projections import reads
from service.commands import common
from service.jsonio import dumps
from service.settings import Settings


def register(commands: common.Subcommands) -> None:
    jobs = common.add_command(
        commands, "jobs", cmd_jobs, help="the job_status projection", json=True
    )
    jobs.add_argument("--status", help=f"only jobs in this status: {', '.join(STATUSES)}")
    jobs.add_argument("--stale", action="store_true", help="only stale jobs")


STATUSES = sorted(JOB_STATUSES)


def _age(moment: datetime | None, now: datetime) -> str:
    return "-" if moment is None else f"{(now - moment).total_seconds():.0f}s"


def print_jobs(jobs: Sequence[dict[str, Any]], now: datetime) -> None:
    """The jobs table; heartbeat ages as of ``now``."""
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
    common.print_table(("JOB_ID", "STATUS", "STALE", "HEARTBEAT_AGE", "EVENTS", "UPDATED_AT"), rows)


def cmd_jobs(args: argparse.Namespace) -> int:
    if args.status is not None and args.status not in JOB_STATUSES:
        raise common.CliError(f"--status must be one of {', '.join(STATUSES)}")

    async def work(pool: common.Pool, settings: Settings) -> list[dict[str, Any]]:
        async with connect(pool) as conn:
            return await reads.all_jobs(
                conn,
                now=datetime.now(UTC),
                stale_after_s=settings.stale_after_s,
                status=args.status,
                stale=True if args.stale else None,
            )

    jobs = common.run(args, work)
    if args.json:
        common.print_json({"jobs": jobs})
    else:
        print_jobs(jobs, datetime.now(UTC))
    return common.EXIT_OK

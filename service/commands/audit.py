"""``jobtrail history`` (one job's timeline, each event's hash checked) and ``jobtrail verify``
(every chain and stream head, every event's data against its raw request, and every projection
against a replay: ``projections.audit``; with ``--signatures``, every stored request's signature
against the configured secrets; with ``--file``, archive and export files: ``events.filecheck``).

After ``jobtrail archive`` both say which events are archived, and where: ``history`` lists the
job's archived stream positions, ``verify`` follows the chains across them but cannot compare
the projections with a replay of a log that lacks its oldest events, and says so.
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import asyncpg

from events.audit import ChainAuditor, Problem
from events.catalog import job_stream
from events.filecheck import FileReport, check_files
from events.hashing import check_chain
from events.models import RecordedEvent
from events.partitions import (
    Archived,
    archived_of_stream,
    archived_partitions,
    describe_archived,
    format_month,
    partition_month,
)
from events.store import connect, read_stream
from projections.audit import Comparison, compare
from service.commands import common
from service.credentials import with_stored_secret
from service.settings import Settings, serve_flags
from service.signatures import Keyring, check_signature, keyring_for

# The settings ``verify --signatures`` takes as flags too (as ``serve`` does).
_SECRET_SETTINGS = ("callback_secret", "callback_secrets", "webhook_secret", "data_dir")


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
    verify = common.add_command(commands, "verify", cmd_verify, help=verify_help, json=True)
    verify.add_argument(
        "--signatures",
        action="store_true",
        help="also re-check every stored request's signature against the configured secrets",
    )
    for flag in serve_flags():
        if flag.field in _SECRET_SETTINGS:
            verify.add_argument(flag.flag, dest=flag.field, type=flag.type, help=flag.help)
    verify.add_argument(
        "--file",
        dest="files",
        nargs="+",
        metavar="FILE",
        help="check archive or export files instead of the log (oldest first)",
    )
    verify.add_argument(
        "--offline", action="store_true", help="with --file: do not look for archive records"
    )


# -- history -----------------------------------------------------------------------------------


def cmd_history(args: argparse.Namespace) -> int:
    stream = job_stream(args.job_id)

    async def work(
        pool: common.Pool, _settings: Settings
    ) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
        async with connect(pool) as conn:
            events = await read_stream(conn, stream)
            segments = await archived_of_stream(conn, stream)
        if segments:  # the chain goes on from, or across, archived stream positions
            auditor = ChainAuditor({stream: segments})
            checks = [not auditor.check(event) for event in events]
        else:
            checks = check_chain(events)
        archived = [
            {
                "month": format_month(s.month),
                "file": s.file,
                "stream_positions": [s.first, s.last],
            }
            for s in segments
        ]
        return [
            {**event.to_json(), "hash_ok": ok} for event, ok in zip(events, checks, strict=True)
        ], archived

    events, archived = common.run(args, work)
    if args.json:
        common.print_json({"job_id": args.job_id, "events": events, "archived": archived})
    elif not events and not archived:
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
        if rows:
            common.show_table((*header, "IDEMPOTENCY_KEY", "HASH"), rows)
        for segment in archived:
            first, last = segment["stream_positions"]
            which = f"position {first}" if first == last else f"positions {first}..{last}"
            print(
                f"stream {which} of job {args.job_id} {'is' if first == last else 'are'}"
                f" archived, in {segment['file']} ({segment['month']}): jobtrail verify --file"
                " checks it"
            )
    if (not events and not archived) or not all(e["hash_ok"] for e in events):
        return common.EXIT_FOUND
    return common.EXIT_OK


# -- verify ------------------------------------------------------------------------------------


def _describe(problem: Problem) -> str:
    where = problem.stream_id or "-"
    if problem.position is not None:
        where += f" position {problem.position}"
    detail = f": {problem.detail}"
    if problem.kind == "projection":
        where = f"{problem.extra['projection']} key {problem.extra['key']!r} ({where})"
        detail = ""  # the field says it all
    elif "stream_position" in problem.extra:
        where += f" (stream position {problem.extra['stream_position']})"
    if "file" in problem.extra:  # verify --file
        line = f" line {problem.extra['line']}" if "line" in problem.extra else ""
        if problem.kind == "line":
            return f"line: {problem.extra['file']}{line}: {problem.detail}"
        whole = problem.stream_id is None and problem.position is None  # the file as a whole
        where = f"{problem.extra['file']}{line}" + ("" if whole else f": {where}")
    return (
        f"{problem.kind}: {where}: {problem.field}: expected {common.shown(problem.expected)},"
        f" found {common.shown(problem.actual)}{detail}"
    )


@dataclass
class SignatureAudit:
    """Re-checks each stored request's signature (``verify --signatures``), ignoring the
    timestamp tolerance: who sent it, not when. Unverified requests are problems; those signed
    with a rotated key (not ``GITHUB_CALLBACK_SECRET``) are listed."""

    keyring: Keyring
    checked: int = 0
    rotated: list[dict[str, Any]] = field(default_factory=list)

    def __call__(self, event: RecordedEvent) -> list[Problem]:
        if event.raw is None:
            return []
        self.checked += 1
        where = {"stream_position": event.stream_position, "event_id": str(event.event_id)}
        verified = check_signature(event.raw, self.keyring)
        if verified is None:
            scheme = event.metadata.get("scheme", "its")
            detail = f"event {event.event_id}: its {scheme} signature verifies with none of"
            detail += " the configured secrets"
            return [
                Problem(
                    "signature",
                    event.stream_id,
                    event.position,
                    "signature",
                    "a configured secret",
                    "none",
                    detail,
                    where,
                )
            ]
        if verified.rotated:
            self.rotated.append(
                {"stream_id": event.stream_id, "position": event.position, **where}
                | {"key": verified.key_name}
            )
        return []

    def to_json(self) -> dict[str, Any]:
        return {"checked": self.checked, "rotated": self.rotated}


def _signature_audit(settings: Settings) -> SignatureAudit:
    settings = with_stored_secret(settings)
    if settings.callback_secret is None:
        print("jobtrail: no GITHUB_CALLBACK_SECRET configured or generated", file=sys.stderr)
    return SignatureAudit(keyring_for(settings))


def cmd_verify(args: argparse.Namespace) -> int:
    """Re-compute every stream's hash chain and head, check that each event's data is the
    parse of its stored raw request, and compare a fresh in-memory replay up to each
    projection's checkpoint with the stored projection, all in one snapshot (safe while the
    service runs). Exit 1 naming the stream, position and field of any difference.

    With --signatures, also re-check every stored request's signature against
    GITHUB_CALLBACK_SECRET, JOBTRAIL_CALLBACK_SECRETS and GITHUB_WEBHOOK_SECRET (environment or
    flags, as for serve), ignoring the timestamp tolerance: exit 1 naming every event whose
    signature verifies with none of them, and list those signed with a rotated secret.

    With --file FILE..., check archive or export files instead (oldest first): every line's
    hash, data and link to the previous event of its stream (a stream whose chain starts in an
    earlier file is listed as continuing), and, when the database keeps the archive record of a
    file, that the file is what was archived (sha256, events, every stream's stream positions).
    --offline: without the database."""
    if args.files:
        return verify_files(args)

    async def work(pool: common.Pool, settings: Settings) -> tuple[Comparison, Any]:
        audit = _signature_audit(settings) if args.signatures else None
        with common.progress_bar("verifying") as progress:
            async with connect(pool) as conn:
                result = await compare(conn, chains=True, progress=progress, inspect=audit)
        return result, audit

    result, audit = common.run(args, work)
    problems = result.all_problems()
    # Only after an archive: the document keeps its shape otherwise.
    archived: dict[str, Any] = {}
    if not result.compared:
        archived = {
            "projections_compared": False,
            "archived": [a.to_json() for a in result.archived],
        }
    if args.json:
        common.print_json(
            {
                "ok": not problems,
                "problems": [p.to_json() for p in problems],
                "streams": result.streams,
                "events": result.events,
                "projections": result.checkpoints,
                **({"signatures": audit.to_json()} if audit is not None else {}),
                **archived,
            }
        )
    else:
        for problem in problems:
            print(_describe(problem))
        if not result.compared:
            print("projections not compared with a replay: " + describe_archived(result.archived))
        checked = ", ".join(f"{name} at {at}" for name, at in result.checkpoints.items())
        if not result.compared:
            checked = "not compared (events archived)"
        summary = f"{result.events} events in {result.streams} streams; projections {checked}"
        if audit is not None:
            for signed in audit.rotated:
                print(
                    f"rotated key: {signed['stream_id']} position {signed['position']}: event"
                    f" {signed['event_id']} is signed with {signed['key']}, not the primary"
                    " GITHUB_CALLBACK_SECRET"
                )
            summary += f"; {audit.checked} signatures checked, {len(audit.rotated)} by a"
            summary += " rotated key"
        print(f"{len(problems)} problems: {summary}" if problems else f"ok: {summary}")
    return common.EXIT_FOUND if problems else common.EXIT_OK


# -- verify --file -----------------------------------------------------------------------------


def _records(args: argparse.Namespace) -> tuple[dict[str, Archived], str]:
    """The archive records by file name, and what the database said (offline: nothing)."""
    if args.offline:
        return {}, "offline"

    async def work(pool: common.Pool, _settings: Settings) -> list[Archived]:
        async with connect(pool) as conn:
            return await archived_partitions(conn, segments=True)

    try:
        records = common.run(args, work)
    except common.CliError as error:
        print(f"jobtrail: files checked without the database: {error}", file=sys.stderr)
        return {}, "unreachable"
    except asyncpg.PostgresError as error:
        print(f"jobtrail: files checked without archive records: {error}", file=sys.stderr)
        return {}, "no archive records"
    return {r.file: r for r in records}, "no record"


_DATABASE = {
    "offline": "not compared with the database (--offline)",
    "unreachable": "not compared with the database (unreachable)",
    "no archive records": "not compared: the database keeps no archive records",
    "no record": "no archive record in the database names it",
}


def verify_files(args: argparse.Namespace) -> int:
    """``verify --file``: each file's lines and chains, and what was archived as it."""
    paths = [Path(name) for name in args.files]
    if all(partition_month(p.name.removesuffix(".jsonl")) for p in paths):
        paths.sort(key=lambda p: p.name)  # archives: oldest month first, however given
    for path in paths:
        if not path.is_file():
            raise common.CliError(f"cannot read {path}: not a file")
    records, database = _records(args)
    try:
        reports, problems = check_files(paths, records)
    except OSError as error:
        raise common.CliError(f"cannot read {error.filename}: {error.strerror}") from None
    if args.json:
        common.print_json(
            {
                "ok": not problems,
                "problems": [p.to_json() for p in problems],
                "files": [r.to_json(database) for r in reports],
            }
        )
        return common.EXIT_FOUND if problems else common.EXIT_OK
    for problem in problems:
        print(_describe(problem))
    for report in reports:
        _print_report(report, database)
    files = f"{len(reports)} file{'s' if len(reports) > 1 else ''}"
    summary = f"{sum(r.events for r in reports)} events in {files}"
    print(f"{len(problems)} problems: {summary}" if problems else f"ok: {summary}")
    return common.EXIT_FOUND if problems else common.EXIT_OK


def _print_report(report: FileReport, database: str) -> None:
    positions = f", positions {report.first_position}..{report.last_position}"
    print(
        f"{report.path}: {report.events} events in {len(report.runs.streams)} streams"
        f"{positions if report.events else ''}, sha256 {report.sha256}"
    )
    if report.record is not None:
        month = format_month(report.record.month)
        print(f"  compared with the archive of {month} ({report.record.partition})")
    else:
        print(f"  {_DATABASE[database]}")
    if report.continued:
        shown = [
            f"{c['stream_id']} from stream position {c['stream_position']} (line {c['line']})"
            for c in report.continued[:5]
        ]
        more = f", and {len(report.continued) - 5} more" if len(report.continued) > 5 else ""
        count = len(report.continued)
        streams = "1 stream continues" if count == 1 else f"{count} streams continue"
        print(f"  {streams} a chain held by an earlier file: {', '.join(shown)}{more}")

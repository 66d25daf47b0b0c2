"""``jobtrail history`` (one job's timeline, each event's hash checked) and ``jobtrail verify``
(every chain and stream head, every event's data against its raw request, and every projection
against a replay: ``projections.audit``; with ``--signatures``, every stored request's signature
against the configured secrets)."""

from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass, field
from typing import Any

from events.audit import Problem
from events.catalog import job_stream
from events.hashing import check_chain
from events.models import RecordedEvent
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


# -- history -----------------------------------------------------------------------------------


def cmd_history(args: argparse.Namespace) -> int:
    async def work(pool: common.Pool, _settings: Settings) -> list[dict[str, Any]]:
        async with connect(pool) as conn:
            events = await read_stream(conn, job_stream(args.job_id))
        return [
            {**event.to_json(), "hash_ok": ok}
            for event, ok in zip(events, check_chain(events), strict=True)
        ]

    events = common.run(args, work)
    if args.json:
        common.print_json({"job_id": args.job_id, "events": events})
    elif not events:
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
        common.show_table((*header, "IDEMPOTENCY_KEY", "HASH"), rows)
    if not events or not all(e["hash_ok"] for e in events):
        return common.EXIT_FOUND
    return common.EXIT_OK


# -- verify ------------------------------------------------------------------------------------


def _describe(problem: Problem) -> str:
    where = f"{problem.stream_id or '-'} position {problem.position}"
    detail = f": {problem.detail}"
    if problem.kind == "projection":
        where = f"{problem.extra['projection']} key {problem.extra['key']!r} ({where})"
        detail = ""  # the field says it all
    elif "stream_position" in problem.extra:
        where += f" (stream position {problem.extra['stream_position']})"
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
    signature verifies with none of them, and list those signed with a rotated secret."""

    async def work(pool: common.Pool, settings: Settings) -> tuple[Comparison, Any]:
        audit = _signature_audit(settings) if args.signatures else None
        with common.progress_bar("verifying") as progress:
            async with connect(pool) as conn:
                result = await compare(conn, chains=True, progress=progress, inspect=audit)
        return result, audit

    result, audit = common.run(args, work)
    problems = result.all_problems()
    if args.json:
        common.print_json(
            {
                "ok": not problems,
                "problems": [p.to_json() for p in problems],
                "streams": result.streams,
                "events": result.events,
                "projections": result.checkpoints,
                **({"signatures": audit.to_json()} if audit is not None else {}),
            }
        )
    else:
        for problem in problems:
            print(_describe(problem))
        checked = ", ".join(f"{name} at {at}" for name, at in result.checkpoints.items())
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

"""``jobtrail send``: one signed callback to a jobtrail, for CI systems other than GitHub Actions.

It signs with the Standard Webhooks scheme and retries the way ``.github/scripts/callback.sh``
does (see ``service.sender``). Exit 0 when the callback was accepted, 1 when it was refused or
every attempt failed, 2 for a usage error (no secret, an invalid payload).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
from typing import Any

from service.commands import common
from service.jsonio import dumps
from service.payloads import PayloadError, parse_callback


def register(commands: common.Subcommands) -> None:
    parser = commands.add_parser(
        "send",
        help="send one signed callback (Standard Webhooks), with retries",
        description=__doc__,
    )
    parser.add_argument(
        "--url", required=True, help="the full endpoint URL (…/api/webhooks/github)"
    )
    parser.add_argument("--job-id", required=True)
    parser.add_argument("--status", required=True, help="queued, provisioning, running, …")
    parser.add_argument("--message")
    parser.add_argument("--error")
    parser.add_argument("--agent-id")
    parser.add_argument("--region")
    parser.add_argument("--run-id", type=int)
    parser.add_argument("--run-attempt", type=int)
    parser.add_argument(
        "--secret",
        help="the callback secret (default: GITHUB_CALLBACK_SECRET from the environment)",
    )
    parser.add_argument("--id", dest="msg_id", help="webhook-id (default: a fresh random id)")
    parser.add_argument("--attempts", type=int, default=5, help="attempts at most (default 5)")
    parser.add_argument("--timeout", type=float, default=10.0, help="seconds per attempt")
    parser.set_defaults(handler=cmd_send)


def cmd_send(args: argparse.Namespace) -> int:
    secret = args.secret or os.environ.get("GITHUB_CALLBACK_SECRET", "")
    if not secret:
        raise common.CliError("no secret: pass --secret or set GITHUB_CALLBACK_SECRET")
    if args.attempts < 1:
        raise common.CliError("--attempts must be at least 1")
    fields = ("job_id", "status", "message", "error", "agent_id", "region", "run_id")
    payload: dict[str, Any] = {f: getattr(args, f) for f in fields if getattr(args, f) is not None}
    if args.run_attempt is not None:
        payload["run_attempt"] = args.run_attempt
    try:  # refuse here what the receiver would refuse, with the same words
        parse_callback(dumps(payload).encode())
    except PayloadError as error:
        problems = "; ".join(f"{'.'.join(map(str, d['loc']))}: {d['msg']}" for d in error.details)
        raise common.CliError(f"invalid callback: {problems}") from None

    from service.sender import send  # aiohttp's client: only this command needs it

    def report(attempt: int, status: int | None) -> None:
        answer = status if status is not None else "no answer"
        print(f"attempt {attempt}/{args.attempts}: {answer}", file=sys.stderr)

    delivery = asyncio.run(
        send(
            args.url,
            secret,
            payload,
            attempts=args.attempts,
            timeout_s=args.timeout,
            msg_id=args.msg_id,
            on_attempt=report,
        )
    )
    print(delivery.body)
    return common.EXIT_OK if delivery.ok else common.EXIT_FOUND

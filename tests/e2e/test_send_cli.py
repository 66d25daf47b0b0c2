"""``jobtrail send`` as a user runs it, against a live service on a real socket."""

from __future__ import annotations

import asyncio
import json
import sys
from pathlib import Path
from typing import Any

import asyncpg
from aiohttp import web
from aiohttp.test_utils import TestClient

from tests.helpers import AUTH, CALLBACK_SECRET, clean_env, wait_for_projection

Client = TestClient[web.Request, web.Application]
JOBTRAIL = str(Path(sys.executable).parent / "jobtrail")


async def jobtrail_send(*args: str, secret: str | None = CALLBACK_SECRET) -> tuple[int, str, str]:
    env = clean_env(**({"GITHUB_CALLBACK_SECRET": secret} if secret else {}))
    process = await asyncio.create_subprocess_exec(
        JOBTRAIL, "send", *args, env=env,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    out, err = await process.communicate()
    assert process.returncode is not None
    return process.returncode, out.decode(), err.decode()


async def test_send_reports_a_job_through_its_life(client: Client, pool: asyncpg.Pool[Any]) -> None:
    url = str(client.make_url("/api/webhooks/github"))
    for status in ("provisioning", "heartbeat", "succeeded"):
        code, out, err = await jobtrail_send(
            "--url", url, "--job-id", "ci-1", "--status", status,
            "--run-id", "77", "--run-attempt", "1", "--message", 'said "hi" <b>',
        )  # fmt: skip
        assert code == 0, err
        assert json.loads(out)["status"] == "accepted"
        assert err.strip() == "attempt 1/5: 200"
    await wait_for_projection(pool)
    job = await (await client.get("/api/jobs/ci-1", headers=AUTH)).json()
    assert (job["status"], job["run_id"], job["message"]) == ("succeeded", 77, 'said "hi" <b>')
    assert job["event_count"] == 3 and job["heartbeat_count"] == 1


async def test_send_refusals_and_usage_errors(client: Client) -> None:
    url = str(client.make_url("/api/webhooks/github"))
    code, out, err = await jobtrail_send(
        "--url", url, "--job-id", "ci-2", "--status", "failed", secret="not-the-secret"
    )  # fmt: skip
    assert (code, json.loads(out)) == (1, {"error": "Invalid signature"})
    assert err.strip() == "attempt 1/5: 401"  # a wrong secret is not retried
    code, _, err = await jobtrail_send(
        "--url", url, "--job-id", "ci-2", "--status", "x", secret=None
    )
    assert code == 2 and "no secret" in err
    code, _, err = await jobtrail_send("--url", url, "--job-id", "bad id", "--status", "running")
    assert code == 2 and "invalid callback: job_id" in err

"""The README's callback example, pasted into bash as a user would, against a live server."""

from __future__ import annotations

import asyncio
import json
import re
from pathlib import Path

from aiohttp import web
from aiohttp.test_utils import TestClient

from tests.helpers import CALLBACK_SECRET, READ_TOKEN

README = Path(__file__).resolve().parents[1] / "README.md"


def example(name: str) -> str:
    text = README.read_text(encoding="utf-8")
    match = re.search(rf"<!-- example: {name} -->\n```bash\n(.*?)```", text, re.DOTALL)
    assert match, f"README has no example {name!r}"
    return match.group(1)


async def test_the_callback_example_works_when_pasted(
    client: TestClient[web.Request, web.Application],
) -> None:
    script = example("callback")
    script = script.replace("SECRET='whsec_...'", f"SECRET='{CALLBACK_SECRET}'")
    script = script.replace("TOKEN='jt_...'", f"TOKEN='{READ_TOKEN}'")
    script = script.replace("http://127.0.0.1:8080", str(client.make_url("")).rstrip("/"))
    process = await asyncio.create_subprocess_exec(
        "bash",
        "-euo",
        "pipefail",
        "-c",
        script,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await process.communicate()
    assert process.returncode == 0, err.decode()
    accepted, heartbeat, job, events = (json.loads(line) for line in out.decode().splitlines())
    assert accepted["status"] == heartbeat["status"] == "accepted"
    assert job["job_id"] == "vm-42" and job["run_id"] == 1234
    assert [e["data"]["status"] for e in events["events"]] == ["provisioning", "heartbeat"]
    assert [e["metadata"]["scheme"] for e in events["events"]] == ["standard", "legacy"]

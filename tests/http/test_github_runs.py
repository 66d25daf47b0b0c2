"""Native workflow_run / workflow_job deliveries move the job they concern (SPEC section 5).

Payloads are GitHub's published examples (tests/fixtures/github-payloads, octokit/webhooks),
with only the run identity, status, conclusion and title set for each case, signed as GitHub
signs them (X-Hub-Signature-256 over the exact body).
"""

from __future__ import annotations

import copy
import hashlib
import hmac
import json
import uuid
from pathlib import Path
from typing import Any

import asyncpg
import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient
from pydantic import SecretStr

from projections.job_status import PROJECTION as JOB_STATUS
from projections.replay import fold_log
from service.settings import Settings
from tests.conftest import AppClientFactory
from tests.helpers import AUTH, body_of, standard_headers, wait_for_projection

Client = TestClient[web.Request, web.Application]
PAYLOADS = Path(__file__).resolve().parents[1] / "fixtures" / "github-payloads"
SECRET = "It's a Secret to Everybody"
URL = "/api/webhooks/github"
RUN_ID = 30433642


def example(name: str) -> dict[str, Any]:
    document: dict[str, Any] = json.loads((PAYLOADS / f"octokit-webhooks__{name}").read_text())
    return document


RUN_EXAMPLES = {
    "requested": example("workflow_run_requested.payload.json"),
    "in_progress": example("workflow_run_requested.payload.json"),
    "completed": example("workflow_run_completed.payload.json"),
}
JOB_EXAMPLE = example("workflow_job_completed.failure.with-organization.payload.json")


def workflow_run(
    action: str,
    *,
    run_id: int = RUN_ID,
    attempt: int = 1,
    conclusion: str | None = None,
    title: str = "some other title",
) -> dict[str, Any]:
    document = copy.deepcopy(RUN_EXAMPLES[action])
    document["action"] = action
    run = document["workflow_run"]
    run.update(id=run_id, run_attempt=attempt, display_title=title)
    run.update(status="queued" if action == "requested" else action, conclusion=conclusion)
    return document


def workflow_job(*, run_id: int, attempt: int, conclusion: str, name: str) -> dict[str, Any]:
    document = copy.deepcopy(JOB_EXAMPLE)
    job = document["workflow_job"]
    job.update(run_id=run_id, run_attempt=attempt, conclusion=conclusion, name=name)
    return document


def github_headers(body: bytes, event: str, delivery: str | None = None) -> dict[str, str]:
    signature = hmac.new(SECRET.encode(), body, hashlib.sha256).hexdigest()
    return {
        "Content-Type": "application/json",
        "X-GitHub-Event": event,
        "X-GitHub-Delivery": delivery or str(uuid.uuid4()),
        "X-Hub-Signature-256": f"sha256={signature}",
    }


@pytest.fixture
async def client(app_client: AppClientFactory, settings: Settings) -> Client:
    return await app_client(settings.model_copy(update={"webhook_secret": SecretStr(SECRET)}))


async def deliver(client: Client, event: str, document: dict[str, Any]) -> dict[str, Any]:
    body = json.dumps(document, indent=2).encode()  # GitHub's own bodies are pretty-printed
    response = await client.post(URL, data=body, headers=github_headers(body, event))
    assert response.status == 200, await response.text()
    answer: dict[str, Any] = await response.json()
    return answer


async def callback(client: Client, **payload: Any) -> None:
    body = body_of(payload)
    response = await client.post(URL, data=body, headers=standard_headers(body))
    assert response.status == 200, await response.text()


async def job(client: Client, pool: asyncpg.Pool[Any], job_id: str) -> dict[str, Any]:
    await wait_for_projection(pool)
    response = await client.get(f"/api/jobs/{job_id}", headers=AUTH)
    assert response.status == 200, await response.text()
    answer: dict[str, Any] = await response.json()
    return answer


@pytest.mark.parametrize(
    ("conclusion", "status"),
    [
        ("cancelled", "cancelled"),
        ("failure", "failed"),
        ("startup_failure", "failed"),
        ("timed_out", "timed_out"),
        ("success", "running"),
        ("skipped", "running"),
    ],
)
async def test_a_completed_run_ends_the_live_job_whose_callbacks_carried_its_run_id(
    client: Client, pool: asyncpg.Pool[Any], conclusion: str, status: str
) -> None:
    await callback(client, job_id="vm-1", status="running", run_id=RUN_ID, run_attempt=1)
    await wait_for_projection(pool)
    for action in ("requested", "in_progress"):
        await deliver(client, "workflow_run", workflow_run(action))
    assert (await job(client, pool, "vm-1"))["status"] == "running"
    await deliver(client, "workflow_run", workflow_run("completed", conclusion=conclusion))
    ended = await job(client, pool, "vm-1")
    assert ended["status"] == status
    assert ended["event_count"] == 1  # the run's deliveries are in the run's stream
    if status != "running":
        assert conclusion in ended["error"] and ended["finished_at"] is not None


async def test_a_replay_folds_the_runs_deliveries_as_the_projector_did(
    client: Client, pool: asyncpg.Pool[Any]
) -> None:
    """The fold reads decode only the metadata a fold declares it reads: a run's deliveries
    name their job there."""
    await callback(client, job_id="vm-1", status="running", run_id=RUN_ID, run_attempt=1)
    await wait_for_projection(pool)  # ingest finds the job by its run id in job_status
    await deliver(client, "workflow_run", workflow_run("completed", conclusion="failure"))
    assert (await job(client, pool, "vm-1"))["status"] == "failed"
    async with pool.acquire() as conn:
        states, _ = await fold_log(conn)
        live = await conn.fetchrow(f"{JOB_STATUS.select_sql('job_status')} WHERE job_id = 'vm-1'")
    assert live is not None
    assert states["job_status"]["vm-1"] == JOB_STATUS.from_row(live)


async def test_a_run_that_never_called_back_is_found_by_its_title(
    client: Client, pool: asyncpg.Pool[Any]
) -> None:
    # The runner failed to start: GitHub's deliveries are all there is.
    await deliver(client, "workflow_run", workflow_run("requested", title="provision vm-7"))
    assert (await job(client, pool, "vm-7"))["status"] == "queued"
    document = workflow_run("completed", conclusion="startup_failure", title="provision vm-7")
    await deliver(client, "workflow_run", document)
    ended = await job(client, pool, "vm-7")
    assert (ended["status"], ended["run_id"], ended["run_attempt"]) == ("failed", RUN_ID, 1)
    async with pool.acquire() as conn:
        matches = await conn.fetch("SELECT metadata->>'job_match' FROM events ORDER BY position")
    # The first by its title; from then on the job carries the run id.
    assert [m[0] for m in matches] == ["title", "run_id"]


async def test_a_reported_terminal_status_is_not_overridden(
    client: Client, pool: asyncpg.Pool[Any]
) -> None:
    await callback(client, job_id="vm-2", status="succeeded", run_id=RUN_ID, run_attempt=1)
    await wait_for_projection(pool)
    await deliver(client, "workflow_run", workflow_run("completed", conclusion="cancelled"))
    done = await job(client, pool, "vm-2")
    assert (done["status"], done["error"]) == ("succeeded", None)


async def test_a_re_run_is_told_apart_by_its_attempt(
    client: Client, pool: asyncpg.Pool[Any]
) -> None:
    await callback(client, job_id="vm-3", status="running", run_id=RUN_ID, run_attempt=2)
    await wait_for_projection(pool)
    # The first attempt's late news does not end the second attempt.
    late = workflow_run("completed", attempt=1, conclusion="cancelled")
    await deliver(client, "workflow_run", late)
    assert (await job(client, pool, "vm-3"))["status"] == "running"
    ending = workflow_job(run_id=RUN_ID, attempt=2, conclusion="failure", name="provision vm-3")
    await deliver(client, "workflow_job", ending)
    ended = await job(client, pool, "vm-3")
    assert (ended["status"], ended["run_attempt"]) == ("failed", 2)


async def test_a_redelivery_is_stored_once_and_a_wrong_secret_refused(
    client: Client, pool: asyncpg.Pool[Any]
) -> None:
    body = json.dumps(workflow_run("completed", conclusion="cancelled")).encode()
    headers = github_headers(body, "workflow_run", delivery="delivery-1")
    first = await client.post(URL, data=body, headers=headers)
    again = await client.post(URL, data=body, headers=headers)
    assert (await first.json())["event_id"] == (await again.json())["event_id"]
    assert (await again.json())["duplicate"] is True
    forged = {**headers, "X-GitHub-Delivery": "delivery-2"}
    forged["X-Hub-Signature-256"] = "sha256=" + hmac.new(b"wrong", body, "sha256").hexdigest()
    refused = await client.post(URL, data=body, headers=forged)
    assert refused.status == 401
    async with pool.acquire() as conn:
        assert await conn.fetchval("SELECT count(*) FROM events") == 1

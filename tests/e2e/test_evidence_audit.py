"""``jobtrail verify`` and ``verify --signatures`` on events received over HTTP, whose raw
requests are kept (SPEC sections 4 and 7), and ``export``/``import`` carrying that evidence: a
superuser's edit of a raw body or of the parsed ``data`` is found, a clean log passes."""

from __future__ import annotations

import asyncio
import base64
import json
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import asyncpg
import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient
from pydantic import SecretStr

from projections.watchdog import time_out_silent_jobs
from service.settings import Settings
from tests.conftest import AppClientFactory
from tests.e2e.test_audit import events_problems, tamper, verify, where
from tests.e2e.test_transfer import count, target, target_url  # noqa: F401 - fixtures
from tests.helpers import CALLBACK_SECRET, ROTATED_SECRET, standard_headers, wait_for_projection
from tests.http.test_evidence import deliver, legacy_headers
from tests.http.test_github_native import SECRET as GITHUB_SECRET
from tests.http.test_github_native import captured
from tests.workload import jobtrail

Client = TestClient[web.Request, web.Application]
SECRETS = {
    "GITHUB_CALLBACK_SECRET": CALLBACK_SECRET,
    "JOBTRAIL_CALLBACK_SECRETS": ROTATED_SECRET,
    "GITHUB_WEBHOOK_SECRET": GITHUB_SECRET,
}
PROVISIONING = b'{"job_id": "vm-1",  "status": "provisioning", "run_id": 7, "cost": 1.50}'


@dataclass(frozen=True)
class Log:
    """What the workload stored: event ids by name, and their global positions."""

    ids: dict[str, str]
    positions: dict[str, int]


@pytest.fixture
async def received(
    app_client: AppClientFactory, settings: Settings, pool: asyncpg.Pool[Any]
) -> Log:
    """Every scheme and key over real HTTP, plus one derived event (the watchdog's)."""
    client = await app_client(
        settings.model_copy(update={"webhook_secret": SecretStr(GITHUB_SECRET)})
    )
    heartbeat = b'{"job_id":"vm-1","status":"heartbeat","delivery_id":"hb-1"}'
    running = b'{"job_id":"vm-2","status":"running"}'
    ids = {
        "provisioning": await deliver(client, PROVISIONING, standard_headers(PROVISIONING)),
        "rotated": await deliver(client, running, standard_headers(running, secret=ROTATED_SECRET)),
        "legacy": await deliver(client, heartbeat, legacy_headers(heartbeat, CALLBACK_SECRET)),
    }
    headers, body = captured("cogni-git-review__workflow_run.in_progress.json")
    ids["github"] = await deliver(client, body, headers)
    await wait_for_projection(pool)
    later = datetime.now(UTC) + timedelta(hours=1)
    assert sorted(await time_out_silent_jobs(pool, timeout_s=60, now=later)) == ["vm-1", "vm-2"]
    await wait_for_projection(pool)
    async with pool.acquire() as conn:
        rows = await conn.fetch("SELECT event_id::text, position FROM events")
    by_id = {r["event_id"]: r["position"] for r in rows}
    return Log(ids, {name: by_id[event_id] for name, event_id in ids.items()})


async def verify_signatures(
    database_url: str, cwd: Path, **env: str
) -> tuple[int, dict[str, Any], str]:
    """``verify --signatures --json`` and ``verify --signatures``, which must agree."""
    args = ("verify", "--signatures")
    document, text = await asyncio.gather(
        jobtrail(*args, "--json", database_url=database_url, cwd=cwd, stdin=None, **env),
        jobtrail(*args, database_url=database_url, cwd=cwd, stdin=None, **env),
    )
    assert document.code == text.code and document.code in (0, 1), (document, text)
    assert "Traceback" not in document.stderr + text.stderr
    report = document.json()
    assert report["ok"] == (document.code == 0) == (report["problems"] == [])
    return document.code, report, text.stdout


def kinds(report: dict[str, Any], *names: str) -> list[tuple[Any, ...]]:
    return [where(p) for p in report["problems"] if p["kind"] in names]


async def test_a_clean_log_passes_verify_and_its_signatures(
    received: Log, database_url: str, tmp_path: Path
) -> None:
    report, _ = await verify(database_url, tmp_path)
    assert report["ok"] is True and report["events"] == 6
    code, signed, text = await verify_signatures(database_url, tmp_path, **SECRETS)
    assert code == 0, signed
    assert signed["signatures"]["checked"] == 4  # the watchdog's events have no request
    [rotated] = signed["signatures"]["rotated"]
    assert rotated["event_id"] == received.ids["rotated"]
    assert rotated["key"] == "JOBTRAIL_CALLBACK_SECRETS[0]"
    assert (rotated["stream_id"], rotated["position"]) == (
        "job-vm-2",
        received.positions["rotated"],
    )
    assert f"rotated key: job-vm-2 position {received.positions['rotated']}" in text
    assert text.splitlines()[-1].startswith("ok: 6 events in 3 streams")
    assert "4 signatures checked, 1 by a rotated key" in text
    for secret in SECRETS.values():
        assert secret not in text + json.dumps(signed)


async def test_an_edited_raw_body_is_found_by_verify_and_by_its_signature(
    received: Log, pool: asyncpg.Pool[Any], database_url: str, tmp_path: Path
) -> None:
    at = received.positions["provisioning"]
    await tamper(
        pool,
        f"""UPDATE events
               SET raw_body = convert_to(
                   replace(convert_from(raw_body, 'UTF8'), '1.50', '0.50'), 'UTF8')
             WHERE position = {at}""",
    )
    report, text = await verify(database_url, tmp_path)
    assert events_problems(report) == [
        ("event", "job-vm-1", at, "hash"),
        ("event", "job-vm-1", at, "data"),
    ]
    data = next(p for p in report["problems"] if p["field"] == "data")
    assert data["expected"]["cost"] == 0.5 and data["actual"]["cost"] == 1.5
    assert f"event: job-vm-1 position {at} (stream position 1): data" in text

    code, signed, text = await verify_signatures(database_url, tmp_path, **SECRETS)
    assert code == 1
    assert kinds(signed, "signature") == [("signature", "job-vm-1", at, "signature")]
    [problem] = [p for p in signed["problems"] if p["kind"] == "signature"]
    assert problem["event_id"] == received.ids["provisioning"]
    assert (
        f"event {received.ids['provisioning']}: its standard signature verifies with none" in text
    )

    history = await jobtrail("history", "vm-1", "--json", database_url=database_url, cwd=tmp_path)
    assert history.code == 1
    assert [e["hash_ok"] for e in history.json()["events"]] == [False, True, True]


async def test_an_edited_data_copy_alone_is_found_by_verify(
    received: Log, pool: asyncpg.Pool[Any], database_url: str, tmp_path: Path
) -> None:
    at = received.positions["legacy"]
    await tamper(
        pool,
        f"""UPDATE events SET data = jsonb_set(data, '{{status}}', '"succeeded"')
             WHERE position = {at}""",
    )
    report, _ = await verify(database_url, tmp_path)
    # The chain covers the raw bytes, which are intact: only data gives the edit away.
    assert events_problems(report) == [("event", "job-vm-1", at, "data")]
    code, signed, _ = await verify_signatures(database_url, tmp_path, **SECRETS)
    assert code == 1
    assert kinds(signed, "event", "signature") == [("event", "job-vm-1", at, "data")]


async def test_signatures_no_configured_secret_verifies_are_named(
    received: Log, database_url: str, tmp_path: Path
) -> None:
    only_primary = {"GITHUB_CALLBACK_SECRET": CALLBACK_SECRET}
    code, signed, text = await verify_signatures(database_url, tmp_path, **only_primary)
    assert code == 1
    assert kinds(signed, "event", "stream_head") == []
    named = [p["event_id"] for p in signed["problems"] if p["kind"] == "signature"]
    assert named == [received.ids["rotated"], received.ids["github"]]
    for event_id in named:
        assert f"event {event_id}: its" in text
    # Plain verify needs no secret at all.
    report, _ = await verify(database_url, tmp_path)
    assert report["ok"] is True


async def test_export_carries_the_evidence_and_import_checks_it(
    received: Log,
    target: asyncpg.Pool[Any],  # noqa: F811 - the fixture
    database_url: str,
    target_url: str,  # noqa: F811 - the fixture
    tmp_path: Path,
) -> None:
    exported = await jobtrail("export", database_url=database_url, cwd=tmp_path)
    assert exported.code == 0, exported
    lines = [json.loads(line) for line in exported.stdout.splitlines()]
    by_id = {line["event_id"]: line for line in lines}
    first = by_id[received.ids["provisioning"]]
    assert first["digest_version"] == 2
    assert base64.b64decode(first["raw"]["body_base64"]) == PROVISIONING
    assert first["raw"]["content_type"] == "application/json"
    assert set(first["raw"]["headers"]) == {"webhook-id", "webhook-timestamp", "webhook-signature"}
    derived = [line for line in lines if line["type"] == "job.timed_out"]
    assert [(d["digest_version"], d["raw"]) for d in derived] == [(1, None), (1, None)]

    def edited(change: Any) -> bytes:
        copy = json.loads(json.dumps(first))
        change(copy)
        return "\n".join(json.dumps(copy if line is first else line) for line in lines).encode()

    forged_body = base64.b64encode(PROVISIONING.replace(b"1.50", b"2.50")).decode()
    for change, message in (
        (lambda d: d["raw"].update(body_base64=forged_body), "hash, data does not verify"),
        (lambda d: d["data"].update(cost=2.5), "data does not verify"),
        (lambda d: d["raw"]["headers"].update({"webhook-id": "msg_other"}), "hash does not"),
        (lambda d: d.update(raw=None), "raw does not verify"),
    ):
        refused = await jobtrail(
            "import", "-", database_url=target_url, cwd=tmp_path, stdin=edited(change)
        )
        assert refused.code == 1, refused
        assert "import refused, nothing written: line 1: stream job-vm-1" in refused.stderr
        assert message in refused.stderr, refused.stderr
        assert await count(target) == 0

    imported = await jobtrail(
        "import", "-", database_url=target_url, cwd=tmp_path, stdin=exported.stdout.encode()
    )
    assert imported.code == 0, imported
    copied = await jobtrail("export", database_url=target_url, cwd=tmp_path)
    assert copied.stdout == exported.stdout
    code, signed, _ = await verify_signatures(target_url, tmp_path, **SECRETS)
    assert code == 0 and signed["signatures"]["checked"] == 4

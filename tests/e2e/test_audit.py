"""``jobtrail verify`` and ``jobtrail history`` against a log edited behind the database's back,
as a superuser can: triggers bypassed, events edited, deleted and swapped, projection rows
changed by hand. Each must be reported at the exact stream, position and field."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import asyncpg
import pytest

from events.store import append_batch, read_stream
from projections.replay import rebuild
from service.settings import Settings
from tests.conftest import AppClientFactory
from tests.e2e.test_readme import example
from tests.helpers import with_database
from tests.workload import JOBTRAIL, append, callback, cli_env, jobtrail, lifecycle

# lifecycle(jobs=3, per_job=5): job j's event at step s (stream position s + 1) is at global
# position 3 * s + j + 1. Jobs 0 and 2 end at step 4 (succeeded, failed); job 1 keeps running.
JOBS, STEPS = 3, 5


def position(job: int, stream_position: int) -> int:
    return JOBS * (stream_position - 1) + job + 1


@pytest.fixture
async def log(pool: asyncpg.Pool[Any]) -> asyncpg.Pool[Any]:
    await append(pool, lifecycle(jobs=JOBS, per_job=STEPS))
    await rebuild(pool)
    return pool


async def tamper(pool: asyncpg.Pool[Any], *statements: str, replica: bool = True) -> None:
    """Run ``statements`` as a superuser who bypasses the append-only triggers."""
    async with pool.acquire() as conn, conn.transaction():
        if replica:
            await conn.execute("SET LOCAL session_replication_role = replica")
        else:
            await conn.execute("ALTER TABLE events DISABLE TRIGGER ALL")
        for statement in statements:
            await conn.execute(statement)
        if not replica:
            await conn.execute("ALTER TABLE events ENABLE TRIGGER ALL")


async def verify(database_url: str, cwd: Path) -> tuple[dict[str, Any], str]:
    """``verify --json`` and ``verify``, which must agree; exit 1 when they find anything."""
    document, text = await asyncio.gather(
        jobtrail("verify", "--json", database_url=database_url, cwd=cwd),
        jobtrail("verify", database_url=database_url, cwd=cwd),
    )
    assert document.code in (0, 1) and text.code in (0, 1), (document, text)
    report = document.json()
    assert document.code == text.code == (0 if report["ok"] else 1), (document, text)
    assert "Traceback" not in document.stderr + text.stderr
    assert report["ok"] == (report["problems"] == [])
    assert len(text.stdout.splitlines()) == len(report["problems"]) + 1
    return report, text.stdout


def where(problem: dict[str, Any]) -> tuple[Any, ...]:
    return problem["kind"], problem["stream_id"], problem["position"], problem["field"]


def events_problems(report: dict[str, Any]) -> list[tuple[Any, ...]]:
    return [where(p) for p in report["problems"] if p["kind"] != "projection"]


async def test_a_clean_log_verifies(
    log: asyncpg.Pool[Any], database_url: str, tmp_path: Path
) -> None:
    report, text = await verify(database_url, tmp_path)
    assert report == {
        "ok": True,
        "problems": [],
        "streams": 3,
        "events": 15,
        "projections": {"job_status": 15, "job_heartbeat": 15},
    }
    assert text.startswith("ok: 15 events in 3 streams")


@pytest.mark.parametrize("replica", [True, False], ids=["replication-role", "triggers-off"])
async def test_an_edited_event_is_found(
    log: asyncpg.Pool[Any], database_url: str, tmp_path: Path, replica: bool
) -> None:
    edited = position(1, 3)
    await tamper(
        log,
        f"""UPDATE events SET data = jsonb_set(data, '{{status}}', '"failed"')
             WHERE position = {edited}""",
        replica=replica,
    )
    report, text = await verify(database_url, tmp_path)
    assert events_problems(report) == [("event", "job-vm-00001", edited, "hash")]
    [problem] = [p for p in report["problems"] if p["kind"] == "event"]
    assert problem["stream_position"] == 3
    assert len(problem["expected"]) == len(problem["actual"]) == 64  # hex
    assert problem["expected"] != problem["actual"]
    # The stored job_status was built from the original: a replay of the edited log differs.
    assert ("projection", "job-vm-00001", position(1, 5), "status") in map(
        where, report["problems"]
    )
    assert f"event: job-vm-00001 position {edited} (stream position 3): hash" in text

    # history shows the same event as the one that no longer verifies.
    history = await jobtrail(
        "history", "vm-00001", "--json", database_url=database_url, cwd=tmp_path
    )
    assert history.code == 1
    assert [e["hash_ok"] for e in history.json()["events"]] == [True, True, False, True, True]


async def test_edited_metadata_and_receive_times_are_found(
    log: asyncpg.Pool[Any], database_url: str, tmp_path: Path
) -> None:
    await tamper(
        log,
        f'UPDATE events SET metadata = metadata || \'{{"scheme": "legacy"}}\''
        f" WHERE position = {position(0, 2)}",
        f"UPDATE events SET received_at = received_at - interval '1 hour'"
        f" WHERE position = {position(2, 4)}",
    )
    report, _ = await verify(database_url, tmp_path)
    assert events_problems(report) == [
        ("event", "job-vm-00000", position(0, 2), "hash"),
        ("event", "job-vm-00002", position(2, 4), "hash"),
    ]


async def test_a_deleted_event_is_found(
    log: asyncpg.Pool[Any], database_url: str, tmp_path: Path
) -> None:
    await tamper(log, f"DELETE FROM events WHERE position = {position(2, 2)}")
    report, _ = await verify(database_url, tmp_path)
    after = position(2, 3)
    assert events_problems(report) == [
        ("event", "job-vm-00002", after, "stream_position"),
        ("event", "job-vm-00002", after, "prev_hash"),
    ]
    gap = report["problems"][0]
    assert (gap["expected"], gap["actual"], gap["stream_position"]) == (2, 3, 3)
    # The replay without it counts one event fewer than the stored projection.
    counted = [p for p in report["problems"] if p["field"] == "event_count"]
    assert [(c["key"], c["expected"], c["actual"]) for c in counted] == [("vm-00002", 4, 5)]


async def test_a_deleted_last_event_is_found_against_the_stream_head(
    log: asyncpg.Pool[Any], database_url: str, tmp_path: Path
) -> None:
    last = position(0, 5)
    await tamper(log, f"DELETE FROM events WHERE position = {last}")
    report, _ = await verify(database_url, tmp_path)
    found = position(0, 4)
    assert events_problems(report) == [
        ("stream_head", "job-vm-00000", found, "version"),
        ("stream_head", "job-vm-00000", found, "last_hash"),
        ("stream_head", "job-vm-00000", found, "last_position"),
    ]
    version, _, last_position = report["problems"][:3]
    assert (version["expected"], version["actual"]) == (5, 4)
    assert (last_position["expected"], last_position["actual"]) == (last, found)


async def test_a_reordered_pair_is_found(
    log: asyncpg.Pool[Any], database_url: str, tmp_path: Path
) -> None:
    second, third = position(2, 2), position(2, 3)
    await tamper(  # swap their stream positions (through a free one: they are unique)
        log,
        f"UPDATE events SET stream_position = 99 WHERE position = {second}",
        f"UPDATE events SET stream_position = 2 WHERE position = {third}",
        f"UPDATE events SET stream_position = 3 WHERE position = {second}",
    )
    report, _ = await verify(database_url, tmp_path)
    assert events_problems(report) == [
        ("event", "job-vm-00002", second, "stream_position"),
        ("event", "job-vm-00002", second, "hash"),
        ("event", "job-vm-00002", third, "stream_position"),
        ("event", "job-vm-00002", third, "hash"),
    ]


async def test_a_pair_with_swapped_payloads_is_found(
    log: asyncpg.Pool[Any], database_url: str, tmp_path: Path
) -> None:
    first, last = position(0, 1), position(0, 5)
    await tamper(
        log,
        f"""UPDATE events e SET data = o.data, received_at = o.received_at
              FROM events o
             WHERE (e.position, o.position) IN (({first}, {last}), ({last}, {first}))""",
    )
    report, _ = await verify(database_url, tmp_path)
    assert events_problems(report) == [
        ("event", "job-vm-00000", first, "hash"),
        ("event", "job-vm-00000", last, "hash"),
    ]


async def test_a_projection_row_changed_by_hand_is_found(
    log: asyncpg.Pool[Any], database_url: str, tmp_path: Path
) -> None:
    async with log.acquire() as conn:
        await conn.execute("UPDATE job_status SET status = 'cancelled' WHERE job_id = 'vm-00002'")
        await conn.execute("DELETE FROM job_heartbeat WHERE job_id = 'vm-00001'")
    report, text = await verify(database_url, tmp_path)
    assert report["problems"] == [
        {
            "kind": "projection",
            "stream_id": "job-vm-00002",
            "position": position(2, 5),
            "field": "status",
            "projection": "job_status",
            "key": "vm-00002",
            "expected": "failed",
            "actual": "cancelled",
            "detail": "job_status row 'vm-00002' differs from a replay of the log",
        },
        {
            "kind": "projection",
            "stream_id": "job-vm-00001",
            "position": position(1, 5),
            "field": "row",
            "projection": "job_heartbeat",
            "key": "vm-00001",
            "expected": "present",
            "actual": "missing",
            "detail": "job_heartbeat row 'vm-00001' is missing; a replay has it present",
        },
    ]
    assert "job_status key 'vm-00002' (job-vm-00002 position 15): status" in text


async def test_verify_holds_while_the_service_appends_and_projects(
    pool: asyncpg.Pool[Any],
    settings: Settings,
    app_client: AppClientFactory,
    database_url: str,
    tmp_path: Path,
) -> None:
    await append(pool, lifecycle(jobs=20, per_job=50))
    await app_client(settings)  # its projector catches up and follows
    done = asyncio.Event()

    async def ingest() -> None:
        n = 0
        while not done.is_set():
            events = [callback(f"vm-{n % 25:05d}", "heartbeat", datetime.now(UTC))]
            async with pool.acquire() as conn, conn.transaction():
                await append_batch(conn, events)
            n += 1
            await asyncio.sleep(0.002)

    writer = asyncio.create_task(ingest())
    try:
        runs = await asyncio.gather(
            *(
                jobtrail("verify", "--json", database_url=database_url, cwd=tmp_path)
                for _ in range(4)
            )
        )
    finally:
        done.set()
        await writer
    for run in runs:
        assert run.code == 0, run
        assert run.json()["ok"] is True
    assert max(r.json()["events"] for r in runs) > 1000  # the log grew under them


async def test_history_shows_the_timeline_with_stream_positions_and_keys(
    log: asyncpg.Pool[Any], database_url: str, tmp_path: Path
) -> None:
    document, text, unknown = await asyncio.gather(
        jobtrail("history", "vm-00002", "--json", database_url=database_url, cwd=tmp_path),
        jobtrail("history", "vm-00002", database_url=database_url, cwd=tmp_path),
        jobtrail("history", "nope", "--json", database_url=database_url, cwd=tmp_path),
    )
    async with log.acquire() as conn:
        stored = await read_stream(conn, "job-vm-00002")
    assert document.code == 0, document
    assert document.json() == {
        "job_id": "vm-00002",
        "events": [{**e.to_json(), "hash_ok": True} for e in stored],
        "archived": [],  # no month is archived (tests/e2e/test_archive.py)
    }
    assert text.code == 0, text
    header, *rows = (line.split() for line in text.stdout.splitlines())
    assert header == [
        "POSITION", "STREAM_POS", "RECEIVED_AT", "TYPE", "STATUS", "SCHEME", "IDEMPOTENCY_KEY",
        "HASH",
    ]  # fmt: skip
    assert [row[:2] for row in rows] == [[str(position(2, sp)), str(sp)] for sp in range(1, 6)]
    assert [row[4] for row in rows] == [
        "provisioning",
        "heartbeat",
        "running",
        "heartbeat",
        "failed",
    ]
    assert [row[6] for row in rows] == [f"msg_vm-00002_{step}" for step in range(5)]
    assert all(row[-1] == "ok" for row in rows)
    assert unknown.code == 1 and unknown.json() == {"job_id": "nope", "events": [], "archived": []}


async def test_commands_on_a_database_without_the_schema_say_so(
    server_dsn: str, tmp_path: Path
) -> None:
    name = f"jobtrail_empty_{id(tmp_path)}"
    admin = await asyncpg.connect(server_dsn)
    try:
        await admin.execute(f'CREATE DATABASE "{name}"')
        for command in (
            ("verify",),
            ("history", "x"),
            ("export",),
            ("replay",),
            ("archive", "--list"),
        ):
            result = await jobtrail(
                *command, database_url=with_database(server_dsn, name), cwd=tmp_path
            )
            assert result.code == 2, (command, result)
            assert "jobtrail migrate" in result.stderr and "Traceback" not in result.stderr
    finally:
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        await admin.close()


async def test_the_operators_example_in_the_readme_works_when_pasted(
    log: asyncpg.Pool[Any], database_url: str, tmp_path: Path
) -> None:
    script = example("operators").replace(".venv/bin/", f"{JOBTRAIL.parent}/")
    process = await asyncio.create_subprocess_exec(
        "bash", "-euo", "pipefail", "-c", script,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
        env=cli_env(database_url), cwd=tmp_path,
    )  # fmt: skip
    out, err = await asyncio.wait_for(process.communicate(), 120)
    assert process.returncode == 0, err.decode()
    text = out.decode()
    assert text.startswith("ok: 15 events in 3 streams")
    assert "imported 0 events; skipped 15 already present" in text
    assert len((tmp_path / "events.jsonl").read_text().splitlines()) == 15


@pytest.mark.parametrize(
    "command",
    [
        ("verify",),
        ("verify", "--json"),
        ("history", "x"),
        ("export",),
        ("import", "-"),
        ("replay", "--dry-run"),
        ("replay", "--until-position", "1"),
    ],
)
async def test_an_unreachable_database_is_a_clean_exit_2(
    command: tuple[str, ...], tmp_path: Path
) -> None:
    result = await jobtrail(
        *command, database_url="postgresql://postgres@127.0.0.1:1/x", cwd=tmp_path
    )
    assert result.code == 2, result
    assert "cannot connect to PostgreSQL" in result.stderr and "Traceback" not in result.stderr
    assert result.stdout == ""

"""``jobtrail export`` from one database and ``jobtrail import`` into another: everything kept
but the global positions, idempotent, and a file that does not verify refused whole."""

from __future__ import annotations

import json
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import asyncpg
import pytest
from pydantic import SecretStr

from events.store import register_codecs
from events.transfer import ImportRefused, import_lines
from projections.replay import rebuild
from service.settings import Settings
from tests.conftest import AppClientFactory
from tests.helpers import wait_for_projection, with_database
from tests.workload import append, callback, head, jobtrail, lifecycle, snapshot


@pytest.fixture
async def target_url(server_dsn: str, template_name: str) -> AsyncIterator[str]:
    """A second, empty (migrated) database on the same server."""
    name = f"jobtrail_target_{uuid.uuid4().hex[:12]}"
    admin = await asyncpg.connect(server_dsn)
    try:
        await admin.execute(f'CREATE DATABASE "{name}" TEMPLATE "{template_name}"')
        yield with_database(server_dsn, name)
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    finally:
        await admin.close()


@pytest.fixture
async def target(target_url: str) -> AsyncIterator[asyncpg.Pool[Any]]:
    async with asyncpg.create_pool(
        target_url, init=register_codecs, min_size=1, max_size=4
    ) as pool:
        yield pool


async def source_log(pool: asyncpg.Pool[Any]) -> None:
    """Callbacks, plus the awkward ones: no idempotency key, numbers jsonb respells, Unicode."""
    await append(pool, lifecycle(jobs=5, per_job=6))
    now = datetime.now(UTC)
    details = {"ratio": 1e300, "zero": -0.0, "big": 2**53 - 1, "name": "café ✓ \u2028"}
    await append(pool, [callback("vm-odd", "running", now, details=details)])
    await rebuild(pool)


async def keys(pool: asyncpg.Pool[Any]) -> list[tuple[str, uuid.UUID, int]]:
    async with pool.acquire() as conn:
        rows = await conn.fetch("SELECT key, event_id, position FROM idempotency_keys ORDER BY 1")
    return [tuple(r) for r in rows]


async def count(pool: asyncpg.Pool[Any]) -> int:
    async with pool.acquire() as conn:
        value: int = await conn.fetchval("SELECT count(*) FROM events")
        return value


async def test_export_then_import_into_an_empty_database(
    pool: asyncpg.Pool[Any],
    target: asyncpg.Pool[Any],
    database_url: str,
    target_url: str,
    settings: Settings,
    app_client: AppClientFactory,
    tmp_path: Path,
) -> None:
    await source_log(pool)
    exported = await jobtrail("export", database_url=database_url, cwd=tmp_path)
    assert exported.code == 0, exported
    lines = [json.loads(line) for line in exported.stdout.splitlines()]
    assert len(lines) == 31 == await head(pool)
    assert set(lines[0]) == {
        "position", "event_id", "stream_id", "stream_position", "type", "version",
        "received_at", "data", "metadata", "prev_hash", "hash", "idempotency_key",
        "digest_version", "raw",
    }  # fmt: skip
    assert (lines[0]["digest_version"], lines[0]["raw"]) == (1, None)  # no request: version 1
    assert lines[0]["idempotency_key"] == "msg_vm-00000_0"
    assert lines[-1]["idempotency_key"] is None
    assert lines[-1]["data"]["details"]["name"] == "café ✓ \u2028"
    file = tmp_path / "log.jsonl"
    file.write_text(exported.stdout, encoding="utf-8")

    # The target runs a service: its projector picks the imported events up by itself.
    await app_client(settings.model_copy(update={"database_url": SecretStr(target_url)}))
    imported = await jobtrail("import", str(file), database_url=target_url, cwd=tmp_path)
    assert imported.code == 0, imported
    assert imported.stdout.strip() == "imported 31 events; skipped 0 already present"
    await wait_for_projection(target)

    verified = await jobtrail("verify", "--json", database_url=target_url, cwd=tmp_path)
    assert verified.code == 0, verified
    assert verified.json()["ok"] is True and verified.json()["events"] == 31
    mine, theirs = await snapshot(pool), await snapshot(target)
    assert {t: theirs[t] for t in ("job_status", "job_heartbeat")} == {
        t: mine[t] for t in ("job_status", "job_heartbeat")
    }
    assert await keys(target) == await keys(pool)
    again = await jobtrail("export", database_url=target_url, cwd=tmp_path)
    assert again.stdout == exported.stdout  # the log itself, byte for byte

    # Importing again (from stdin) adds nothing.
    twice = await jobtrail(
        "import", "-", "--json", database_url=target_url, cwd=tmp_path,
        stdin=file.read_bytes(),
    )  # fmt: skip
    assert twice.code == 0, twice
    assert twice.json() == {"imported": 0, "skipped": 31}
    assert await count(target) == 31


async def test_partial_exports_continue_each_other(
    pool: asyncpg.Pool[Any], target: asyncpg.Pool[Any], database_url: str, target_url: str,
    tmp_path: Path,
) -> None:  # fmt: skip
    await source_log(pool)
    first = await jobtrail(
        "export", "--until-position", "12", database_url=database_url, cwd=tmp_path
    )
    rest = await jobtrail(
        "export", "--since-position", "12", database_url=database_url, cwd=tmp_path
    )
    assert [len(r.stdout.splitlines()) for r in (first, rest)] == [12, 19]

    alone = await jobtrail("import", "-", database_url=target_url, cwd=tmp_path,
                           stdin=rest.stdout.encode())  # fmt: skip
    assert alone.code == 1, alone  # its streams start at position 3, not 1
    assert "line 1: stream job-vm-00002 position 3" in alone.stderr
    assert await count(target) == 0

    for part in (first, rest):
        result = await jobtrail("import", "-", database_url=target_url, cwd=tmp_path,
                                stdin=part.stdout.encode())  # fmt: skip
        assert result.code == 0, result
    verified = await jobtrail("verify", database_url=target_url, cwd=tmp_path)
    assert verified.code == 0, verified
    whole = await jobtrail("export", database_url=database_url, cwd=tmp_path)
    copied = await jobtrail("export", database_url=target_url, cwd=tmp_path)
    assert copied.stdout == whole.stdout


def edit(text: str, line: int, change: Any) -> str:
    lines = text.splitlines()
    document = json.loads(lines[line - 1])
    change(document)
    lines[line - 1] = json.dumps(document)
    return "\n".join(lines) + "\n"


@pytest.mark.parametrize(
    ("tampering", "message"),
    [
        (lambda t: edit(t, 20, lambda d: d["data"].update(status="failed")), "line 20: stream"),
        (lambda t: edit(t, 20, lambda d: d.update(stream_position=9)), "line 20: stream"),
        (lambda t: edit(t, 20, lambda d: d.update(hash="00" * 32)), "line 20: stream"),
        (lambda t: "\n".join(t.splitlines()[:9] + t.splitlines()[10:]), "line 14: stream"),
        (lambda t: t.replace("\n", "\n{not json\n", 1), "line 2: not an exported event"),
        (lambda t: edit(t, 3, lambda d: d.pop("hash")), "line 3: not an exported event"),
    ],
    ids=["data", "stream-position", "hash", "missing-event", "not-json", "no-hash"],
)
async def test_a_file_that_does_not_verify_is_refused_whole(
    pool: asyncpg.Pool[Any],
    target: asyncpg.Pool[Any],
    database_url: str,
    target_url: str,
    tmp_path: Path,
    tampering: Any,
    message: str,
) -> None:
    await source_log(pool)
    exported = await jobtrail("export", database_url=database_url, cwd=tmp_path)
    file = tmp_path / "tampered.jsonl"
    file.write_text(tampering(exported.stdout), encoding="utf-8")
    result = await jobtrail("import", str(file), database_url=target_url, cwd=tmp_path)
    assert result.code == 1, result
    assert "import refused, nothing written" in result.stderr and message in result.stderr
    assert "Traceback" not in result.stderr
    assert await count(target) == 0
    assert await keys(target) == []


async def test_an_import_that_conflicts_with_the_target_is_refused(
    pool: asyncpg.Pool[Any], target: asyncpg.Pool[Any], database_url: str, target_url: str,
    tmp_path: Path,
) -> None:  # fmt: skip
    await source_log(pool)
    exported = await jobtrail("export", database_url=database_url, cwd=tmp_path)
    # The target has seen one of the file's idempotency keys, on another event...
    await append(target, [callback("vm-zz", "queued", datetime.now(UTC), key="msg_vm-00001_2")])
    taken = await jobtrail("import", "-", database_url=target_url, cwd=tmp_path,
                           stdin=exported.stdout.encode())  # fmt: skip
    assert taken.code == 1, taken
    assert "line 12: stream job-vm-00001 position 3: idempotency key 'msg_vm-00001_2'" in (
        taken.stderr
    )
    # ... and its own history for one of the file's streams.
    await append(target, [callback("vm-00003", "queued", datetime.now(UTC), key="other")])
    clash = await jobtrail("import", "-", database_url=target_url, cwd=tmp_path,
                           stdin=exported.stdout.encode())  # fmt: skip
    assert clash.code == 1, clash
    assert "line 4: stream job-vm-00003 position 1" in clash.stderr
    assert await count(target) == 2


async def test_a_refusal_after_several_batches_rolls_all_of_them_back(
    pool: asyncpg.Pool[Any], target: asyncpg.Pool[Any], database_url: str, tmp_path: Path
) -> None:
    await source_log(pool)
    exported = await jobtrail("export", database_url=database_url, cwd=tmp_path)
    lines = edit(exported.stdout, 30, lambda d: d["metadata"].update(scheme="legacy"))
    async with target.acquire() as conn:
        with pytest.raises(ImportRefused) as refused:
            await import_lines(conn, lines.splitlines(), batch_size=4)
    assert refused.value.line == 30
    assert "hash does not verify" in refused.value.reason
    assert await count(target) == 0
    async with target.acquire() as conn:
        result = await import_lines(conn, exported.stdout.splitlines(), batch_size=4)
    assert (result.imported, result.skipped) == (31, 0)

"""Issue 9's partitioned log: events across three months, the oldest archived to a file that
``verify --file`` checks, the live log still verifying across the archived range, ``replay``
refusing and naming what is missing, ``history`` saying which stream positions are archived, and
``archive --restore`` bringing the month back so that a replay equals the live projections."""

from __future__ import annotations

import asyncio
import functools
import json
from collections.abc import AsyncIterator
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

import asyncpg
import pytest

from events.partitions import (
    add_months,
    attached_months,
    current_month,
    ensure_partitions,
    format_month,
    month_start,
    partition_name,
)
from events.store import register_codecs
from events.transfer import ImportRefused, encode_line, export, import_lines
from tests.e2e.test_transfer import target_url  # noqa: F401 - a fixture
from tests.workload import Result, append, callback, jobtrail, snapshot


def day(month: date, n: int) -> datetime:
    return month_start(month) + timedelta(days=n - 1, hours=12)


@pytest.fixture
async def months(pool: asyncpg.Pool[Any]) -> tuple[date, date, date]:
    """Events in three months, oldest first: vm-span runs through all three (stream positions
    1-2 in the oldest), vm-old lives in the oldest only, vm-mid and vm-new in one each."""
    now = current_month()
    oldest, middle = add_months(now, -2), add_months(now, -1)
    async with pool.acquire() as conn:
        await ensure_partitions(conn, oldest, 2)
    await append(
        pool,
        [
            callback("vm-span", "provisioning", day(oldest, 2), key="s1", run_id=1),
            callback("vm-old", "queued", day(oldest, 2) + timedelta(minutes=1), key="o1"),
            callback("vm-span", "heartbeat", day(oldest, 3), key="s2"),
            callback("vm-old", "failed", day(oldest, 4), key="o2", message="gave up"),
            callback("vm-mid", "running", day(middle, 5), key="m1"),
            callback("vm-span", "running", day(middle, 6), key="s3", agent_id="a-1"),
            callback("vm-span", "succeeded", datetime.now(UTC), key="s4"),
            callback("vm-new", "queued", datetime.now(UTC), key="n1"),
        ],
    )
    return oldest, middle, now


async def cli(database_url: str, cwd: Path, *args: str) -> Result:
    result = await jobtrail(*args, database_url=database_url, cwd=cwd)
    assert "Traceback" not in result.stderr, result
    return result


async def test_archive_the_oldest_month_verify_it_refuse_replay_and_restore(
    months: tuple[date, date, date], pool: asyncpg.Pool[Any], database_url: str, tmp_path: Path
) -> None:
    oldest, middle, now = months
    name, file = partition_name(oldest), f"{partition_name(oldest)}.jsonl"
    run = functools.partial(cli, database_url, tmp_path)
    assert (await run("replay")).code == 0  # the projections have applied every event
    live = await snapshot(pool)
    async with pool.acquire() as conn, conn.transaction():
        exported = "".join([encode_line(line) async for line in export(conn, until=4)])

    refused = await asyncio.gather(
        run("archive", "--before", format_month(add_months(now, 1))),  # the current month
        run("archive", "--before", "2026-13"),
        run("archive", "--before", format_month(middle), "--dir", str(tmp_path / "missing")),
    )
    assert [r.code for r in refused] == [2, 2, 2], refused
    assert f"would archive {format_month(now)}, the current month" in refused[0].stderr
    assert "not a month (YYYY-MM): '2026-13'" in refused[1].stderr
    assert "not a directory" in refused[2].stderr

    archive_dir = tmp_path / "archive"
    archive_dir.mkdir()
    done = await run(
        "archive", "--before", format_month(middle), "--dir", str(archive_dir), "--json"
    )
    assert done.code == 0, done
    [month] = done.json()["archived"]
    assert (month["month"], month["partition"], month["events"]) == (format_month(oldest), name, 4)
    assert (month["first_position"], month["last_position"]) == (1, 4)
    assert month["drop"] == f"DROP TABLE {name};" and not month["dropped"]
    path = archive_dir / file
    assert path.read_text() == exported  # what export wrote, byte for byte
    async with pool.acquire() as conn:
        assert oldest not in await attached_months(conn)
        assert await conn.fetchval("SELECT count(*) FROM events") == 4
    again = await run("archive", "--before", format_month(middle), "--dir", str(archive_dir))
    assert (again.code, again.stdout.strip()) == (
        0,
        f"nothing to archive before {format_month(middle)}",
    )

    # The file verifies, alone and against its archive record.
    checked = await run("verify", "--file", str(path), "--json")
    assert checked.code == 0, checked
    [report] = checked.json()["files"]
    assert report["archive"] == {"month": format_month(oldest), "file": file}
    assert (report["events"], report["streams"], report["continued"]) == (4, 2, [])
    assert (await run("verify", "--file", str(path), "--offline")).code == 0

    # One byte of an event changed: the line is named, and the file is not what was archived.
    tampered = tmp_path / "tampered" / file
    tampered.parent.mkdir()
    text = path.read_text()
    assert text.count('"status":"heartbeat"') == 1
    tampered.write_text(text.replace('"status":"heartbeat"', '"status":"heartbeaT"'))
    found = await run("verify", "--file", str(tampered), "--json")
    assert found.code == 1, found
    where = {(p["kind"], p["field"], p.get("line")) for p in found.json()["problems"]}
    assert ("event", "hash", 3) in where and ("archive", "sha256", None) in where
    words = await run("verify", "--file", str(tampered), "--offline")
    assert words.code == 1
    assert (
        f"event: {tampered} line 3: job-vm-span position 3 (stream position 2): hash"
        in words.stdout
    )

    exported_now = await run("export")
    assert exported_now.code == 0 and len(exported_now.stdout.splitlines()) == 4
    assert f"not exported, archived: {format_month(oldest)}: partition {name}" in (
        exported_now.stderr
    )

    # The live log verifies across the archived range; the projections cannot be compared.
    verified = await run("verify", "--json")
    assert verified.code == 0, verified
    document = verified.json()
    assert document["ok"] and document["events"] == 4 and not document["projections_compared"]
    assert [a["month"] for a in document["archived"]] == [format_month(oldest)]
    text_report = await run("verify")
    assert text_report.code == 0 and "projections not compared" in text_report.stdout

    # The record is what links the live chain to the archived one: an edit of it is found.
    async with pool.acquire() as conn:
        record = await conn.fetchval("SELECT streams::text FROM archived_partitions")
        await conn.execute(
            "UPDATE archived_partitions SET streams = jsonb_set(streams,"
            " '{job-vm-span,0,3}', to_jsonb(repeat('0', 64)))"
        )
        mismatch = await run("verify", "--json")
        await conn.execute("UPDATE archived_partitions SET streams = streams - 'job-vm-span'")
        missing = await run("verify")
        await conn.execute("UPDATE archived_partitions SET streams = $1::text::jsonb", record)
    assert mismatch.code == 1, mismatch
    assert [(p["stream_id"], p["position"], p["field"]) for p in mismatch.json()["problems"]] == [
        ("job-vm-span", 6, "prev_hash")
    ]
    assert missing.code == 1, missing
    assert "no archived month holds stream positions 1..2 either" in missing.stdout

    # Every replay needs the archived events: refused, naming them and the way back.
    replays = await asyncio.gather(
        run("replay"),
        run("replay", "--dry-run"),
        run("replay", "--until-position", "2"),
        run("replay", "--until", datetime.now(UTC).isoformat()),
    )
    for replay in replays:
        assert replay.code == 1, replay
        assert (
            f"{format_month(oldest)}: partition {name}, positions 1..4, 4 events, file {file}"
            in (replay.stderr)
        )
        assert "jobtrail archive --restore" in replay.stderr

    # history says which stream positions are archived, and where.
    span, old = await asyncio.gather(run("history", "vm-span", "--json"), run("history", "vm-old"))
    assert span.code == 0, span
    assert [(e["stream_position"], e["hash_ok"]) for e in span.json()["events"]] == [
        (3, True),
        (4, True),
    ]
    archived = {"month": format_month(oldest), "file": file, "stream_positions": [1, 2]}
    assert span.json()["archived"] == [archived]
    assert old.code == 0, old
    assert f"stream positions 1..2 of job vm-old are archived, in {file}" in old.stdout

    # Back again: the replay runs, and equals the live projections.
    restored = await run("archive", "--restore", format_month(oldest))
    assert restored.code == 0, restored
    assert (await run("replay")).code == 0
    assert await snapshot(pool) == live
    clean = await run("verify", "--json")
    assert clean.code == 0 and "archived" not in clean.json(), clean


async def test_a_dropped_month_cannot_be_restored_and_an_import_into_it_is_refused(
    months: tuple[date, date, date], pool: asyncpg.Pool[Any], database_url: str, tmp_path: Path
) -> None:
    oldest, middle, _ = months
    run = functools.partial(cli, database_url, tmp_path)
    early = await run("archive", "--before", format_month(middle), "--dir", str(tmp_path))
    assert early.code == 2, early  # the projections have applied nothing yet
    assert "has applied the log up to position 0, and the month's last event" in early.stderr
    assert not (tmp_path / f"{partition_name(oldest)}.jsonl").exists()  # no file for nothing
    assert (await run("replay")).code == 0
    done = await run("archive", "--before", format_month(middle), "--dir", str(tmp_path), "--drop")
    assert done.code == 0, done
    assert f"partition {partition_name(oldest)} detached and dropped" in done.stdout
    listed = await run("archive", "--list", "--json")
    assert [a["month"] for a in listed.json()["archived"]] == [format_month(oldest)]

    restored = await run("archive", "--restore", format_month(oldest))
    assert restored.code == 1
    assert f"the detached table {partition_name(oldest)} no longer exists" in restored.stderr
    assert (await run("archive", "--restore", "2001-01")).code == 2  # never archived
    assert (await run("verify", "--file", str(tmp_path / "none.jsonl"))).code == 2

    # The archived events cannot come back beside their archive through an import either.
    archived = tmp_path / f"{partition_name(oldest)}.jsonl"
    async with pool.acquire() as conn:
        with archived.open() as file, pytest.raises(ImportRefused) as refused:
            await import_lines(conn, file)
    assert refused.value.line == 1
    assert f"was received in {format_month(oldest)}, a month that is archived" in str(refused.value)


@pytest.fixture
async def target(target_url: str) -> AsyncIterator[asyncpg.Connection[Any]]:  # noqa: F811
    conn = await asyncpg.connect(target_url)
    await register_codecs(conn)
    try:
        yield conn
    finally:
        await conn.close()


async def test_import_creates_the_partitions_of_the_months_it_brings(
    months: tuple[date, date, date], pool: asyncpg.Pool[Any], target: asyncpg.Connection[Any]
) -> None:
    oldest = months[0]
    assert oldest not in await attached_months(target)
    async with pool.acquire() as conn, conn.transaction():
        lines = [json.dumps(line) async for line in export(conn)]
    imported = await import_lines(target, lines)
    assert (imported.imported, imported.skipped) == (8, 0)
    assert oldest in await attached_months(target)
    in_oldest = await target.fetchval(f'SELECT count(*) FROM "{partition_name(oldest)}"')
    assert in_oldest == 4

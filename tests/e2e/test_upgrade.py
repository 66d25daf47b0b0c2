"""A log written by the release before raw requests were kept still verifies after upgrading
(SPEC section 4): its events stay digest version 1, nothing stored is rewritten, and new events
received over HTTP continue the same chains as version 2. And a log of several months moves into
monthly partitions (SPEC section 10) unchanged."""

from __future__ import annotations

import itertools
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import asyncpg
import pytest
from pydantic import SecretStr

from events.catalog import STATUS_REPORTED, job_stream
from events.hashing import GENESIS_HASH, body_digest, chain_hash, event_digest
from events.models import NewEvent, RawRequest
from events.partitions import add_months, attached_months, month_of, month_start, partition_name
from events.store import append_batch, register_codecs
from service import migrate as migrations_module
from service.settings import Settings
from tests.conftest import AppClientFactory
from tests.e2e.test_evidence_audit import SECRETS
from tests.helpers import standard_headers, wait_for_projection
from tests.http.test_evidence import deliver
from tests.integration.test_migrations import empty_database  # noqa: F401 - a fixture
from tests.workload import callback, jobtrail, lifecycle

# The previous release's schema ends with migration 0004, and its append inserted exactly these
# columns (events/queries.sql, insert_events, before digest versions).
PREVIOUS_SCHEMA = 4
PREVIOUS_INSERT = """
WITH batch AS (
    SELECT *
      FROM unnest($1::uuid[], $2::text[], $3::bigint[], $4::text[], $5::int[], $6::jsonb[],
                  $7::jsonb[], $8::timestamptz[], $9::bytea[], $10::bytea[], $11::text[])
           WITH ORDINALITY
           AS b(event_id, stream_id, stream_position, type, version, data, metadata,
                received_at, prev_hash, hash, idempotency_key, ord)
),
inserted AS (
    INSERT INTO events (event_id, stream_id, stream_position, type, version, data, metadata,
                        received_at, prev_hash, hash)
    SELECT event_id, stream_id, stream_position, type, version, data, metadata,
           received_at, prev_hash, hash
      FROM batch
     ORDER BY ord
    RETURNING position, event_id, stream_id, stream_position, hash
),
heads AS (
    INSERT INTO streams (stream_id, version, last_hash, last_position)
    SELECT DISTINCT ON (stream_id) stream_id, stream_position, hash, position
      FROM inserted
     ORDER BY stream_id, stream_position DESC
    ON CONFLICT (stream_id) DO UPDATE
       SET version = excluded.version,
           last_hash = excluded.last_hash,
           last_position = excluded.last_position
),
keys AS (
    INSERT INTO idempotency_keys (key, event_id, position)
    SELECT b.idempotency_key, i.event_id, i.position
      FROM batch b JOIN inserted i USING (event_id)
     WHERE b.idempotency_key IS NOT NULL
)
SELECT event_id, position FROM inserted
"""


async def previous_release_append(conn: asyncpg.Connection[Any], events: list[NewEvent]) -> None:
    """Append as the previous release did: version-1 digests (canonical JSON) chained per
    stream, inserted without any of the new columns."""
    heads: dict[str, tuple[int, bytes]] = {}
    rows = []
    for event in events:
        version, prev = heads.get(event.stream_id, (0, GENESIS_HASH))
        digest = body_digest(
            event_id=event.event_id,
            stream_id=event.stream_id,
            type=event.type,
            version=event.version,
            data=event.data,
            metadata=event.metadata,
            received_at=event.received_at,
        )
        link = chain_hash(prev, version + 1, digest)
        heads[event.stream_id] = (version + 1, link)
        rows.append(
            (
                event.event_id,
                event.stream_id,
                version + 1,
                event.type,
                event.version,
                event.data,
                event.metadata,
                event.received_at,
                prev,
                link,
                event.idempotency_key,
            )
        )
    async with conn.transaction():
        await conn.fetch(PREVIOUS_INSERT, *map(list, zip(*rows, strict=True)))


# How release 0005 appended (events/queries.sql then): the raw request and digest version too.
RELEASE_5_INSERT = """
WITH batch AS (
    SELECT * FROM unnest($1::uuid[], $2::text[], $3::bigint[], $4::text[], $5::int[],
                         $6::jsonb[], $7::jsonb[], $8::timestamptz[], $9::bytea[], $10::bytea[],
                         $11::text[], $12::smallint[], $13::bytea[], $14::text[], $15::jsonb[])
           WITH ORDINALITY
           AS b(event_id, stream_id, stream_position, type, version, data, metadata,
                received_at, prev_hash, hash, idempotency_key, digest_version, raw_body,
                raw_content_type, raw_headers, ord)
),
inserted AS (
    INSERT INTO events (event_id, stream_id, stream_position, type, version, data, metadata,
                        received_at, prev_hash, hash, digest_version, raw_body,
                        raw_content_type, raw_headers)
    SELECT event_id, stream_id, stream_position, type, version, data, metadata, received_at,
           prev_hash, hash, digest_version, raw_body, raw_content_type, raw_headers
      FROM batch ORDER BY ord
    RETURNING position, event_id, stream_id, stream_position, hash
),
heads AS (
    INSERT INTO streams (stream_id, version, last_hash, last_position)
    SELECT DISTINCT ON (stream_id) stream_id, stream_position, hash, position
      FROM inserted ORDER BY stream_id, stream_position DESC
    ON CONFLICT (stream_id) DO UPDATE
       SET version = excluded.version, last_hash = excluded.last_hash,
           last_position = excluded.last_position
)
INSERT INTO idempotency_keys (key, event_id, position)
SELECT b.idempotency_key, i.event_id, i.position
  FROM batch b JOIN inserted i USING (event_id)
 WHERE b.idempotency_key IS NOT NULL
"""


async def release_5_append(conn: asyncpg.Connection[Any], events: list[NewEvent]) -> None:
    """Append to new streams as release 0005 did (inside the caller's transaction)."""
    heads: dict[str, tuple[int, bytes]] = {}
    rows = []
    for event in events:
        version, prev = heads.get(event.stream_id, (0, GENESIS_HASH))
        link = chain_hash(prev, version + 1, event_digest(event))
        heads[event.stream_id] = (version + 1, link)
        raw = event.raw
        rows.append(
            (
                *(event.event_id, event.stream_id, version + 1, event.type, event.version),
                *(event.data, event.metadata, event.received_at, prev, link),
                *(event.idempotency_key, event.digest_version),
                *((None, None, None) if raw is None else (raw.body, raw.content_type, raw.headers)),
            )
        )
    await conn.execute(RELEASE_5_INSERT, *map(list, zip(*rows, strict=True)))


async def stored_rows(
    conn: asyncpg.Connection[Any], *, place: bool = True
) -> list[tuple[Any, ...]]:
    """Every event as stored, with its row version (xmin) and place (ctid): a rewrite of the
    table would change them. Without ``place``, only what the row holds."""
    where = "xmin::text, ctid::text," if place else ""
    rows = await conn.fetch(
        f"SELECT position, {where} data::text, metadata::text, hash FROM events ORDER BY position"
    )
    return [tuple(r) for r in rows]


def held(rows: list[tuple[Any, ...]]) -> list[tuple[Any, ...]]:
    """``stored_rows`` without the place: what a copy into partitions (0006) keeps."""
    return [(r[0], *r[3:]) for r in rows]


async def test_a_log_of_the_previous_release_verifies_after_upgrading(
    empty_database: str,  # noqa: F811 - the fixture
    monkeypatch: pytest.MonkeyPatch,
    app_client: AppClientFactory,
    settings: Settings,
    tmp_path: Path,
) -> None:
    every = migrations_module.migrations()
    # The upgrade under test, then the partitioned log (its own test below).
    assert [m.version for m in every][PREVIOUS_SCHEMA : PREVIOUS_SCHEMA + 2] == [5, 6]
    start = datetime.now(UTC) - timedelta(minutes=5)
    written = lifecycle(jobs=3, per_job=4, start=start)
    awkward = {"ratio": 1e300, "zero": -0.0, "price": 1.50, "name": "café ✓"}
    written.append(callback("vm-00001", "running", start + timedelta(seconds=1), details=awkward))

    conn = await asyncpg.connect(empty_database)
    await register_codecs(conn)
    try:
        with monkeypatch.context() as patch:
            patch.setattr(migrations_module, "migrations", lambda: every[:PREVIOUS_SCHEMA])
            await migrations_module.migrate(conn)
        await previous_release_append(conn, written)
        before = await stored_rows(conn)
        with monkeypatch.context() as patch:
            patch.setattr(migrations_module, "migrations", lambda: every[:5])
            await migrations_module.migrate(conn)
        assert await stored_rows(conn) == before  # 0005 rewrote not one row

        # The rest of the upgrade, as an operator runs it: 0006 copies the rows into partitions.
        upgraded = await jobtrail("migrate", database_url=empty_database, cwd=tmp_path)
        assert upgraded.code == 0, upgraded
        assert "applied 0006_partitioned_events" in upgraded.stdout.splitlines()
        assert await stored_rows(conn, place=False) == held(before)
        assert {r[0] for r in await conn.fetch("SELECT digest_version FROM events")} == {1}

        report = await jobtrail("verify", "--json", database_url=empty_database, cwd=tmp_path)
        assert report.code == 0, report
        assert report.json()["events"] == len(written) and report.json()["streams"] == 3

        # The new release receives callbacks that continue the same streams (version 2).
        new_settings = settings.model_copy(update={"database_url": SecretStr(empty_database)})
        client = await app_client(new_settings)
        for status in ("heartbeat", "succeeded"):
            body = f'{{"job_id": "vm-00001", "status": "{status}"}}'.encode()
            await deliver(client, body, standard_headers(body))
        async with asyncpg.create_pool(empty_database, init=register_codecs) as pool:
            await wait_for_projection(pool)
        versions = await conn.fetch(
            "SELECT digest_version FROM events WHERE stream_id = 'job-vm-00001'"
            " ORDER BY stream_position"
        )
        assert [r[0] for r in versions] == [1, 1, 1, 1, 1, 2, 2]
        assert (await stored_rows(conn, place=False))[: len(before)] == held(before)
    finally:
        await conn.close()

    after = await jobtrail("verify", "--json", database_url=empty_database, cwd=tmp_path)
    assert after.code == 0, after
    assert after.json()["events"] == len(written) + 2
    code = await jobtrail(
        "verify", "--signatures", "--json", database_url=empty_database, cwd=tmp_path, **SECRETS
    )
    assert code.code == 0, code
    assert code.json()["signatures"] == {"checked": 2, "rotated": []}
    history = await jobtrail(
        "history", "vm-00001", "--json", database_url=empty_database, cwd=tmp_path
    )
    assert history.code == 0, history
    events = history.json()["events"]
    assert all(e["hash_ok"] for e in events)
    assert [e["data"]["status"] for e in events][-2:] == ["heartbeat", "succeeded"]
    assert list(itertools.pairwise(e["stream_position"] for e in events))[-1] == (6, 7)


async def test_a_log_of_several_months_moves_into_monthly_partitions(
    empty_database: str,  # noqa: F811 - the fixture
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
) -> None:
    """Migration 0006: every row of a log written under 0001-0005, in four months, lands in its
    month's partition unchanged (position, hash, raw request), the chains verify, and positions
    go on past the highest one drawn, even by an append that rolled back."""
    every = migrations_module.migrations()
    now = datetime.now(UTC)
    this_month = month_of(now)
    months = [add_months(this_month, k) for k in (-3, -2, -1)]
    written = []
    for i, month in enumerate(months):  # vm-span runs across all four months
        at = month_start(month) + timedelta(days=1, hours=i)
        written += [
            callback("vm-span", "provisioning" if i == 0 else "heartbeat", at, key=f"span-{i}"),
            callback(f"vm-{i}", "queued", at + timedelta(seconds=1), key=f"only-{i}"),
        ]
    written.append(callback("vm-span", "succeeded", now - timedelta(seconds=1), key="span-end"))
    body = b'{"job_id": "vm-raw", "status": "queued"}'
    raw = RawRequest(body, "application/json", {"webhook-id": "msg_raw"})
    written.append(
        NewEvent(
            stream_id=job_stream("vm-raw"),
            type=STATUS_REPORTED,
            data={"job_id": "vm-raw", "status": "queued"},
            metadata={"scheme": "standard", "idempotency_key": "msg_raw"},
            received_at=now - timedelta(seconds=1),
            idempotency_key="msg_raw",
            raw=raw,
        )
    )

    conn = await asyncpg.connect(empty_database)
    await register_codecs(conn)
    try:
        with monkeypatch.context() as patch:
            patch.setattr(migrations_module, "migrations", lambda: every[:5])
            await migrations_module.migrate(conn)
        async with conn.transaction():
            await release_5_append(conn, written)
        rolled_back = conn.transaction()
        await rolled_back.start()
        await release_5_append(conn, [callback("vm-ghost", "queued", now, key="ghost")])
        drawn = await conn.fetchval("SELECT max(position) FROM events")
        await rolled_back.rollback()
        before = [dict(r) for r in await conn.fetch("SELECT * FROM events ORDER BY position")]
        assert len(before) == len(written) and drawn == len(written) + 1

        upgraded = await jobtrail("migrate", database_url=empty_database, cwd=tmp_path)
        assert upgraded.code == 0, upgraded
        assert "applied 0006_partitioned_events" in upgraded.stdout.splitlines()
        after = [dict(r) for r in await conn.fetch("SELECT * FROM events ORDER BY position")]
        assert after == before  # positions, hashes, payloads, raw requests: all kept
        placed = await conn.fetch("SELECT tableoid::regclass::text AS t, received_at FROM events")
        assert all(r["t"] == partition_name(month_of(r["received_at"])) for r in placed)
        expected = {*months, *(add_months(this_month, k) for k in (0, 1, 2))}
        assert set(await attached_months(conn)) == expected
        assert await conn.fetchval("SELECT to_regclass('events_unpartitioned')") is None

        report = await jobtrail("verify", "--json", database_url=empty_database, cwd=tmp_path)
        assert report.code == 0, report
        assert report.json()["events"] == len(written) and report.json()["streams"] == 5

        async with conn.transaction():
            [result] = await append_batch(conn, [callback("vm-span", "heartbeat", now, key="n")])
        assert result.position == drawn + 1  # past the rolled-back one, never reused
    finally:
        await conn.close()
    again = await jobtrail("verify", "--json", database_url=empty_database, cwd=tmp_path)
    assert again.code == 0, again

"""The read API over real HTTP against a real database (SPEC section 6): bearer auth, the job
object, read-your-writes, listing with filters and cursors, a job's events, and the ops routes."""

from __future__ import annotations

import asyncio
import base64
import time
from datetime import datetime
from typing import Any

import asyncpg
import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient

from events.catalog import TIMED_OUT, job_stream
from events.models import NewEvent
from events.store import append_batch
from service.middlewares import PUBLIC_PATHS
from service.settings import Settings
from tests.conftest import AppClientFactory
from tests.helpers import AUTH, READ_TOKEN, body_of, standard_headers, wait_for_projection

Client = TestClient[web.Request, web.Application]
URL = "/api/webhooks/github"

JOB_FIELDS = {
    "job_id",
    "status",
    "created_at",
    "updated_at",
    "started_at",
    "finished_at",
    "run_id",
    "run_attempt",
    "agent_id",
    "region",
    "message",
    "error",
    "event_count",
    "last_position",
    "late_event_count",
    "last_heartbeat_at",
    "heartbeat_count",
    "stale",
}
EVENT_FIELDS = {"position", "stream_position", "type", "version", "received_at", "data", "metadata"}


async def send(client: Client, payload: dict[str, Any], msg_id: str | None = None) -> int:
    """Deliver one signed callback; return its global position."""
    body = body_of(payload)
    response = await client.post(URL, data=body, headers=standard_headers(body, msg_id=msg_id))
    assert response.status == 200, await response.text()
    answer = await response.json()
    assert answer["duplicate"] is False
    return int(answer["position"])


async def get_json(client: Client, path: str, status: int = 200) -> Any:
    response = await client.get(path, headers=AUTH)
    assert response.status == status, await response.text()
    assert response.content_type == "application/json"
    return await response.json()


def is_timestamp(value: Any) -> bool:
    if not isinstance(value, str) or not value.endswith("Z"):
        return False
    datetime.fromisoformat(value.replace("Z", "+00:00"))
    return True


# --- auth --------------------------------------------------------------------------------------

PROTECTED = ["/api/jobs", "/api/jobs/x", "/api/jobs/x/events", "/api/whatever"]
BAD_AUTH: dict[str, dict[str, str]] = {
    "none": {},
    "wrong_token": {"Authorization": "Bearer not-the-token"},
    "token_prefix": {"Authorization": f"Bearer {READ_TOKEN[:-1]}"},
    "token_longer": {"Authorization": f"Bearer {READ_TOKEN}x"},
    "empty_bearer": {"Authorization": "Bearer"},
    "empty_bearer_space": {"Authorization": "Bearer "},
    "basic_token": {"Authorization": f"Basic {READ_TOKEN}"},
    "basic_user_token": {
        "Authorization": "Basic " + base64.b64encode(f"user:{READ_TOKEN}".encode()).decode()
    },
    "no_scheme": {"Authorization": READ_TOKEN},
    "other_scheme": {"Authorization": f"Token {READ_TOKEN}"},
}


@pytest.mark.parametrize("case", sorted(BAD_AUTH))
@pytest.mark.parametrize("path", PROTECTED)
async def test_protected_routes_need_the_bearer_token(client: Client, path: str, case: str) -> None:
    response = await client.get(path, headers=BAD_AUTH[case])
    assert response.status == 401
    assert response.content_type == "application/json"
    answer = await response.json()
    assert set(answer) >= {"error"}
    assert READ_TOKEN not in await response.text()


async def test_other_methods_on_protected_routes_need_the_token_too(client: Client) -> None:
    for method in ("POST", "PUT", "DELETE"):
        response = await client.request(method, "/api/jobs/x")
        assert response.status == 401
        assert "error" in await response.json()


@pytest.mark.parametrize("path", PROTECTED)
async def test_protected_routes_answer_with_the_token(client: Client, path: str) -> None:
    response = await client.get(path, headers=AUTH)
    assert response.status in (200, 404)
    assert response.content_type == "application/json"
    if path == "/api/jobs":
        assert await response.json() == {"jobs": [], "next_cursor": None}
    else:
        assert "error" in await response.json()


async def test_the_scheme_name_is_case_insensitive(client: Client) -> None:
    response = await client.get("/api/jobs", headers={"Authorization": f"bearer {READ_TOKEN}"})
    assert response.status == 200


async def test_ops_routes_need_no_token(client: Client) -> None:
    health = await client.get("/healthz")
    assert health.status == 200
    assert health.content_type == "application/json"
    ready = await client.get("/readyz")
    assert ready.status == 200
    assert await ready.json() == {"status": "ready"}
    # A wrong token does not get in the way either.
    assert (await client.get("/readyz", headers={"Authorization": "Bearer nope"})).status == 200


# --- one job ---------------------------------------------------------------------------------


async def test_a_job_object_has_every_field(client: Client, pool: asyncpg.Pool[Any]) -> None:
    common = {"job_id": "vm-1", "run_id": 42, "run_attempt": 1}
    await send(client, {**common, "status": "provisioning", "agent_id": "a-1", "region": "eu"})
    await send(client, {**common, "status": "heartbeat"})
    await send(client, {**common, "status": "heartbeat"})
    last = await send(client, {**common, "status": "running", "message": "up"})
    await wait_for_projection(pool)

    job = await get_json(client, "/api/jobs/vm-1")
    assert set(job) == JOB_FIELDS
    events = (await get_json(client, "/api/jobs/vm-1/events"))["events"]
    received = [e["received_at"] for e in events]
    assert job == {
        "job_id": "vm-1",
        "status": "running",
        "created_at": received[0],
        "updated_at": received[3],
        "started_at": received[0],
        "finished_at": None,
        "run_id": 42,
        "run_attempt": 1,
        "agent_id": "a-1",
        "region": "eu",
        "message": "up",
        "error": None,
        "event_count": 4,
        "last_position": last,
        "late_event_count": 0,
        "last_heartbeat_at": received[2],
        "heartbeat_count": 2,
        "stale": False,
    }
    assert all(is_timestamp(t) for t in received)


async def test_a_finished_job(client: Client, pool: asyncpg.Pool[Any]) -> None:
    await send(client, {"job_id": "vm-2", "status": "running"})
    await send(client, {"job_id": "vm-2", "status": "failure", "error": "disk full"})
    await send(client, {"job_id": "vm-2", "status": "heartbeat"})
    await wait_for_projection(pool)
    job = await get_json(client, "/api/jobs/vm-2")
    events = (await get_json(client, "/api/jobs/vm-2/events"))["events"]
    assert job["status"] == "failed"
    assert job["error"] == "disk full"
    assert job["finished_at"] == events[1]["received_at"]
    assert job["late_event_count"] == 1
    assert job["event_count"] == 3
    # The late heartbeat is still a heartbeat; the job is over, so it is not stale.
    assert job["heartbeat_count"] == 1
    assert job["stale"] is False


async def test_a_job_first_heard_of_at_its_end(client: Client, pool: asyncpg.Pool[Any]) -> None:
    # Its earlier callbacks were lost: its own terminal callback is not late.
    await send(client, {"job_id": "vm-9", "status": "success", "run_id": 5, "message": "done"})
    await wait_for_projection(pool)
    job = await get_json(client, "/api/jobs/vm-9")
    [event] = (await get_json(client, "/api/jobs/vm-9/events"))["events"]
    assert job["status"] == "succeeded"
    assert (job["event_count"], job["late_event_count"]) == (1, 0)
    assert job["finished_at"] == job["created_at"] == event["received_at"]
    assert (job["run_id"], job["message"]) == (5, "done")


async def test_a_job_without_heartbeats(client: Client, pool: asyncpg.Pool[Any]) -> None:
    await send(client, {"job_id": "vm-3", "status": "queued"})
    await wait_for_projection(pool)
    job = await get_json(client, "/api/jobs/vm-3")
    assert job["last_heartbeat_at"] is None
    assert job["heartbeat_count"] == 0
    assert job["started_at"] is None
    assert job["stale"] is False


async def test_an_unknown_job_is_404_json(client: Client, pool: asyncpg.Pool[Any]) -> None:
    await send(client, {"job_id": "vm-4", "status": "queued"})
    await wait_for_projection(pool)
    answer = await get_json(client, "/api/jobs/vm-5", status=404)
    assert "error" in answer
    # Job ids are exact: no prefix or case folding.
    await get_json(client, "/api/jobs/vm-", status=404)
    await get_json(client, "/api/jobs/VM-4", status=404)


async def test_after_position_reads_your_writes(client: Client) -> None:
    # No waiting on the projector here: the request itself waits for it.
    for i in range(6):
        status = ["queued", "provisioning", "running", "running", "running", "succeeded"][i]
        position = await send(client, {"job_id": "ryw", "status": status, "message": f"#{i}"})
        job = await get_json(client, f"/api/jobs/ryw?after_position={position}")
        assert job["last_position"] == position
        assert job["event_count"] == i + 1
        assert job["message"] == f"#{i}"
        assert job["status"] == status


async def test_after_position_zero_or_in_the_past_answers_at_once(
    client: Client, pool: asyncpg.Pool[Any]
) -> None:
    position = await send(client, {"job_id": "vm-6", "status": "queued"})
    await wait_for_projection(pool)
    for after in (0, 1, position):
        job = await get_json(client, f"/api/jobs/vm-6?after_position={after}")
        assert job["job_id"] == "vm-6"
    # Waiting for a position does not make an unknown job exist.
    await get_json(client, f"/api/jobs/nope?after_position={position}", status=404)


@pytest.mark.slow
async def test_after_position_beyond_the_log_is_504(client: Client) -> None:
    position = await send(client, {"job_id": "vm-7", "status": "queued"})
    started = time.monotonic()
    response = await client.get(
        f"/api/jobs/vm-7?after_position={position + 1_000_000}", headers=AUTH
    )
    elapsed = time.monotonic() - started
    assert response.status == 504
    assert "error" in await response.json()
    assert elapsed >= 4.5  # it did wait for the projection before giving up


@pytest.mark.slow
async def test_readers_waiting_for_a_position_do_not_stall_ingest(client: Client) -> None:
    # Dashboards waiting on read-your-writes must not take the connections that the webhook
    # receiver (and the projector they wait for) need.
    position = await send(client, {"job_id": "vm-10", "status": "queued"})
    waiting = [
        asyncio.create_task(
            client.get(f"/api/jobs/vm-10?after_position={position + 1_000_000}", headers=AUTH)
        )
        for _ in range(20)
    ]
    await asyncio.sleep(0.3)  # all 20 are waiting now
    position = await send(client, {"job_id": "vm-10", "status": "running"})
    job = await get_json(client, f"/api/jobs/vm-10?after_position={position}")
    # Ordering, not timing: had the waiters held the pool's connections, the callback and the
    # read could only have gone through once waiters gave up (504) and let go of theirs.
    assert not any(task.done() for task in waiting)
    for task in waiting:
        response = await task
        assert response.status == 504
        response.release()
    assert job["status"] == "running"


@pytest.mark.parametrize("value", ["abc", "-1", "1.5", "", "1e3", str(2**64)])
async def test_invalid_after_position_is_400(client: Client, value: str) -> None:
    response = await client.get(f"/api/jobs/x?after_position={value}", headers=AUTH)
    assert response.status == 400
    assert "error" in await response.json()


# --- listing -----------------------------------------------------------------------------------


async def walk(client: Client, query: str) -> list[list[dict[str, Any]]]:
    """Every page of ``/api/jobs?<query>``, following next_cursor."""
    pages: list[list[dict[str, Any]]] = []
    cursor: str | None = None
    while True:
        path = f"/api/jobs?{query}" + (f"&cursor={cursor}" if cursor else "")
        answer = await get_json(client, path)
        assert set(answer) == {"jobs", "next_cursor"}
        pages.append(answer["jobs"])
        cursor = answer["next_cursor"]
        if cursor is None:
            return pages
        assert isinstance(cursor, str) and cursor
        assert len(pages) < 20, "the cursor does not advance"


async def test_a_job_that_changes_during_a_walk_is_neither_skipped_nor_repeated(
    client: Client, pool: asyncpg.Pool[Any]
) -> None:
    names = [f"walk-{i}" for i in range(6)]
    for name in names:
        await send(client, {"job_id": name, "status": "queued"})
    await wait_for_projection(pool)
    first = await get_json(client, "/api/jobs?limit=2")
    seen = [j["job_id"] for j in first["jobs"]]
    # Jobs on pages not read yet, and on the page already read, change now.
    for name in ("walk-0", "walk-1", seen[0]):
        position = await send(client, {"job_id": name, "status": "running"})
    await get_json(client, f"/api/jobs/walk-0?after_position={position}")
    cursor = first["next_cursor"]
    while cursor:
        page = await get_json(client, f"/api/jobs?limit=2&cursor={cursor}")
        seen += [j["job_id"] for j in page["jobs"]]
        cursor = page["next_cursor"]
    assert sorted(seen) == names and len(seen) == len(names)


async def test_pages_walk_every_job_exactly_once(client: Client, pool: asyncpg.Pool[Any]) -> None:
    names = [f"page-{i}" for i in range(5)]
    for name in names:
        await send(client, {"job_id": name, "status": "queued"})
    # Touch some jobs again so that the order of changes differs from the order of creation.
    await send(client, {"job_id": "page-1", "status": "running"})
    await send(client, {"job_id": "page-3", "status": "heartbeat"})
    await wait_for_projection(pool)

    pages = await walk(client, "limit=2")
    assert [len(p) for p in pages] == [2, 2, 1]
    seen = [job["job_id"] for page in pages for job in page]
    assert sorted(seen) == names
    for page in pages:
        for job in page:
            assert set(job) == JOB_FIELDS
    # Newest first, whatever changed since.
    assert seen == names[::-1]

    # The same list in one page, and at the exact size.
    for query in ("limit=5", "limit=500", ""):
        answer = await get_json(client, f"/api/jobs?{query}")
        assert [j["job_id"] for j in answer["jobs"]] == seen
        assert answer["next_cursor"] is None
    answer = await get_json(client, "/api/jobs?limit=4")
    assert len(answer["jobs"]) == 4 and answer["next_cursor"] is not None
    assert [len(p) for p in await walk(client, "limit=1")] == [1, 1, 1, 1, 1]


@pytest.mark.parametrize("limit", ["0", "501", "abc", "-1", "2.5", "1e2"])
async def test_invalid_limit_is_400(client: Client, limit: str) -> None:
    response = await client.get(f"/api/jobs?limit={limit}", headers=AUTH)
    assert response.status == 400
    assert "error" in await response.json()


@pytest.mark.parametrize("cursor", ["garbage", "!!!", "cDo", "eDox", "cDphYmM", "%00"])
async def test_a_bad_cursor_is_400(client: Client, cursor: str) -> None:
    # "cDo" is "p:", "eDox" is "x:1", "cDphYmM" is "p:abc" (base64url without padding).
    response = await client.get(f"/api/jobs?cursor={cursor}", headers=AUTH)
    assert response.status == 400
    assert "error" in await response.json()


async def test_status_filter(client: Client, pool: asyncpg.Pool[Any]) -> None:
    await send(client, {"job_id": "q", "status": "queued"})
    await send(client, {"job_id": "p", "status": "provisioning"})
    await send(client, {"job_id": "r1", "status": "running"})
    await send(client, {"job_id": "r2", "status": "heartbeat"})  # created as running
    await send(client, {"job_id": "s", "status": "completed"})
    await send(client, {"job_id": "f", "status": "error"})
    await send(client, {"job_id": "c", "status": "cancelled"})
    await wait_for_projection(pool)

    async def ids(query: str) -> set[str]:
        return {j["job_id"] for page in await walk(client, query) for j in page}

    assert await ids("status=running") == {"r1", "r2"}
    assert await ids("status=queued") == {"q"}
    assert await ids("status=provisioning") == {"p"}
    assert await ids("status=succeeded") == {"s"}
    assert await ids("status=failed") == {"f"}
    assert await ids("status=cancelled") == {"c"}
    assert await ids("status=timed_out") == set()
    assert await ids("status=running&limit=1") == {"r1", "r2"}
    assert len(await ids("")) == 7
    for job in (await get_json(client, "/api/jobs?status=running"))["jobs"]:
        assert job["status"] == "running"


@pytest.mark.parametrize("status", ["bogus", "heartbeat", "RUNNING", "running,failed"])
async def test_an_invalid_status_filter_is_400(client: Client, status: str) -> None:
    response = await client.get(f"/api/jobs?status={status}", headers=AUTH)
    assert response.status == 400
    assert "error" in await response.json()


async def test_an_invalid_stale_filter_is_400(client: Client) -> None:
    response = await client.get("/api/jobs?stale=maybe", headers=AUTH)
    assert response.status == 400


# --- staleness ---------------------------------------------------------------------------------

STALE_AFTER_S = 0.5


async def test_stale_jobs(
    app_client: AppClientFactory, settings: Settings, pool: asyncpg.Pool[Any]
) -> None:
    client = await app_client(settings.model_copy(update={"stale_after_s": STALE_AFTER_S}))
    await send(client, {"job_id": "live-old", "status": "running"})
    await send(client, {"job_id": "beating-old", "status": "heartbeat"})
    await send(client, {"job_id": "queued-old", "status": "queued"})
    for status in ("running", "succeeded", "heartbeat"):
        await send(client, {"job_id": "done-old", "status": status})
    await send(client, {"job_id": "failed-old", "status": "failed"})
    # The watchdog's verdict, appended as the watchdog does.
    await send(client, {"job_id": "timed-old", "status": "running"})
    async with pool.acquire() as conn, conn.transaction():
        await append_batch(
            conn,
            [
                NewEvent(
                    stream_id=job_stream("timed-old"),
                    type=TIMED_OUT,
                    data={"job_id": "timed-old"},
                    metadata={"scheme": "watchdog"},
                    received_at=datetime.now().astimezone(),
                )
            ],
        )
    await wait_for_projection(pool)
    assert (await get_json(client, "/api/jobs/timed-old"))["status"] == "timed_out"
    await asyncio.sleep(STALE_AFTER_S + 0.3)

    sent = time.monotonic()
    await send(client, {"job_id": "live-fresh", "status": "running"})
    await wait_for_projection(pool)
    stale_ids = {j["job_id"] for j in (await get_json(client, "/api/jobs?stale=true"))["jobs"]}
    fresh_ids = {j["job_id"] for j in (await get_json(client, "/api/jobs?stale=false"))["jobs"]}
    quick = time.monotonic() - sent < STALE_AFTER_S * 0.9

    assert {"live-old", "beating-old", "queued-old"} <= stale_ids
    # Terminal jobs are never stale, however old (a late heartbeat included).
    assert not {"done-old", "failed-old", "timed-old"} & stale_ids
    assert {"done-old", "failed-old", "timed-old"} <= fresh_ids
    assert stale_ids.isdisjoint(fresh_ids)
    assert len(stale_ids | fresh_ids) == 7
    if quick:  # under normal load: the job just heard from is not stale yet
        assert "live-fresh" in fresh_ids
    for job in (await get_json(client, "/api/jobs?stale=true"))["jobs"]:
        assert job["stale"] is True
    assert (await get_json(client, "/api/jobs/live-old"))["stale"] is True
    assert (await get_json(client, "/api/jobs/done-old"))["stale"] is False
    assert (await get_json(client, "/api/jobs/timed-old"))["stale"] is False

    # A heartbeat makes a stale job fresh again; then it goes stale again.
    sent = time.monotonic()
    await send(client, {"job_id": "live-old", "status": "heartbeat"})
    await wait_for_projection(pool)
    job = await get_json(client, "/api/jobs/live-old")
    if time.monotonic() - sent < STALE_AFTER_S * 0.9:
        assert job["stale"] is False
    await asyncio.sleep(STALE_AFTER_S + 0.1)
    assert (await get_json(client, "/api/jobs/live-old"))["stale"] is True
    # Filters combine.
    running_stale = await get_json(client, "/api/jobs?stale=true&status=running")
    assert {j["job_id"] for j in running_stale["jobs"]} >= {"live-old", "beating-old"}
    assert all(j["status"] == "running" for j in running_stale["jobs"])


async def test_nothing_is_stale_with_the_default_threshold(
    client: Client, pool: asyncpg.Pool[Any]
) -> None:
    await send(client, {"job_id": "vm-8", "status": "running"})
    await wait_for_projection(pool)
    assert (await get_json(client, "/api/jobs?stale=true"))["jobs"] == []
    assert [j["job_id"] for j in (await get_json(client, "/api/jobs?stale=false"))["jobs"]] == [
        "vm-8"
    ]


# --- a job's events ----------------------------------------------------------------------------


async def test_a_jobs_events_in_order(client: Client) -> None:
    sent: list[tuple[dict[str, Any], str]] = [
        ({"job_id": "ev", "status": "queued", "run_id": 7}, "msg_ev_1"),
        ({"job_id": "other", "status": "queued"}, "msg_other"),
        ({"job_id": "ev", "status": "heartbeat", "extra": {"kept": [1, 2.5]}}, "msg_ev_2"),
        ({"job_id": "ev", "status": "success", "message": "ok"}, "msg_ev_3"),
    ]
    positions = [await send(client, payload, msg_id) for payload, msg_id in sent]
    events = (await get_json(client, "/api/jobs/ev/events"))["events"]
    assert len(events) == 3
    for event in events:
        assert set(event) >= EVENT_FIELDS
        assert is_timestamp(event["received_at"])
        assert event["version"] == 1
        assert event["metadata"]["scheme"] == "standard"
        assert event["metadata"]["received_at"] == event["received_at"]
    assert [e["position"] for e in events] == [positions[0], positions[2], positions[3]]
    assert [e["stream_position"] for e in events] == [1, 2, 3]
    assert [e["type"] for e in events] == [
        "job.status_reported",
        "job.heartbeat_recorded",
        "job.status_reported",
    ]
    assert [e["data"] for e in events] == [sent[0][0], sent[2][0], sent[3][0]]
    assert [e["metadata"]["idempotency_key"] for e in events] == [
        "msg_ev_1",
        "msg_ev_2",
        "msg_ev_3",
    ]
    received = [e["received_at"] for e in events]
    assert received == sorted(received)
    # The other job's stream is its own.
    [other] = (await get_json(client, "/api/jobs/other/events"))["events"]
    assert (other["position"], other["stream_position"]) == (positions[1], 1)


async def test_events_of_an_unknown_job_are_404(client: Client) -> None:
    await send(client, {"job_id": "known", "status": "queued"})
    answer = await get_json(client, "/api/jobs/unknown/events", status=404)
    assert "error" in answer


async def test_every_path_open_without_a_token_is_a_route(client: Client) -> None:
    routes = {resource.canonical for resource in client.app.router.resources()}
    assert PUBLIC_PATHS.issubset(routes)

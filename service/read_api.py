"""The read API over the projections and the log (SPEC section 6), plus the ops endpoints."""

from __future__ import annotations

import asyncio
import base64
import binascii
import json
import time
from datetime import UTC, datetime

from aiohttp import web

from events.catalog import JOB_ID, JOB_STATUSES, job_stream
from events.errors import StorageUnavailable
from events.store import connect, read_stream
from projections import reads
from service import deliveries
from service.errors import ApiError, json_response
from service.keys import broadcaster_key, deliveries_key, metrics_key, pool_key, settings_key
from service.metrics import CONTENT_TYPE
from service.migrate import pending_migrations

MAX_LIMIT = 500
READ_YOUR_WRITES_WAIT_S = 5.0


def _int_param(request: web.Request, name: str, default: int, low: int, high: int) -> int:
    raw = request.query.get(name)
    if raw is None:
        return default
    try:
        value = int(raw)
    except ValueError:
        raise ApiError(400, f"{name} must be an integer") from None
    if not low <= value <= high:
        raise ApiError(400, f"{name} must be between {low} and {high}")
    return value


def _bool_param(request: web.Request, name: str) -> bool | None:
    raw = request.query.get(name)
    if raw is None or raw == "":
        return None
    if raw.lower() in ("true", "1", "yes"):
        return True
    if raw.lower() in ("false", "0", "no"):
        return False
    raise ApiError(400, f"{name} must be true or false")


def _encode_cursor(key: reads.PageKey) -> str:
    created_at, job_id = key
    text = json.dumps([created_at.isoformat(), job_id])
    return base64.urlsafe_b64encode(text.encode()).decode().rstrip("=")


def _decode_cursor(cursor: str | None) -> reads.PageKey | None:
    if not cursor:
        return None
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4))
        created_at, job_id = json.loads(raw)
        moment = datetime.fromisoformat(created_at)
        if isinstance(job_id, str) and moment.tzinfo is not None:
            return moment, job_id
    except (binascii.Error, UnicodeDecodeError, ValueError, TypeError):
        pass
    raise ApiError(400, "invalid cursor")


async def list_jobs(request: web.Request) -> web.Response:
    settings = request.app[settings_key]
    status = request.query.get("status") or None
    if status is not None and status not in JOB_STATUSES:
        raise ApiError(400, f"status must be one of {', '.join(sorted(JOB_STATUSES))}")
    limit = _int_param(request, "limit", 50, 1, MAX_LIMIT)
    async with connect(request.app[pool_key]) as conn:
        jobs = await reads.list_jobs(
            conn,
            now=datetime.now(UTC),
            stale_after_s=settings.stale_after_s,
            status=status,
            stale=_bool_param(request, "stale"),
            after=_decode_cursor(request.query.get("cursor")),
            limit=limit + 1,
        )
    next_cursor = _encode_cursor(reads.page_key(jobs[limit - 1])) if len(jobs) > limit else None
    return json_response({"jobs": jobs[:limit], "next_cursor": next_cursor})


async def _wait_for_position(request: web.Request, position: int) -> None:
    """Read-your-writes: wait until every projection has applied ``position``."""
    deadline = time.monotonic() + READ_YOUR_WRITES_WAIT_S
    while True:
        # A connection per look, not for the whole wait: waiting readers must not starve
        # ingest (or the projector they wait for) of pool connections.
        async with connect(request.app[pool_key]) as conn:
            reached = min((await reads.checkpoints(conn)).values())
        if reached >= position:
            return
        if time.monotonic() >= deadline:
            raise ApiError(504, "Projection did not reach the position in time")
        await asyncio.sleep(0.02)


def _job_id(request: web.Request) -> str:
    """The path's job id; one that no callback could have created is simply not found."""
    job_id = request.match_info["job_id"]
    if not JOB_ID.fullmatch(job_id):
        raise ApiError(404, "Job not found")
    return job_id


async def get_job(request: web.Request) -> web.Response:
    settings = request.app[settings_key]
    job_id = _job_id(request)
    if "after_position" in request.query:
        after = _int_param(request, "after_position", 0, 0, 2**63 - 1)
        await _wait_for_position(request, after)
    async with connect(request.app[pool_key]) as conn:
        job = await reads.get_job(
            conn, job_id, now=datetime.now(UTC), stale_after_s=settings.stale_after_s
        )
    if job is None:
        raise ApiError(404, "Job not found")
    return json_response(job)


async def job_events(request: web.Request) -> web.Response:
    job_id = _job_id(request)
    async with connect(request.app[pool_key]) as conn:
        events = await read_stream(conn, job_stream(job_id))
    if not events:
        raise ApiError(404, "Job not found")
    return json_response({"events": [e.to_json() for e in events]})


async def list_heartbeats(request: web.Request) -> web.Response:
    settings = request.app[settings_key]
    async with connect(request.app[pool_key]) as conn:
        heartbeats = await reads.list_heartbeats(
            conn,
            now=datetime.now(UTC),
            stale_after_s=settings.stale_after_s,
            stale=_bool_param(request, "stale"),
        )
    return json_response({"heartbeats": heartbeats})


async def list_projections(request: web.Request) -> web.Response:
    async with connect(request.app[pool_key]) as conn:
        progress = await reads.projection_progress(conn, now=datetime.now(UTC))
    return json_response({"projections": progress})


async def list_deliveries(request: web.Request) -> web.Response:
    """This process's recent ingest attempts, newest first (see ``service.deliveries``)."""
    limit = _int_param(request, "limit", deliveries.DEFAULT_LIMIT, 1, deliveries.CAPACITY)
    newest = request.app[deliveries_key].newest(limit)
    return json_response({"deliveries": newest})


async def healthz(_request: web.Request) -> web.Response:
    return json_response({"status": "ok"})


async def readyz(request: web.Request) -> web.Response:
    try:
        async with connect(request.app[pool_key], acquire_timeout=2) as conn:
            pending = await pending_migrations(conn)
    except StorageUnavailable:
        return json_response(
            {"status": "unavailable", "reason": "database unreachable"}, status=503
        )
    if pending:
        return json_response(
            {"status": "unavailable", "reason": f"{len(pending)} migrations pending"}, status=503
        )
    return json_response({"status": "ready"})


async def metrics(request: web.Request) -> web.Response:
    """Prometheus text format. Positions and lag are read at scrape time; without the database
    the counters are still served, with the last positions seen."""
    registry = request.app[metrics_key]
    registry.sse_clients.set(request.app[broadcaster_key].clients)
    try:
        async with connect(request.app[pool_key], acquire_timeout=2) as conn:
            registry.set_progress(await reads.projection_progress(conn, now=datetime.now(UTC)))
    except StorageUnavailable:
        pass
    return web.Response(body=registry.render(), headers={"Content-Type": CONTENT_TYPE})

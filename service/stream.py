"""``GET /api/stream``: job changes as Server-Sent Events, from one shared reader per process.

One ``Broadcaster`` per process reads the changes for every client. The projector's
``on_commit`` wakes it after each committed batch while anyone is listening (and it polls every
second, for changes that another process's projector applied); each round it reads every job
whose ``last_position`` is above the highest one it has sent, encodes each as one SSE message
once, and offers that batch to every client. Reading by position rather than by the keys
``on_commit`` names is what keeps a round complete whichever process applied the events: the
projector commits rows and checkpoint together, in position order, so a job that changes after
a round gets a ``last_position`` above all that round saw. Several changes of a job between two
rounds are coalesced into one message.

Each client has a ``Subscription``: a buffer of encoded messages bounded in bytes. A client that
does not read as fast as changes come fills it and is disconnected (its connection aborted, so
a write stuck on it ends too); it reconnects with ``Last-Event-ID`` and loses nothing.

Resume (``Last-Event-ID: N``): subscribe first, so live messages buffer from then on; send the
current state of every job with ``last_position > N`` page by page; drop the buffered messages
whose id is at most the last id sent, since the pages showed those jobs in that state or later;
then go live. Nothing is lost (a change is either seen by a page or committed after the
subscription, and so buffered) and ids only increase on a connection, so nothing is doubled.

The stream needs ``Authorization: Bearer`` like every read route: the dashboard reads it with
``fetch()`` rather than ``EventSource`` (which cannot send headers), so tokens never travel in
URLs, where proxies and browser history keep them.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import deque
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import asyncpg
import structlog
from aiohttp import web

from events.errors import StorageUnavailable, cancelling
from events.store import Connection, connect
from projections import reads
from projections.runner import Applied
from service.errors import ApiError
from service.jsonio import dumps
from service.keys import broadcaster_key, pool_key

log = structlog.get_logger(component="stream")

KEEPALIVE_S = 15.0
POLL_INTERVAL_S = 1.0
PAGE_SIZE = 200  # jobs per round and per resume page
MAX_BUFFERED_BYTES = 4 * 1024 * 1024  # per client


@dataclass(frozen=True, slots=True)
class Message:
    position: int
    data: bytes


def encode(job: reads.Job) -> Message:
    text = f"id: {job['last_position']}\nevent: job\ndata: {dumps(job)}\n\n"
    # Like json_response: a lone surrogate from hostile input is sent replaced.
    return Message(job["last_position"], text.encode("utf-8", "replace"))


class Subscription:
    """One client's buffer of messages not yet written: at most ``max_bytes``, or one batch."""

    def __init__(self, max_bytes: int) -> None:
        self._messages: deque[Message] = deque()
        self._bytes = 0
        self._max_bytes = max_bytes
        self._ready = asyncio.Event()
        self._transport: asyncio.Transport | None = None
        self.closed = False
        self.overflowed = False

    def attach(self, transport: asyncio.Transport | None) -> None:
        """The connection to abort if the client falls behind."""
        self._transport = transport

    def offer(self, batch: Sequence[Message], size: int) -> None:
        if self.closed:
            return
        # A batch into an empty buffer is always taken (a batch is at most PAGE_SIZE jobs): only
        # a client still holding earlier messages when the bound is reached is behind.
        if self._bytes and self._bytes + size > self._max_bytes:
            self.overflowed = True
            self.close()
            if self._transport is not None:
                self._transport.abort()  # wakes a write stuck on the full socket
            return
        self._messages.extend(batch)
        self._bytes += size
        self._ready.set()

    def close(self) -> None:
        self.closed = True
        self._ready.set()

    def discard_through(self, position: int) -> None:
        """Drop buffered messages with an id up to ``position`` (already sent)."""
        while self._messages and self._messages[0].position <= position:
            self._bytes -= len(self._messages.popleft().data)

    async def take(self, wait_s: float) -> list[Message]:
        """Everything buffered, waiting up to ``wait_s`` for something; may be empty."""
        if not self._messages and not self.closed:
            # asyncio.timeout, not wait_for: on Python 3.11 wait_for swallows a cancellation
            # that coincides with the event (and stopping the service would hang).
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(wait_s):
                    await self._ready.wait()
        self._ready.clear()
        taken = list(self._messages)
        self._messages.clear()
        self._bytes = 0
        return taken


def _stop_if_cancelled(error: Exception) -> None:
    """A connection dying under a cancelled task surfaces as its error: stop all the same."""
    if cancelling():
        raise asyncio.CancelledError from error


class Broadcaster:
    """Reads each round of job changes once and fans it out to every subscription."""

    def __init__(
        self,
        *,
        stale_after_s: float,
        poll_interval: float = POLL_INTERVAL_S,
        page_size: int = PAGE_SIZE,
        max_buffered_bytes: int = MAX_BUFFERED_BYTES,
        keepalive_s: float = KEEPALIVE_S,
    ) -> None:
        self.stale_after_s = stale_after_s
        self.poll_interval = poll_interval
        self.page_size = page_size
        self.max_buffered_bytes = max_buffered_bytes
        self.keepalive_s = keepalive_s
        self._subscriptions: set[Subscription] = set()
        self.cut_off = 0  # clients disconnected for falling behind
        self._wakeup = asyncio.Event()
        # The highest last_position offered (or, with nobody listening, the checkpoint).
        self._high_water: int | None = None

    @property
    def clients(self) -> int:
        return len(self._subscriptions)

    def subscribe(self) -> Subscription:
        subscription = Subscription(self.max_buffered_bytes)
        self._subscriptions.add(subscription)
        return subscription

    def unsubscribe(self, subscription: Subscription) -> None:
        self._subscriptions.discard(subscription)
        subscription.close()
        self.cut_off += subscription.overflowed

    def close_all(self) -> None:
        for subscription in list(self._subscriptions):
            subscription.close()

    def on_commit(self, applied: Applied) -> None:
        """The projector's callback: only a wake-up, the round reads by position. With nobody
        listening there is nothing to read: the high water moves to the checkpoint the batch
        left, as a round would have moved it (without a round trip per batch)."""
        if not self._subscriptions:
            position = applied.checkpoints.get("job_status")
            if self._high_water is not None and position is not None:
                self._high_water = max(self._high_water, position)
        elif applied.changed:
            self._wakeup.set()

    async def changed_after(self, conn: Connection, position: int) -> list[reads.Job]:
        return await reads.jobs_changed_after(
            conn,
            position,
            now=datetime.now(UTC),
            stale_after_s=self.stale_after_s,
            limit=self.page_size,
        )

    async def start(self, pool: asyncpg.Pool[Any]) -> None:
        """Take the current checkpoint as the starting point, before anyone subscribes."""
        with contextlib.suppress(StorageUnavailable):
            async with connect(pool) as conn:
                self._high_water = (await reads.checkpoints(conn)).get("job_status", 0)

    async def run(self, pool: asyncpg.Pool[Any]) -> None:
        while True:
            with contextlib.suppress(TimeoutError):  # asyncio.timeout: see Subscription.take
                async with asyncio.timeout(self.poll_interval):
                    await self._wakeup.wait()
            self._wakeup.clear()  # a commit during the round wakes the next one at once
            try:
                await self._round(pool)
            except StorageUnavailable as error:
                _stop_if_cancelled(error)
                log.warning("stream.storage_unavailable", error=str(error))
            except Exception as error:
                _stop_if_cancelled(error)
                log.exception("stream.round_failed")  # the next round starts from high water

    async def _round(self, pool: asyncpg.Pool[Any]) -> None:
        async with connect(pool) as conn:
            if self._high_water is None or not self._subscriptions:
                # Nobody to tell: move on to the checkpoint (every job is at or below it).
                self._high_water = (await reads.checkpoints(conn)).get("job_status", 0)
                return
            while True:
                jobs = await self.changed_after(conn, self._high_water)
                if not jobs:
                    return
                batch = [encode(job) for job in jobs]
                size = sum(len(m.data) for m in batch)
                self._high_water = batch[-1].position
                for subscription in list(self._subscriptions):
                    subscription.offer(batch, size)
                if len(jobs) < self.page_size:
                    return


async def broadcasting(app: web.Application) -> AsyncIterator[None]:
    """cleanup_ctx: the broadcaster's task, for the life of the app."""
    broadcaster, pool = app[broadcaster_key], app[pool_key]
    await broadcaster.start(pool)
    task = asyncio.create_task(broadcaster.run(pool), name="broadcaster")
    yield
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task


async def close_streams(app: web.Application) -> None:
    """on_shutdown: end every stream, so that stopping does not wait for clients to leave."""
    app[broadcaster_key].close_all()


def _last_event_id(request: web.Request) -> int | None:
    raw = request.headers.get("Last-Event-ID")
    if raw is None or raw.strip() == "":
        return None
    if not raw.strip().isdigit() or len(raw.strip()) > 18:
        raise ApiError(400, "Last-Event-ID must be a position (a non-negative integer)")
    return int(raw)


async def _catch_up(
    request: web.Request, response: web.StreamResponse, subscription: Subscription, after: int
) -> int:
    """Send every job changed after ``after``, page by page; return the last id sent."""
    broadcaster = request.app[broadcaster_key]
    sent = after
    while True:
        # A connection per page, given back before writing: a slow client holds none.
        async with connect(request.app[pool_key]) as conn:
            jobs = await broadcaster.changed_after(conn, sent)
        if jobs:
            await response.write(b"".join(encode(job).data for job in jobs))
            sent = jobs[-1]["last_position"]
            subscription.discard_through(sent)
        if len(jobs) < broadcaster.page_size:
            return sent


async def stream(request: web.Request) -> web.StreamResponse:
    broadcaster = request.app[broadcaster_key]
    last_id = _last_event_id(request)
    request_id = structlog.contextvars.get_contextvars().get("request_id")
    response = web.StreamResponse(
        headers={
            "Content-Type": "text/event-stream; charset=utf-8",
            "Cache-Control": "no-cache",
            "X-Accel-Buffering": "no",  # proxies must not hold messages back
            "X-Request-ID": str(request_id),
        }
    )
    subscription = broadcaster.subscribe()
    try:
        await response.prepare(request)
        subscription.attach(request.transport)
        await response.write(b"retry: 2000\n: connected\n\n")
        sent = 0 if last_id is None else await _catch_up(request, response, subscription, last_id)
        while not subscription.closed:
            taken = await subscription.take(broadcaster.keepalive_s)
            batch = [m for m in taken if m.position > sent]
            if batch:
                await response.write(b"".join(m.data for m in batch))
                sent = batch[-1].position
            elif not subscription.closed:
                await response.write(b": keep-alive\n\n")
    except (ConnectionError, StorageUnavailable) as error:
        # The client left, was too slow, or the database went away: it will reconnect.
        log.info("stream.ended", reason=type(error).__name__, overflowed=subscription.overflowed)
    except Exception:
        if cancelling():
            raise
        log.exception("stream.failed")  # the response has started: no JSON error now
    finally:
        broadcaster.unsubscribe(subscription)
    return response

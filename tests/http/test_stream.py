"""``GET /api/stream`` over real HTTP (SPEC section 6): live job changes as Server-Sent Events,
resume with Last-Event-ID without losing or doubling a change, keep-alives, a slow client cut
off instead of buffered without bound, and streams that end when the service stops."""

from __future__ import annotations

import asyncio
import json
import random
import socket
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import asyncpg
import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient

from service.keys import broadcaster_key
from tests.helpers import (
    AUTH,
    READ_TOKEN,
    serve_jobtrail,
    standard_headers,
    wait_for_projection,
)

Client = TestClient[web.Request, web.Application]
URL = "/api/webhooks/github"


async def send(client: Client, payload: dict[str, Any]) -> int:
    body = json.dumps(payload, ensure_ascii=False).encode()
    response = await client.post(URL, data=body, headers=standard_headers(body))
    assert response.status == 200, await response.text()
    return int((await response.json())["position"])


@dataclass
class Sse:
    """One SSE block: its fields, or the comment lines it carried."""

    id: str | None = None
    event: str | None = None
    data: list[str] = field(default_factory=list)
    comments: list[str] = field(default_factory=list)

    @property
    def job(self) -> dict[str, Any]:
        job: dict[str, Any] = json.loads("\n".join(self.data))
        return job


async def next_block(response: aiohttp.ClientResponse, within_s: float = 5.0) -> Sse:
    block = Sse()
    deadline = time.monotonic() + within_s
    while True:
        line = await asyncio.wait_for(response.content.readline(), deadline - time.monotonic())
        if not line:
            raise EOFError("stream ended")
        text = line.decode().rstrip("\n")
        if text == "":
            if block.id or block.event or block.data or block.comments:
                return block
            continue
        name, _, value = text.partition(":")
        value = value.removeprefix(" ")
        if name == "":
            block.comments.append(value)
        elif name == "data":
            block.data.append(value)
        elif name in ("id", "event"):
            setattr(block, name, value)


async def next_job(response: aiohttp.ClientResponse, within_s: float = 5.0) -> Sse:
    """The next ``event: job`` message, skipping comments and the retry hint."""
    deadline = time.monotonic() + within_s
    while True:
        block = await next_block(response, deadline - time.monotonic())
        if block.event == "job":
            return block


async def open_stream(client: Client, last_event_id: int | None = None) -> aiohttp.ClientResponse:
    headers = dict(AUTH)
    if last_event_id is not None:
        headers["Last-Event-ID"] = str(last_event_id)
    response = await client.get("/api/stream", headers=headers)
    assert response.status == 200, await response.text()
    assert response.content_type == "text/event-stream"
    return response


async def test_the_stream_needs_the_bearer_token(client: Client) -> None:
    for headers in ({}, {"Authorization": "Bearer wrong"}):
        response = await client.get("/api/stream", headers=headers)
        assert response.status == 401
        assert "error" in await response.json()
    # Tokens are not taken from the URL, where logs and browser history would keep them.
    response = await client.get(f"/api/stream?access_token={READ_TOKEN}")
    assert response.status == 401


@pytest.mark.parametrize("value", ["abc", "-1", "1.5", "9" * 30])
async def test_a_bad_last_event_id_is_400(client: Client, value: str) -> None:
    response = await client.get("/api/stream", headers={**AUTH, "Last-Event-ID": value})
    assert response.status == 400
    assert "error" in await response.json()


async def test_a_change_arrives_as_the_job_object(client: Client) -> None:
    stream = await open_stream(client)
    position = await send(client, {"job_id": "live-1", "status": "provisioning", "run_id": 7})
    message = await next_job(stream)
    assert message.id == str(position)
    job = (await client.get("/api/jobs/live-1", headers=AUTH)).json
    assert message.job == await job()
    assert message.job["last_position"] == position
    position = await send(client, {"job_id": "live-1", "status": "heartbeat"})
    message = await next_job(stream)
    assert (message.id, message.job["heartbeat_count"]) == (str(position), 1)
    stream.close()


async def test_no_snapshot_on_connect(client: Client, pool: asyncpg.Pool[Any]) -> None:
    await send(client, {"job_id": "old", "status": "queued"})
    await wait_for_projection(pool)
    stream = await open_stream(client)
    position = await send(client, {"job_id": "new", "status": "queued"})
    message = await next_job(stream)
    assert (message.job["job_id"], message.id) == ("new", str(position))
    stream.close()


async def test_resume_after_a_disconnect_loses_and_doubles_nothing(
    client: Client, pool: asyncpg.Pool[Any]
) -> None:
    stream = await open_stream(client)
    await send(client, {"job_id": "a", "status": "queued"})
    last = await send(client, {"job_id": "b", "status": "queued"})
    seen = [await next_job(stream), await next_job(stream)]
    assert [m.job["job_id"] for m in seen] == ["a", "b"]
    assert seen[-1].id == str(last)
    stream.close()

    # While the client is away: b changes twice, c and d appear; a does not change.
    await send(client, {"job_id": "b", "status": "running"})
    await send(client, {"job_id": "c", "status": "queued"})
    b_last = await send(client, {"job_id": "b", "status": "heartbeat"})
    d_last = await send(client, {"job_id": "d", "status": "provisioning"})
    await wait_for_projection(pool)

    stream = await open_stream(client, last_event_id=last)
    missed = [await next_job(stream) for _ in range(3)]
    # The current state of each job changed since, once, in the order of their last change.
    assert [m.job["job_id"] for m in missed] == ["c", "b", "d"]
    assert [int(m.id or 0) for m in missed] == sorted(int(m.id or 0) for m in missed)
    assert missed[1].job["status"] == "running" and missed[1].id == str(b_last)
    assert missed[2].id == str(d_last)
    # Then live, and nothing of the catch-up again.
    live = await send(client, {"job_id": "a", "status": "running"})
    message = await next_job(stream)
    assert (message.job["job_id"], message.id) == ("a", str(live))
    with pytest.raises(TimeoutError):
        await next_job(stream, within_s=0.5)
    stream.close()


async def test_resume_from_zero_sends_every_job_once(
    client: Client, pool: asyncpg.Pool[Any]
) -> None:
    client.app[broadcaster_key].page_size = 3  # several resume pages
    names = [f"job-{i}" for i in range(8)]
    for name in names:
        await send(client, {"job_id": name, "status": "queued"})
    await wait_for_projection(pool)
    stream = await open_stream(client, last_event_id=0)
    got = [(await next_job(stream)).job["job_id"] for _ in names]
    assert got == names
    stream.close()


@dataclass
class Follower:
    """A client that keeps dropping its connection and resuming where it was."""

    client: Client
    seed: int
    jobs: dict[str, dict[str, Any]] = field(default_factory=dict)
    ids: list[int] = field(default_factory=list)
    connections: int = 0

    @property
    def last_id(self) -> int:
        return self.ids[-1] if self.ids else 0

    async def follow(self, writing: asyncio.Event) -> None:
        rng = random.Random(self.seed)
        while writing.is_set():
            stream = await open_stream(self.client, last_event_id=self.last_id)
            self.connections += 1
            try:
                for _ in range(rng.randint(1, 12)):
                    self.take(await next_job(stream, within_s=2))
            except TimeoutError:
                pass
            finally:
                stream.close()
            await asyncio.sleep(rng.random() * 0.05)

    async def catch_up(self, head: int) -> None:
        stream = await open_stream(self.client, last_event_id=self.last_id)
        try:
            while self.last_id < head:
                self.take(await next_job(stream))
        finally:
            stream.close()

    def take(self, message: Sse) -> None:
        position = int(message.id or -1)
        # Ids only ever increase, over every connection: a change is never sent twice.
        assert position > self.last_id, (position, self.last_id)
        self.ids.append(position)
        self.jobs[message.job["job_id"]] = message.job


@pytest.mark.slow
async def test_followers_that_keep_reconnecting_see_every_change_once(
    client: Client, pool: asyncpg.Pool[Any]
) -> None:
    """Changes race the resumes: catch-up queries, live rounds and reconnects interleave."""
    client.app[broadcaster_key].page_size = 4
    followers = [Follower(client, seed) for seed in range(3)]
    writing = asyncio.Event()
    writing.set()
    tasks = [asyncio.create_task(f.follow(writing)) for f in followers]
    rng = random.Random(99)
    for _ in range(40):
        burst = [
            send(client, {"job_id": f"race-{rng.randrange(12)}", "status": "heartbeat"})
            for _ in range(rng.randint(1, 6))
        ]
        await asyncio.gather(*burst)
        await asyncio.sleep(rng.random() * 0.03)
    writing.clear()
    await asyncio.gather(*tasks)
    await wait_for_projection(pool)

    listed = (await (await client.get("/api/jobs?limit=500", headers=AUTH)).json())["jobs"]
    expected = {job["job_id"]: job for job in listed}
    head = max(job["last_position"] for job in listed)
    for follower in followers:
        await follower.catch_up(head)
        assert follower.connections > 3
        assert follower.jobs == expected


async def test_keep_alive_comments(client: Client) -> None:
    client.app[broadcaster_key].keepalive_s = 0.2
    stream = await open_stream(client)
    started = time.monotonic()
    comments: list[str] = []
    while "keep-alive" not in comments:
        comments += (await next_block(stream, within_s=2)).comments
    assert time.monotonic() - started < 2
    stream.close()


def _slow_reader(port: int) -> socket.socket:
    """A client that asks for the stream and then never reads: a tiny receive window."""
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.connect(("127.0.0.1", port))
    sock.sendall(
        b"GET /api/stream HTTP/1.1\r\nHost: localhost\r\n"
        + f"Authorization: Bearer {READ_TOKEN}\r\n\r\n".encode()
    )
    sock.setblocking(False)
    return sock


@pytest.mark.slow
async def test_a_slow_client_is_cut_off_and_the_others_keep_up(
    client: Client, pool: asyncpg.Pool[Any]
) -> None:
    broadcaster = client.app[broadcaster_key]
    broadcaster.max_buffered_bytes = 256 * 1024
    fast = await open_stream(client)
    assert client.port is not None
    slow = _slow_reader(client.port)
    deadline = time.monotonic() + 5
    while broadcaster.clients < 2:
        assert time.monotonic() < deadline
        await asyncio.sleep(0.01)

    # Big messages (4-byte characters in message and error, 32 KiB a job) fill the socket
    # buffers and then the slow client's own buffer quickly.
    t = "\U0001d11e" * 4096
    names = [f"big-{i}" for i in range(150)]
    received: list[str] = []

    async def read_fast() -> None:
        while len(received) < len(names):
            received.append((await next_job(fast, within_s=10)).job["job_id"])

    reader = asyncio.create_task(read_fast())
    try:
        for chunk in range(0, len(names), 10):
            await asyncio.gather(
                *(
                    send(client, {"job_id": n, "status": "running", "message": t, "error": t})
                    for n in names[chunk : chunk + 10]
                )
            )
        await asyncio.wait_for(reader, 20)
        assert sorted(received) == sorted(names)
        deadline = time.monotonic() + 10
        while broadcaster.clients > 1:
            assert time.monotonic() < deadline, "the slow client is still subscribed"
            await asyncio.sleep(0.05)
        # The slow one was cut off, not buffered for: its connection is reset.
        assert broadcaster.cut_off == 1
        loop = asyncio.get_running_loop()
        got = 0
        with pytest.raises(ConnectionResetError):
            while True:
                data = await asyncio.wait_for(loop.sock_recv(slow, 65536), 5)
                if not data:
                    raise ConnectionResetError("closed")
                got += len(data)
        assert got < len(names) * 32 * 1024
    finally:
        reader.cancel()
        slow.close()
        fast.close()


async def test_stopping_the_service_ends_open_streams(client: Client) -> None:
    stream = await open_stream(client)
    await next_block(stream)  # the retry hint: the stream is open
    started = time.monotonic()
    await asyncio.wait_for(client.server.close(), 10)
    assert time.monotonic() - started < 5
    stream.close()


@pytest.mark.slow
async def test_jobtrail_serve_stops_at_once_with_streams_open(
    database_url: str, tmp_path: Path
) -> None:
    async with aiohttp.ClientSession() as session:
        async with serve_jobtrail(database_url, tmp_path) as served:
            streams = [
                await session.get(f"{served.base}/api/stream", headers=AUTH) for _ in range(3)
            ]
            for stream in streams:
                assert stream.status == 200
                await next_block(stream)
            stopping = time.monotonic()
        # SIGINT: the streams end (they do not hold the stop for its 5 s grace period).
        assert time.monotonic() - stopping < 4
        for stream in streams:
            with pytest.raises((EOFError, aiohttp.ClientError)):
                while True:
                    await next_block(stream, within_s=2)
            stream.close()

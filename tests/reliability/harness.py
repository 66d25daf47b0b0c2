"""What the fault campaigns share (besides ``tests.helpers.ServeProcess``, the service process
they kill and restart): a client that retries every unacknowledged callback as a CI sender
would, and the checks of SPEC section 9 on the log and the projections afterwards.

Every campaign is randomised from one seed, printed at its start (pytest shows it with a
failure); ``JOBTRAIL_TEST_SEED=<seed>`` replays a campaign.
"""

from __future__ import annotations

import asyncio
import hmac
import json
import os
import random
from collections import Counter, deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp

from events.hashing import check_chain
from events.store import read_stream
from projections.base import quoted
from projections.registry import PROJECTIONS
from projections.replay import fold_log
from tests.helpers import CALLBACK_SECRET, JOBTRAIL, ROTATED_SECRET, clean_env
from tests.helpers import standard_headers as _standard_headers

URL = "/api/webhooks/github"


def campaign_seed() -> int:
    seed = int(os.environ.get("JOBTRAIL_TEST_SEED") or random.SystemRandom().randrange(2**32))
    print(f"campaign seed: {seed} (JOBTRAIL_TEST_SEED={seed} replays it)")
    return seed


# -- the client --------------------------------------------------------------------------------


@dataclass(frozen=True)
class Callback:
    key: str  # webhook-id, or the legacy delivery_id
    job_id: str
    body: bytes
    scheme: str  # "standard" or "legacy"

    def headers(self) -> dict[str, str]:
        """Freshly signed headers: a retry is re-signed with a new timestamp, same id."""
        if self.scheme == "legacy":
            return {
                "Content-Type": "application/json",
                "X-Signature": hmac.new(CALLBACK_SECRET.encode(), self.body, "sha256").hexdigest(),
            }
        return _standard_headers(self.body, msg_id=self.key)


def workload(rng: random.Random, count: int, jobs: int, tag: str) -> list[Callback]:
    """``count`` callbacks with distinct keys over ``jobs`` jobs: a few status changes among
    heartbeats, one in ten signed with the legacy scheme (its key is ``delivery_id``)."""
    statuses = ["provisioning", "running", "heartbeat", "heartbeat", "heartbeat", "succeeded"]
    callbacks = []
    for i in range(count):
        job_id = f"vm-{tag}-{rng.randrange(jobs)}"
        key = f"{tag}-{i}"
        scheme = "legacy" if rng.random() < 0.1 else "standard"
        payload: dict[str, Any] = {"job_id": job_id, "status": rng.choice(statuses), "n": i}
        if scheme == "legacy":
            payload["delivery_id"] = key
        callbacks.append(Callback(key, job_id, json.dumps(payload).encode(), scheme))
    return callbacks


@dataclass(frozen=True)
class Ack:
    event_id: str
    position: int
    duplicate: bool


@dataclass(frozen=True)
class Attempt:
    key: str
    started: float  # loop time
    elapsed: float
    outcome: str  # the status code, or the connection error's class name


@dataclass
class Driver:
    """Sends every callback until it is acknowledged, from ``workers`` concurrent senders.

    A 503 or a connection error puts the callback back in the queue (retried later, re-signed);
    any other answer but 200 is recorded as a failure and not retried.
    """

    base: str
    callbacks: list[Callback]
    workers: int = 16
    acks: dict[str, Ack] = field(default_factory=dict)
    attempts: list[Attempt] = field(default_factory=list)
    failures: list[tuple[str, int, str]] = field(default_factory=list)

    def __post_init__(self) -> None:
        self._queue = deque(self.callbacks)
        self._in_flight = 0
        self._acked = asyncio.Event()

    async def wait_for_acks(self, count: int, within_s: float = 60.0) -> None:
        """Until at least ``count`` callbacks are acknowledged."""
        async with asyncio.timeout(within_s):
            while len(self.acks) < count:
                self._acked.clear()
                await self._acked.wait()

    @property
    def done(self) -> bool:
        return not self._queue and not self._in_flight

    async def run(self, *, retry_pause_s: float = 0.05) -> None:
        """Until every callback is acknowledged (or failed for good)."""
        timeout = aiohttp.ClientTimeout(total=30)
        async with aiohttp.ClientSession(timeout=timeout) as session:
            await asyncio.gather(
                *(self._worker(session, retry_pause_s) for _ in range(self.workers))
            )

    async def _worker(self, session: aiohttp.ClientSession, retry_pause_s: float) -> None:
        loop = asyncio.get_running_loop()
        while not self.done:
            if not self._queue:
                await asyncio.sleep(0.01)
                continue
            callback = self._queue.popleft()
            self._in_flight += 1
            started = loop.time()
            outcome = await self._send(session, callback)
            self.attempts.append(Attempt(callback.key, started, loop.time() - started, outcome))
            self._in_flight -= 1
            if outcome not in ("200", "failed"):
                self._queue.append(callback)
                await asyncio.sleep(retry_pause_s)

    async def _send(self, session: aiohttp.ClientSession, callback: Callback) -> str:
        try:
            async with session.post(
                self.base + URL, data=callback.body, headers=callback.headers()
            ) as response:
                text = await response.text()
                if response.status == 200:
                    answer = json.loads(text)
                    self.acks[callback.key] = Ack(
                        answer["event_id"], answer["position"], answer["duplicate"]
                    )
                    self._acked.set()
                elif response.status != 503:
                    self.failures.append((callback.key, response.status, text))
                    return "failed"
                else:
                    assert response.headers["Retry-After"].isdigit(), response.headers
                    assert json.loads(text) == {"error": "Storage unavailable"}, text
                return str(response.status)
        except (aiohttp.ClientError, ConnectionError, TimeoutError) as error:
            return type(error).__name__


# -- the checks --------------------------------------------------------------------------------


async def check_log(conn: Any, acks: dict[str, Ack], seed: int) -> None:
    """Every acknowledged callback is in the log exactly once, where its 200 said; no key is
    stored twice; every stream is gap-free and its hash chain holds."""
    rows = await conn.fetch(
        "SELECT metadata->>'idempotency_key' AS key, event_id::text, position FROM events"
    )
    by_key = Counter(r["key"] for r in rows if r["key"] is not None)
    repeated = {key: n for key, n in by_key.items() if n > 1}
    assert not repeated, f"seed {seed}: idempotency keys stored more than once: {repeated}"
    stored = {r["key"]: (r["event_id"], r["position"]) for r in rows}
    for key, ack in acks.items():
        assert stored.get(key) == (ack.event_id, ack.position), (
            f"seed {seed}: acknowledged {key} as {ack}, stored as {stored.get(key)}"
        )
    keys = await conn.fetchval("SELECT count(*) FROM idempotency_keys")
    assert keys == len(by_key), f"seed {seed}: {keys} idempotency keys for {len(by_key)} events"
    for stream in await conn.fetch("SELECT stream_id, version FROM streams"):
        events = await read_stream(conn, stream["stream_id"])
        positions = [e.stream_position for e in events]
        assert positions == list(range(1, len(events) + 1)), (seed, stream["stream_id"])
        assert stream["version"] == len(events), (seed, stream["stream_id"])
        assert all(check_chain(events)), f"seed {seed}: broken chain in {stream['stream_id']}"


async def check_projections(conn: Any, seed: int) -> dict[str, int]:
    """Each stored projection equals a fresh replay of the log up to its own checkpoint (what
    it claims to have applied); returns the checkpoints."""
    checkpoints = {
        r["name"]: r["position"]
        for r in await conn.fetch("SELECT name, position FROM projection_checkpoints")
    }
    for projection in PROJECTIONS:
        until = checkpoints[projection.name]
        states, _ = await fold_log(conn, [projection], until_position=until)
        columns = ", ".join(quoted(c) for c in projection.columns)
        rows = await conn.fetch(f"SELECT {columns} FROM {quoted(projection.name)}")
        stored = {r[0]: projection.from_row(r) for r in rows}
        replayed = states[projection.name]
        assert stored.keys() == replayed.keys(), (seed, projection.name, until)
        for key, state in replayed.items():
            assert stored[key] == state, (seed, projection.name, until, key)
    return checkpoints


async def run_verify(database_url: str, workdir: Path) -> None:
    """``jobtrail verify`` must exit 0, when that command exists."""
    env = clean_env(
        DATABASE_URL=database_url,
        JOBTRAIL_DATA_DIR=str(workdir / "verify-data"),
        GITHUB_CALLBACK_SECRET=CALLBACK_SECRET,
        JOBTRAIL_CALLBACK_SECRETS=ROTATED_SECRET,
    )
    helped = await asyncio.create_subprocess_exec(
        JOBTRAIL, "--help", stdout=asyncio.subprocess.PIPE, env=env
    )
    usage, _ = await helped.communicate()
    if b"verify" not in usage:
        print("jobtrail verify: no such command yet")
        return
    process = await asyncio.create_subprocess_exec(
        JOBTRAIL,
        "verify",
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
        env=env,
        cwd=workdir,
    )
    output, _ = await asyncio.wait_for(process.communicate(), 60)
    assert process.returncode == 0, output.decode(errors="replace")
    print(f"jobtrail verify: {output.decode(errors='replace').strip()[-200:]}")

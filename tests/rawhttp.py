"""HTTP/1.1 over a raw socket, for requests that aiohttp's client refuses to send (CR/LF in a
header value, a 10 KB header, a body that trickles in) and servers started in-process with
the same runner as ``jobtrail serve``."""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from typing import Any

from aiohttp import web

from service.app import create_app
from service.server import make_runner
from service.settings import Settings

Header = tuple[bytes | str, bytes | str]


def _bytes(value: bytes | str) -> bytes:
    return value if isinstance(value, bytes) else value.encode("latin-1")


def raw_request(
    headers: Sequence[Header],
    body: bytes = b"",
    *,
    method: str = "POST",
    path: str = "/api/webhooks/github",
    content_length: bool = True,
) -> bytes:
    """A request as bytes on the wire; ``Host`` and ``Connection: close`` come first, and a
    ``Content-Length`` of the body unless ``content_length`` is false."""
    lines = [f"{method} {path} HTTP/1.1".encode(), b"Host: 127.0.0.1", b"Connection: close"]
    lines += [_bytes(name) + b": " + _bytes(value) for name, value in headers]
    if content_length:
        lines.append(b"Content-Length: " + str(len(body)).encode())
    return b"\r\n".join(lines) + b"\r\n\r\n" + body


@dataclass(frozen=True)
class RawResponse:
    status: int
    headers: dict[str, str]  # lower-case names
    body: bytes
    raw: bytes  # everything the server sent

    def json(self) -> Any:
        return json.loads(self.body)


def parse_response(raw: bytes) -> RawResponse | None:
    """The first response in ``raw``; ``None`` if the server sent none."""
    head, sep, rest = raw.partition(b"\r\n\r\n")
    if not sep:
        return None
    status_line, *header_lines = head.decode("latin-1").split("\r\n")
    headers = {}
    for line in header_lines:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    length = int(headers.get("content-length", len(rest)))
    return RawResponse(int(status_line.split()[1]), headers, rest[:length], raw)


async def exchange(
    port: int,
    parts: bytes | Sequence[bytes],
    *,
    pause_s: float = 0.0,
    timeout_s: float = 15.0,
) -> RawResponse | None:
    """Send ``parts`` (``pause_s`` apart) on a fresh connection, then read until the server
    closes it; ``None`` if it closed without answering. Gives up (AssertionError) after
    ``timeout_s``: a server must never leave a client hanging."""
    chunks = [parts] if isinstance(parts, bytes) else list(parts)
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    received = bytearray()

    async def read_all() -> None:
        # Until the server closes the connection or one whole response has arrived.
        while data := await reader.read(65536):
            received.extend(data)
            response = parse_response(bytes(received))
            if response is not None and len(response.body) >= int(
                response.headers.get("content-length", -1)
            ):
                return

    reading = asyncio.create_task(read_all())
    try:
        for i, chunk in enumerate(chunks):
            if received or reading.done():
                break  # the server answered before the request was complete
            if i and pause_s:
                await asyncio.sleep(pause_s)
            writer.write(chunk)
            with contextlib.suppress(ConnectionError):
                await writer.drain()
        try:
            await asyncio.wait_for(asyncio.shield(reading), timeout_s)
        except TimeoutError:
            raise AssertionError(f"no answer within {timeout_s}s: {bytes(received)!r}") from None
        except ConnectionError:
            pass
    finally:
        reading.cancel()
        writer.close()
        with contextlib.suppress(ConnectionError):
            await writer.wait_closed()
    return parse_response(bytes(received))


@contextlib.asynccontextmanager
async def served(settings: Settings) -> AsyncIterator[int]:
    """``create_app(settings)`` served in this process by ``jobtrail serve``'s runner on a free
    port of 127.0.0.1; yields the port."""
    runner = make_runner(create_app(settings))
    await runner.setup()
    try:
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        yield runner.addresses[0][1]
    finally:
        await runner.cleanup()

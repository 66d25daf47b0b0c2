"""Serving the application: ``web.run_app`` without its two surprises.

1. Requests that aiohttp's HTTP parser refuses (a header over 8190 bytes, a bad request line,
   CR or LF inside a header value, a broken chunked body) never reach the application or its
   middlewares: aiohttp answers them itself from ``RequestHandler.handle_error``, with a
   plain-text body that repeats the start of the offending line, and logs the exception, header
   text included, at ERROR. ``JsonErrorRequestHandler`` answers them like every other error of
   this service (``{"error": "Bad request"}``, JSON, the connection closed) and logs only the
   status and the exception's class: nothing the client sent reaches a response or a log line.
   aiohttp builds one ``RequestHandler`` per connection in ``web.Server.__call__``; the runner
   below hands it a ``web.Server`` subclass that builds ours instead.
2. ``run_app`` turns SIGTERM into an exception that escapes the event loop and then cancels the
   serving task, so its clean-up runs inside a cancelled task, and it waits up to 60 s for
   in-flight requests. ``serve`` waits for SIGINT or SIGTERM as an event instead and then stops
   in order: close the listening socket (new connections are refused), close idle keep-alive
   connections, give requests in flight ``SHUTDOWN_TIMEOUT_S`` to finish (each is answered: its
   200 after COMMIT, or a 503), then stop the background tasks (the appender answers whoever
   still waits, the projector stops between batches or rolls its batch back) and close the pool.
   A second Ctrl-C during that stop interrupts it; the process exits 0 either way.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import signal
from collections.abc import Callable
from http import HTTPStatus

import structlog
from aiohttp import web
from aiohttp.web_protocol import RequestHandler
from aiohttp.web_request import BaseRequest

from service.errors import json_response

log = structlog.get_logger(component="http")

# In-flight requests get this long after SIGTERM/SIGINT before they are cancelled.
SHUTDOWN_TIMEOUT_S = 5.0
# Idle keep-alive connections are closed after this long; it also bounds how long a client may
# take to send a request's headers (aiohttp has no separate header timeout).
KEEPALIVE_TIMEOUT_S = 75.0

_MESSAGES = {400: "Bad request", 500: "Internal server error", 504: "Gateway timeout"}


class JsonErrorRequestHandler(RequestHandler):
    """aiohttp's connection handler, with JSON error answers that echo nothing."""

    __slots__ = ()

    def handle_error(
        self,
        request: BaseRequest,
        status: int = 500,
        exc: BaseException | None = None,
        message: str | None = None,
    ) -> web.StreamResponse:
        # ``message`` and ``exc`` may quote the request (a header's first bytes): never shown.
        error = type(exc).__name__ if exc is not None else None
        if status >= 500:
            log.error("http.protocol_error", status=status, error=error)
        else:
            log.info("http.bad_request", status=status, error=error)
        if request.writer.output_size > 0:
            # Part of a response went out already: the connection cannot carry another one.
            raise ConnectionError("response already started; closing the connection")
        text = _MESSAGES.get(status) or HTTPStatus(status).phrase
        response = json_response({"error": text}, status=status)
        response.force_close()
        return response


class JsonErrorServer(web.Server):
    """``web.Server`` whose connections are served by ``JsonErrorRequestHandler``."""

    def __call__(self) -> RequestHandler:
        return JsonErrorRequestHandler(self, loop=self._loop, **self._kwargs)


class JobtrailRunner(web.AppRunner):
    """``web.AppRunner`` serving through ``JsonErrorServer``."""

    async def _make_server(self) -> web.Server:
        plain = await super()._make_server()  # starts the app: startup hooks, cleanup_ctx
        return JsonErrorServer(
            plain.request_handler,
            request_factory=plain.request_factory,
            handler_cancellation=plain.handler_cancellation,
            loop=asyncio.get_running_loop(),
            **plain._kwargs,
        )


def make_runner(
    app: web.Application, *, shutdown_timeout: float = SHUTDOWN_TIMEOUT_S
) -> JobtrailRunner:
    """The runner ``serve`` uses (tests start one the same way)."""
    return JobtrailRunner(
        app,
        access_log=None,  # the request middleware logs each request once, with its id
        shutdown_timeout=shutdown_timeout,
        keepalive_timeout=KEEPALIVE_TIMEOUT_S,
    )


def serve(
    app: web.Application,
    *,
    host: str,
    port: int,
    on_bound: Callable[[], None],
    shutdown_timeout: float = SHUTDOWN_TIMEOUT_S,
    reuse_port: bool = False,
) -> None:
    """Serve ``app`` on ``host:port`` until SIGINT or SIGTERM, then stop gracefully (see the
    module docstring). ``on_bound`` is called once the socket listens. Raises ``OSError`` when
    the address cannot be bound."""
    with (
        contextlib.suppress(KeyboardInterrupt),  # a second Ctrl-C while stopping: stop now
        asyncio.Runner(loop_factory=new_event_loop) as runner,
    ):
        runner.run(_serve(app, host, port, on_bound, shutdown_timeout, reuse_port))


def new_event_loop() -> asyncio.AbstractEventLoop:
    """uvloop where it is installed (every platform but Windows): the same asyncio API, with
    its transports, callbacks and timers in C. It saves a few per cent of the CPU a callback
    costs (bench/README.md)."""
    try:
        import uvloop
    except ImportError:
        return asyncio.new_event_loop()
    return uvloop.new_event_loop()


async def _serve(
    app: web.Application,
    host: str,
    port: int,
    on_bound: Callable[[], None],
    shutdown_timeout: float,
    reuse_port: bool,
) -> None:
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    signals = (signal.SIGINT, signal.SIGTERM)
    for signum in signals:
        loop.add_signal_handler(signum, stop.set)
    runner = make_runner(app, shutdown_timeout=shutdown_timeout)
    try:
        await runner.setup()
        try:
            await web.TCPSite(runner, host, port, reuse_port=reuse_port or None).start()
            # Everything built so far lives as long as the process: out of the collector's
            # sight, a full collection under load walks only what requests allocate.
            gc.freeze()
            on_bound()
            await stop.wait()
            log.info("serve.stopping", shutdown_timeout_s=shutdown_timeout)
        finally:
            for signum in signals:  # from here on, a second signal acts at once
                loop.remove_signal_handler(signum)
            await runner.cleanup()
    finally:
        for signum in signals:
            loop.remove_signal_handler(signum)
    log.info("serve.stopped")

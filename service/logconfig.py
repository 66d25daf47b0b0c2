"""structlog configuration: one call, at process start, before the app is built.

Request handlers bind ``request_id`` (and ``job_id`` once known) through contextvars, so every
line a request logs carries them. ``drop_secrets`` masks any value whose key looks like a
credential, as a last line of defence: code never logs secrets on purpose.

Our own loggers render straight to stderr (the fast path structlog recommends: no trip through
the standard library per line); the standard library's loggers (aiohttp, asyncpg) go through
``ProcessorFormatter`` with the same processors, so all lines look alike.
"""

from __future__ import annotations

import functools
import json
import logging
import re
import sys
import time
from collections.abc import MutableMapping
from typing import Any, Literal

import orjson
import structlog

_SECRET_KEY = re.compile(
    "secret|token|password|authorization|signature|dsn|cookie", re.IGNORECASE
).search


@functools.lru_cache(maxsize=1024)
def _looks_secret(key: str) -> bool:
    # Log keys are the few names our code writes: a memo spares a regex search per key per line.
    return _SECRET_KEY(key) is not None


def drop_secrets(
    _logger: Any, _method: str, event_dict: MutableMapping[str, Any]
) -> MutableMapping[str, Any]:
    for key in event_dict:
        if _looks_secret(key):
            event_dict[key] = "[redacted]"
    return event_dict


@functools.lru_cache(maxsize=4)
def _utc_second(second: int) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(second))


def add_timestamp(
    _logger: Any, _method: str, event_dict: MutableMapping[str, Any]
) -> MutableMapping[str, Any]:
    """ISO 8601 UTC with microseconds, as ``TimeStamper(fmt="iso", utc=True)`` writes it, for a
    third of its cost: a line's second is formatted once, however many lines share it."""
    now = time.time()
    second = int(now)
    event_dict["timestamp"] = f"{_utc_second(second)}.{int((now - second) * 1e6):06d}Z"
    return event_dict


def _json_line(event_dict: MutableMapping[str, Any], **_: Any) -> bytes:
    """One log line as UTF-8 JSON. orjson renders the per-request line in a fraction of what
    ``json`` takes; a value it refuses (a lone surrogate from hostile input, an integer past 64
    bits) falls back to ``json``, which escapes it."""
    try:
        return orjson.dumps(event_dict, default=repr)
    except TypeError:
        return json.dumps(event_dict, default=repr).encode()


def configure_logging(
    log_format: Literal["console", "json"] | None, level: int = logging.INFO
) -> None:
    """Route structlog and the standard library through one renderer on stderr."""
    if log_format is None:
        log_format = "console" if sys.stderr.isatty() else "json"
    shared: list[structlog.types.Processor] = [
        structlog.contextvars.merge_contextvars,
        structlog.processors.add_log_level,
        add_timestamp,
        drop_secrets,
    ]
    # Tracebacks without local variables, in both renderers: a frame's locals can hold a
    # secret (structlog's dict_tracebacks and rich's tracebacks both show them by default).
    console = log_format == "console"
    exceptions = structlog.processors.ExceptionRenderer(
        structlog.tracebacks.ExceptionDictTransformer(show_locals=False)
    )
    rendering: list[structlog.types.Processor] = (
        [structlog.dev.ConsoleRenderer(exception_formatter=structlog.dev.plain_traceback)]
        if console
        else [exceptions, structlog.processors.JSONRenderer()]
    )
    # Our own lines skip the text layer: rendered to bytes, written to stderr's buffer.
    structlog.configure(
        processors=[*shared, *rendering]
        if console
        else [*shared, exceptions, structlog.processors.JSONRenderer(_json_line)],
        wrapper_class=structlog.make_filtering_bound_logger(level),
        logger_factory=structlog.WriteLoggerFactory(file=sys.stderr)
        if console
        else structlog.BytesLoggerFactory(file=sys.stderr.buffer),
        cache_logger_on_first_use=True,
    )
    formatter = structlog.stdlib.ProcessorFormatter(
        foreign_pre_chain=[structlog.stdlib.add_logger_name, *shared],
        processors=[structlog.stdlib.ProcessorFormatter.remove_processors_meta, *rendering],
    )
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(formatter)
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    # The request middleware logs each request once, with its request id; aiohttp's access log
    # would repeat it without one.
    logging.getLogger("aiohttp.access").setLevel(logging.WARNING)

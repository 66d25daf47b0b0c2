"""JSON as jobtrail writes it: UTC timestamps with microseconds and a Z, UUIDs as strings.

``encode`` is the fast path for responses and stream messages (orjson); whatever orjson
refuses (a lone surrogate echoed from hostile input, an integer past 64 bits, a non-string key)
is written by the standard library instead, with the same meaning.
"""

from __future__ import annotations

import json
from datetime import datetime
from typing import Any
from uuid import UUID

import orjson

from events.models import format_timestamp

# Datetimes go through ``_default`` too: orjson's own format drops zero microseconds and
# writes +00:00, where jobtrail's timestamps are fixed-width with a Z.
_ORJSON_OPTIONS = orjson.OPT_PASSTHROUGH_DATETIME


def _default(value: Any) -> Any:
    if isinstance(value, datetime):
        return format_timestamp(value)
    if isinstance(value, UUID):
        return str(value)
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")


def dumps(value: Any, *, indent: int | None = None) -> str:
    separators = None if indent else (",", ":")
    return json.dumps(
        value, default=_default, ensure_ascii=False, indent=indent, separators=separators
    )


def encode(value: Any) -> bytes:
    """``value`` as compact UTF-8 JSON; a lone surrogate is written as ``?`` (a response must
    render whatever the request held)."""
    try:
        return orjson.dumps(value, default=_default, option=_ORJSON_OPTIONS)
    except TypeError:  # orjson.JSONEncodeError is a TypeError
        return dumps(value).encode("utf-8", "replace")

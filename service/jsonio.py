"""JSON as jobtrail writes it: UTC timestamps with microseconds and a Z, UUIDs as strings."""

from __future__ import annotations

import json
from datetime import datetime
from typing import Any
from uuid import UUID

from events.models import format_timestamp


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

"""Turning a verified request body into a validated callback (SPEC section 3, payload table).

Stricter than ``json.loads``: the body must be UTF-8; duplicate keys, NaN and Infinity (also
an overflowing number such as 1e999), NUL characters, lone surrogates, integers outside
0..2^53-1 and nesting deeper than 32 levels are refused. Each refusal is a ``PayloadError`` with
details a client can act on.
"""

from __future__ import annotations

import json
import math
import re
from datetime import datetime
from typing import Annotated, Any

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    StrictInt,
    StrictStr,
    ValidationError,
    field_validator,
)

from events.catalog import JOB_ID, STATUS_ALIASES, STATUSES, normalise_status

MAX_DEPTH = 32
MAX_SAFE_INTEGER = 2**53 - 1

Detail = dict[str, Any]


class PayloadError(Exception):
    """The body is not an acceptable callback. ``details`` is shown to the client."""

    def __init__(self, details: list[Detail]) -> None:
        super().__init__("invalid payload")
        self.details = details


def _detail(msg: str, loc: tuple[str | int, ...] = (), type_: str = "value_error") -> Detail:
    return {"loc": list(loc), "msg": msg, "type": type_}


def _refuse_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    result = dict(pairs)
    if len(result) != len(pairs):
        seen: set[str] = set()
        for key, _ in pairs:
            if key in seen:
                raise PayloadError([_detail(f"duplicate key {key!r}", type_="json_invalid")])
            seen.add(key)
    return result


def _refuse_constant(name: str) -> Any:
    raise PayloadError([_detail(f"{name} is not valid JSON", type_="json_invalid")])


def _finite_float(text: str) -> float:
    # json.loads turns 1e999 into inf, which neither JSON nor PostgreSQL can hold.
    value = float(text)
    if not math.isfinite(value):
        raise PayloadError([_detail(f"number {text[:32]} is out of range", type_="json_invalid")])
    return value


def _check_values(value: Any, *, strings: bool = True) -> None:
    """Depth, integers and (when ``strings``) strings of a parsed document, without recursion.
    Exact type checks: json.loads makes only dict, list, str, int, float, bool and None."""
    stack: list[tuple[Any, tuple[str | int, ...]]] = [(value, ())]
    while stack:
        item, loc = stack.pop()
        kind = type(item)
        if kind is dict or kind is list:
            if len(loc) >= MAX_DEPTH:
                raise PayloadError([_detail(f"nested deeper than {MAX_DEPTH} levels", loc)])
            if kind is dict:
                for key, child in item.items():
                    if strings:
                        # A bad key is reported at its object: echoing it back could not be
                        # encoded.
                        _check_string(key, loc, "object key")
                    stack.append((child, (*loc, key)))
            else:
                stack.extend((child, (*loc, i)) for i, child in enumerate(item))
        elif kind is str:
            if strings:
                _check_string(item, loc)
        elif kind is int and not 0 <= item <= MAX_SAFE_INTEGER:
            raise PayloadError([_detail("integer outside 0..2^53-1", loc)])


def _check_string(text: str, loc: tuple[str | int, ...], what: str = "string") -> None:
    if "\x00" in text:
        raise PayloadError([_detail(f"NUL character in {what}", loc)])
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        raise PayloadError([_detail(f"lone surrogate in {what}", loc)]) from None


# Built once: json.loads with hooks builds a decoder on every call, half the cost of a parse.
_DECODER = json.JSONDecoder(
    object_pairs_hook=_refuse_duplicates,
    parse_constant=_refuse_constant,
    parse_float=_finite_float,
)


def parse_json(body: bytes) -> Any:
    """Parse a body under the rules of the module docstring."""
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError:
        raise PayloadError([_detail("body is not UTF-8", type_="json_invalid")]) from None
    try:
        value = _DECODER.decode(text)
    except RecursionError:
        raise PayloadError([_detail(f"nested deeper than {MAX_DEPTH} levels")]) from None
    except ValueError as error:  # JSONDecodeError, and integers too long to convert
        raise PayloadError([_detail(str(error), type_="json_invalid")]) from None
    # A NUL or a lone surrogate can only come from a \u escape (the text itself is valid
    # UTF-8, and json refuses raw control characters): without one, strings need no check.
    _check_values(value, strings=b"\\u" in body)
    return value


_RFC3339 = re.compile(r"^\d{4}-\d{2}-\d{2}[Tt ]\d{2}:\d{2}:\d{2}(\.\d+)?([Zz]|[+-]\d{2}:\d{2})$")

JobId = Annotated[StrictStr, Field(pattern=f"^{JOB_ID.pattern}$")]
ShortText = Annotated[StrictStr, Field(max_length=128)]
LongText = Annotated[StrictStr, Field(max_length=4096)]
SafeInt = Annotated[StrictInt, Field(ge=0, le=MAX_SAFE_INTEGER)]


class Callback(BaseModel):
    """A workflow callback. Unknown fields are allowed (and kept in the stored event)."""

    model_config = ConfigDict(extra="allow", frozen=True)

    job_id: JobId
    status: StrictStr
    timestamp: StrictStr | None = None
    run_id: SafeInt | None = None
    run_attempt: SafeInt | None = None
    agent_id: ShortText | None = None
    region: ShortText | None = None
    delivery_id: ShortText | None = None
    message: LongText | None = None
    error: LongText | None = None
    details: dict[str, Any] | None = None

    @field_validator("status")
    @classmethod
    def _known_status(cls, value: str) -> str:
        if value not in STATUSES and value not in STATUS_ALIASES:
            allowed = ", ".join(sorted(STATUSES | STATUS_ALIASES.keys()))
            raise ValueError(f"must be one of {allowed}")
        return value

    @field_validator("timestamp")
    @classmethod
    def _rfc3339(cls, value: str | None) -> str | None:
        if value is not None:
            try:
                if not _RFC3339.match(value):
                    raise ValueError
                datetime.fromisoformat(value.replace("z", "Z").replace("t", "T"))
            except ValueError:
                raise ValueError("must be an RFC 3339 date-time") from None
        return value

    @property
    def canonical_status(self) -> str:
        return normalise_status(self.status)


def parse_callback(body: bytes) -> tuple[dict[str, Any], Callback]:
    """The payload as received (to be stored whole) and its validated view."""
    document = parse_json(body)
    if not isinstance(document, dict):
        raise PayloadError([_detail("payload must be a JSON object", type_="object_type")])
    try:
        return document, Callback.model_validate(document)
    except ValidationError as error:
        raise PayloadError(
            [
                _detail(e["msg"], tuple(e["loc"]), e["type"])
                for e in error.errors(include_url=False, include_input=False)
            ]
        ) from None

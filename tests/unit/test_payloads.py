"""``parse_json``: stricter than ``json.loads`` exactly where the SPEC says, and nowhere else."""

from __future__ import annotations

from typing import Any

import pytest

from service.payloads import MAX_DEPTH, MAX_SAFE_INTEGER, PayloadError, parse_json


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        (b"{}", {}),
        (b'{"a": [1, 2.5, null, true, false, "x"]}', {"a": [1, 2.5, None, True, False, "x"]}),
        (b'{"e": "\\u00e9", "raw": "\xc3\xa9"}', {"e": "é", "raw": "é"}),
        (b'{"emoji": "\\ud83d\\ude00"}', {"emoji": "😀"}),  # a valid surrogate pair
        (b'{"path": "C:\\\\u0000"}', {"path": "C:\\u0000"}),  # an escaped backslash, then u
        (b'{"n": %d}' % MAX_SAFE_INTEGER, {"n": MAX_SAFE_INTEGER}),
        (b'{"n": 0}', {"n": 0}),
        (b'{"f": -1.5, "g": 1e308, "h": -0.0}', {"f": -1.5, "g": 1e308, "h": -0.0}),
        (b"[" * MAX_DEPTH + b"]" * MAX_DEPTH, "nested"),
        (b'  {"a":1}\n', {"a": 1}),
        (b'"just a string"', "just a string"),
    ],
)
def test_accepts(body: bytes, expected: Any) -> None:
    if expected == "nested":  # MAX_DEPTH levels are fine
        expected = []
        for _ in range(MAX_DEPTH - 1):
            expected = [expected]
    assert parse_json(body) == expected


def detail(body: bytes) -> dict[str, Any]:
    with pytest.raises(PayloadError) as caught:
        parse_json(body)
    [only] = caught.value.details
    assert set(only) == {"loc", "msg", "type"}
    return only


@pytest.mark.parametrize(
    ("body", "loc", "msg_part"),
    [
        (b"\xff{}", [], "not UTF-8"),
        (b'{"a": "\xed\xa0\x80"}', [], "not UTF-8"),  # an encoded surrogate is not UTF-8
        (b'{"a": 1, "a": 2}', [], "duplicate key 'a'"),
        (b'{"a": {"b": 1, "b": 1}}', [], "duplicate key 'b'"),
        (b'{"a": NaN}', [], "NaN is not valid JSON"),
        (b'{"a": -Infinity}', [], "-Infinity is not valid JSON"),
        (b'{"a": 1e999}', [], "out of range"),
        (b'{"a": [1, -1]}', ["a", 1], "integer outside"),
        (b'{"a": %d}' % (MAX_SAFE_INTEGER + 1), ["a"], "integer outside"),
        (b'{"a": "x\\u0000y"}', ["a"], "NUL character in string"),
        (b'{"a\\u0000": 1}', [], "NUL character in object key"),
        (b'{"a": {"\\udfff": 1}}', ["a"], "lone surrogate in object key"),
        (b'{"a": ["\\ud800"]}', ["a", 0], "lone surrogate in string"),
        (b"[" * (MAX_DEPTH + 1) + b"]" * (MAX_DEPTH + 1), [0] * MAX_DEPTH, "nested deeper"),
        (b'{"a": ', [], "Expecting value"),
        (b"", [], "Expecting value"),
    ],
)
def test_refuses(body: bytes, loc: list[Any], msg_part: str) -> None:
    refused = detail(body)
    assert refused["loc"] == loc
    assert msg_part in refused["msg"]


def test_a_very_deep_document_is_refused_without_recursing() -> None:
    refused = detail(b"[" * 100_000 + b"]" * 100_000)
    assert "nested deeper" in refused["msg"]


def test_a_number_too_long_to_convert_is_refused() -> None:
    refused = detail(b'{"a": ' + b"9" * 5000 + b"}")
    assert refused["type"] == "json_invalid"

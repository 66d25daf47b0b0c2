"""Property tests (hypothesis) of the pure parts that face the outside world:

- payload validation: any body either validates or raises ``PayloadError`` with details that
  are JSON (never another exception), and what validates keeps every rule of SPEC section 3;
- the three signature schemes: arbitrary headers and bodies raise nothing but
  ``SignatureError``, and a correctly signed request always verifies;
- the status rules: the status never moves backwards, and folding a stream equals folding a
  prefix, saving and loading the state, then folding the rest.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import math
import time
from datetime import UTC, datetime, timedelta
from typing import Any
from uuid import uuid4

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from multidict import CIMultiDict

from events.catalog import (
    HEARTBEAT_RECORDED,
    REPORTED_TERMINAL,
    STATUS_ALIASES,
    STATUS_REPORTED,
    STATUSES,
    TIMED_OUT,
)
from events.models import RecordedEvent, StreamId
from projections import job_heartbeat, job_status
from service.payloads import MAX_DEPTH, MAX_SAFE_INTEGER, PayloadError, parse_callback, parse_json
from service.signatures import Keyring, SignatureError, sign_standard, standard_key, verify_request

PROPERTIES = settings(
    max_examples=200,
    deadline=None,
    database=None,  # no .hypothesis/ directory in the checkout
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)

# -- payloads ----------------------------------------------------------------------------------

# Text with everything JSON can carry: NUL, control characters, lone surrogates (escaped).
ANY_TEXT = st.text(st.characters(codec=None) | st.characters(categories=["Cs"]), max_size=20)
SCALARS = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**70), max_value=2**70)
    | st.floats(allow_nan=True, allow_infinity=True)
    | ANY_TEXT
)
JSON_VALUES = st.recursive(
    SCALARS,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(ANY_TEXT, inner, max_size=4),
    max_leaves=20,
)
KNOWN_STATUSES = sorted(STATUSES | STATUS_ALIASES.keys())
CALLBACKS = st.fixed_dictionaries(
    {
        "job_id": st.from_regex(r"[A-Za-z0-9._:-]{1,130}", fullmatch=True) | ANY_TEXT,
        "status": st.sampled_from(KNOWN_STATUSES) | ANY_TEXT,
    },
    optional={
        "timestamp": st.sampled_from(["2026-11-27T10:00:00Z", "2026-11-27t10:00:00.5+01:00"])
        | ANY_TEXT,
        "run_id": st.integers(min_value=-1, max_value=2**54) | SCALARS,
        "run_attempt": st.integers(min_value=0, max_value=10),
        "agent_id": ANY_TEXT,
        "message": st.text(max_size=5000),
        "details": st.dictionaries(ANY_TEXT, JSON_VALUES, max_size=3) | JSON_VALUES,
        "unknown": JSON_VALUES,
    },
)


def nested(depth: int) -> Any:
    value: Any = 1
    for i in range(depth):
        value = [value] if i % 2 else {"k": value}
    return value


def depth_of(value: Any) -> int:
    if isinstance(value, dict):
        return 1 + max((depth_of(v) for v in value.values()), default=0)
    if isinstance(value, list):
        return 1 + max((depth_of(v) for v in value), default=0)
    return 0


def rules_hold(value: Any) -> bool:
    """What SPEC section 3 promises of an accepted document, checked independently."""
    if isinstance(value, dict):
        return all("\x00" not in k and _encodable(k) for k in value) and all(
            rules_hold(v) for v in value.values()
        )
    if isinstance(value, list):
        return all(rules_hold(v) for v in value)
    if isinstance(value, bool) or value is None:
        return True
    if isinstance(value, int):
        return 0 <= value <= MAX_SAFE_INTEGER
    if isinstance(value, float):
        return math.isfinite(value)
    return "\x00" not in value and _encodable(value)


def _encodable(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def check_refusal(error: PayloadError) -> None:
    assert error.details
    json.dumps(error.details, ensure_ascii=False).encode("utf-8")  # shown to the client
    for detail in error.details:
        assert set(detail) == {"loc", "msg", "type"}
        assert isinstance(detail["msg"], str) and isinstance(detail["type"], str)


def outcome(body: bytes) -> Any:
    """The parsed callback, or None if refused; anything else raised fails the test."""
    try:
        document, callback = parse_callback(body)
    except PayloadError as error:
        check_refusal(error)
        return None
    assert rules_hold(document) and depth_of(document) <= MAX_DEPTH
    assert document["job_id"] == callback.job_id
    return document


@PROPERTIES
@given(st.one_of(CALLBACKS, JSON_VALUES), st.booleans())
def test_any_json_document_validates_or_is_refused_with_json_details(
    document: Any, ascii_only: bool
) -> None:
    body = json.dumps(document, ensure_ascii=ascii_only).encode("utf-8", "surrogatepass")
    parsed = outcome(body)
    if parsed is not None:
        assert parsed == document


@PROPERTIES
@given(st.binary(max_size=300))
def test_any_bytes_parse_or_are_refused(body: bytes) -> None:
    try:
        value = parse_json(body)
    except PayloadError as error:
        check_refusal(error)
    else:
        assert rules_hold(value)
    outcome(body)


@PROPERTIES
@given(st.integers(min_value=0, max_value=80), st.integers(min_value=1, max_value=5000))
def test_nesting_deeper_than_the_limit_is_refused(depth: int, brackets: int) -> None:
    document = nested(depth)
    for body, too_deep in (
        (json.dumps(document).encode(), depth_of(document) > MAX_DEPTH),
        (b"[" * brackets + b"]" * brackets, brackets > MAX_DEPTH),
    ):
        try:
            parse_json(body)
        except PayloadError as error:
            check_refusal(error)
            assert too_deep, body[:80]
        else:
            assert not too_deep, body[:80]


@PROPERTIES
@given(CALLBACKS, JSON_VALUES, st.data())
def test_a_repeated_key_is_always_refused(
    document: dict[str, Any], other: Any, data: st.DataObject
) -> None:
    key = data.draw(st.sampled_from(sorted(document)))
    text = json.dumps(document)
    repeated = text[:-1] + f", {json.dumps(key)}: {json.dumps(other)}}}"
    assert outcome(repeated.encode()) is None


# -- signatures --------------------------------------------------------------------------------

SIGNATURE_HEADERS = [
    "webhook-id",
    "webhook-timestamp",
    "webhook-signature",
    "x-hub-signature-256",
    "x-github-event",
    "x-github-delivery",
    "x-signature",
]
HEADER_VALUES = (
    ANY_TEXT  # aiohttp hands over undecodable header bytes as lone surrogates
    | st.builds(lambda b: "v1," + base64.b64encode(b).decode(), st.binary(max_size=48))
    | st.builds(lambda b: "sha256=" + b.hex(), st.binary(min_size=30, max_size=34))
    | st.integers(min_value=-(10**12), max_value=10**12).map(str)
    | st.just(str(int(time.time())))
)
SECRETS = st.one_of(
    st.builds(
        lambda b: "whsec_" + base64.b64encode(b).decode(), st.binary(min_size=1, max_size=40)
    ),
    st.text(min_size=1, max_size=40),
    st.builds(lambda t: "whsec_" + t, st.text(max_size=20)),  # not base64: used literally
)


REASONS = {
    "no signature header",
    "missing or invalid webhook-id",
    "missing or invalid webhook-timestamp",
    "webhook-timestamp outside tolerance",
    "malformed webhook-signature",
    "signature mismatch",
    "malformed signature",
    "GitHub webhooks are not configured (GITHUB_WEBHOOK_SECRET)",
    "missing X-GitHub-Event or X-GitHub-Delivery",
}


def keyring(secrets: list[str], github: str | None) -> Keyring:
    return Keyring.from_secrets(secrets, github, tolerance_s=300, accept_legacy=True)


# Each scheme's headers, mostly well-formed up to the part that is not.
NOW = str(int(time.time()))
SIGNATURE_ENTRIES = st.lists(
    st.builds(lambda v, rest: f"{v},{rest}", st.sampled_from(["v1", "v1", "v2", ""]), ANY_TEXT),
    max_size=3,
).map(" ".join)
STANDARD = st.fixed_dictionaries(
    {"webhook-id": ANY_TEXT, "webhook-timestamp": st.just(NOW) | HEADER_VALUES},
    optional={"webhook-signature": SIGNATURE_ENTRIES | HEADER_VALUES},
)
GITHUB = st.fixed_dictionaries(
    {"x-hub-signature-256": HEADER_VALUES},
    optional={"x-github-event": ANY_TEXT, "x-github-delivery": ANY_TEXT},
)
LEGACY = st.fixed_dictionaries({"x-signature": HEADER_VALUES})
ANY_HEADERS = st.dictionaries(st.sampled_from(SIGNATURE_HEADERS), HEADER_VALUES)
HEADERS = st.one_of(
    STANDARD,
    GITHUB,
    LEGACY,
    ANY_HEADERS,
    st.builds(lambda *parts: {k: v for p in parts for k, v in p.items()}, STANDARD, GITHUB, LEGACY),
)


@PROPERTIES
@given(
    HEADERS,
    st.binary(max_size=200),
    st.lists(SECRETS, min_size=1, max_size=3),
    st.none() | SECRETS,
)
def test_arbitrary_headers_raise_nothing_but_signature_error(
    headers: dict[str, str], body: bytes, secrets: list[str], github: str | None
) -> None:
    try:
        verified = verify_request(CIMultiDict(headers), body, keyring(secrets, github), time.time())
    except SignatureError as error:
        assert error.reason in REASONS  # fixed texts: nothing of the request is echoed
    else:  # only a real MAC gets through, and random bytes never are one
        raise AssertionError(f"verified without a signature: {verified}")


@PROPERTIES
@given(
    st.binary(max_size=500),
    st.lists(SECRETS, min_size=1, max_size=3),
    st.data(),
)
def test_a_correctly_signed_request_always_verifies(
    body: bytes, secrets: list[str], data: st.DataObject
) -> None:
    secret = data.draw(st.sampled_from(secrets))
    github_secret = data.draw(SECRETS)
    ring = keyring(secrets, github_secret)
    now = time.time()
    scheme = data.draw(st.sampled_from(["standard", "github", "legacy"]))
    headers = CIMultiDict[str]()
    expected: tuple[str, str | None]
    if scheme == "standard":
        printable = st.characters(exclude_categories=["C", "Z"]) | st.just(" ")
        msg_id = data.draw(
            st.text(printable, min_size=1, max_size=256).filter(lambda s: s.strip() == s)
        )
        stamp = int(now) + data.draw(st.integers(min_value=-299, max_value=299))
        mine = sign_standard(standard_key(secret), msg_id, stamp, body)
        noise = data.draw(st.lists(HEADER_VALUES.filter(lambda v: " " not in v), max_size=3))
        entries = [*noise, mine]
        order = data.draw(st.permutations(entries))
        headers.update(
            {
                "webhook-id": msg_id,
                "webhook-timestamp": str(stamp),
                "webhook-signature": " ".join(order),
            }
        )
        expected = ("standard", msg_id)
    else:
        key = (github_secret if scheme == "github" else secret).encode("utf-8")
        mac = hmac.new(key, body, hashlib.sha256).hexdigest()
        mac = mac.upper() if data.draw(st.booleans()) else mac
        prefix = data.draw(
            st.sampled_from(["sha256=", "SHA256=", ""] if scheme == "legacy" else ["sha256="])
        )
        if scheme == "github":
            delivery = str(uuid4())
            headers.update(
                {
                    "X-Hub-Signature-256": prefix + mac,
                    "X-GitHub-Event": "workflow_run",
                    "X-GitHub-Delivery": delivery,
                }
            )
            expected = ("github", delivery)
        else:
            headers["X-Signature"] = prefix + mac
            expected = ("legacy", None)
    verified = verify_request(headers, body, ring, now)
    assert (verified.scheme, verified.idempotency_key) == expected


# -- status rules ------------------------------------------------------------------------------

T0 = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)
RANK = {"queued": 0, "provisioning": 1, "running": 2}
# Callbacks (aliases included), heartbeats and the watchdog's timeouts, in any order.
JOB_EVENTS = st.lists(st.sampled_from([*KNOWN_STATUSES, "timed_out"]), min_size=1, max_size=25)


def stream_of(reports: list[str]) -> list[RecordedEvent]:
    events = []
    data: dict[str, Any]
    for i, report in enumerate(reports, 1):
        if report == "timed_out":
            type_, data = TIMED_OUT, {"status": "timed_out"}
        elif report == "heartbeat":
            type_, data = HEARTBEAT_RECORDED, {"status": "heartbeat"}
        else:
            type_, data = STATUS_REPORTED, {"status": report, "message": f"m{i}", "run_id": i}
        events.append(
            RecordedEvent(
                position=10 * i,
                event_id=uuid4(),
                stream_id=StreamId("job-j"),
                stream_position=i,
                type=type_,
                version=1,
                data={"job_id": "j", **data},
                metadata={"scheme": "standard"},
                received_at=T0 + timedelta(seconds=i),
                prev_hash=bytes(32),
                hash=bytes(32),
            )
        )
    return events


def rank(status: str) -> int:
    return RANK.get(status, 3)


@PROPERTIES
@given(JOB_EVENTS)
def test_the_status_never_moves_backwards(reports: list[str]) -> None:
    state: job_status.JobStatus | None = None
    for event in stream_of(reports):
        before = state
        state = job_status.apply(state, event)
        assert state.event_count == event.stream_position
        if before is None:
            continue
        assert rank(state.status) >= rank(before.status), (before.status, state.status)
        if before.status in REPORTED_TERMINAL:
            assert state.status == before.status  # the first reported terminal status stays
        if before.status == "timed_out" and state.status != "timed_out":
            assert state.status in REPORTED_TERMINAL  # yields only to a reported one
        if state.status in REPORTED_TERMINAL | {"timed_out"}:
            assert state.finished_at is not None


@PROPERTIES
@given(JOB_EVENTS, st.data())
def test_folding_in_two_parts_with_a_saved_state_equals_folding_at_once(
    reports: list[str], data: st.DataObject
) -> None:
    events = stream_of(reports)
    cut = data.draw(st.integers(min_value=0, max_value=len(events)))
    for projection in (job_status.PROJECTION, job_heartbeat.PROJECTION):
        whole: dict[str, Any] = {}
        for event in events:
            projection.fold(whole, event)
        parts: dict[str, Any] = {}
        for event in events[:cut]:
            projection.fold(parts, event)
        # Saved as the projector saves it (a row per state) and loaded back.
        parts = {k: projection.state_type(*projection.to_row(s)) for k, s in parts.items()}
        for event in events[cut:]:
            projection.fold(parts, event)
        assert parts == whole, projection.name

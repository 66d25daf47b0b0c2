"""The canonical JSON and the per-stream hash chain (``events.hashing``, SPEC sections 4 and 9:
any edit of a stored event is detected, a round trip through PostgreSQL is not an edit)."""

from __future__ import annotations

import hashlib
import itertools
import json
from datetime import UTC, datetime, timedelta, timezone
from typing import Any
from uuid import UUID, uuid4

import asyncpg
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from events.hashing import (
    GENESIS_HASH,
    body_digest,
    canonical_json,
    chain_hash,
    check_chain,
)
from events.models import NewEvent, RecordedEvent, StreamId, format_timestamp
from events.store import append_batch, read_stream

T0 = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)

# --- canonical JSON ------------------------------------------------------------------------------


def test_keys_are_sorted_at_every_level_and_there_is_no_white_space() -> None:
    value = {"b": 1, "a": [3, {"d": None, "c": True}], "é": "ü"}
    assert canonical_json(value) == '{"a":[3,{"c":true,"d":null}],"b":1,"é":"ü"}'.encode()


def test_key_order_does_not_matter() -> None:
    one = {"job_id": "j", "status": "running", "details": {"x": 1, "y": [1, 2]}}
    other = {"details": {"y": [1, 2], "x": 1}, "status": "running", "job_id": "j"}
    assert canonical_json(one) == canonical_json(other)


def test_white_space_of_the_source_text_does_not_matter() -> None:
    compact = '{"a":{"x":true,"y":null},"b":[1,2],"c":"two words"}'
    airy = ' {\n  "b" : [ 1 ,\t2 ] ,\r\n  "a" : { "y" : null , "x" : true } , "c": "two words"\n} '
    assert canonical_json(json.loads(airy)) == canonical_json(json.loads(compact))
    # ... but white space inside strings is data.
    assert canonical_json({"c": "two words"}) != canonical_json({"c": "two  words"})


def test_utf8_and_escapes() -> None:
    assert canonical_json('é\n"') == '"é\\n\\""'.encode()
    assert canonical_json("😀").decode("utf-8") == '"😀"'
    assert canonical_json("é") != canonical_json("e")


@pytest.mark.parametrize(
    ("one", "other"),
    [
        (0.0, -0.0),
        (10**300, 1e300),
        (-(10**22), -1e22),
        (10**16, 1e16),
        (1.5, 1.50),
        (0.1, 1e-1),
    ],
)
def test_numbers_are_hashed_by_value(one: Any, other: Any) -> None:
    # Each pair is one value that jsonb may hand back in the other form (1e300 comes back as 1
    # followed by 300 zeros, -0.0 as 0.0): a round trip must not look like tampering.
    assert canonical_json(one) == canonical_json(other)
    assert canonical_json({"n": [one]}) == canonical_json({"n": [other]})


@pytest.mark.parametrize(("one", "other"), [(1, 1.0), (0, 0.0), (100, 1e2), (-3, -3.0)])
def test_an_integer_and_the_equal_float_stay_apart(one: Any, other: Any) -> None:
    # jsonb keeps 1.0 as 1.0 and 1 as 1, so the canonical form may keep the type too: a
    # change from one to the other is a change of the stored document.
    assert canonical_json(one) != canonical_json(other)


def test_numbers_parsed_from_different_spellings_hash_equal() -> None:
    spellings = ["1e300", "1E300", "1e+300", "1" + "0" * 300, "10e299"]
    encoded = {canonical_json(json.loads(s)) for s in spellings}
    assert len(encoded) == 1


@pytest.mark.parametrize(
    ("one", "other"),
    [
        ("1", 1),
        (True, 1),
        (False, 0),
        (None, 0),
        (None, "null"),
        (1, 2),
        (0.1, 0.2),
        (1e300, 1e301),
        (2**53 - 1, 2**53 - 2),
        ([1, 2], [2, 1]),
        ({"a": 1}, {"a": "1"}),
        ({"a": None}, {}),
        ([], {}),
    ],
)
def test_different_values_hash_differently(one: Any, other: Any) -> None:
    assert canonical_json(one) != canonical_json(other)


def test_what_is_not_json_is_refused() -> None:
    with pytest.raises(TypeError):
        canonical_json({"when": datetime.now(UTC)})
    with pytest.raises(TypeError):
        canonical_json({1, 2})


_plain_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**70), 2**70) | st.text(),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(), inner, max_size=4),
    max_leaves=12,
)


@settings(max_examples=400, deadline=None)
@given(_plain_values)
def test_the_fast_encoding_of_plain_values_is_the_standard_one(value: Any) -> None:
    """Strings, integers, booleans and null (the envelope of a received event) are written by
    orjson: byte for byte what the standard library writes, or else refused and written by it."""
    standard = json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    assert canonical_json(value) == standard.encode("utf-8", "surrogatepass")


def test_timestamps_are_fixed_width_utc() -> None:
    paris = timezone(timedelta(hours=1))
    assert format_timestamp(datetime(2026, 3, 1, 13, 0, tzinfo=paris)) == (
        "2026-03-01T12:00:00.000000Z"
    )
    assert format_timestamp(T0 + timedelta(microseconds=7)) == "2026-03-01T12:00:00.000007Z"


# --- the chain -----------------------------------------------------------------------------------


def _seal(
    *,
    position: int,
    event_id: UUID,
    stream_id: str,
    stream_position: int,
    type: str,
    version: int,
    data: dict[str, Any],
    metadata: dict[str, Any],
    received_at: datetime,
    prev_hash: bytes,
) -> RecordedEvent:
    digest = body_digest(
        event_id=event_id,
        stream_id=stream_id,
        type=type,
        version=version,
        data=data,
        metadata=metadata,
        received_at=received_at,
    )
    return RecordedEvent(
        position=position,
        event_id=event_id,
        stream_id=StreamId(stream_id),
        stream_position=stream_position,
        type=type,
        version=version,
        data=data,
        metadata=metadata,
        received_at=received_at,
        prev_hash=prev_hash,
        hash=chain_hash(prev_hash, stream_position, digest),
    )


def build_chain(n: int = 5, stream_id: str = "job-j") -> list[RecordedEvent]:
    events: list[RecordedEvent] = []
    prev = GENESIS_HASH
    statuses = ["queued", "provisioning", "running", "heartbeat", "succeeded"]
    for i in range(1, n + 1):
        status = statuses[(i - 1) % len(statuses)]
        event = _seal(
            position=10 * i,
            event_id=uuid4(),
            stream_id=stream_id,
            stream_position=i,
            type="job.heartbeat_recorded" if status == "heartbeat" else "job.status_reported",
            version=1,
            data={"job_id": "j", "status": status, "details": {"n": i, "f": 0.5}},
            metadata={"scheme": "standard", "idempotency_key": f"msg_{i}"},
            received_at=T0 + timedelta(seconds=i, microseconds=i),
            prev_hash=prev,
        )
        events.append(event)
        prev = event.hash
    return events


def reseal(event: RecordedEvent, **changes: Any) -> RecordedEvent:
    """``event`` edited and given a hash that matches its new body (a forger's best effort)."""
    sealed = ("hash", "digest_version", "raw")  # a version-1 event: _seal computes the hash
    fields = event._asdict()
    fields.update(changes)
    return _seal(**{name: value for name, value in fields.items() if name not in sealed})


def test_an_untouched_chain_checks_out() -> None:
    chain = build_chain()
    assert check_chain(chain) == [True] * 5
    assert chain[0].prev_hash == GENESIS_HASH == bytes(32)
    assert all(b.prev_hash == a.hash for a, b in itertools.pairwise(chain))
    assert check_chain([]) == []


def test_the_hash_is_the_documented_construction() -> None:
    [event] = build_chain(1)
    body = {
        "event_id": str(event.event_id),
        "stream_id": event.stream_id,
        "type": event.type,
        "version": event.version,
        "data": event.data,
        "metadata": event.metadata,
        "received_at": format_timestamp(event.received_at),
    }
    digest = hashlib.sha256(canonical_json(body)).digest()
    assert event.hash == hashlib.sha256(bytes(32) + (1).to_bytes(8, "big") + digest).digest()


def _edited(event: RecordedEvent, edit: str) -> RecordedEvent:
    if edit == "data":
        return event._replace(data={**event.data, "status": "failed"})
    if edit == "nested_data":
        return event._replace(data={**event.data, "details": {"n": 2, "f": 0.25}})
    if edit == "added_field":
        return event._replace(data={**event.data, "message": "hi"})
    if edit == "metadata":
        return event._replace(metadata={**event.metadata, "scheme": "legacy"})
    if edit == "type":
        return event._replace(type="job.timed_out")
    if edit == "version":
        return event._replace(version=2)
    if edit == "event_id":
        return event._replace(event_id=uuid4())
    if edit == "stream_id":
        return event._replace(stream_id=StreamId("job-k"))
    if edit == "received_at":
        return event._replace(received_at=event.received_at + timedelta(microseconds=1))
    raise AssertionError(edit)


@pytest.mark.parametrize(
    "edit",
    [
        "data",
        "nested_data",
        "added_field",
        "metadata",
        "type",
        "version",
        "event_id",
        "stream_id",
        "received_at",
    ],
)
@pytest.mark.parametrize("index", [0, 2, 4])
def test_editing_one_event_flags_exactly_that_event(edit: str, index: int) -> None:
    chain = build_chain()
    chain[index] = _edited(chain[index], edit)
    expected = [True] * 5
    expected[index] = False
    assert check_chain(chain) == expected


@pytest.mark.parametrize("edit", ["data", "metadata", "received_at"])
def test_an_edited_event_given_a_matching_hash_breaks_the_link_to_the_next(edit: str) -> None:
    chain = build_chain()
    forged = _edited(chain[1], edit)
    chain[1] = reseal(forged)
    # The forged event checks out on its own; its successor no longer chains to it.
    assert check_chain(chain) == [True, True, False, True, True]


def test_a_global_position_is_outside_the_hash() -> None:
    chain = build_chain()
    chain[2] = chain[2]._replace(position=12345)
    assert check_chain(chain) == [True] * 5


def test_the_same_instant_in_another_time_zone_is_not_an_edit() -> None:
    chain = build_chain()
    tokyo = timezone(timedelta(hours=9))
    chain[3] = chain[3]._replace(received_at=chain[3].received_at.astimezone(tokyo))
    assert check_chain(chain) == [True] * 5


def test_editing_a_stream_position_flags_that_event_and_its_successor() -> None:
    chain = build_chain()
    chain[1] = chain[1]._replace(stream_position=3)
    # Event 2 no longer matches its hash; event 3 now follows a "3" and is not the 4th.
    assert check_chain(chain) == [True, False, False, True, True]


def test_editing_the_last_stream_position_flags_only_it() -> None:
    chain = build_chain()
    chain[4] = chain[4]._replace(stream_position=7)
    assert check_chain(chain) == [True, True, True, True, False]


def test_swapping_prev_hashes_flags_both_events() -> None:
    chain = build_chain()
    a, b = chain[1], chain[2]
    chain[1] = a._replace(prev_hash=b.prev_hash)
    chain[2] = b._replace(prev_hash=a.prev_hash)
    assert check_chain(chain) == [True, False, False, True, True]


def test_a_prev_hash_pointing_elsewhere_is_flagged_even_when_resealed() -> None:
    chain = build_chain()
    chain[3] = reseal(chain[3], prev_hash=chain[1].hash)
    # Its own hash matches its (wrong) prev_hash, so only the broken link and the next one show.
    assert check_chain(chain) == [True, True, True, False, False]


def test_the_first_event_must_chain_to_the_genesis_hash() -> None:
    chain = build_chain()
    chain[0] = reseal(chain[0], prev_hash=b"\x01" * 32)
    assert check_chain(chain) == [False, False, True, True, True]


def test_editing_a_stored_hash_flags_it_and_its_successor() -> None:
    chain = build_chain()
    chain[2] = chain[2]._replace(hash=bytes(32))
    assert check_chain(chain) == [True, True, False, False, True]


def test_removing_an_event_flags_its_successor() -> None:
    chain = build_chain()
    del chain[2]
    assert check_chain(chain) == [True, True, False, True]


def test_swapping_two_events_flags_them_and_the_next() -> None:
    chain = build_chain()
    chain[1], chain[2] = chain[2], chain[1]
    # The 4th event now follows the 2nd: its link is broken as well.
    assert check_chain(chain) == [True, False, False, False, True]


def test_a_chain_from_another_stream_does_not_verify_as_this_one() -> None:
    mine, theirs = build_chain(3), build_chain(3, stream_id="job-k")
    assert check_chain([mine[0], theirs[1]]) == [True, False]


def test_number_spelling_is_not_an_edit() -> None:
    chain = build_chain(2)
    chain[1] = reseal(chain[1], data={**chain[1].data, "big": 1e300, "e": 1e16, "zero": -0.0})
    assert check_chain(chain) == [True, True]
    # What PostgreSQL's jsonb hands back for those: the same values, spelt differently.
    chain[1] = chain[1]._replace(data={**chain[1].data, "big": 10**300, "e": 10**16, "zero": 0.0})
    assert check_chain(chain) == [True, True]
    # A different value is an edit.
    chain[1] = chain[1]._replace(data={**chain[1].data, "big": 10**300 + 1})
    assert check_chain(chain) == [True, False]


# --- a round trip through the real event log -------------------------------------------------

AWKWARD_NUMBERS: dict[str, Any] = {
    "int": 1,
    "float_one": 1.0,
    "hundred": 100.0,
    "neg_zero": -0.0,
    "zero": 0.0,
    "big": 1e300,
    "huge": 1.7976931348623157e308,
    "positive_exponent": 1e16,
    "neg_exponent": -1e22,
    "tiny": 1e-300,
    "denormal": 5e-324,
    "small": 1.5e-7,
    "inexact": 0.1 + 0.2,
    "max_int": 2**53 - 1,
    "nested": [{"x": 1e21}, [2.5e-5, -3.0]],
}


async def test_events_read_back_from_postgresql_verify(pool: asyncpg.Pool[Any]) -> None:
    stream = StreamId("job-numbers")
    batch = [
        NewEvent(
            stream_id=stream,
            type="job.status_reported",
            data={"job_id": "numbers", "status": "running", "details": AWKWARD_NUMBERS},
            metadata={"scheme": "standard", "n": 1.0, "e": 1e300},
            received_at=datetime.now(UTC),
        ),
        NewEvent(
            stream_id=stream,
            type="job.heartbeat_recorded",
            data={
                "job_id": "numbers",
                "status": "heartbeat",
                "é": "ü\u2028😀",
                "k": {"b": 1, "a": 2},
            },
            metadata={"scheme": "legacy"},
            received_at=datetime.now(UTC) + timedelta(microseconds=1),
        ),
    ]
    async with pool.acquire() as conn:
        async with conn.transaction():
            await append_batch(conn, batch)
        stored = await read_stream(conn, stream)
    assert [e.stream_position for e in stored] == [1, 2]
    assert check_chain(stored) == [True, True]
    # Editing the stored row is detected after the round trip too.
    edited = stored[0]._replace(data={**stored[0].data, "status": "queued"})
    assert check_chain([edited, stored[1]]) == [False, True]

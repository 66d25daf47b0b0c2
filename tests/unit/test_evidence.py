"""Digest version 2 (the raw request under the hash chain), the data check, and re-verifying a
stored request's signature without the timestamp tolerance (SPEC sections 4 and 7)."""

from __future__ import annotations

import dataclasses
import json
import time
from datetime import UTC, datetime
from typing import Any
from urllib.parse import urlencode
from uuid import UUID

import pytest
from multidict import CIMultiDict
from standardwebhooks.webhooks import Webhook

from events.hashing import (
    GENESIS_HASH,
    body_digest,
    chain_hash,
    check_chain,
    data_matches,
    event_digest,
    raw_digest,
    request_payload,
)
from events.models import NewEvent, RawRequest, RecordedEvent, StreamId
from service.settings import Settings
from service.signatures import (
    Keyring,
    SignatureError,
    check_signature,
    keyring_for,
    reverify,
    sign_standard,
    signed_headers,
    standard_key,
    verify_request,
)
from tests.helpers import CALLBACK_SECRET, ROTATED_SECRET, openssl_hmac_hex

T0 = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)
EVENT_ID = UUID("6f1c2b1e-0000-4000-8000-000000000001")
# Valid JSON that jsonb (and any re-serialisation) would not give back byte for byte.
AWKWARD = (
    b'{\n  "status" : "running",\t"job_id":"vm-1",\r\n "details": {"price": 1.50, "zero": -0.0,'
    b' "hundred": 1E+2, "big": 1e308, "name": "caf\\u00e9", "z": 1, "a": [ ]}\n}\n'
)
HEADERS = {"webhook-id": "msg_1", "webhook-timestamp": "1700000000", "webhook-signature": "v1,x"}
METADATA = {"scheme": "standard", "idempotency_key": "msg_1", "received_at": "t"}


def raw(body: bytes = AWKWARD, **changes: Any) -> RawRequest:
    return dataclasses.replace(RawRequest(body, "application/json", HEADERS), **changes)


def recorded(raw_request: RawRequest | None, data: dict[str, Any], **changes: Any) -> RecordedEvent:
    """A first event of its stream, sealed as the store seals it."""
    new = NewEvent(
        stream_id=StreamId("job-vm-1"),
        type="job.status_reported",
        data=data,
        metadata=METADATA,
        received_at=T0,
        event_id=EVENT_ID,
        raw=raw_request,
    )
    event = RecordedEvent(
        position=1,
        event_id=EVENT_ID,
        stream_id=new.stream_id,
        stream_position=1,
        type=new.type,
        version=1,
        data=data,
        metadata=METADATA,
        received_at=T0,
        prev_hash=GENESIS_HASH,
        hash=chain_hash(GENESIS_HASH, 1, event_digest(new)),
        digest_version=new.digest_version,
        raw=raw_request,
    )
    return event._replace(**changes)


def v2_digest(raw_request: RawRequest, **changes: Any) -> bytes:
    fields: dict[str, Any] = {
        "event_id": EVENT_ID,
        "stream_id": "job-vm-1",
        "type": "job.status_reported",
        "version": 1,
        "metadata": METADATA,
        "received_at": T0,
        "raw": raw_request,
    }
    return raw_digest(**{**fields, **changes})


# --- digest version 2 ----------------------------------------------------------------------------


def test_the_digest_version_follows_the_raw_request() -> None:
    data = json.loads(AWKWARD)
    assert recorded(None, data).digest_version == 1
    assert recorded(raw(), data).digest_version == 2
    assert event_digest(recorded(raw(), data)) == v2_digest(raw())
    assert event_digest(recorded(None, data)) == body_digest(
        event_id=EVENT_ID,
        stream_id="job-vm-1",
        type="job.status_reported",
        version=1,
        data=data,
        metadata=METADATA,
        received_at=T0,
    )


@pytest.mark.parametrize(
    "change",
    [
        {"raw": raw(AWKWARD.replace(b"1.50", b"1.5"))},  # the same value, other bytes
        {"raw": raw(AWKWARD + b" ")},
        {"raw": raw(content_type="application/json; charset=utf-8")},
        {"raw": raw(headers={**HEADERS, "webhook-signature": "v1,y"})},
        {"raw": raw(headers={**HEADERS, "x-signature": "00"})},
        {"metadata": {**METADATA, "scheme": "legacy"}},
        {"received_at": T0.replace(microsecond=1)},
        {"type": "job.heartbeat_recorded"},
        {"version": 2},
        {"stream_id": "job-vm-2"},
        {"event_id": UUID(int=1)},
    ],
)
def test_every_byte_of_the_request_and_every_field_is_covered(change: dict[str, Any]) -> None:
    assert v2_digest(raw(), **change) != v2_digest(raw())


def test_the_boundary_between_envelope_and_body_is_unambiguous() -> None:
    # Moving text from a header value into the body must not produce the same digest.
    one = raw(b'"}{"x', headers={"x-signature": "ab"})
    other = raw(b'b"}{"x', headers={"x-signature": "a"})
    assert v2_digest(one) != v2_digest(other)


def test_header_order_does_not_matter() -> None:
    reordered = dict(reversed(list(HEADERS.items())))
    assert v2_digest(raw(headers=reordered)) == v2_digest(raw())


# --- data against the raw request ---------------------------------------------------------------


def test_data_is_the_parse_of_the_raw_body_as_jsonb_keeps_it() -> None:
    parsed = json.loads(AWKWARD)
    # jsonb gives -0.0 back as 0.0 and 1e308 as an integer: still the same document.
    as_jsonb = {**parsed, "details": {**parsed["details"], "zero": 0.0, "big": 10**308}}
    assert data_matches(as_jsonb, raw())
    assert not data_matches({**parsed, "status": "failed"}, raw())
    assert not data_matches({**parsed, "details": {**parsed["details"], "hundred": 100}}, raw())
    assert not data_matches(parsed, raw(b"{not json"))
    assert not data_matches(parsed, raw('{"é": 1}'.encode("latin-1")))


def test_a_form_encoded_delivery_is_checked_by_its_payload_field() -> None:
    payload = '{"zen": "Design for failure.", "hook_id": 1}'
    form = raw(
        urlencode({"payload": payload}).encode(),
        content_type="application/x-www-form-urlencoded",
    )
    assert request_payload(form) == payload.encode()
    assert data_matches(json.loads(payload), form)
    assert not data_matches({"zen": "other"}, form)


def test_a_chain_of_v2_events_checks_data_and_hash() -> None:
    data = json.loads(AWKWARD)
    event = recorded(raw(), data)
    assert check_chain([event]) == [True]
    assert check_chain([event._replace(data={**data, "status": "failed"})]) == [False]
    edited = raw(AWKWARD.replace(b"running", b"failed "))
    assert check_chain([event._replace(raw=edited)]) == [False]
    assert check_chain([event._replace(raw=None)]) == [False]
    assert check_chain([event._replace(digest_version=1)]) == [False]
    assert check_chain([event._replace(digest_version=3)]) == [False]


# --- re-verifying stored signatures -------------------------------------------------------------


def keyring(*, accept_legacy: bool = True) -> Keyring:
    return Keyring.from_secrets(
        [CALLBACK_SECRET, ROTATED_SECRET], "gh-secret", accept_legacy=accept_legacy
    )


def test_a_stored_standard_request_reverifies_long_after_the_tolerance() -> None:
    old = int(time.time()) - 30 * 86400
    headers = {
        "webhook-id": "msg_old",
        "webhook-timestamp": str(old),
        "webhook-signature": sign_standard(standard_key(CALLBACK_SECRET), "msg_old", old, AWKWARD),
    }
    with pytest.raises(SignatureError, match="tolerance"):
        verify_request(headers, AWKWARD, keyring(), time.time())
    verified = reverify(headers, AWKWARD, keyring())
    assert (verified.scheme, verified.key_index, verified.rotated) == ("standard", 0, False)
    assert verified.key_name == "GITHUB_CALLBACK_SECRET"
    # The reference library signs the same message.
    signed = Webhook(CALLBACK_SECRET).sign(
        "msg_old", datetime.fromtimestamp(old, UTC), AWKWARD.decode()
    )
    assert signed == headers["webhook-signature"]
    with pytest.raises(SignatureError):
        reverify(headers, AWKWARD + b" ", keyring())


def test_which_key_signed_is_told_without_the_secret() -> None:
    headers = {"x-signature": "sha256=" + openssl_hmac_hex(AWKWARD, ROTATED_SECRET)}
    verified = check_signature(raw(headers=headers), keyring())
    assert verified is not None and verified.rotated
    assert verified.key_name == "JOBTRAIL_CALLBACK_SECRETS[0]"
    assert ROTATED_SECRET not in repr(verified)
    # Who sent it does not change because new legacy requests are refused now.
    assert check_signature(raw(headers=headers), keyring(accept_legacy=False)) == verified
    only_primary = Keyring.from_secrets([CALLBACK_SECRET], None)
    assert check_signature(raw(headers=headers), only_primary) is None
    # Without the primary secret configured, the rotated ones keep their names.
    settings = Settings(callback_secret=None, callback_secrets=f"other,{ROTATED_SECRET}")
    without_primary = check_signature(raw(headers=headers), keyring_for(settings))
    assert without_primary is not None and without_primary.rotated
    assert without_primary.key_name == "JOBTRAIL_CALLBACK_SECRETS[1]"


def test_only_the_headers_of_the_verifying_scheme_are_kept() -> None:
    signature = openssl_hmac_hex(AWKWARD, CALLBACK_SECRET)
    headers = CIMultiDict(
        {
            "Content-Type": "application/json",
            "X-Signature": signature,
            "Webhook-Signature": "v1,bm90IGl0",  # offered, but not what verified
            "Authorization": "Bearer something",
        }
    )
    verified = verify_request(headers, AWKWARD, keyring(), time.time())
    assert signed_headers(verified, headers) == {"x-signature": signature}
    with pytest.raises(SignatureError):
        signed_headers(verified, CIMultiDict({"X-Signature": "ab\udcff"}))

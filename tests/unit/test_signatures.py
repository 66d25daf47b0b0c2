"""``service.signatures`` against published test vectors and real captured GitHub deliveries
(SPEC section 3). The fixtures are copies of published data; tests/fixtures/SOURCES.md says where
each comes from."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import time
from pathlib import Path
from typing import Any

import pytest
from multidict import CIMultiDict

from service.signatures import (
    Keyring,
    SignatureError,
    Verified,
    sign_standard,
    standard_key,
    verify_request,
)

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures"
VECTORS = FIXTURES / "signing-vectors"
DELIVERIES = FIXTURES / "github-signed-deliveries"


def load(path: Path) -> dict[str, Any]:
    value = json.loads(path.read_text(encoding="utf-8"))
    assert isinstance(value, dict)
    return value


STANDARD = load(VECTORS / "standard-webhooks.v1.vectors.json")
GITHUB_DOCS = load(VECTORS / "github-x-hub-signature-256.vectors.json")
CAPTURED = load(VECTORS / "github-captured-deliveries.vectors.json")
STANDARD_BY_NAME = {v["name"]: v for v in STANDARD["vectors"]}
FIXED = STANDARD_BY_NAME["valid_fixed_timestamp"]
FIXED_SECRET: str = FIXED["secret"]
FIXED_ID: str = FIXED["headers"]["webhook-id"]
FIXED_TS = int(FIXED["headers"]["webhook-timestamp"])
FIXED_BODY: bytes = FIXED["payload"].encode("utf-8")
FIXED_SIGNATURE: str = FIXED["expected_signature"]
TOLERANCE: int = STANDARD["tolerance_seconds_in_reference_libraries"]
CAPTURED_SECRET: str = CAPTURED["secret"]
CAPTURED_FILES = sorted(DELIVERIES.glob("*.json"))

OTHER_SECRET = "an-older-plain-secret"


def keyring(
    *secrets: str, github: str | None = None, accept_legacy: bool = True, tolerance_s: int = 300
) -> Keyring:
    return Keyring.from_secrets(
        list(secrets) or [FIXED_SECRET],
        github,
        tolerance_s=tolerance_s,
        accept_legacy=accept_legacy,
    )


def standard(signature: str = FIXED_SIGNATURE, **overrides: str) -> CIMultiDict[str]:
    headers = CIMultiDict(
        {
            "content-type": "application/json",
            "webhook-id": FIXED_ID,
            "webhook-timestamp": str(FIXED_TS),
            "webhook-signature": signature,
        }
    )
    for name, value in overrides.items():
        headers[name.replace("_", "-")] = value
    return headers


def refused(headers: CIMultiDict[str], body: bytes, ring: Keyring, now: float) -> SignatureError:
    with pytest.raises(SignatureError) as caught:
        verify_request(headers, body, ring, now=now)
    return caught.value


def test_the_fixtures_are_there() -> None:
    # Missing fixtures must fail loudly, not skip.
    assert VECTORS.is_dir(), VECTORS
    assert len(CAPTURED_FILES) == 3
    assert {f"../github-signed-deliveries/{p.name}" for p in CAPTURED_FILES} == set(
        CAPTURED["files"]
    )


# --- Standard Webhooks -------------------------------------------------------------------------


def test_the_published_signature_is_what_we_sign() -> None:
    key = standard_key(FIXED_SECRET)
    assert sign_standard(key, FIXED_ID, FIXED_TS, FIXED_BODY) == FIXED_SIGNATURE


def test_the_fixed_vector_verifies() -> None:
    verified = verify_request(standard(), FIXED_BODY, keyring(), now=FIXED_TS)
    assert verified == Verified("standard", FIXED_ID)
    assert verified.github_event is None


def test_the_fixed_vector_is_refused_against_the_wall_clock() -> None:
    # The vector is from 2021: outside any tolerance today.
    error = refused(standard(), FIXED_BODY, keyring(), now=time.time())
    assert "tolerance" in error.reason


@pytest.mark.parametrize(
    "name",
    [
        "wrong_version_prefix",
        "invalid_signature_value",
        "partial_signature",
        "malformed_no_separator",
    ],
)
def test_bad_signature_headers_from_the_vectors_are_refused(name: str) -> None:
    vector = STANDARD_BY_NAME[name]
    assert vector["expect"].startswith("reject")
    refused(standard(vector["header_signature"]), FIXED_BODY, keyring(), now=FIXED_TS)


@pytest.mark.parametrize(
    "signature",
    [
        "",
        " ",
        "v1",
        "v1,!!!not-base64!!!",
        "V1," + FIXED_SIGNATURE[3:],  # the version is case-sensitive
        "v1 " + FIXED_SIGNATURE[3:],
        FIXED_SIGNATURE[3:],  # no version at all
        FIXED_SIGNATURE[:-4] + "AAA=",
        "v1a," + FIXED_SIGNATURE[3:],
    ],
)
def test_other_malformed_signatures_are_refused(signature: str) -> None:
    refused(standard(signature), FIXED_BODY, keyring(), now=FIXED_TS)


def test_a_tampered_body_id_or_timestamp_is_refused() -> None:
    ring = keyring()
    refused(standard(), FIXED_BODY.replace(b"2432232314", b"2432232315"), ring, now=FIXED_TS)
    refused(standard(webhook_id=FIXED_ID + "x"), FIXED_BODY, ring, now=FIXED_TS)
    refused(standard(webhook_timestamp=str(FIXED_TS + 1)), FIXED_BODY, ring, now=FIXED_TS)


@pytest.mark.parametrize("missing", ["webhook-id", "webhook-timestamp", "webhook-signature"])
def test_a_missing_standard_header_is_refused(missing: str) -> None:
    headers = standard()
    del headers[missing]
    refused(headers, FIXED_BODY, keyring(), now=FIXED_TS)


@pytest.mark.parametrize(
    "timestamp",
    [
        "",
        "soon",
        "1614265330.0",
        "-1614265330",
        "\uff11\uff16\uff11\uff14\uff12\uff16\uff15\uff13\uff13\uff10",  # full-width digits
    ],
)
def test_a_malformed_timestamp_is_refused(timestamp: str) -> None:
    refused(standard(webhook_timestamp=timestamp), FIXED_BODY, keyring(), now=FIXED_TS)


def test_an_overlong_webhook_id_is_refused() -> None:
    msg_id = "m" * 257
    key = standard_key(FIXED_SECRET)
    headers = standard(sign_standard(key, msg_id, FIXED_TS, FIXED_BODY), webhook_id=msg_id)
    refused(headers, FIXED_BODY, keyring(), now=FIXED_TS)
    # 256 is still fine.
    msg_id = "m" * 256
    headers = standard(sign_standard(key, msg_id, FIXED_TS, FIXED_BODY), webhook_id=msg_id)
    assert verify_request(headers, FIXED_BODY, keyring(), now=FIXED_TS).idempotency_key == msg_id


def test_a_signature_list_is_accepted_when_one_entry_matches() -> None:
    template: str = STANDARD_BY_NAME["multi_signature_rotation"]["header_signature_template"]
    header = template.replace("{VALID}", FIXED_SIGNATURE)
    verified = verify_request(standard(header), FIXED_BODY, keyring(), now=FIXED_TS)
    assert verified.scheme == "standard"
    # The same list without the valid entry is refused.
    refused(standard(template.replace("{VALID}", "")), FIXED_BODY, keyring(), now=FIXED_TS)


def test_the_valid_entry_may_come_first_or_last() -> None:
    bad = STANDARD_BY_NAME["invalid_signature_value"]["header_signature"]
    for header in (
        f"{FIXED_SIGNATURE} {bad}",
        f"{bad} {FIXED_SIGNATURE}",
        f"{bad}  {FIXED_SIGNATURE}",
    ):
        assert verify_request(standard(header), FIXED_BODY, keyring(), now=FIXED_TS)


def test_any_configured_secret_verifies() -> None:
    # Rotation: the signer still uses the old secret; the new one is configured first.
    ring = keyring("whsec_" + base64.b64encode(b"a brand new key").decode(), FIXED_SECRET)
    assert verify_request(standard(), FIXED_BODY, ring, now=FIXED_TS).scheme == "standard"
    refused(standard(), FIXED_BODY, keyring(OTHER_SECRET), now=FIXED_TS)


def test_mixed_case_header_names_are_accepted() -> None:
    cases: list[str] = STANDARD_BY_NAME["mixed_case_header_names"]["headers_case"]
    id_name, ts_name, sig_name = cases
    headers: CIMultiDict[str] = CIMultiDict()
    headers[id_name] = FIXED_ID
    headers[ts_name] = str(FIXED_TS)
    headers[sig_name] = FIXED_SIGNATURE
    assert list(headers.keys()) == cases
    assert verify_request(headers, FIXED_BODY, keyring(), now=FIXED_TS).idempotency_key == FIXED_ID


@pytest.mark.parametrize("name", ["timestamp_too_old", "timestamp_too_new"])
def test_a_timestamp_just_outside_the_tolerance_is_refused(name: str) -> None:
    offset: int = STANDARD_BY_NAME[name]["offset_seconds"]
    # The request's timestamp is `offset` seconds from the receiver's clock.
    error = refused(standard(), FIXED_BODY, keyring(), now=FIXED_TS - offset)
    assert "tolerance" in error.reason


@pytest.mark.parametrize("skew", [-TOLERANCE, -299, -1, 0, 1, 299, TOLERANCE])
def test_a_timestamp_within_the_tolerance_is_accepted(skew: int) -> None:
    assert verify_request(standard(), FIXED_BODY, keyring(), now=FIXED_TS + skew)


def test_the_tolerance_is_configurable() -> None:
    ring = keyring(tolerance_s=10)
    assert verify_request(standard(), FIXED_BODY, ring, now=FIXED_TS + 10)
    refused(standard(), FIXED_BODY, ring, now=FIXED_TS + 11)
    refused(standard(), FIXED_BODY, ring, now=FIXED_TS - 11)


def test_a_whsec_secret_is_base64_decoded_after_the_prefix() -> None:
    raw: str = FIXED["secret_equivalent_without_prefix"]
    assert "whsec_" + raw == FIXED_SECRET
    assert standard_key(FIXED_SECRET) == base64.b64decode(raw)
    # The published MAC is keyed with the decoded bytes.
    message = f"{FIXED_ID}.{FIXED_TS}.".encode() + FIXED_BODY
    mac = hmac.new(base64.b64decode(raw), message, hashlib.sha256).digest()
    assert "v1," + base64.b64encode(mac).decode() == FIXED_SIGNATURE


def test_a_secret_without_the_prefix_is_used_as_its_utf8_bytes() -> None:
    # SPEC section 3: "any other secret is used as its UTF-8 bytes". (The reference libraries
    # base64-decode a prefix-less secret too; jobtrail's contract does not.)
    raw: str = FIXED["secret_equivalent_without_prefix"]
    assert standard_key(raw) == raw.encode("utf-8")
    refused(standard(), FIXED_BODY, keyring(raw), now=FIXED_TS)
    signature = sign_standard(raw.encode("utf-8"), FIXED_ID, FIXED_TS, FIXED_BODY)
    assert verify_request(standard(signature), FIXED_BODY, keyring(raw), now=FIXED_TS)


def test_a_plain_secret_and_its_whsec_spelling_are_the_same_key() -> None:
    plain = OTHER_SECRET
    spelled = "whsec_" + base64.b64encode(plain.encode()).decode()
    assert standard_key(plain) == standard_key(spelled) == plain.encode()
    signature = sign_standard(plain.encode(), FIXED_ID, FIXED_TS, FIXED_BODY)
    for secret in (plain, spelled):
        assert verify_request(standard(signature), FIXED_BODY, keyring(secret), now=FIXED_TS)


def test_a_whsec_secret_that_is_not_base64_is_used_literally() -> None:
    secret = "whsec_not base64!"
    assert standard_key(secret) == secret.encode()


# --- GitHub X-Hub-Signature-256 ---------------------------------------------------------------


def github_headers(
    signature: str, *, event: str = "ping", delivery: str = "d-1"
) -> CIMultiDict[str]:
    return CIMultiDict(
        {
            "Content-Type": "application/json",
            "X-Hub-Signature-256": signature,
            "X-GitHub-Event": event,
            "X-GitHub-Delivery": delivery,
        }
    )


def test_the_github_docs_vector_verifies() -> None:
    [vector] = GITHUB_DOCS["vectors"]
    body = vector["payload"].encode()
    ring = keyring(github=vector["secret"])
    verified = verify_request(github_headers(vector["expected_header"]), body, ring, now=0)
    assert verified == Verified("github", "d-1", github_event="ping")
    assert vector["expected_header"] == "sha256=" + vector["expected_hex"]
    refused(github_headers(vector["expected_header"]), body + b" ", ring, now=0)
    refused(github_headers(vector["expected_header"]), body, keyring(github="another"), now=0)


def capture(path: Path) -> tuple[CIMultiDict[str], bytes]:
    record = load(path)
    return CIMultiDict(record["headers"]), base64.b64decode(record["body_raw_base64"])


@pytest.mark.parametrize("path", CAPTURED_FILES, ids=lambda p: p.stem)
def test_captured_github_deliveries_verify_with_their_secret(path: Path) -> None:
    headers, body = capture(path)
    assert int(headers["content-length"]) == len(body)
    # The timestamp of a native delivery is not checked: it is from 2025 and still verifies.
    verified = verify_request(headers, body, keyring(github=CAPTURED_SECRET), now=2e9)
    assert verified.scheme == "github"
    assert verified.idempotency_key == headers["x-github-delivery"]
    assert verified.github_event == headers["x-github-event"]


@pytest.mark.parametrize("path", CAPTURED_FILES, ids=lambda p: p.stem)
def test_captured_github_deliveries_are_refused_otherwise(path: Path) -> None:
    headers, body = capture(path)
    # Another webhook secret.
    refused(headers, body, keyring(github=CAPTURED_SECRET[:-1] + "0"), now=0)
    # No webhook secret configured: every native delivery is refused, even when a callback
    # secret happens to equal the webhook's.
    error = refused(headers, body, keyring(CAPTURED_SECRET, github=None), now=0)
    assert "GITHUB_WEBHOOK_SECRET" in error.reason
    # A tampered body.
    refused(
        headers, body.replace(b'"action":"', b'"action":"x'), keyring(github=CAPTURED_SECRET), now=0
    )
    # The SHA-1 header alone is not accepted.
    del headers["x-hub-signature-256"]
    assert "x-hub-signature" in headers
    refused(headers, body, keyring(github=CAPTURED_SECRET), now=0)


@pytest.mark.parametrize("missing", ["X-GitHub-Event", "X-GitHub-Delivery"])
def test_a_github_delivery_needs_its_event_and_delivery_headers(missing: str) -> None:
    headers, body = capture(CAPTURED_FILES[0])
    del headers[missing]
    refused(headers, body, keyring(github=CAPTURED_SECRET), now=0)


def test_github_signatures_never_use_the_callback_secrets() -> None:
    [vector] = GITHUB_DOCS["vectors"]
    ring = keyring(vector["secret"], github="something else")
    refused(github_headers(vector["expected_header"]), vector["payload"].encode(), ring, now=0)


# --- legacy X-Signature -----------------------------------------------------------------------

LEGACY_BODY = b'{"job_id":"vm-1","status":"running"}'


def legacy_hex(secret: str, body: bytes = LEGACY_BODY) -> str:
    return hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


def legacy(value: str) -> CIMultiDict[str]:
    return CIMultiDict({"Content-Type": "application/json", "X-Signature": value})


@pytest.mark.parametrize(
    "form",
    ["hex", "prefixed", "upper_hex", "upper_prefix", "padded"],
)
@pytest.mark.parametrize("secret", [FIXED_SECRET, OTHER_SECRET])
def test_legacy_signatures_are_accepted(form: str, secret: str) -> None:
    digest = legacy_hex(secret)
    value = {
        "hex": digest,
        "prefixed": "sha256=" + digest,
        "upper_hex": digest.upper(),
        "upper_prefix": "SHA256=" + digest.upper(),
        "padded": f"  sha256={digest} ",
    }[form]
    verified = verify_request(
        legacy(value), LEGACY_BODY, keyring(FIXED_SECRET, OTHER_SECRET), now=0
    )
    # Which key matched is told apart: the first configured one is the primary.
    assert verified == Verified(
        "legacy", None, key_index=[FIXED_SECRET, OTHER_SECRET].index(secret)
    )


def test_the_github_docs_vector_as_a_legacy_signature() -> None:
    # Same construction as `openssl dgst -sha256 -hmac "$secret"`: the key is the literal secret.
    [vector] = GITHUB_DOCS["vectors"]
    ring = keyring(vector["secret"])
    for value in (vector["expected_hex"], vector["expected_header"]):
        assert (
            verify_request(legacy(value), vector["payload"].encode(), ring, now=0).scheme
            == "legacy"
        )


def test_a_legacy_signature_is_keyed_with_the_literal_whsec_secret() -> None:
    decoded_key = standard_key(FIXED_SECRET)
    digest = hmac.new(decoded_key, LEGACY_BODY, hashlib.sha256).hexdigest()
    refused(legacy(digest), LEGACY_BODY, keyring(FIXED_SECRET), now=0)


@pytest.mark.parametrize(
    "value",
    [
        "",
        "sha256=",
        "LENGTH-63",
        "LENGTH-65",
        "LENGTH-128",
        "sha1=LENGTH-64",
        "sha256:LENGTH-64",
        "NOT-HEX",
        "WRONG",
    ],
)
def test_malformed_or_wrong_legacy_signatures_are_refused(value: str) -> None:
    digest = legacy_hex(FIXED_SECRET)
    value = (
        value.replace("LENGTH-63", digest[:63])
        .replace("LENGTH-65", digest + "0")
        .replace("LENGTH-128", digest * 2)
        .replace("LENGTH-64", digest)
        .replace("NOT-HEX", digest[:62] + "zz")
        .replace("WRONG", legacy_hex("not-the-secret"))
    )
    refused(legacy(value), LEGACY_BODY, keyring(FIXED_SECRET), now=0)


def test_legacy_signatures_can_be_switched_off() -> None:
    headers = legacy(legacy_hex(FIXED_SECRET))
    assert verify_request(headers, LEGACY_BODY, keyring(accept_legacy=True), now=0)
    error = refused(headers, LEGACY_BODY, keyring(accept_legacy=False), now=0)
    assert "legacy" in error.reason.lower()
    # Standard Webhooks still work with legacy off.
    assert verify_request(standard(), FIXED_BODY, keyring(accept_legacy=False), now=FIXED_TS)


# --- across schemes ----------------------------------------------------------------------------


def test_no_signature_header_is_refused() -> None:
    refused(CIMultiDict({"Content-Type": "application/json"}), FIXED_BODY, keyring(), now=FIXED_TS)


def test_a_failed_scheme_falls_through_to_a_valid_one() -> None:
    headers = standard(STANDARD_BY_NAME["invalid_signature_value"]["header_signature"])
    headers["X-Signature"] = legacy_hex(FIXED_SECRET, FIXED_BODY)
    assert verify_request(headers, FIXED_BODY, keyring(), now=FIXED_TS).scheme == "legacy"


def test_reasons_never_carry_secrets_or_signatures() -> None:
    secrets = [FIXED_SECRET, CAPTURED_SECRET, OTHER_SECRET]
    headers, body = capture(CAPTURED_FILES[0])
    reasons = [
        refused(standard("v1,AAAA"), FIXED_BODY, keyring(*secrets), now=FIXED_TS).reason,
        refused(headers, body, keyring(*secrets, github=OTHER_SECRET), now=0).reason,
        refused(legacy(legacy_hex("x")), LEGACY_BODY, keyring(*secrets), now=0).reason,
        refused(standard(), FIXED_BODY, keyring(*secrets), now=0).reason,
    ]
    for reason in reasons:
        assert reason
        for secret in [*secrets, FIXED_SIGNATURE, headers["x-hub-signature-256"], legacy_hex("x")]:
            assert secret not in reason
            assert secret[6:] not in reason

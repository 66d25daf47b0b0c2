"""Authenticating webhook requests by their HMAC signatures (SPEC section 3).

Three schemes, tried in this order on the raw body; the first that verifies wins:

1. Standard Webhooks: ``webhook-id``, ``webhook-timestamp``, ``webhook-signature`` (a
   space-separated list of ``v1,<base64>``) over ``"{id}.{timestamp}.{body}"``. ``whsec_`` secrets
   are base64-decoded after the prefix. The timestamp must be within the tolerance.
2. GitHub: ``X-Hub-Signature-256: sha256=<hex>`` over the body, with the webhook secret only.
3. Legacy: ``X-Signature: <hex>`` or ``sha256=<hex>`` over the body, keyed with the secret's
   literal bytes (what ``openssl dgst -sha256 -hmac "$secret"`` does).

Every comparison is constant-time, and no error message carries a secret or a signature.

What is stored with an event (``signed_headers``) are the headers of the scheme that verified
it; ``reverify`` checks them again later against the configured secrets, ignoring the timestamp
tolerance (it asks who sent a request, not when), and says which key matched: the primary one
(``GITHUB_CALLBACK_SECRET``, or for GitHub deliveries ``GITHUB_WEBHOOK_SECRET``) or a rotated
one (``JOBTRAIL_CALLBACK_SECRETS``).
"""

from __future__ import annotations

import base64
import dataclasses
import hashlib
import hmac
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Literal

from events.models import RawRequest
from service.settings import Settings

Scheme = Literal["standard", "github", "legacy"]

# The headers that authenticate a request, by scheme: what is kept with the event.
SIGNED_HEADERS: Mapping[Scheme, tuple[str, ...]] = {
    "standard": ("webhook-id", "webhook-timestamp", "webhook-signature"),
    "github": ("x-hub-signature-256", "x-github-event", "x-github-delivery"),
    "legacy": ("x-signature",),
}

# The idempotency key is stored and shown back; keep it bounded.
MAX_ID_LENGTH = 256


class SignatureError(Exception):
    """The request is not authenticated. ``reason`` is safe to log and show."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


@dataclass(frozen=True)
class Keyring:
    """The keys each scheme accepts, derived once from the configured secrets. The first
    callback secret is the primary one unless ``has_primary`` is false (only rotated ones)."""

    standard: tuple[bytes, ...]
    legacy: tuple[bytes, ...]
    github: bytes | None
    tolerance_s: int
    accept_legacy: bool
    has_primary: bool = True

    def key_index(self, index: int) -> int:
        """``Verified.key_index`` of the callback key at ``index``: 0 only for the primary."""
        return index if self.has_primary else index + 1

    @classmethod
    def from_secrets(
        cls,
        callback_secrets: Sequence[str],
        github_secret: str | None,
        *,
        tolerance_s: int = 300,
        accept_legacy: bool = True,
        has_primary: bool = True,
    ) -> Keyring:
        return cls(
            standard=tuple(standard_key(s) for s in callback_secrets),
            legacy=tuple(s.encode("utf-8") for s in callback_secrets),
            github=github_secret.encode("utf-8") if github_secret is not None else None,
            tolerance_s=tolerance_s,
            accept_legacy=accept_legacy,
            has_primary=has_primary,
        )


def keyring_for(settings: Settings) -> Keyring:
    """The keyring of the configured secrets: ``GITHUB_CALLBACK_SECRET`` first (the primary
    key), then ``JOBTRAIL_CALLBACK_SECRETS`` in order, and ``GITHUB_WEBHOOK_SECRET``."""
    primary = (settings.callback_secret,) if settings.callback_secret is not None else ()
    return Keyring.from_secrets(
        [s.get_secret_value() for s in (*primary, *settings.callback_secrets)],
        settings.webhook_secret.get_secret_value() if settings.webhook_secret else None,
        tolerance_s=settings.signature_tolerance_s,
        accept_legacy=settings.accept_legacy_signatures,
        has_primary=bool(primary),
    )


@dataclass(frozen=True)
class Verified:
    """Who sent a request: the scheme, its idempotency key, and which of the scheme's keys
    matched (``key_index``: 0 is the primary key, any other a rotated one)."""

    scheme: Scheme
    idempotency_key: str | None
    github_event: str | None = None
    key_index: int = 0

    @property
    def rotated(self) -> bool:
        """Signed with a secret that is not the primary one (``JOBTRAIL_CALLBACK_SECRETS``)."""
        return self.key_index > 0

    @property
    def key_name(self) -> str:
        """The setting that holds the matching secret (never the secret itself)."""
        if self.scheme == "github":
            return "GITHUB_WEBHOOK_SECRET"
        if self.key_index == 0:
            return "GITHUB_CALLBACK_SECRET"
        return f"JOBTRAIL_CALLBACK_SECRETS[{self.key_index - 1}]"


def standard_key(secret: str) -> bytes:
    """The HMAC key of a Standard Webhooks secret: ``whsec_<base64>`` decoded, else its bytes."""
    if secret.startswith("whsec_"):
        try:
            return base64.b64decode(secret.removeprefix("whsec_"), validate=True)
        except ValueError:  # not base64 (or not even ASCII): the literal secret, then
            pass
    return secret.encode("utf-8")


def _mac(key: bytes, message: bytes) -> bytes:
    return hmac.new(key, message, hashlib.sha256).digest()


def sign_standard(key: bytes, msg_id: str, timestamp: int, body: bytes) -> str:
    """The ``webhook-signature`` header value for one key."""
    mac = _mac(key, f"{msg_id}.{timestamp}.".encode() + body)
    return "v1," + base64.b64encode(mac).decode("ascii")


def _verify_standard(
    headers: Mapping[str, str], body: bytes, keyring: Keyring, now: float | None
) -> Verified:
    msg_id = headers.get("webhook-id", "")
    raw_timestamp = headers.get("webhook-timestamp", "")
    # The id is stored (idempotency key): printable text only, which also rules out what UTF-8
    # cannot carry (aiohttp hands undecodable header bytes over as lone surrogates).
    if not msg_id or len(msg_id) > MAX_ID_LENGTH or not msg_id.isprintable():
        raise SignatureError("missing or invalid webhook-id")
    if not raw_timestamp.isascii() or not raw_timestamp.isdigit():
        raise SignatureError("missing or invalid webhook-timestamp")
    timestamp = int(raw_timestamp)
    if now is not None and abs(now - timestamp) > keyring.tolerance_s:
        raise SignatureError("webhook-timestamp outside tolerance")
    offered: list[bytes] = []
    for entry in headers.get("webhook-signature", "").split():
        version, _, value = entry.partition(",")
        if version != "v1" or not value:
            continue
        try:
            offered.append(base64.b64decode(value, validate=True))
        except ValueError:  # binascii.Error, or not ASCII at all
            continue
    if not offered:
        raise SignatureError("malformed webhook-signature")
    message = f"{msg_id}.{timestamp}.".encode() + body
    for index, key in enumerate(keyring.standard):
        expected = _mac(key, message)
        # Check every offered signature: which one matched must not show in the timing.
        if any([hmac.compare_digest(expected, sig) for sig in offered]):
            return Verified("standard", msg_id, key_index=keyring.key_index(index))
    raise SignatureError("signature mismatch")


def _hex_signature(value: str) -> bytes:
    value = value.strip()
    if value[:7].lower() == "sha256=":
        value = value[7:]
    if len(value) != 64:
        raise SignatureError("malformed signature")
    try:
        return bytes.fromhex(value)
    except ValueError:
        raise SignatureError("malformed signature") from None


def _verify_github(headers: Mapping[str, str], body: bytes, keyring: Keyring) -> Verified:
    if keyring.github is None:
        raise SignatureError("GitHub webhooks are not configured (GITHUB_WEBHOOK_SECRET)")
    offered = _hex_signature(headers["x-hub-signature-256"])
    if not hmac.compare_digest(_mac(keyring.github, body), offered):
        raise SignatureError("signature mismatch")
    event = headers.get("x-github-event", "")
    delivery = headers.get("x-github-delivery", "")
    if not (0 < len(event) <= 64 and event.isprintable()) or not (
        0 < len(delivery) <= MAX_ID_LENGTH and delivery.isprintable()
    ):
        raise SignatureError("missing X-GitHub-Event or X-GitHub-Delivery")
    return Verified("github", delivery, github_event=event)


def _verify_legacy(headers: Mapping[str, str], body: bytes, keyring: Keyring) -> Verified:
    if not keyring.accept_legacy:
        raise SignatureError("legacy X-Signature is disabled")
    offered = _hex_signature(headers["x-signature"])
    matched = [hmac.compare_digest(_mac(key, body), offered) for key in keyring.legacy]
    if not any(matched):
        raise SignatureError("signature mismatch")
    return Verified("legacy", None, key_index=keyring.key_index(matched.index(True)))


def verify_request(
    headers: Mapping[str, str], body: bytes, keyring: Keyring, now: float | None
) -> Verified:
    """Authenticate a request by whichever scheme its headers carry.

    ``headers`` must look names up case-insensitively (aiohttp's ``CIMultiDictProxy`` does).
    ``now`` None skips the timestamp tolerance (``reverify``). Raises ``SignatureError`` with
    the reason of the last scheme tried.
    """
    error: SignatureError | None = None
    if "webhook-signature" in headers:
        try:
            return _verify_standard(headers, body, keyring, now)
        except SignatureError as e:
            error = e
    if "x-hub-signature-256" in headers:
        try:
            return _verify_github(headers, body, keyring)
        except SignatureError as e:
            error = e
    if "x-signature" in headers:
        try:
            return _verify_legacy(headers, body, keyring)
        except SignatureError as e:
            error = e
    raise error or SignatureError("no signature header")


def signed_headers(verified: Verified, headers: Mapping[str, str]) -> dict[str, str]:
    """The headers that authenticated a request (lower-case names), to keep with its event.

    Raises ``SignatureError`` for a value that is not text (undecodable bytes reach aiohttp's
    headers as lone surrogates): the evidence must be storable as it was received.
    """
    kept = {name: headers[name] for name in SIGNED_HEADERS[verified.scheme] if name in headers}
    for name, value in kept.items():
        if "\x00" in value or not _is_utf8(value):
            raise SignatureError(f"{name} is not text")
    return kept


def _is_utf8(value: str) -> bool:
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def reverify(headers: Mapping[str, str], body: bytes, keyring: Keyring) -> Verified:
    """Check a stored request's signature again (``headers`` as ``signed_headers`` kept them):
    any timestamp, and the legacy scheme even if it is no longer accepted for new requests.
    Raises ``SignatureError`` when no configured key verifies it."""
    lowered = {name.lower(): value for name, value in headers.items()}
    return verify_request(lowered, body, dataclasses.replace(keyring, accept_legacy=True), None)


def check_signature(raw: RawRequest, keyring: Keyring) -> Verified | None:
    """``reverify`` of a stored request: who signed it, or None if no configured key did."""
    try:
        return reverify(raw.headers, raw.body, keyring)
    except SignatureError:
        return None

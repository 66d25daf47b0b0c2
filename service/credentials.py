"""The callback secret and read token that ``serve`` generates when none is configured.

Generated once, kept in ``<data dir>/secrets.json`` (mode 0600, created exclusively so a
concurrent start cannot interleave), and reused by every later start.
"""

from __future__ import annotations

import base64
import json
import os
import secrets
from dataclasses import dataclass
from pathlib import Path

from pydantic import SecretStr

from service.settings import Settings

FILENAME = "secrets.json"


@dataclass(frozen=True)
class Credentials:
    settings: Settings  # with callback_secret and read_tokens filled in
    generated: dict[str, str]  # what this start generated: shown once, never logged
    path: Path | None  # where generated values are kept, if any were needed


def _load(path: Path) -> dict[str, str]:
    try:
        return dict(json.loads(path.read_text(encoding="utf-8")))
    except FileNotFoundError:
        return {}


def _store(path: Path, values: dict[str, str]) -> None:
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    temporary = path.with_suffix(f".{os.getpid()}.tmp")
    fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as file:
        json.dump(values, file, indent=2)
    os.replace(temporary, path)


def ensure_credentials(settings: Settings) -> Credentials:
    """Fill in whatever is not configured from the data dir, generating it on first use."""
    if settings.callback_secret is not None and settings.read_tokens:
        return Credentials(settings, {}, None)
    path = settings.data_dir / FILENAME
    stored = _load(path)
    generated: dict[str, str] = {}
    if settings.callback_secret is None and "callback_secret" not in stored:
        raw = base64.b64encode(secrets.token_bytes(32)).decode()
        generated["callback_secret"] = f"whsec_{raw}"
    if not settings.read_tokens and "read_token" not in stored:
        generated["read_token"] = f"jt_{secrets.token_urlsafe(32)}"
    if generated:
        stored.update(generated)
        _store(path, stored)
    update: dict[str, object] = {}
    if settings.callback_secret is None:
        update["callback_secret"] = SecretStr(stored["callback_secret"])
    if not settings.read_tokens:
        update["read_tokens"] = (SecretStr(stored["read_token"]),)
    return Credentials(settings.model_copy(update=update), generated, path)


def with_stored_secret(settings: Settings) -> Settings:
    """``settings`` with the callback secret ``serve`` generated, when none is configured and
    the data dir holds one; nothing is generated (``verify --signatures``)."""
    if settings.callback_secret is not None:
        return settings
    stored = _load(settings.data_dir / FILENAME)
    if "callback_secret" not in stored:
        return settings
    return settings.model_copy(update={"callback_secret": SecretStr(stored["callback_secret"])})

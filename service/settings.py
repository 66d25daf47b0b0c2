"""Configuration (SPEC section 2), declared once.

Each field is one environment variable (its alias) with a description; the ``jobtrail serve``
flags and the README's configuration table are derived from these declarations
(``serve_flags`` here, ``tests/e2e/test_readme.py`` for the table).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

SecretList = Annotated[tuple[SecretStr, ...], NoDecode]


def _setting(default: Any, env: str, description: str, **constraints: Any) -> Any:
    """A field set by the environment variable ``env`` (or, for flags and tests, its name)."""
    return Field(default, alias=env, description=description, **constraints)


class Settings(BaseSettings):
    # Fields are set by their environment name or, for flags and tests, their field name.
    model_config = SettingsConfigDict(
        case_sensitive=True, extra="ignore", populate_by_name=True, frozen=True
    )

    database_url: SecretStr | None = _setting(None, "DATABASE_URL", "libpq DSN")
    data_dir: Path = _setting(
        Path(".jobtrail"), "JOBTRAIL_DATA_DIR", "embedded database record, generated secrets"
    )
    host: str = _setting("127.0.0.1", "JOBTRAIL_HOST", "listen address")
    port: int = _setting(8080, "JOBTRAIL_PORT", "listen port", ge=0, le=65535)
    callback_secret: SecretStr | None = _setting(
        None, "GITHUB_CALLBACK_SECRET", "HMAC secret for workflow callbacks"
    )
    callback_secrets: SecretList = _setting(
        (),
        "JOBTRAIL_CALLBACK_SECRETS",
        "comma-separated extra secrets, all accepted (rotation)",
    )
    webhook_secret: SecretStr | None = _setting(
        None, "GITHUB_WEBHOOK_SECRET", "secret of a GitHub repository/org webhook"
    )
    read_tokens: SecretList = _setting(
        (), "JOBTRAIL_READ_TOKENS", "comma-separated bearer tokens for the read API"
    )
    signature_tolerance_s: int = _setting(
        300,
        "JOBTRAIL_SIGNATURE_TOLERANCE_S",
        "max clock skew for `webhook-timestamp`, seconds",
        ge=1,
    )
    accept_legacy_signatures: bool = _setting(
        True,
        "JOBTRAIL_ACCEPT_LEGACY_SIGNATURES",
        "accept the body-only `X-Signature` scheme (no replay protection)",
    )
    max_body_bytes: int = _setting(65536, "JOBTRAIL_MAX_BODY_BYTES", "larger bodies get 413", ge=1)
    stale_after_s: float = _setting(
        180,
        "JOBTRAIL_STALE_AFTER_S",
        "heartbeat age after which a live job is shown stale, seconds",
        gt=0,
    )
    timeout_after_s: float = _setting(
        900,
        "JOBTRAIL_TIMEOUT_AFTER_S",
        "silence after which the watchdog times a live job out, seconds",
        ge=1,
    )
    log_format: Literal["console", "json"] | None = _setting(
        None, "JOBTRAIL_LOG_FORMAT", "log renderer: console or json"
    )
    log_level: Literal["debug", "info", "warning", "error"] = _setting(
        "info", "JOBTRAIL_LOG_LEVEL", "least severe level logged: debug, info, warning or error"
    )
    workers: int = _setting(
        1, "JOBTRAIL_WORKERS", "processes serving on the one port (SO_REUSEPORT)", ge=1, le=64
    )

    @field_validator("callback_secrets", "read_tokens", mode="before")
    @classmethod
    def _split_commas(cls, value: Any) -> Any:
        if isinstance(value, str):
            return tuple(part.strip() for part in value.split(",") if part.strip())
        return value

    @field_validator(
        "database_url", "callback_secret", "webhook_secret", "log_format", mode="before"
    )
    @classmethod
    def _empty_is_unset(cls, value: Any) -> Any:
        return None if isinstance(value, str) and not value.strip() else value


@dataclass(frozen=True)
class Flag:
    """A ``jobtrail serve`` flag for one setting."""

    flag: str
    field: str
    env: str
    type: Callable[[str], Any]
    help: str


def serve_flags() -> list[Flag]:
    """One flag per setting: ``--port`` for ``port`` (``JOBTRAIL_PORT``), and so on."""
    flags = []
    for name, info in Settings.model_fields.items():
        kind: Callable[[str], Any] = int if info.annotation is int else str
        if info.annotation is float:
            kind = float
        env = info.alias or name
        flag = f"--{name.replace('_', '-')}"
        flags.append(Flag(flag, name, env, kind, f"{info.description} ({env})"))
    return flags

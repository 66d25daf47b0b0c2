"""Configuration: environment variables (SPEC section 2), each also a ``jobtrail serve`` flag."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import AliasChoices, Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

SecretList = Annotated[tuple[SecretStr, ...], NoDecode]


def _env(name: str, field: str) -> Any:
    # Accept the environment name and, for flags and tests, the field name.
    return AliasChoices(name, field)


class Settings(BaseSettings):
    model_config = SettingsConfigDict(
        case_sensitive=True, extra="ignore", populate_by_name=True, frozen=True
    )

    database_url: SecretStr | None = Field(
        None, validation_alias=_env("DATABASE_URL", "database_url")
    )
    data_dir: Path = Field(
        Path(".jobtrail"), validation_alias=_env("JOBTRAIL_DATA_DIR", "data_dir")
    )
    host: str = Field("127.0.0.1", validation_alias=_env("JOBTRAIL_HOST", "host"))
    port: int = Field(8080, ge=0, le=65535, validation_alias=_env("JOBTRAIL_PORT", "port"))
    callback_secret: SecretStr | None = Field(
        None, validation_alias=_env("GITHUB_CALLBACK_SECRET", "callback_secret")
    )
    callback_secrets: SecretList = Field(
        (), validation_alias=_env("JOBTRAIL_CALLBACK_SECRETS", "callback_secrets")
    )
    webhook_secret: SecretStr | None = Field(
        None, validation_alias=_env("GITHUB_WEBHOOK_SECRET", "webhook_secret")
    )
    read_tokens: SecretList = Field(
        (), validation_alias=_env("JOBTRAIL_READ_TOKENS", "read_tokens")
    )
    signature_tolerance_s: int = Field(
        300, ge=1, validation_alias=_env("JOBTRAIL_SIGNATURE_TOLERANCE_S", "signature_tolerance_s")
    )
    accept_legacy_signatures: bool = Field(
        True,
        validation_alias=_env("JOBTRAIL_ACCEPT_LEGACY_SIGNATURES", "accept_legacy_signatures"),
    )
    max_body_bytes: int = Field(
        65536, ge=1, validation_alias=_env("JOBTRAIL_MAX_BODY_BYTES", "max_body_bytes")
    )
    stale_after_s: float = Field(
        180, gt=0, validation_alias=_env("JOBTRAIL_STALE_AFTER_S", "stale_after_s")
    )
    timeout_after_s: float = Field(
        900, ge=1, validation_alias=_env("JOBTRAIL_TIMEOUT_AFTER_S", "timeout_after_s")
    )
    log_format: Literal["console", "json"] | None = Field(
        None, validation_alias=_env("JOBTRAIL_LOG_FORMAT", "log_format")
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

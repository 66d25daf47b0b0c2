"""A logged exception never carries a frame's local variables (they can hold secrets); every
line's timestamp is UTC ISO 8601."""

from __future__ import annotations

import json
import re
from datetime import UTC, datetime, timedelta
from typing import Literal

import pytest
import structlog

from service.logconfig import add_timestamp, configure_logging

SECRET = "whsec_dGhpcy1pcy1hLXNlY3JldA=="


def fail_with_a_secret_in_scope() -> None:
    secret = SECRET
    raise ValueError(f"failed after reading {len(secret)} characters")


@pytest.mark.parametrize("log_format", ["json", "console"])
def test_tracebacks_show_no_locals(
    log_format: Literal["json", "console"], capsys: pytest.CaptureFixture[str]
) -> None:
    configure_logging(log_format)
    try:
        try:
            fail_with_a_secret_in_scope()
        except ValueError:
            structlog.get_logger().exception("request.failed")
        err = capsys.readouterr().err
    finally:
        structlog.reset_defaults()
    assert "fail_with_a_secret_in_scope" in err and "ValueError" in err
    assert SECRET not in err
    if log_format == "json":
        assert json.loads(err.strip().splitlines()[-1])["event"] == "request.failed"


def test_timestamps_are_utc_iso_with_microseconds() -> None:
    before = datetime.now(UTC)
    stamp = add_timestamp(None, "info", {})["timestamp"]
    after = datetime.now(UTC)
    # What structlog's TimeStamper(fmt="iso", utc=True) writes, which it replaces.
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}Z", stamp)
    moment = datetime.fromisoformat(stamp.replace("Z", "+00:00"))
    assert before - timedelta(milliseconds=1) <= moment <= after + timedelta(milliseconds=1)

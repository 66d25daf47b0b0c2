"""The one exception of the package, shared by every module."""

from __future__ import annotations


class EmbeddedPostgresError(Exception):
    """Raised when the embedded cluster cannot be created, started or stopped."""

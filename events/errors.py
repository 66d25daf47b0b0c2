"""Errors of the event log.

EventStoreError
├── StorageUnavailable   the database cannot be reached; safe to retry later
└── AppendFailed         the database refused the batch; retrying will not help
"""


class EventStoreError(Exception):
    """Base of every error raised by ``events``."""


class StorageUnavailable(EventStoreError):
    """PostgreSQL is down, restarting or unreachable; nothing was acknowledged."""


class AppendFailed(EventStoreError):
    """The database rejected the events themselves."""

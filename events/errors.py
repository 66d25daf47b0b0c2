"""Errors of the event log, and the one place where database errors are classified.

EventStoreError
├── StorageUnavailable   the database cannot be reached; safe to retry later
└── AppendFailed         the database refused the batch; retrying will not help

Every database entry point (append, reads, projector, CLI) runs inside ``translate()``, so a
caller sees either a result, ``StorageUnavailable``, or a genuine bug; never a driver error that
merely means "PostgreSQL is down or restarting".
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Iterator

import asyncpg


class EventStoreError(Exception):
    """Base of every error raised by ``events``."""


class StorageUnavailable(EventStoreError):
    """PostgreSQL is down, restarting or unreachable; nothing was acknowledged."""


class AppendFailed(EventStoreError):
    """The database rejected the events themselves."""


# Errors after which nothing is known to be stored and a later retry may succeed.
_UNAVAILABLE: tuple[type[BaseException], ...] = (
    OSError,
    TimeoutError,
    asyncpg.PostgresConnectionError,
    asyncpg.InterfaceError,
    asyncpg.exceptions.OperatorInterventionError,
    asyncpg.exceptions.InsufficientResourcesError,
    # A pooled connection whose server just went away can still be handed out while the driver
    # is consuming the server's farewell error: the next statement is refused before it is sent
    # ("cannot switch to state ...; another operation is in progress").
    asyncpg.exceptions.InternalClientError,
)


def is_unavailable(error: BaseException) -> bool:
    """Whether ``error`` means the database could not be reached (retrying later may work)."""
    return isinstance(error, (StorageUnavailable, *_UNAVAILABLE))


@contextlib.contextmanager
def translate() -> Iterator[None]:
    """Turn any "database unreachable" driver error raised inside into ``StorageUnavailable``."""
    try:
        yield
    except StorageUnavailable:
        raise
    except _UNAVAILABLE as error:
        raise StorageUnavailable(type(error).__name__) from error


def cancelling() -> bool:
    """Whether the current task has been asked to stop.

    Cancelling a task in the middle of a database call can surface as the connection's error
    instead of ``CancelledError`` (the clean-up of a dead connection fails too). Loops that
    retry on unavailability check this, or they would never stop.
    """
    task = asyncio.current_task()
    return task is not None and task.cancelling() > 0
